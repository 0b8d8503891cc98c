//===- LoRA.cpp - insert LoRA adapters, choose what trains ----------------===//
//
// Implements --g3moe-lora. Adapter parameters are named the way PEFT names
// them under its `base_model.model.` prefix, so that the runtime can write
// adapter_model.safetensors without a translation table.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/STLExtras.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOELORAPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// The module path of a weight: its name without the trailing `.weight`.
StringRef moduleOf(ParamOp param) {
  StringRef name = param.getName();
  name.consume_back(".weight");
  return name;
}

/// PEFT's rule: a target matches a module whose name is the target or ends in
/// `.<target>`.
bool matchesTarget(StringRef module, StringRef target) {
  return module == target || module.ends_with(("." + target).str());
}

bool isRouterWeight(StringRef name) { return name.ends_with(".moe.gate.weight"); }
bool isSharedExpertWeight(StringRef name) { return name.contains(".shared_experts."); }
/// DeepSeek's score-correction bias is adjusted by load statistics, not by
/// gradients.
bool isNonGradientBuffer(StringRef name) { return name.ends_with("e_score_correction_bias"); }

RankedTensorType tensorType(Value v) { return cast<RankedTensorType>(v.getType()); }

struct G3MoELoRAPass : g3moe::impl::G3MoELoRAPassBase<G3MoELoRAPass> {
  using Base::Base;

  void runOnOperation() override;

private:
  LogicalResult validateOptions();
  /// The random key of `func`, added as a trailing argument when missing.
  Value getOrAddRandomKey(func::FuncOp func);
  void addAdapter(OpBuilder &b, Operation *linear, ParamOp weight, Value input, Value expertOffsets,
                  bool withDropout);
  void makeTrainableMaster(ParamOp param);

  Value rngKey;
  int64_t nextStream = 0;
  bool useDropout = false;
};

LogicalResult G3MoELoRAPass::validateOptions() {
  ModuleOp module = getOperation();
  if (fullFinetune)
    return success();
  if (rank < 1)
    return module.emitError("g3moe-lora: rank must be at least 1, got ") << int64_t(rank);
  if (alpha <= 0)
    return module.emitError("g3moe-lora: alpha must be positive, got ") << double(alpha);
  if (dropout < 0 || dropout >= 1)
    return module.emitError("g3moe-lora: dropout must be in [0, 1), got ") << double(dropout);
  if (targets.empty())
    return module.emitError("g3moe-lora: no target modules given (targets=...)");
  return success();
}

Value G3MoELoRAPass::getOrAddRandomKey(func::FuncOp func) {
  if (BlockArgument key = findInput(func, "rng_key"))
    return key;
  MLIRContext *ctx = func.getContext();
  unsigned index = func.getNumArguments();
  auto keyType = RankedTensorType::get({2}, IntegerType::get(ctx, 64));
  auto attrs = DictionaryAttr::get(
      ctx, {NamedAttribute(StringAttr::get(ctx, "g3moe.input"), StringAttr::get(ctx, "rng_key"))});
  if (failed(func.insertArgument(index, keyType, attrs, func.getLoc())))
    return Value();
  return func.getArgument(index);
}

void G3MoELoRAPass::addAdapter(OpBuilder &b, Operation *linear, ParamOp weight, Value input,
                               Value expertOffsets, bool withDropout) {
  Location loc = NameLoc::get(b.getStringAttr(moduleOf(weight)), linear->getLoc());
  b.setInsertionPointAfter(linear);
  Value output = linear->getResult(0);
  auto weightType = tensorType(weight.getResult());
  Type activation = tensorType(input).getElementType();
  Type f32 = b.getF32Type();
  bool experts = static_cast<bool>(expertOffsets);

  // A is [r, in] and B is [out, r]; experts stack them along a leading dim.
  SmallVector<int64_t> aShape(weightType.getShape()), bShape(weightType.getShape());
  aShape[aShape.size() - 2] = rank;
  bShape.back() = rank;
  std::string module = moduleOf(weight).str();
  // The fp32 master, times `scale` when that is not 1, in the activation type.
  auto makeParam = [&](StringRef which, ArrayRef<int64_t> shape, double scale) {
    Value p = ParamOp::create(b, loc, RankedTensorType::get(shape, f32),
                              b.getStringAttr(module + "." + which + ".weight"),
                              /*trainable=*/true);
    if (scale != 1.0)
      p = ScaleOp::create(b, loc, p, b.getF64FloatAttr(scale));
    return ConvertOp::create(b, loc, RankedTensorType::get(shape, activation), p).getResult();
  };
  // PEFT's alpha/r scales B·A·x. It is applied to B, the [out, r] weight,
  // rather than to the [tokens, out] product: the same function, but the
  // scaling (and its gradient) then touches r·out elements instead of a
  // full activation, and before the one rounding into bf16.
  Value a = makeParam("lora_A", aShape, 1.0);
  Value bMat = makeParam("lora_B", bShape, alpha / double(rank));

  Value x = input;
  if (withDropout) {
    auto uniformType = RankedTensorType::get(tensorType(x).getShape(), f32);
    Value u =
        RandomUniformOp::create(b, loc, uniformType, rngKey, b.getI64IntegerAttr(nextStream++),
                                b.getF64FloatAttr(0.0), b.getF64FloatAttr(1.0));
    x = DropoutOp::create(b, loc, x.getType(), x, u, b.getF64FloatAttr(dropout));
  }
  auto resultType = [&](Value in, Value w) {
    SmallVector<int64_t> shape(tensorType(in).getShape());
    shape.back() = tensorType(w).getShape()[tensorType(w).getRank() - 2];
    return RankedTensorType::get(shape, activation);
  };
  Value h, delta;
  if (experts) {
    h = ExpertLinearOp::create(b, loc, resultType(x, a), x, expertOffsets, a, Value(), Value(),
                               Value(), Value(), nullptr);
    delta = ExpertLinearOp::create(b, loc, resultType(h, bMat), h, expertOffsets, bMat, Value(),
                                   Value(), Value(), Value(), nullptr);
  } else {
    h = LinearOp::create(b, loc, resultType(x, a), x, a, Value(), Value(), nullptr);
    delta = LinearOp::create(b, loc, resultType(h, bMat), h, bMat, Value(), Value(), nullptr);
  }
  Value sum = AddOp::create(b, loc, output, delta);
  output.replaceAllUsesExcept(sum, sum.getDefiningOp());
}

void G3MoELoRAPass::makeTrainableMaster(ParamOp param) {
  param.setTrainable(true);
  auto type = tensorType(param.getResult());
  Type f32 = Float32Type::get(param.getContext());
  if (type.getElementType() == f32)
    return;
  // The trainable copy is an fp32 master; uses keep the activation dtype.
  OpBuilder b(param);
  b.setInsertionPointAfter(param);
  param.getResult().setType(RankedTensorType::get(type.getShape(), f32));
  auto cast = ConvertOp::create(b, param.getLoc(), type, param.getResult());
  param.getResult().replaceAllUsesExcept(cast.getResult(), cast);
}

void G3MoELoRAPass::runOnOperation() {
  ModuleOp module = getOperation();
  if (failed(validateOptions()))
    return signalPassFailure();

  bool eval = false;
  if (auto training = module->getAttrOfType<DictionaryAttr>("g3moe.training"))
    if (auto mode = training.getAs<StringAttr>("mode"))
      eval = mode.getValue() == "eval";
  useDropout = !fullFinetune && dropout > 0 && !eval;

  nextStream = nextFreeStream(module);

  llvm::StringMap<bool> targetUsed;
  for (const std::string &t : targets)
    targetUsed[t] = false;

  for (auto func : module.getOps<func::FuncOp>()) {
    SmallVector<ParamOp> params(func.getOps<ParamOp>());
    if (params.empty())
      continue;
    for (ParamOp p : params)
      p.setTrainable(false);

    if (fullFinetune) {
      for (ParamOp p : params)
        if (!isNonGradientBuffer(p.getName()) &&
            !(freezeSharedExperts && isSharedExpertWeight(p.getName())))
          makeTrainableMaster(p);
      continue;
    }

    // Collect first: adapters add linear ops of their own.
    SmallVector<std::tuple<Operation *, ParamOp, Value, Value>> sites;
    func.walk([&](Operation *op) {
      Value input, weight, offsets;
      if (auto l = dyn_cast<LinearOp>(op)) {
        input = l.getInput();
        weight = l.getWeight();
      } else if (auto e = dyn_cast<ExpertLinearOp>(op)) {
        input = e.getInput();
        weight = e.getWeight();
        offsets = e.getExpertOffsets();
      } else {
        return;
      }
      auto param = weight.getDefiningOp<ParamOp>();
      if (!param || (freezeSharedExperts && isSharedExpertWeight(param.getName())))
        return;
      for (const std::string &t : targets)
        if (matchesTarget(moduleOf(param), t)) {
          targetUsed[t] = true;
          sites.emplace_back(op, param, input, offsets);
          return;
        }
    });
    // Eval functions (and eval steps) use the adapters without dropout.
    bool funcDropout = useDropout;
    if (auto mode = func->getAttrOfType<StringAttr>("g3moe.mode"))
      funcDropout &= mode.getValue() != "eval";
    if (funcDropout && !sites.empty()) {
      rngKey = getOrAddRandomKey(func);
      if (!rngKey) {
        func.emitOpError("g3moe-lora: could not add the rng_key argument");
        return signalPassFailure();
      }
    }
    OpBuilder b(func.getContext());
    for (auto &[op, param, input, offsets] : sites)
      addAdapter(b, op, param, input, offsets, funcDropout);
    if (trainRouter)
      for (ParamOp p : params)
        if (isRouterWeight(p.getName()))
          makeTrainableMaster(p);
  }

  if (!fullFinetune)
    for (const std::string &t : targets)
      if (!targetUsed[t]) {
        module.emitError("g3moe-lora: target module '")
            << t << "' matches no linear layer of the model";
        return signalPassFailure();
      }
}

} // namespace
