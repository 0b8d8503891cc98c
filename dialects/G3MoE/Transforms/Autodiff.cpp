//===- Autodiff.cpp - reverse-mode differentiation of the step ------------===//
//
// Implements --g3moe-autodiff: a forward activity sweep from the trainable
// parameters, then a reverse sweep from the loss that asks each op for its
// vector-Jacobian product. Only values that both depend on a trainable
// parameter and reach the loss get gradients, so frozen weights cost no
// weight-gradient GEMM.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/DenseSet.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOEAUTODIFFPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

constexpr StringLiteral kForward = "forward";
constexpr StringLiteral kForwardBackward = "forward_backward";

bool isFloatTensor(Value v) {
  auto t = dyn_cast<RankedTensorType>(v.getType());
  return t && isa<FloatType>(t.getElementType());
}

/// `v` with element type `elt`.
Value castTo(OpBuilder &b, Location loc, Value v, Type elt) {
  auto t = cast<RankedTensorType>(v.getType());
  if (t.getElementType() == elt)
    return v;
  return ConvertOp::create(b, loc, RankedTensorType::get(t.getShape(), elt), v);
}

class ReverseSweep {
public:
  explicit ReverseSweep(func::FuncOp func) : func(func), b(func.getContext()) {}

  LogicalResult run();

private:
  /// Adds `grad` into the gradient of `value`. Gradients of one value may come
  /// in different element types (the value's, or fp32); a mixed sum is fp32.
  void accumulate(Value value, Value grad, Location loc);

  func::FuncOp func;
  OpBuilder b;
  llvm::DenseSet<Value> active;
  DenseMap<Value, Value> grads;
};

void ReverseSweep::accumulate(Value value, Value grad, Location loc) {
  Value &slot = grads[value];
  if (!slot) {
    slot = grad;
    return;
  }
  Type eltA = cast<RankedTensorType>(slot.getType()).getElementType();
  Type eltB = cast<RankedTensorType>(grad.getType()).getElementType();
  if (eltA != eltB) {
    Type f32 = b.getF32Type();
    slot = castTo(b, loc, slot, f32);
    grad = castTo(b, loc, grad, f32);
  }
  slot = AddOp::create(b, loc, slot, grad);
}

LogicalResult ReverseSweep::run() {
  Block &body = func.getBody().front();
  auto ret = cast<func::ReturnOp>(body.getTerminator());
  if (ret.getNumOperands() < 1)
    return func.emitOpError("g3moe-autodiff: @forward must return the loss first");
  Value loss = ret.getOperand(0);

  SmallVector<ParamOp> trainable;
  for (ParamOp p : body.getOps<ParamOp>())
    if (p.getTrainable())
      trainable.push_back(p);
  if (trainable.empty())
    return func.emitOpError("g3moe-autodiff: no parameter is trainable; run "
                            "--g3moe-lora first (or its full-finetune mode)");

  // Forward activity: what depends on a trainable parameter.
  for (ParamOp p : trainable)
    active.insert(p.getResult());
  for (Operation &op : body.without_terminator()) {
    if (!llvm::any_of(op.getOperands(), [&](Value v) { return active.contains(v); }))
      continue;
    for (Value r : op.getResults())
      if (isFloatTensor(r))
        active.insert(r);
  }
  if (!active.contains(loss))
    return func.emitOpError("g3moe-autodiff: the loss depends on no trainable parameter");

  SmallVector<Operation *> forwardOps;
  for (Operation &op : body.without_terminator())
    forwardOps.push_back(&op);

  b.setInsertionPoint(ret);
  Location lossLoc = loss.getLoc();
  grads[loss] = arith::ConstantOp::create(
      b, lossLoc, DenseElementsAttr::get(cast<ShapedType>(loss.getType()), 1.0f));

  for (Operation *op : llvm::reverse(forwardOps)) {
    SmallVector<Value> resultGrads;
    bool any = false;
    for (Value r : op->getResults()) {
      resultGrads.push_back(grads.lookup(r));
      any |= static_cast<bool>(resultGrads.back());
    }
    if (!any || isa<ParamOp>(op))
      continue;
    SmallVector<bool> needs;
    for (Value v : op->getOperands())
      needs.push_back(active.contains(v));
    if (llvm::none_of(needs, [](bool n) { return n; }))
      continue;
    auto diff = dyn_cast<DifferentiableOpInterface>(op);
    if (!diff)
      return op->emitOpError("g3moe-autodiff: no gradient rule for this op");
    // Results that do not reach the loss contribute nothing; ops whose rule
    // needs every result gradient get zeros for them.
    for (auto [r, g] : llvm::zip(op->getResults(), resultGrads))
      if (!g && isFloatTensor(r) && active.contains(r))
        g = arith::ConstantOp::create(b, op->getLoc(),
                                      DenseElementsAttr::get(cast<ShapedType>(r.getType()), 0.0f));
    SmallVector<Value> operandGrads;
    if (failed(diff.buildGradient(b, resultGrads, needs, operandGrads)))
      return op->emitOpError("g3moe-autodiff: could not build the gradient");
    for (auto [operand, g] : llvm::zip(op->getOperands(), operandGrads))
      if (g && active.contains(operand))
        accumulate(operand, g, op->getLoc());
  }

  // Results: the loss, @forward's other results (statistics) unchanged, then
  // one gradient per trainable parameter, typed like it.
  SmallVector<Value> results(ret.getOperands());
  SmallVector<Type> resultTypes(ret.getOperandTypes());
  SmallVector<DictionaryAttr> resultAttrs;
  for (unsigned i = 0; i < ret.getNumOperands(); ++i)
    resultAttrs.push_back(func.getResultAttrDict(i));
  for (ParamOp p : trainable) {
    Value g = grads.lookup(p.getResult());
    auto type = cast<RankedTensorType>(p.getType());
    if (!g)
      g = arith::ConstantOp::create(b, p.getLoc(), DenseElementsAttr::get(type, 0.0f));
    results.push_back(castTo(b, p.getLoc(), g, type.getElementType()));
    resultTypes.push_back(type);
    resultAttrs.push_back(
        b.getDictionaryAttr(b.getNamedAttr("g3moe.grad", b.getStringAttr(p.getName()))));
  }
  func::ReturnOp::create(b, ret.getLoc(), results);
  ret.erase();
  func.setFunctionType(b.getFunctionType(func.getArgumentTypes(), resultTypes));
  func.setAllResultAttrs(resultAttrs);
  return success();
}

struct G3MoEAutodiffPass : g3moe::impl::G3MoEAutodiffPassBase<G3MoEAutodiffPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto forward = module.lookupSymbol<func::FuncOp>(kForward);
    if (!forward) {
      module.emitError("g3moe-autodiff: the module has no @forward function");
      return signalPassFailure();
    }
    if (module.lookupSymbol(kForwardBackward)) {
      module.emitError("g3moe-autodiff: @forward_backward exists already");
      return signalPassFailure();
    }
    auto clone = cast<func::FuncOp>(forward->clone());
    clone.setSymName(kForwardBackward);
    module.insert(std::next(Block::iterator(forward)), clone);
    if (failed(ReverseSweep(clone).run()))
      return signalPassFailure();
  }
};

} // namespace
