//===- G3MoEGradients.cpp - vector-Jacobian products of g3moe ops ---------===//
//
// DifferentiableOpInterface implementations. Gradient convention: the
// gradient of a value has the value's shape and either its element type or
// fp32 (weight gradients are produced in fp32 so that they meet the fp32
// master weights without a bf16 rounding on the way).
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"

#include "mlir/IR/Builders.h"

using namespace mlir;
using namespace g3moe;

namespace {

RankedTensorType typeOf(Value v) { return cast<RankedTensorType>(v.getType()); }

RankedTensorType withElementType(Value like, Type elt) {
  return RankedTensorType::get(typeOf(like).getShape(), elt);
}

RankedTensorType f32Like(Value like) {
  return withElementType(like, Float32Type::get(like.getContext()));
}

/// `v` converted to the element type of `like` (no op when it already is).
Value castLike(OpBuilder &b, Location loc, Value v, Value like) {
  Type want = typeOf(like).getElementType();
  if (typeOf(v).getElementType() == want)
    return v;
  return ConvertOp::create(b, loc, withElementType(v, want), v);
}

/// Fills `out` with one null entry per operand of `op`.
void noGrads(Operation *op, SmallVectorImpl<Value> &out) {
  out.assign(op->getNumOperands(), Value());
}

} // namespace

LogicalResult ReshapeOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                       SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  if (needs[0])
    out[0] = ReshapeOp::create(b, getLoc(),
                               withElementType(getInput(), typeOf(dy[0]).getElementType()), dy[0]);
  return success();
}

LogicalResult SplitRowsOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                         SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  if (!needs[0])
    return success();
  // Autodiff gives every part of an active input a gradient (zeros for a
  // part that reaches no loss); they are joined in the first one's type.
  SmallVector<Value> blocks;
  for (Value g : dy)
    blocks.push_back(castLike(b, getLoc(), g, dy[0]));
  out[0] = ConcatRowsOp::create(
      b, getLoc(), withElementType(getInput(), typeOf(dy[0]).getElementType()), blocks);
  return success();
}

LogicalResult ConcatRowsOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                          SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  Type elt = typeOf(dy[0]).getElementType();
  SmallVector<Type> types;
  for (Value part : getParts())
    types.push_back(withElementType(part, elt));
  auto split = SplitRowsOp::create(b, getLoc(), types, dy[0]);
  for (auto [i, g] : llvm::enumerate(split.getParts()))
    if (needs[i])
      out[i] = g;
  return success();
}

LogicalResult ConvertOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                       SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  if (needs[0])
    out[0] = castLike(b, getLoc(), dy[0], getInput());
  return success();
}

LogicalResult AddOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                   SmallVectorImpl<Value> &out) {
  out.assign({needs[0] ? dy[0] : Value(), needs[1] ? dy[0] : Value()});
  return success();
}

LogicalResult MulOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                   SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  Value g = castLike(b, getLoc(), dy[0], getResult());
  if (needs[0])
    out[0] = MulOp::create(b, getLoc(), g, getRhs());
  if (needs[1])
    out[1] = MulOp::create(b, getLoc(), g, getLhs());
  return success();
}

LogicalResult ScaleOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                     SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  if (needs[0])
    out[0] = ScaleOp::create(b, getLoc(), dy[0], getFactorAttr());
  return success();
}

LogicalResult StopGradientOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                            SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  return success();
}

LogicalResult DropoutOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                       SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  // Dropout is linear in its input with the same keep-mask both ways.
  if (needs[0])
    out[0] = DropoutOp::create(b, getLoc(), dy[0].getType(), dy[0], getUniform(), getPAttr());
  return success();
}

LogicalResult EmbeddingOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                         SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  if (needs[1])
    out[1] = EmbeddingGradOp::create(b, getLoc(), f32Like(getTable()), dy[0], getIds(),
                                     getScaleAttr(), getPaddingIdxAttr());
  return success();
}

LogicalResult RMSNormOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                       SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  auto op = RMSNormGradOp::create(b, getLoc(), getInput().getType(), f32Like(getWeight()),
                                  getInput(), getWeight(), dy[0], /*addend=*/Value(), getEpsAttr());
  if (needs[0])
    out[0] = op.getInputGrad();
  if (needs[1])
    out[1] = op.getWeightGrad();
  return success();
}

LogicalResult LinearOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                      SmallVectorImpl<Value> &out) {
  if (getAddend() || getDropoutMask())
    return emitOpError("with an addend or a dropout is fused after differentiation, not "
                       "differentiated");
  noGrads(*this, out);
  if (needs[0])
    out[0] = LinearGradInputOp::create(b, getLoc(), getInput().getType(), dy[0], getWeight(),
                                       /*addend=*/Value(), Value(), nullptr);
  if (needs[1])
    out[1] = LinearGradWeightOp::create(b, getLoc(), f32Like(getWeight()), dy[0], getInput(),
                                        Value(), nullptr);
  return success();
}

LogicalResult RoPEOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                    SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  // A rotation's transpose is the rotation by the opposite angle.
  if (needs[0]) {
    UnitAttr transpose = getTranspose() ? UnitAttr() : b.getUnitAttr();
    out[0] = RoPEOp::create(b, getLoc(), dy[0].getType(), dy[0], getPositions(), getThetaAttr(),
                            getScalingFactorAttr(), transpose);
  }
  return success();
}

LogicalResult AttentionOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                         SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  auto op = AttentionGradOp::create(
      b, getLoc(), getQuery().getType(), getKey().getType(), getValue().getType(), getQuery(),
      getKey(), getValue(), getSegmentIds(), castLike(b, getLoc(), dy[0], getResult()),
      /*saved=*/ValueRange(), getScaleAttr(), getSlidingWindowAttr(), getSoftcapAttr());
  if (needs[0])
    out[0] = op.getQueryGrad();
  if (needs[1])
    out[1] = op.getKeyGrad();
  if (needs[2])
    out[2] = op.getValueGrad();
  return success();
}

LogicalResult GeluTanhMulOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                           SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  auto op =
      GeluTanhMulGradOp::create(b, getLoc(), getGate().getType(), getUp().getType(), getGate(),
                                getUp(), castLike(b, getLoc(), dy[0], getResult()));
  if (needs[0])
    out[0] = op.getGateGrad();
  if (needs[1])
    out[1] = op.getUpGrad();
  return success();
}

LogicalResult LMHeadOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                      SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  auto op = LMHeadGradOp::create(b, getLoc(), getInput().getType(), f32Like(getTable()), getInput(),
                                 getTable(), dy[0], getSoftcapAttr());
  if (needs[0])
    out[0] = op.getInputGrad();
  if (needs[1])
    out[1] = op.getTableGrad();
  return success();
}

LogicalResult SparseMixerRouterOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                                 ArrayRef<bool> needs,
                                                 SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  // The noise operand is a random draw: constant for differentiation.
  if (needs[0] && dy[0])
    out[0] = SparseMixerRouterGradOp::create(b, getLoc(), getLogits().getType(), getLogits(),
                                             getIndices(), dy[0], getEpsilonAttr());
  return success();
}

LogicalResult SoftmaxTopKRouterOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                                 ArrayRef<bool> needs,
                                                 SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  if (needs[0] && dy[0])
    out[0] = SoftmaxTopKRouterGradOp::create(b, getLoc(), getLogits().getType(), getLogits(),
                                             getIndices(), dy[0], getNormTopkProbAttr());
  return success();
}

LogicalResult SigmoidGroupedRouterOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                                    ArrayRef<bool> needs,
                                                    SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  if (needs[0] && dy[0])
    out[0] = SigmoidGroupedRouterGradOp::create(b, getLoc(), getLogits().getType(), getLogits(),
                                                getIndices(), dy[0], getNormTopkProbAttr(),
                                                getRoutedScalingFactorAttr());
  return success();
}

LogicalResult MoEDispatchOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                           SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  if (needs[0] && dy[0])
    out[0] = MoEDispatchGradOp::create(b, getLoc(), getInput().getType(),
                                       castLike(b, getLoc(), dy[0], getPermuted()), getSlots());
  return success();
}

LogicalResult ExpertLinearOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                            SmallVectorImpl<Value> &out) {
  if (getAddend() || getLowrankInput() || getDropoutMask())
    return emitOpError("with an addend, a low-rank term or a dropout is fused after "
                       "differentiation, not differentiated");
  noGrads(*this, out);
  if (needs[0])
    out[0] = ExpertLinearGradInputOp::create(
        b, getLoc(), getInput().getType(), dy[0], getExpertOffsets(), getWeight(),
        /*addend=*/Value(), Value(), Value(), Value(), nullptr);
  if (needs[2])
    out[2] = ExpertLinearGradWeightOp::create(b, getLoc(), f32Like(getWeight()), dy[0],
                                              getExpertOffsets(), getInput(), Value(), nullptr);
  return success();
}

LogicalResult MoECombineOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                          SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  auto op = MoECombineGradOp::create(b, getLoc(), getInput().getType(), getWeights().getType(),
                                     getInput(), getSlots(), getWeights(),
                                     castLike(b, getLoc(), dy[0], getResult()));
  if (needs[0])
    out[0] = op.getInputGrad();
  if (needs[2])
    out[2] = op.getWeightsGrad();
  return success();
}

LogicalResult CrossEntropyOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                            SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  if (needs[0])
    out[0] = CrossEntropyGradOp::create(b, getLoc(), getLogits().getType(), getLogits(),
                                        getTargets(), getNumItems(), dy[0], getIgnoreIndexAttr());
  return success();
}

LogicalResult LoadBalancingLossOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy,
                                                 ArrayRef<bool> needs,
                                                 SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  auto op =
      LoadBalancingLossGradOp::create(b, getLoc(), ValueRange(getLogits()).getTypes(), getLogits(),
                                      getIndices(), getSegmentIds(), dy[0], getNumExpertsAttr());
  for (auto [i, g] : llvm::enumerate(op.getResults()))
    if (needs[i])
      out[i] = g;
  return success();
}

LogicalResult RouterZLossOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                           SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  auto op = RouterZLossGradOp::create(b, getLoc(), ValueRange(getLogits()).getTypes(), getLogits(),
                                      getSegmentIds(), dy[0]);
  for (auto [i, g] : llvm::enumerate(op.getResults()))
    if (needs[i])
      out[i] = g;
  return success();
}

LogicalResult LossSumOp::buildGradient(OpBuilder &b, ArrayRef<Value> dy, ArrayRef<bool> needs,
                                       SmallVectorImpl<Value> &out) {
  noGrads(*this, out);
  for (auto [i, c] : llvm::enumerate(getCoefficients()))
    if (needs[i])
      out[i] = ScaleOp::create(b, getLoc(), dy[0], b.getF64FloatAttr(c));
  return success();
}
