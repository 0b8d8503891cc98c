//===- G3MoETrainOps.cpp - verifiers of backward and optimizer ops --------===//
//
// A gradient has the shape of the value it differentiates; these checks tie
// every backward op's results to the forward operands it mirrors.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/IR/VerifyUtils.h"

using namespace mlir;
using namespace g3moe;
using namespace g3moe::detail;

namespace {

/// `result` must have the shape of `like`.
LogicalResult sameShape(Operation *op, StringRef what, Value result, Value like) {
  return expectShape(op, what, tensorOf(result), tensorOf(like).getShape());
}

} // namespace

LogicalResult LinearGradInputOp::verify() {
  auto w = getWeight().getType();
  if (failed(requireStatic(*this)) || failed(expectRank(*this, "weight", w, 2)))
    return failure();
  SmallVector<int64_t> expected(getGrad().getType().getShape());
  if (expected.back() != w.getDimSize(0))
    return emitOpError() << "grad features (" << expected.back()
                         << ") must equal the weight's out dimension (" << w.getDimSize(0) << ")";
  expected.back() = w.getDimSize(1);
  if (failed(expectShape(*this, "result", getType(), expected)) ||
      failed(verifyProductDropout(*this, getDropoutMask(), getDropoutP(),
                                  getType().getNumElements(), getAddend() ? "an addend" : "")))
    return failure();
  return verifyAddend(*this, getAddend(), getType());
}

LogicalResult LinearGradWeightOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto g = getGrad().getType(), x = getInput().getType();
  if (g.getShape().drop_back() != x.getShape().drop_back())
    return emitOpError() << "grad " << shapeStr(g.getShape()) << " and input "
                         << shapeStr(x.getShape()) << " must agree on the leading dimensions";
  if (failed(verifyProductDropout(*this, getDropoutMask(), getDropoutP(),
                                  getInput().getType().getNumElements())))
    return failure();
  return expectShape(*this, "result", getType(), {g.getShape().back(), x.getShape().back()});
}

LogicalResult ExpertLinearGradInputOp::verify() {
  auto w = getWeight().getType(), g = getGrad().getType();
  if (failed(requireStatic(*this)) || failed(expectRank(*this, "weight", w, 3)) ||
      failed(expectRank(*this, "grad", g, 2)))
    return failure();
  if (g.getDimSize(1) != w.getDimSize(1))
    return emitOpError() << "grad features (" << g.getDimSize(1)
                         << ") must equal the weight's out dimension (" << w.getDimSize(1) << ")";
  if (failed(expectShape(*this, "result", getType(), {g.getDimSize(0), w.getDimSize(2)})))
    return failure();
  if (failed(verifyExpertLowRank(*this, getLowrankInput(), getLowrankWeight(), g.getDimSize(0),
                                 w.getDimSize(0), w.getDimSize(2), /*rankLast=*/false)) ||
      failed(verifyProductDropout(
          *this, getDropoutMask(), getDropoutP(), getType().getNumElements(),
          getAddend() && !getLowrankInput() ? "an addend but no lowrank" : "")))
    return failure();
  return verifyAddend(*this, getAddend(), getType());
}

LogicalResult ExpertLinearGradWeightOp::verify() {
  auto g = getGrad().getType(), x = getInput().getType();
  if (failed(requireStatic(*this)) || failed(expectRank(*this, "grad", g, 2)) ||
      failed(expectRank(*this, "input", x, 2)))
    return failure();
  if (failed(verifyProductDropout(*this, getDropoutMask(), getDropoutP(),
                                  getInput().getType().getNumElements())))
    return failure();
  int64_t e = getExpertOffsets().getType().getDimSize(0) - 1;
  return expectShape(*this, "result", getType(), {e, g.getDimSize(1), x.getDimSize(1)});
}

LogicalResult EmbeddingGradOp::verify() {
  if (failed(requireStatic(*this)) || failed(expectRank(*this, "result", getType(), 2)))
    return failure();
  SmallVector<int64_t> expected(getIds().getType().getShape());
  expected.push_back(getType().getDimSize(1));
  return expectShape(*this, "grad", getGrad().getType(), expected);
}

LogicalResult RMSNormGradOp::verify() {
  if (failed(requireStatic(*this)) || failed(sameShape(*this, "grad", getGrad(), getInput())) ||
      failed(sameShape(*this, "input_grad", getInputGrad(), getInput())) ||
      failed(verifyAddend(*this, getAddend(), getInputGrad().getType())))
    return failure();
  return sameShape(*this, "weight_grad", getWeightGrad(), getWeight());
}

LogicalResult RMSNormRoPEGradOp::verify() {
  auto x = getInput().getType();
  if (failed(requireStatic(*this)) ||
      failed(verifyRoPEOperands(*this, x, getPositions(), getTheta().convertToDouble(),
                                getScalingFactor().convertToDouble())) ||
      failed(expectShape(*this, "weight", getWeight().getType(), {x.getDimSize(3)})) ||
      failed(sameShape(*this, "grad", getGrad(), getInput())) ||
      failed(sameShape(*this, "input_grad", getInputGrad(), getInput())))
    return failure();
  return sameShape(*this, "weight_grad", getWeightGrad(), getWeight());
}

LogicalResult AttentionGradOp::verify() {
  if (failed(requireStatic(*this)) || failed(sameShape(*this, "grad", getGrad(), getQuery())) ||
      failed(sameShape(*this, "query_grad", getQueryGrad(), getQuery())) ||
      failed(sameShape(*this, "key_grad", getKeyGrad(), getKey())) ||
      failed(sameShape(*this, "value_grad", getValueGrad(), getValue())))
    return failure();
  ValueRange saved = getSaved();
  if (saved.empty())
    return success();
  if (saved.size() != 2)
    return emitOpError("takes the forward's output and lse together, got ")
           << saved.size() << " saved operand(s)";
  if (saved[0].getType() != getQuery().getType())
    return emitOpError("saved output type must equal the query type ") << getQuery().getType();
  auto q = getQuery().getType();
  auto lse = cast<RankedTensorType>(saved[1].getType());
  if (!lse.getElementType().isF32())
    return emitOpError("saved lse must be f32, got ") << lse;
  return expectShape(*this, "saved lse", lse, {q.getDimSize(0), q.getDimSize(2), q.getDimSize(1)});
}

LogicalResult GeluTanhMulGradOp::verify() {
  if (failed(requireStatic(*this)) || failed(sameShape(*this, "up", getUp(), getGate())) ||
      failed(sameShape(*this, "grad", getGrad(), getGate())) ||
      failed(sameShape(*this, "gate_grad", getGateGrad(), getGate())))
    return failure();
  return sameShape(*this, "up_grad", getUpGrad(), getUp());
}

LogicalResult LMHeadGradOp::verify() {
  if (failed(requireStatic(*this)) ||
      failed(sameShape(*this, "input_grad", getInputGrad(), getInput())) ||
      failed(sameShape(*this, "table_grad", getTableGrad(), getTable())))
    return failure();
  SmallVector<int64_t> expected(getInput().getType().getShape());
  expected.back() = getTable().getType().getDimSize(0);
  return expectShape(*this, "grad", getGrad().getType(), expected);
}

LogicalResult LMHeadCrossEntropyGradOp::verify() {
  auto x = getInput().getType(), table = getTable().getType();
  if (failed(requireStatic(*this)) || failed(expectRank(*this, "table", table, 2)) ||
      failed(sameShape(*this, "input_grad", getInputGrad(), getInput())))
    return failure();
  if (x.getShape().back() != table.getDimSize(1))
    return emitOpError() << "hidden size (" << x.getShape().back()
                         << ") must equal the table's second dimension";
  if (Value tg = getTableGrad())
    if (failed(sameShape(*this, "table_grad", tg, getTable())))
      return failure();
  if (Value lse = getLse())
    if (failed(sameShape(*this, "lse", lse, getTargets())))
      return failure();
  return expectShape(*this, "targets", getTargets().getType(), x.getShape().drop_back());
}

LogicalResult CrossEntropyGradOp::verify() {
  if (failed(requireStatic(*this)) ||
      failed(expectShape(*this, "targets", getTargets().getType(),
                         getLogits().getType().getShape().drop_back())))
    return failure();
  return sameShape(*this, "result", getResult(), getLogits());
}

/// Router gradients: grad [N, k] like indices, result [N, E] like logits.
static LogicalResult verifyRouterGrad(Operation *op, Value logits, Value indices, Value grad,
                                      Value result) {
  if (failed(requireStatic(op)) || failed(sameShape(op, "grad", grad, indices)))
    return failure();
  if (tensorOf(indices).getRank() != 2 ||
      tensorOf(indices).getDimSize(0) != tensorOf(logits).getDimSize(0))
    return op->emitOpError() << "indices must be [N, k] for logits "
                             << shapeStr(tensorOf(logits).getShape());
  return sameShape(op, "result", result, logits);
}

LogicalResult SparseMixerRouterGradOp::verify() {
  return verifyRouterGrad(*this, getLogits(), getIndices(), getGrad(), getResult());
}

LogicalResult SoftmaxTopKRouterGradOp::verify() {
  return verifyRouterGrad(*this, getLogits(), getIndices(), getGrad(), getResult());
}

LogicalResult SigmoidGroupedRouterGradOp::verify() {
  return verifyRouterGrad(*this, getLogits(), getIndices(), getGrad(), getResult());
}

LogicalResult MoEDispatchGradOp::verify() {
  auto g = getGrad().getType(), slots = getSlots().getType();
  if (failed(requireStatic(*this)) || failed(expectRank(*this, "slots", slots, 2)) ||
      failed(expectRank(*this, "grad", g, 2)))
    return failure();
  if (g.getDimSize(0) != slots.getNumElements())
    return emitOpError() << "grad must have tokens x top_k = " << slots.getNumElements()
                         << " rows, got " << g.getDimSize(0);
  return expectShape(*this, "result", getType(), {slots.getDimSize(0), g.getDimSize(1)});
}

LogicalResult MoECombineGradOp::verify() {
  if (failed(requireStatic(*this)) ||
      failed(sameShape(*this, "weights", getWeights(), getSlots())) ||
      failed(sameShape(*this, "input_grad", getInputGrad(), getInput())) ||
      failed(sameShape(*this, "weights_grad", getWeightsGrad(), getWeights())))
    return failure();
  return expectShape(*this, "grad", getGrad().getType(),
                     {getSlots().getType().getDimSize(0), getInput().getType().getDimSize(1)});
}

LogicalResult LoadBalancingLossGradOp::verify() {
  if (getLogits().size() != getIndices().size() || getResults().size() != getLogits().size())
    return emitOpError("needs one indices tensor and one result per logits tensor");
  for (auto [l, r] : llvm::zip(getLogits(), getResults()))
    if (failed(sameShape(*this, "result", r, l)))
      return failure();
  return requireStatic(*this);
}

LogicalResult RouterZLossGradOp::verify() {
  if (getResults().size() != getLogits().size())
    return emitOpError("needs one result per logits tensor");
  for (auto [l, r] : llvm::zip(getLogits(), getResults()))
    if (failed(sameShape(*this, "result", r, l)))
      return failure();
  return requireStatic(*this);
}

LogicalResult DropoutOp::verify() {
  if (failed(requireStatic(*this)) || failed(sameShape(*this, "uniform", getUniform(), getInput())))
    return failure();
  if (getType() != getInput().getType())
    return emitOpError("result type must equal the input type");
  double p = getP().convertToDouble();
  if (p < 0 || p >= 1)
    return emitOpError("p must be in [0, 1), got ") << p;
  return success();
}

namespace {
/// The keyed draw of keyed_dropout and dropout_mask: a [2] key, a stream
/// >= 0 and p in [0, 1).
template <typename KeyedOp> LogicalResult verifyKeyedDraw(KeyedOp op) {
  if (failed(requireStatic(op)) || failed(expectShape(op, "key", op.getKey().getType(), {2})))
    return failure();
  if (op.getStreamAttr().getInt() < 0)
    return op.emitOpError("stream must be non-negative, got ") << op.getStreamAttr().getInt();
  double p = op.getP().convertToDouble();
  if (p < 0 || p >= 1)
    return op.emitOpError("p must be in [0, 1), got ") << p;
  return success();
}
} // namespace

LogicalResult KeyedDropoutOp::verify() {
  if (getType() != getInput().getType())
    return emitOpError("result type must equal the input type");
  return verifyKeyedDraw(*this);
}

LogicalResult DropoutMaskOp::verify() { return verifyKeyedDraw(*this); }

LogicalResult KeyedJitterOp::verify() {
  if (getType() != getInput().getType())
    return emitOpError("result type must equal the input type");
  return verifyUniformDraw(*this);
}

LogicalResult GlobalNormOp::verify() {
  if (getInputs().empty())
    return emitOpError("needs at least one gradient");
  return requireStatic(*this);
}

LogicalResult LRScheduleOp::verify() {
  StringRef kind = getKind();
  if (kind != "cosine" && kind != "linear" && kind != "constant" && kind != "constant_with_warmup")
    return emitOpError("kind must be cosine, linear, constant or "
                       "constant_with_warmup, got '")
           << kind << "'";
  if (getLearningRate().convertToDouble() < 0)
    return emitOpError("learning_rate must not be negative");
  return success();
}

/// A collective's results are its operands' types, one for one.
static LogicalResult verifyCollective(Operation *op) {
  if (op->getNumOperands() == 0)
    return op->emitOpError("needs at least one tensor");
  if (op->getOperandTypes() != op->getResultTypes())
    return op->emitOpError("results must have the operands' types, one for one");
  return success();
}

LogicalResult AllReduceOp::verify() { return verifyCollective(*this); }

/// A rooted collective: a process rank as its root.
static LogicalResult verifyRooted(Operation *op, IntegerAttr root) {
  if (failed(verifyCollective(op)))
    return failure();
  // (The I64Attr's generated accessor is unsigned.)
  if (root.getInt() < 0)
    return op->emitOpError() << "root must be a process rank (>= 0), got " << root.getInt();
  return success();
}

LogicalResult BroadcastOp::verify() { return verifyRooted(*this, getRootAttr()); }

LogicalResult ReduceOp::verify() { return verifyRooted(*this, getRootAttr()); }

LogicalResult AllToAllOp::verify() {
  if (failed(verifyCollective(*this)))
    return failure();
  const int64_t processes = getProcessesAttr().getInt();
  if (processes < 1)
    return emitOpError() << "processes must be at least 1, got " << processes;
  for (Type t : getOperandTypes()) {
    auto tensor = cast<RankedTensorType>(t);
    if (tensor.getRank() == 0 || tensor.isDynamicDim(0) || tensor.getDimSize(0) % processes)
      return emitOpError() << "each tensor's first dimension must divide among the " << processes
                           << " processes, got " << t;
  }
  return success();
}

LogicalResult AdamWOp::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  if (std::optional<int64_t> owner = getOwner(); owner && *owner < 0)
    return emitOpError() << "owner must be a process rank (>= 0), got " << *owner;
  size_t n = getState().size() / 4;
  if (n == 0 || getState().size() != 4 * n || getNewState().size() != 3 * n)
    return emitOpError("takes 4n state operands (params, grads, exp_avgs, exp_avg_sqs) and "
                       "gives 3n results for some n >= 1, got ")
           << getState().size() << " and " << getNewState().size();
  static const char *const operandNames[] = {"grad", "exp_avg", "exp_avg_sq"};
  static const char *const resultNames[] = {"new_param", "new_exp_avg", "new_exp_avg_sq"};
  for (unsigned i = 0; i < n; ++i) {
    Value p = getStateOf(0, i);
    for (unsigned role = 1; role < 4; ++role)
      if (failed(sameShape(*this, operandNames[role - 1], getStateOf(role, i), p)))
        return failure();
    for (unsigned role = 0; role < 3; ++role)
      if (failed(sameShape(*this, resultNames[role], getNewStateOf(role, i), p)))
        return failure();
  }
  double b1 = getBeta1().convertToDouble(), b2 = getBeta2().convertToDouble();
  if (b1 < 0 || b1 >= 1 || b2 < 0 || b2 >= 1)
    return emitOpError("betas must be in [0, 1), got (") << b1 << ", " << b2 << ")";
  if (getEpsilon().convertToDouble() <= 0)
    return emitOpError("epsilon must be positive");
  return success();
}
