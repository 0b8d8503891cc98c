//===- G3MoEOps.cpp - g3moe op verifiers ----------------------------------===//
//
// Shape, dtype and attribute checks of the g3moe ops. Every message names the
// operand or attribute at fault and the shapes involved, so that a frontend bug
// or a hand-written test reads as a sentence rather than a crash later on.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/IR/VerifyUtils.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/OpImplementation.h"

using namespace mlir;
using namespace g3moe;
using namespace g3moe::detail;

LogicalResult ParamOp::verify() {
  if (getName().empty())
    return emitOpError("name must not be empty");
  if (getName().contains("{e}") && getType().getRank() < 1)
    return emitOpError("stacked expert weight '")
           << getName() << "' needs a leading expert dimension";
  return requireStatic(*this);
}

LogicalResult ReshapeOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto in = getInput().getType(), out = getType();
  if (in.getElementType() != out.getElementType())
    return emitOpError("must keep the element type, got ")
           << in.getElementType() << " -> " << out.getElementType();
  if (in.getNumElements() != out.getNumElements())
    return emitOpError() << "must keep the element count: " << shapeStr(in.getShape()) << " has "
                         << in.getNumElements() << ", " << shapeStr(out.getShape()) << " has "
                         << out.getNumElements();
  return success();
}

/// `parts` are consecutive row blocks of `whole`: the same trailing
/// dimensions and element type, and first dimensions that add up.
static LogicalResult verifyRowBlocks(Operation *op, RankedTensorType whole, TypeRange parts) {
  if (failed(requireStatic(op)))
    return failure();
  if (parts.empty())
    return op->emitOpError("needs at least one part");
  if (whole.getRank() < 1)
    return op->emitOpError("needs tensors of rank >= 1, got ") << whole;
  int64_t rows = 0;
  for (auto [i, t] : llvm::enumerate(parts)) {
    auto part = cast<RankedTensorType>(t);
    if (part.getElementType() != whole.getElementType() || part.getRank() != whole.getRank() ||
        part.getShape().drop_front() != whole.getShape().drop_front())
      return op->emitOpError() << "part " << i << " (" << part << ") is not a block of rows of "
                               << whole;
    rows += part.getDimSize(0);
  }
  if (rows != whole.getDimSize(0))
    return op->emitOpError() << "parts have " << rows << " rows in all, the whole has "
                             << whole.getDimSize(0);
  return success();
}

LogicalResult SplitRowsOp::verify() {
  return verifyRowBlocks(*this, getInput().getType(), getParts().getTypes());
}

LogicalResult ConcatRowsOp::verify() {
  return verifyRowBlocks(*this, getType(), getParts().getTypes());
}

LogicalResult ConvertOp::verify() {
  if (getInput().getType().getShape() != getType().getShape())
    return emitOpError() << "must keep the shape, got " << shapeStr(getInput().getType().getShape())
                         << " -> " << shapeStr(getType().getShape());
  return requireStatic(*this);
}

LogicalResult RandomUniformOp::verify() { return verifyUniformDraw(*this); }

LogicalResult EmbeddingOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto table = getTable().getType();
  if (failed(expectRank(*this, "table", table, 2)))
    return failure();
  SmallVector<int64_t> expected(getIds().getType().getShape());
  expected.push_back(table.getDimSize(1));
  if (failed(expectShape(*this, "result", getType(), expected)))
    return failure();
  if (getType().getElementType() != table.getElementType())
    return emitOpError("result element type must match the table's (")
           << table.getElementType() << ")";
  int64_t pad = getPaddingIdxAttr().getInt();
  if (pad < -1 || pad >= table.getDimSize(0))
    return emitOpError() << "padding_idx " << pad << " is outside the vocabulary [0, "
                         << table.getDimSize(0) << ") (use -1 for none)";
  if (getScale().convertToDouble() <= 0)
    return emitOpError("scale must be positive");
  return success();
}

LogicalResult RMSNormOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto x = getInput().getType();
  if (failed(verifyNormWeight(*this, x, getWeight(), getEps().convertToDouble())))
    return failure();
  if (getType() != x)
    return emitOpError("result type must equal the input type ") << x;
  return success();
}

LogicalResult AddRMSNormOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto x = getLhs().getType();
  if (getRhs().getType() != x || getSum().getType() != x || getResult().getType() != x)
    return emitOpError("summands, sum and result must all have the type ") << x;
  return verifyNormWeight(*this, x, getWeight(), getEps().convertToDouble());
}

LogicalResult RMSNormRoPEOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto x = getInput().getType();
  if (failed(verifyRoPEOperands(*this, x, getPositions(), getTheta().convertToDouble(),
                                getScalingFactor().convertToDouble())) ||
      failed(verifyNormWeight(*this, x, getWeight(), getEps().convertToDouble())))
    return failure();
  if (getType() != x)
    return emitOpError("result type must equal the input type ") << x;
  return success();
}

LogicalResult LinearOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto x = getInput().getType(), w = getWeight().getType();
  if (failed(expectRank(*this, "weight", w, 2)))
    return failure();
  if (x.getShape().back() != w.getDimSize(1))
    return emitOpError() << "input features (" << x.getShape().back()
                         << ") must equal the weight's in dimension (weight is [out, in] = "
                         << shapeStr(w.getShape()) << ")";
  SmallVector<int64_t> expected(x.getShape());
  expected.back() = w.getDimSize(0);
  if (failed(expectShape(*this, "result", getType(), expected)) ||
      failed(verifyProductDropout(*this, getDropoutMask(), getDropoutP(),
                                  getInput().getType().getNumElements())))
    return failure();
  return verifyAddend(*this, getAddend(), getType());
}

LogicalResult RoPEOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto x = getInput().getType();
  if (failed(verifyRoPEOperands(*this, x, getPositions(), getTheta().convertToDouble(),
                                getScalingFactor().convertToDouble())))
    return failure();
  if (getType() != x)
    return emitOpError("result type must equal the input type ") << x;
  return success();
}

LogicalResult AttentionOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto q = getQuery().getType(), k = getKey().getType(), v = getValue().getType();
  if (failed(expectRank(*this, "query", q, 4)) || failed(expectRank(*this, "key", k, 4)))
    return failure();
  if (k != v)
    return emitOpError("key and value must have the same type, got ") << k << " and " << v;
  int64_t b = q.getDimSize(0), t = q.getDimSize(1), nh = q.getDimSize(2), d = q.getDimSize(3),
          nkv = k.getDimSize(2);
  if (k.getDimSize(0) != b || k.getDimSize(1) != t || k.getDimSize(3) != d)
    return emitOpError() << "key must be [B, T, n_kv, d] matching query " << shapeStr(q.getShape())
                         << ", got " << shapeStr(k.getShape());
  if (nh % nkv != 0)
    return emitOpError() << "query heads (" << nh << ") must be a multiple of key/value heads ("
                         << nkv << ")";
  if (failed(expectShape(*this, "segment_ids", getSegmentIds().getType(), {b, t})))
    return failure();
  if (getResult().getType() != q)
    return emitOpError("result type must equal the query type ") << q;
  if (Value lse = getLse())
    if (failed(expectShape(*this, "lse", cast<RankedTensorType>(lse.getType()), {b, nh, t})))
      return failure();
  if (auto w = getSlidingWindowAttr(); w && w.getInt() < 1)
    return emitOpError("sliding_window must be at least 1, got ") << w.getInt();
  if (auto c = getSoftcap(); c && c->convertToDouble() <= 0)
    return emitOpError("softcap must be positive");
  if (getScale().convertToDouble() <= 0)
    return emitOpError("scale must be positive");
  return success();
}

LogicalResult LMHeadOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto x = getInput().getType(), table = getTable().getType();
  if (failed(expectRank(*this, "table", table, 2)))
    return failure();
  if (x.getShape().back() != table.getDimSize(1))
    return emitOpError() << "hidden size (" << x.getShape().back()
                         << ") must equal the table's second dimension (table is "
                         << shapeStr(table.getShape()) << ")";
  SmallVector<int64_t> expected(x.getShape());
  expected.back() = table.getDimSize(0);
  if (auto c = getSoftcap(); c && c->convertToDouble() <= 0)
    return emitOpError("softcap must be positive");
  return expectShape(*this, "result", getType(), expected);
}

LogicalResult SparseMixerRouterOp::verify() {
  if (failed(requireStatic(*this)) || failed(verifyRouterResults(*this, getLogits().getType(), 2)))
    return failure();
  int64_t n = getLogits().getType().getDimSize(0), e = getLogits().getType().getDimSize(1);
  if (e < 2)
    return emitOpError("needs at least 2 experts for top-2 routing, got ") << e;
  if (Value noise = getNoise())
    if (failed(expectShape(*this, "noise", cast<RankedTensorType>(noise.getType()), {n, 2, e + 1})))
      return failure();
  if (getEpsilon().convertToDouble() < 0)
    return emitOpError("epsilon must be non-negative");
  return success();
}

LogicalResult SoftmaxTopKRouterOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  return verifyRouterResults(*this, getLogits().getType(), getTopKAttr().getInt());
}

LogicalResult SigmoidGroupedRouterOp::verify() {
  if (failed(requireStatic(*this)) ||
      failed(verifyRouterResults(*this, getLogits().getType(), getTopKAttr().getInt())))
    return failure();
  int64_t e = getLogits().getType().getDimSize(1);
  if (failed(expectShape(*this, "bias", getBias().getType(), {e})))
    return failure();
  int64_t groups = getNGroupAttr().getInt(), keep = getTopkGroupAttr().getInt();
  if (groups < 1 || e % groups != 0)
    return emitOpError() << "n_group (" << groups << ") must divide the number of experts (" << e
                         << ")";
  if (keep < 1 || keep > groups)
    return emitOpError() << "topk_group (" << keep << ") must be in [1, n_group = " << groups
                         << "]";
  if (getTopKAttr().getInt() > keep * (e / groups))
    return emitOpError() << "top_k (" << getTopKAttr().getInt() << ") exceeds the "
                         << keep * (e / groups) << " experts left in the kept groups";
  if (getRoutedScalingFactor().convertToDouble() <= 0)
    return emitOpError("routed_scaling_factor must be positive");
  return success();
}

LogicalResult MoEDispatchOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto x = getInput().getType(), idx = getIndices().getType();
  if (failed(expectRank(*this, "input", x, 2)) || failed(expectRank(*this, "indices", idx, 2)))
    return failure();
  int64_t n = x.getDimSize(0), h = x.getDimSize(1), k = idx.getDimSize(1),
          e = getNumExpertsAttr().getInt();
  if (e < 1)
    return emitOpError("num_experts must be positive, got ") << e;
  if (idx.getDimSize(0) != n)
    return emitOpError() << "indices must have one row per token (" << n << "), got "
                         << shapeStr(idx.getShape());
  if (failed(expectShape(*this, "permuted", getPermuted().getType(), {n * k, h})) ||
      failed(expectShape(*this, "expert_offsets", getExpertOffsets().getType(), {e + 1})) ||
      failed(expectShape(*this, "slots", getSlots().getType(), {n, k})))
    return failure();
  if (getPermuted().getType().getElementType() != x.getElementType())
    return emitOpError("permuted must keep the input's element type");
  return success();
}

LogicalResult ExpertLinearOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto x = getInput().getType(), w = getWeight().getType();
  if (failed(expectRank(*this, "input", x, 2)) || failed(expectRank(*this, "weight", w, 3)))
    return failure();
  int64_t e = w.getDimSize(0);
  if (failed(expectShape(*this, "expert_offsets", getExpertOffsets().getType(), {e + 1})))
    return failure();
  if (x.getDimSize(1) != w.getDimSize(2))
    return emitOpError() << "input features (" << x.getDimSize(1)
                         << ") must equal the weight's in dimension (weight is "
                            "[experts, out, in] = "
                         << shapeStr(w.getShape()) << ")";
  if (failed(expectShape(*this, "result", getType(), {x.getDimSize(0), w.getDimSize(1)})))
    return failure();
  if (failed(verifyExpertLowRank(*this, getLowrankInput(), getLowrankWeight(), x.getDimSize(0), e,
                                 w.getDimSize(1), /*rankLast=*/true)) ||
      failed(verifyProductDropout(*this, getDropoutMask(), getDropoutP(),
                                  getInput().getType().getNumElements(),
                                  getLowrankInput() ? "lowrank" : "")))
    return failure();
  return verifyAddend(*this, getAddend(), getType());
}

LogicalResult MoECombineOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto y = getInput().getType(), slots = getSlots().getType();
  if (failed(expectRank(*this, "input", y, 2)) || failed(expectRank(*this, "slots", slots, 2)))
    return failure();
  if (failed(expectShape(*this, "weights", getWeights().getType(), slots.getShape())))
    return failure();
  int64_t n = slots.getDimSize(0), k = slots.getDimSize(1);
  if (y.getDimSize(0) != n * k)
    return emitOpError() << "input must have tokens x top_k = " << n * k << " rows, got "
                         << y.getDimSize(0);
  if (failed(expectShape(*this, "result", getType(), {n, y.getDimSize(1)})))
    return failure();
  if (getType().getElementType() != y.getElementType())
    return emitOpError("result must keep the input's element type");
  return success();
}

LogicalResult CrossEntropyOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto logits = getLogits().getType();
  return expectShape(*this, "targets", getTargets().getType(), logits.getShape().drop_back());
}

/// Shared by the fused LM-head loss ops: x [..., H], table [V, H], targets x's
/// leading shape.
static LogicalResult verifyFusedHead(Operation *op, RankedTensorType x, RankedTensorType table,
                                     RankedTensorType targets) {
  if (failed(requireStatic(op)) || failed(expectRank(op, "table", table, 2)))
    return failure();
  if (x.getShape().back() != table.getDimSize(1))
    return op->emitOpError() << "hidden size (" << x.getShape().back()
                             << ") must equal the table's second dimension (table is "
                             << shapeStr(table.getShape()) << ")";
  return expectShape(op, "targets", targets, x.getShape().drop_back());
}

LogicalResult LMHeadCrossEntropyOp::verify() {
  if (failed(verifyFusedHead(*this, getInput().getType(), getTable().getType(),
                             getTargets().getType())))
    return failure();
  if (Value lse = getLse())
    return expectShape(*this, "lse", cast<RankedTensorType>(lse.getType()),
                       getTargets().getType().getShape());
  return success();
}

LogicalResult LMHeadCrossEntropyAndGradOp::verify() {
  if (failed(verifyFusedHead(*this, getInput().getType(), getTable().getType(),
                             getTargets().getType())))
    return failure();
  if (getInputGrad().getType() != getInput().getType())
    return emitOpError() << "input_grad must have the input's type " << getInput().getType()
                         << ", got " << getInputGrad().getType();
  return success();
}

LogicalResult LMHeadEvalOp::verify() {
  return verifyFusedHead(*this, getInput().getType(), getTable().getType(), getTargets().getType());
}

LogicalResult ExpertLoadOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  int64_t tokens = getSegmentIds().getType().getNumElements();
  if (getIndices().getType().getRank() != 2 || getIndices().getType().getDimSize(0) != tokens)
    return emitOpError() << "indices must be [" << tokens << ", k], got "
                         << shapeStr(getIndices().getType().getShape());
  return expectShape(*this, "result", getType(), {getNumExpertsAttr().getInt()});
}

LogicalResult TokenAccuracyOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  return expectShape(*this, "targets", getTargets().getType(),
                     getLogits().getType().getShape().drop_back());
}

LogicalResult LoadBalancingLossOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  if (getLogits().empty())
    return emitOpError("needs the router logits of at least one MoE layer");
  if (getLogits().size() != getIndices().size())
    return emitOpError() << "needs one indices tensor per logits tensor, got " << getLogits().size()
                         << " logits and " << getIndices().size() << " indices";
  int64_t tokens = getSegmentIds().getType().getNumElements();
  for (auto [l, i] : llvm::zip(getLogits(), getIndices())) {
    auto lt = tensorOf(l), it = tensorOf(i);
    if (failed(expectShape(*this, "logits", lt, {tokens, getNumExpertsAttr().getInt()})))
      return failure();
    if (it.getRank() != 2 || it.getDimSize(0) != tokens)
      return emitOpError() << "indices must be [" << tokens << ", k], got "
                           << shapeStr(it.getShape());
  }
  return success();
}

LogicalResult RouterZLossOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  if (getLogits().empty())
    return emitOpError("needs the router logits of at least one MoE layer");
  int64_t tokens = getSegmentIds().getType().getNumElements();
  for (Value l : getLogits())
    if (tensorOf(l).getRank() != 2 || tensorOf(l).getDimSize(0) != tokens)
      return emitOpError() << "logits must be [" << tokens << ", E], got "
                           << shapeStr(tensorOf(l).getShape());
  return success();
}

LogicalResult LossSumOp::verify() {
  if (getTerms().empty())
    return emitOpError("needs at least one term");
  if (getCoefficients().size() != getTerms().size())
    return emitOpError() << "needs one coefficient per term, got " << getCoefficients().size()
                         << " for " << getTerms().size() << " terms";
  return success();
}

#define GET_OP_CLASSES
#include "dialects/G3MoE/IR/G3MoEOps.cpp.inc"
