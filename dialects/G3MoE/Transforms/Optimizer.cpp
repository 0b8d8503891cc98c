//===- Optimizer.cpp - accumulation, clipping, schedule, AdamW in IR ------===//
//
// Implements --g3moe-optimizer. The runtime binds the arguments and results
// of @train_micro_step and @optimizer_step to its buffers by the names in
// their `g3moe.*` attributes.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/IR/Builders.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOEOPTIMIZERPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

constexpr StringLiteral kForwardBackward = "forward_backward";
constexpr StringLiteral kMicroStep = "train_micro_step";
constexpr StringLiteral kOptimizerStep = "optimizer_step";

DictionaryAttr tag(OpBuilder &b, StringRef key, StringRef value) {
  return b.getDictionaryAttr(b.getNamedAttr(key, b.getStringAttr(value)));
}

/// HF's AdamW grouping: no weight decay for biases and norm weights.
bool decays(StringRef name) { return !name.contains("norm") && !name.ends_with("bias"); }

struct G3MoEOptimizerPass : g3moe::impl::G3MoEOptimizerPassBase<G3MoEOptimizerPass> {
  using Base::Base;

  void runOnOperation() override;

private:
  void buildMicroStep(func::FuncOp fb, ArrayRef<StringRef> names);
  void buildOptimizerStep(func::FuncOp fb, ArrayRef<StringRef> names);
};

void G3MoEOptimizerPass::buildMicroStep(func::FuncOp fb, ArrayRef<StringRef> names) {
  OpBuilder b(fb.getContext());
  b.setInsertionPointAfter(fb);
  Location loc = fb.getLoc();
  auto fbType = fb.getFunctionType();
  unsigned numOutputs = fbType.getNumResults() - names.size();
  ArrayRef<Type> gradTypes = fbType.getResults().drop_front(numOutputs);

  SmallVector<Type> argTypes(fbType.getInputs());
  llvm::append_range(argTypes, gradTypes);
  auto func =
      func::FuncOp::create(b, loc, kMicroStep, b.getFunctionType(argTypes, fbType.getResults()));
  SmallVector<DictionaryAttr> argAttrs, resultAttrs;
  for (unsigned i = 0; i < fbType.getNumInputs(); ++i)
    argAttrs.push_back(fb.getArgAttrDict(i));
  for (unsigned i = 0; i < numOutputs; ++i)
    resultAttrs.push_back(fb.getResultAttrDict(i));
  for (StringRef n : names) {
    argAttrs.push_back(tag(b, "g3moe.grad_acc", n));
    resultAttrs.push_back(tag(b, "g3moe.grad_acc", n));
  }
  func.setAllArgAttrs(argAttrs);
  func.setAllResultAttrs(resultAttrs);

  Block *entry = func.addEntryBlock();
  b.setInsertionPointToStart(entry);
  auto call =
      func::CallOp::create(b, loc, fb, entry->getArguments().take_front(fbType.getNumInputs()));
  // The loss and the statistics pass through; gradients add to the accumulators.
  SmallVector<Value> results(call.getResults().take_front(numOutputs));
  for (auto [i, acc] : llvm::enumerate(entry->getArguments().drop_front(fbType.getNumInputs())))
    results.push_back(AddOp::create(b, loc, acc, call.getResult(numOutputs + i)));
  func::ReturnOp::create(b, loc, results);
}

void G3MoEOptimizerPass::buildOptimizerStep(func::FuncOp fb, ArrayRef<StringRef> names) {
  OpBuilder b(fb.getContext());
  b.setInsertionPointToEnd(getOperation().getBody());
  Location loc = fb.getLoc();
  ArrayRef<Type> paramTypes = fb.getFunctionType().getResults().take_back(names.size());
  size_t n = paramTypes.size();
  auto count = RankedTensorType::get({}, b.getI64Type());
  auto scalar = RankedTensorType::get({}, b.getF32Type());

  // Arguments: params, grads, exp_avg, exp_avg_sq, then the three counters.
  SmallVector<Type> argTypes;
  SmallVector<DictionaryAttr> argAttrs;
  for (StringRef role : {"g3moe.param", "g3moe.grad_acc", "g3moe.exp_avg", "g3moe.exp_avg_sq"})
    for (auto [t, name] : llvm::zip(paramTypes, names)) {
      argTypes.push_back(t);
      argAttrs.push_back(tag(b, role, name));
    }
  for (StringRef input : {"step", "total_steps", "warmup_steps"}) {
    argTypes.push_back(count);
    argAttrs.push_back(tag(b, "g3moe.input", input));
  }
  SmallVector<Type> resultTypes;
  SmallVector<DictionaryAttr> resultAttrs;
  for (StringRef role : {"g3moe.param", "g3moe.exp_avg", "g3moe.exp_avg_sq"})
    for (auto [t, name] : llvm::zip(paramTypes, names)) {
      resultTypes.push_back(t);
      resultAttrs.push_back(tag(b, role, name));
    }
  for (StringRef output : {"grad_norm", "learning_rate"}) {
    resultTypes.push_back(scalar);
    resultAttrs.push_back(tag(b, "g3moe.output", output));
  }

  auto func =
      func::FuncOp::create(b, loc, kOptimizerStep, b.getFunctionType(argTypes, resultTypes));
  func.setAllArgAttrs(argAttrs);
  func.setAllResultAttrs(resultAttrs);
  Block *entry = func.addEntryBlock();
  b.setInsertionPointToStart(entry);
  auto args = entry->getArguments();
  auto params = args.slice(0, n), grads = args.slice(n, n), expAvg = args.slice(2 * n, n),
       expAvgSq = args.slice(3 * n, n);
  Value step = args[4 * n], total = args[4 * n + 1], warmup = args[4 * n + 2];

  Value norm = GlobalNormOp::create(b, loc, scalar, grads);
  Value clip = ClipScaleOp::create(b, loc, scalar, norm, b.getF64FloatAttr(maxGradNorm));
  Value lr = LRScheduleOp::create(b, loc, scalar, step, total, warmup, b.getStringAttr(schedule),
                                  b.getF64FloatAttr(learningRate));
  // One multi-tensor update per weight-decay group (HF's two parameter
  // groups), each tensor's results put back in the order of the names.
  SmallVector<Value> newParams(n), newAvg(n), newAvgSq(n);
  for (bool decayed : {true, false}) {
    SmallVector<unsigned> members;
    for (size_t i = 0; i < n; ++i)
      if (decays(names[i]) == decayed)
        members.push_back(unsigned(i));
    if (members.empty())
      continue;
    SmallVector<Value> state;
    SmallVector<Type> types;
    SmallVector<Location> locs;
    for (ValueRange role :
         {ValueRange(params), ValueRange(grads), ValueRange(expAvg), ValueRange(expAvgSq)})
      for (unsigned i : members)
        state.push_back(role[i]);
    for (int role = 0; role < 3; ++role)
      for (unsigned i : members)
        types.push_back(paramTypes[i]);
    for (unsigned i : members)
      locs.push_back(NameLoc::get(b.getStringAttr(names[i]), loc));
    auto update =
        AdamWOp::create(b, b.getFusedLoc(locs), types, state, step, lr, clip,
                        b.getF64FloatAttr(beta1), b.getF64FloatAttr(beta2),
                        b.getF64FloatAttr(epsilon), b.getF64FloatAttr(decayed ? weightDecay : 0.0),
                        /*owner=*/IntegerAttr());
    for (auto [k, i] : llvm::enumerate(members)) {
      newParams[i] = update.getNewStateOf(0, unsigned(k));
      newAvg[i] = update.getNewStateOf(1, unsigned(k));
      newAvgSq[i] = update.getNewStateOf(2, unsigned(k));
    }
  }
  SmallVector<Value> results;
  llvm::append_range(results, newParams);
  llvm::append_range(results, newAvg);
  llvm::append_range(results, newAvgSq);
  results.push_back(norm);
  results.push_back(lr);
  func::ReturnOp::create(b, loc, results);
}

void G3MoEOptimizerPass::runOnOperation() {
  ModuleOp module = getOperation();
  auto fb = module.lookupSymbol<func::FuncOp>(kForwardBackward);
  if (!fb) {
    module.emitError("g3moe-optimizer: no @forward_backward; run --g3moe-autodiff first");
    return signalPassFailure();
  }
  if (schedule != "cosine" && schedule != "linear" && schedule != "constant" &&
      schedule != "constant_with_warmup") {
    module.emitError("g3moe-optimizer: unknown schedule '")
        << schedule << "' (cosine, linear, constant, constant_with_warmup)";
    return signalPassFailure();
  }
  if (learningRate < 0 || weightDecay < 0 || beta1 < 0 || beta1 >= 1 || beta2 < 0 || beta2 >= 1 ||
      epsilon <= 0) {
    module.emitError("g3moe-optimizer: needs learning-rate >= 0, weight-decay >= 0, "
                     "betas in [0, 1) and epsilon > 0");
    return signalPassFailure();
  }
  // @forward_backward returns the loss and statistics (g3moe.output), then
  // the gradients (g3moe.grad).
  SmallVector<StringRef> names;
  for (unsigned i = 1; i < fb.getNumResults(); ++i) {
    auto name = fb.getResultAttrOfType<StringAttr>(i, "g3moe.grad");
    if (name) {
      names.push_back(name.getValue());
    } else if (!names.empty() || !fb.getResultAttrOfType<StringAttr>(i, "g3moe.output")) {
      fb.emitOpError("g3moe-optimizer: result ")
          << i << " is neither a named output before the gradients nor a g3moe.grad";
      return signalPassFailure();
    }
  }
  if (module.lookupSymbol(kMicroStep) || module.lookupSymbol(kOptimizerStep)) {
    module.emitError("g3moe-optimizer: the optimizer functions exist already");
    return signalPassFailure();
  }
  buildMicroStep(fb, names);
  buildOptimizerStep(fb, names);
}

} // namespace
