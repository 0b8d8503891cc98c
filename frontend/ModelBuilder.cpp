//===- ModelBuilder.cpp - config to g3moe forward graph -------------------===//
//
// Walks the resolved configuration layer by layer and emits the ops of
// G3MOE_SPEC.md sections 2 and 3. Tensor names follow the HF checkpoints so
// that the parameter table of a step can be matched against safetensors files
// without a translation table.
//
//===----------------------------------------------------------------------===//

#include "frontend/ModelBuilder.h"

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "runtime/base/labels.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/StringExtras.h"

using namespace mlir;
using namespace g3moe::frontend;

namespace {

class StepBuilder {
public:
  StepBuilder(MLIRContext &ctx, const CompileConfig &config, const BuildOptions &options)
      : ctx(ctx), b(&ctx), m(config.model), t(config.training), options(options) {}

  OwningOpRef<ModuleOp> build();

private:
  // Types.
  RankedTensorType tensor(ArrayRef<int64_t> shape, Type elt) {
    return RankedTensorType::get(shape, elt);
  }
  /// Element type of activations and frozen weights.
  Type act() { return options.fp32 ? Type(b.getF32Type()) : Type(b.getBF16Type()); }
  Type f32() { return b.getF32Type(); }
  Type i32() { return b.getI32Type(); }

  /// Sets the location of the ops that follow to the module path `name`.
  void at(const Twine &name) { loc = NameLoc::get(b.getStringAttr(name)); }

  /// A weight named `name` (prefixed with the current layer path when
  /// `local`).
  Value param(const Twine &name, ArrayRef<int64_t> shape, Type elt) {
    auto op = g3moe::ParamOp::create(b, loc, tensor(shape, elt), b.getStringAttr(name),
                                     /*trainable=*/false);
    return op.getResult();
  }

  Value reshape(Value v, ArrayRef<int64_t> shape) {
    auto type = cast<RankedTensorType>(v.getType());
    return g3moe::ReshapeOp::create(b, loc, tensor(shape, type.getElementType()), v);
  }

  Value convert(Value v, Type elt) {
    auto type = cast<RankedTensorType>(v.getType());
    return g3moe::ConvertOp::create(b, loc, tensor(type.getShape(), elt), v);
  }

  Value rmsNorm(Value x, const Twine &weightName) {
    auto type = cast<RankedTensorType>(x.getType());
    Value w = param(weightName, {type.getShape().back()}, act());
    return g3moe::RMSNormOp::create(b, loc, type, x, w, b.getF64FloatAttr(m.rmsNormEps));
  }

  Value linear(Value x, Value w, Type resultElt) {
    auto xt = cast<RankedTensorType>(x.getType());
    auto wt = cast<RankedTensorType>(w.getType());
    SmallVector<int64_t> shape(xt.getShape());
    shape.back() = wt.getDimSize(0);
    return g3moe::LinearOp::create(b, loc, tensor(shape, resultElt), x, w, mlir::Value(),
                                   mlir::Value(), nullptr);
  }

  Value linear(Value x, const Twine &weightName, int64_t out) {
    auto xt = cast<RankedTensorType>(x.getType());
    Value w = param(weightName, {out, xt.getShape().back()}, act());
    return linear(x, w, act());
  }

  Value randomUniform(ArrayRef<int64_t> shape, double low, double high) {
    return g3moe::RandomUniformOp::create(b, loc, tensor(shape, f32()), rngKey,
                                          b.getI64IntegerAttr(nextStream++), b.getF64FloatAttr(low),
                                          b.getF64FloatAttr(high));
  }

  /// Dense GeGLU MLP of width `width` under the module path `prefix`.
  Value mlp(Value f, const std::string &prefix, int64_t width) {
    Value gate = linear(f, prefix + "gate_proj.weight", width);
    Value up = linear(f, prefix + "up_proj.weight", width);
    Value hidden = g3moe::GeluTanhMulOp::create(b, loc, gate, up);
    return linear(hidden, prefix + "down_proj.weight", m.hiddenSize);
  }

  /// Adds one step function: the training forward (`name` = forward) or the
  /// evaluation forward, which also returns the token-accuracy counts.
  /// With `logitsOnly` it returns the logits instead of the loss.
  void buildFunction(StringRef name, bool trainingMode, bool evalOutputs, bool logitsOnly = false);
  /// What an entry point takes and returns besides the token inputs.
  struct Signature {
    bool evalOutputs = false, logitsOnly = false;
    /// Takes rng_key (jitter, SparseMixer's draws).
    bool needsRandom = false;
    /// Returns each MoE layer's load and the load-balancing loss.
    bool moeStats = false;
  };
  /// Creates entry point `name` with its argument and result names; the
  /// builder then inserts into its body, which is returned.
  Block *beginFunction(StringRef name, const Signature &sig);
  /// Decoder layer `layer` on the residual stream `x`: the new stream.
  Value decoderLayer(Value x, int64_t layer);
  /// The final norm, the LM head, the loss and the entry point's results.
  void finishFunction(const Signature &sig, Value x, Value embedding, Value targets,
                      Value numItems);
  Value attention(Value x, int64_t layer, const std::string &prefix);
  Value moe(Value f, const std::string &prefix);
  void buildModelAttrs(ModuleOp module);

  MLIRContext &ctx;
  OpBuilder b;
  const ModelConfig &m;
  const TrainingOptions &t;
  const BuildOptions &options;
  Location loc = UnknownLoc::get(&ctx);

  /// Mode of the function being built.
  bool training = true;
  int64_t batch = 0, seq = 0, tokens = 0;
  Value positions, segmentIds, rngKey;
  int64_t nextStream = 0;
  /// Router logits and choices of every MoE layer, for the auxiliary losses
  /// and the statistics, and the layer each belongs to.
  SmallVector<Value> routerLogits, routerIndices;
  SmallVector<int64_t> routerLayers;
  int64_t currentLayer = 0;
};

Value StepBuilder::attention(Value x, int64_t layer, const std::string &prefix) {
  const LayerSpec &spec = m.layers[layer];
  int64_t nh = m.numHeads, nkv = m.numKVHeads, d = m.headDim;
  at(prefix + "self_attn");
  Value q = linear(x, prefix + "self_attn.q_proj.weight", nh * d);
  Value k = linear(x, prefix + "self_attn.k_proj.weight", nkv * d);
  Value v = linear(x, prefix + "self_attn.v_proj.weight", nkv * d);
  q = reshape(q, {batch, seq, nh, d});
  k = reshape(k, {batch, seq, nkv, d});
  v = reshape(v, {batch, seq, nkv, d});
  // QK-norm comes before RoPE; V is not normalised.
  q = rmsNorm(q, prefix + "self_attn.q_norm.weight");
  k = rmsNorm(k, prefix + "self_attn.k_norm.weight");

  bool global = spec.attention == AttentionKind::Global;
  const RopeSpec &rope = global ? m.globalRope : m.slidingRope;
  auto ropeAttrs = [&](Value in) {
    return g3moe::RoPEOp::create(b, loc, in.getType(), in, positions, b.getF64FloatAttr(rope.theta),
                                 b.getF64FloatAttr(rope.factor),
                                 /*transpose=*/UnitAttr())
        .getResult();
  };
  q = ropeAttrs(q);
  k = ropeAttrs(k);

  IntegerAttr window = global ? IntegerAttr() : b.getI64IntegerAttr(m.slidingWindow);
  FloatAttr softcap = m.attnLogitSoftcap ? b.getF64FloatAttr(*m.attnLogitSoftcap) : FloatAttr();
  Value o = g3moe::AttentionOp::create(b, loc, q.getType(), /*lse=*/Type(), q, k, v, segmentIds,
                                       b.getF64FloatAttr(m.attentionScale()), window, softcap)
                .getResult();
  o = reshape(o, {batch, seq, nh * d});
  return linear(o, prefix + "self_attn.o_proj.weight", m.hiddenSize);
}

Value StepBuilder::moe(Value f, const std::string &prefix) {
  int64_t e = m.numExperts, k = m.topK, h = m.hiddenSize;
  at(prefix + "moe");
  Value x = reshape(f, {tokens, h});
  if (training && m.inputJitterNoise > 0) {
    Value u = randomUniform({tokens, h}, 1.0 - m.inputJitterNoise, 1.0 + m.inputJitterNoise);
    x = g3moe::MulOp::create(b, loc, x, convert(u, act()));
  }

  // The router runs in fp32 (G3MOE_SPEC.md A4).
  at(prefix + "moe.gate");
  Value routerWeight = param(prefix + "moe.gate.weight", {e, h}, f32());
  Value logits = linear(convert(x, f32()), routerWeight, f32());
  auto routedType = tensor({tokens, k}, f32());
  auto indexType = tensor({tokens, k}, i32());
  Value weights, indices;
  switch (m.router) {
  case RouterKind::SparseMixer: {
    Value noise = training ? randomUniform({tokens, 2, e + 1}, 0.0, 1.0) : Value();
    auto op = g3moe::SparseMixerRouterOp::create(b, loc, routedType, indexType, logits, noise,
                                                 b.getF64FloatAttr(m.routerJitterNoise));
    weights = op.getWeights();
    indices = op.getIndices();
    break;
  }
  case RouterKind::SoftmaxTopK: {
    auto op =
        g3moe::SoftmaxTopKRouterOp::create(b, loc, routedType, indexType, logits,
                                           b.getI64IntegerAttr(k), b.getBoolAttr(m.normTopkProb));
    weights = op.getWeights();
    indices = op.getIndices();
    break;
  }
  case RouterKind::SigmoidGrouped: {
    Value bias = param(prefix + "moe.gate.e_score_correction_bias", {e}, f32());
    auto op = g3moe::SigmoidGroupedRouterOp::create(
        b, loc, routedType, indexType, logits, bias, b.getI64IntegerAttr(k),
        b.getI64IntegerAttr(m.numGroups), b.getI64IntegerAttr(m.topkGroup),
        b.getF64FloatAttr(m.routedScalingFactor), b.getBoolAttr(m.normTopkProb));
    weights = op.getWeights();
    indices = op.getIndices();
    break;
  }
  }
  routerLogits.push_back(logits);
  routerIndices.push_back(indices);
  routerLayers.push_back(currentLayer);

  at(prefix + "moe.experts");
  auto dispatch =
      g3moe::MoEDispatchOp::create(b, loc, tensor({tokens * k, h}, act()), tensor({e + 1}, i32()),
                                   indexType, x, indices, b.getI64IntegerAttr(e));
  Value permuted = dispatch.getPermuted(), offsets = dispatch.getExpertOffsets();
  auto expertLinear = [&](Value in, StringRef proj, int64_t out) {
    int64_t inDim = cast<RankedTensorType>(in.getType()).getDimSize(1);
    Value w = param(prefix + "moe.experts.{e}." + proj + ".weight", {e, out, inDim}, act());
    return g3moe::ExpertLinearOp::create(b, loc, tensor({tokens * k, out}, act()), in, offsets, w,
                                         mlir::Value(), mlir::Value(), mlir::Value(), mlir::Value(),
                                         nullptr)
        .getResult();
  };
  Value gate = expertLinear(permuted, "gate_proj", m.intermediateSize);
  Value up = expertLinear(permuted, "up_proj", m.intermediateSize);
  Value hidden = g3moe::GeluTanhMulOp::create(b, loc, gate, up);
  Value down = expertLinear(hidden, "down_proj", h);
  Value y = g3moe::MoECombineOp::create(b, loc, tensor({tokens, h}, act()), down,
                                        dispatch.getSlots(), weights);

  if (m.numSharedExperts > 0) {
    at(prefix + "moe.shared_experts");
    Value shared = mlp(x, prefix + "moe.shared_experts.", m.intermediateSize * m.numSharedExperts);
    y = g3moe::AddOp::create(b, loc, y, shared);
  }
  return y;
}

void StepBuilder::buildModelAttrs(ModuleOp module) {
  SmallVector<NamedAttribute> a;
  auto add = [&](StringRef name, Attribute value) { a.push_back(b.getNamedAttr(name, value)); };
  auto i = [&](int64_t v) { return b.getI64IntegerAttr(v); };
  auto f = [&](double v) { return b.getF64FloatAttr(v); };
  add("model_type", b.getStringAttr(m.modelType));
  add("checkpoint_prefix", b.getStringAttr(m.checkpointPrefix));
  add("vocab_size", i(m.vocabSize));
  add("hidden_size", i(m.hiddenSize));
  add("intermediate_size", i(m.intermediateSize));
  add("num_hidden_layers", i(m.numLayers));
  add("num_attention_heads", i(m.numHeads));
  add("num_key_value_heads", i(m.numKVHeads));
  add("head_dim", i(m.headDim));
  add("tie_word_embeddings", b.getBoolAttr(m.tieWordEmbeddings));
  add("initializer_range", f(m.initializerRange));
  add("pad_token_id", i(m.padTokenId));
  add("bos_token_id", i(m.bosTokenId));
  add("eos_token_id", i(m.eosTokenId));
  add("max_position_embeddings", i(m.maxPositionEmbeddings));
  add("rms_norm_eps", f(m.rmsNormEps));
  add("sliding_window", i(m.slidingWindow));
  add("query_pre_attn_scalar", f(m.queryPreAttnScalar));
  add("rope_theta", f(m.globalRope.theta));
  add("rope_local_base_freq", f(m.slidingRope.theta));
  if (m.finalLogitSoftcap)
    add("final_logit_softcapping", f(*m.finalLogitSoftcap));
  if (m.attnLogitSoftcap)
    add("attn_logit_softcapping", f(*m.attnLogitSoftcap));
  add("n_routed_experts", i(m.numExperts));
  if (m.isMoE()) {
    add("router_jitter_noise", f(m.routerJitterNoise));
    add("input_jitter_noise", f(m.inputJitterNoise));
    add("router_aux_loss_coef", f(m.routerAuxLossCoef));
    add("router_z_loss_coef", f(m.routerZLossCoef));
    add("routed_scaling_factor", f(m.routedScalingFactor));
    add("n_group", i(m.numGroups));
    add("topk_group", i(m.topkGroup));
    add("norm_topk_prob", b.getBoolAttr(m.normTopkProb));
    add("num_experts_per_tok", i(m.topK));
    add("first_k_dense_replace", i(m.firstKDenseReplace));
    add("router_type", b.getStringAttr(stringifyRouterKind(m.router)));
    add("n_shared_experts", i(m.numSharedExperts));
    add("freeze_shared_experts", b.getBoolAttr(m.freezeSharedExperts));
  }
  module->setAttr("g3moe.model", b.getDictionaryAttr(a));

  a.clear();
  add("mode", b.getStringAttr(options.training ? "train" : "eval"));
  add("precision", b.getStringAttr(options.fp32 ? "fp32" : "bf16"));
  add("seq_len", i(t.seqLen));
  add("micro_batch", i(t.microBatch));
  add("finetuning", b.getStringAttr(t.finetuning));
  add("lora_r", i(t.lora.rank));
  add("lora_alpha", f(t.lora.alpha));
  add("lora_dropout", f(t.lora.dropout));
  SmallVector<Attribute> targets;
  for (const std::string &name : t.lora.targetModules)
    targets.push_back(b.getStringAttr(name));
  add("lora_target_modules", b.getArrayAttr(targets));
  add("train_router", b.getBoolAttr(t.trainRouter));
  add("dense_ffn_no_grad", b.getBoolAttr(t.denseFFNNoGrad));
  add("seed", i(t.seed));
  add("learning_rate", f(t.learningRate));
  add("lr_scheduler_type", b.getStringAttr(t.lrSchedulerType));
  add("warmup_ratio", f(t.warmupRatio));
  add("warmup_steps", i(t.warmupSteps));
  add("weight_decay", f(t.weightDecay));
  add("adam_beta1", f(t.adamBeta1));
  add("adam_beta2", f(t.adamBeta2));
  add("adam_epsilon", f(t.adamEpsilon));
  add("max_grad_norm", f(t.maxGradNorm));
  add("gradient_accumulation_steps", i(t.gradientAccumulationSteps));
  add("num_train_epochs", f(t.numTrainEpochs));
  add("max_steps", i(t.maxSteps));
  add("logging_steps", i(t.loggingSteps));
  add("save_steps", i(t.saveSteps));
  add("save_total_limit", i(t.saveTotalLimit));
  add("data_parallel", i(t.dataParallel));
  add("zero_stage", i(t.zeroStage));
  add("dataset", b.getStringAttr(t.dataset));
  add("test_size", f(t.testSize));
  add("max_line_bytes", i(t.maxLineBytes));
  add("packing", b.getBoolAttr(t.packing));
  add("assistant_only_loss", b.getBoolAttr(t.assistantOnlyLoss));
  add("loss_denominator", b.getStringAttr(t.lossDenominator));
  add("eval_steps", i(t.evalSteps));
  add("output_dir", b.getStringAttr(t.outputDir));
  module->setAttr("g3moe.training", b.getDictionaryAttr(a));
}

OwningOpRef<ModuleOp> StepBuilder::build() {
  OwningOpRef<ModuleOp> module = ModuleOp::create(loc);
  buildModelAttrs(*module);
  b.setInsertionPointToEnd(module->getBody());
  buildFunction(kStepFunctionName, options.training, /*evalOutputs=*/false);
  if (options.withEval) {
    b.setInsertionPointToEnd(module->getBody());
    buildFunction("eval_forward", /*trainingMode=*/false, /*evalOutputs=*/true);
  }
  if (options.withLogits) {
    b.setInsertionPointToEnd(module->getBody());
    buildFunction("eval_logits", /*trainingMode=*/false, /*evalOutputs=*/false,
                  /*logitsOnly=*/true);
  }
  return module;
}

void StepBuilder::buildFunction(StringRef name, bool trainingMode, bool evalOutputs,
                                bool logitsOnly) {
  training = trainingMode;
  nextStream = 0;
  routerLogits.clear();
  routerIndices.clear();
  routerLayers.clear();
  rngKey = Value();
  loc = UnknownLoc::get(&ctx);
  batch = t.microBatch;
  seq = t.seqLen;
  tokens = batch * seq;
  Signature sig;
  sig.evalOutputs = evalOutputs;
  sig.logitsOnly = logitsOnly;
  sig.needsRandom =
      training && m.isMoE() && (m.inputJitterNoise > 0 || m.router == RouterKind::SparseMixer);
  // The training forward also returns the MoE statistics: the expert load of
  // every MoE layer and the load-balancing loss (logged even when it is not
  // part of the loss).
  sig.moeStats = training && m.isMoE();
  Block *entry = beginFunction(name, sig);
  Value inputIds = entry->getArgument(0), targets = entry->getArgument(1);
  positions = entry->getArgument(2);
  segmentIds = entry->getArgument(3);
  Value numItems = entry->getArgument(4);
  if (sig.needsRandom)
    rngKey = entry->getArgument(5);

  int64_t h = m.hiddenSize;
  at("model.embed_tokens");
  Value embedding = param("model.embed_tokens.weight", {m.vocabSize, h}, act());
  Value x = g3moe::EmbeddingOp::create(b, loc, tensor({batch, seq, h}, act()), inputIds, embedding,
                                       b.getF64FloatAttr(m.embedScale(/*bf16=*/!options.fp32)),
                                       b.getI64IntegerAttr(m.padTokenId));
  for (int64_t layer = 0; layer < m.numLayers; ++layer)
    x = decoderLayer(x, layer);
  finishFunction(sig, x, embedding, targets, numItems);
}

Block *StepBuilder::beginFunction(StringRef name, const Signature &sig) {
  auto tokenType = tensor({batch, seq}, i32());
  SmallVector<Type> argTypes(4, tokenType);
  SmallVector<StringRef> argNames = {"input_ids", "targets", "positions", "segment_ids"};
  argTypes.push_back(tensor({}, f32()));
  argNames.push_back("num_items");
  if (sig.needsRandom) {
    argTypes.push_back(tensor({2}, b.getI64Type()));
    argNames.push_back("rng_key");
  }
  SmallVector<Type> resultTypes(sig.evalOutputs ? 3 : 1, tensor({}, f32()));
  if (sig.logitsOnly)
    resultTypes = {tensor({t.microBatch, t.seqLen, m.vocabSize}, f32())};
  SmallVector<int64_t> moeLayers;
  for (int64_t l = 0; l < m.numLayers; ++l)
    if (m.layers[l].moe)
      moeLayers.push_back(l);
  if (sig.moeStats) {
    for (size_t i = 0; i < moeLayers.size(); ++i)
      resultTypes.push_back(tensor({m.numExperts}, f32()));
    resultTypes.push_back(tensor({}, f32()));
  }
  auto funcType = b.getFunctionType(argTypes, resultTypes);
  auto func = func::FuncOp::create(b, loc, name, funcType);
  func->setAttr("g3moe.mode", b.getStringAttr(training ? "train" : "eval"));
  for (auto [idx, argName] : llvm::enumerate(argNames))
    func.setArgAttr(idx, "g3moe.input", b.getStringAttr(argName));
  func.setResultAttr(0, "g3moe.output", b.getStringAttr(sig.logitsOnly ? "logits" : "loss"));
  if (sig.evalOutputs) {
    func.setResultAttr(1, "g3moe.output", b.getStringAttr("correct_tokens"));
    func.setResultAttr(2, "g3moe.output", b.getStringAttr("counted_tokens"));
  }
  if (sig.moeStats) {
    for (auto [i, l] : llvm::enumerate(moeLayers))
      func.setResultAttr(1 + i, "g3moe.output", b.getStringAttr("moe_load:" + std::to_string(l)));
    func.setResultAttr(1 + moeLayers.size(), "g3moe.output", b.getStringAttr("moe_aux_loss"));
  }
  Block *entry = func.addEntryBlock();
  b.setInsertionPointToStart(entry);
  return entry;
}

Value StepBuilder::decoderLayer(Value x, int64_t layer) {
  // G3MoE keeps its dense-layer MLPs under `moe` (G3MOE_SPEC.md 3.1).
  std::string ffnName = m.isMoE() ? "moe." : "mlp.";
  std::string prefix = "model.layers." + std::to_string(layer) + ".";
  currentLayer = layer;
  at(prefix + "input_layernorm");
  Value a = rmsNorm(x, prefix + "input_layernorm.weight");
  a = attention(a, layer, prefix);
  at(prefix + "post_attention_layernorm");
  a = rmsNorm(a, prefix + "post_attention_layernorm.weight");
  Value hidden = g3moe::AddOp::create(b, loc, x, a);

  at(prefix + "pre_feedforward_layernorm");
  Value f = rmsNorm(hidden, prefix + "pre_feedforward_layernorm.weight");
  // The feed-forward block and its norm run on [tokens, hidden] rows, so
  // that token tiling (--g3moe-tile-tokens) can cut both into chunks: the
  // norm's backward then reads one chunk's output at a time.
  Value y;
  if (m.layers[layer].moe) {
    y = moe(f, prefix);
  } else {
    at(prefix + ffnName.substr(0, ffnName.size() - 1));
    y = mlp(reshape(f, {tokens, m.hiddenSize}), prefix + ffnName, m.intermediateSize);
    if (t.denseFFNNoGrad)
      y = g3moe::StopGradientOp::create(b, loc, y);
  }
  at(prefix + "post_feedforward_layernorm");
  y = reshape(rmsNorm(y, prefix + "post_feedforward_layernorm.weight"), {batch, seq, m.hiddenSize});
  return g3moe::AddOp::create(b, loc, hidden, y);
}

void StepBuilder::finishFunction(const Signature &sig, Value x, Value embedding, Value targets,
                                 Value numItems) {
  int64_t h = m.hiddenSize;
  at("model.norm");
  x = rmsNorm(x, "model.norm.weight");
  at("lm_head");
  Value head = m.tieWordEmbeddings ? embedding : param("lm_head.weight", {m.vocabSize, h}, act());
  FloatAttr finalCap = m.finalLogitSoftcap ? b.getF64FloatAttr(*m.finalLogitSoftcap) : FloatAttr();
  Value logits =
      g3moe::LMHeadOp::create(b, loc, tensor({batch, seq, m.vocabSize}, f32()), x, head, finalCap);

  at("loss");
  SmallVector<Value> terms = {
      g3moe::CrossEntropyOp::create(b, loc, tensor({}, f32()), logits, targets, numItems,
                                    b.getI64IntegerAttr(g3rt::kIgnoreIndex))};
  SmallVector<double> coefficients = {1.0};
  if (t.loadBalancingLoss && !routerLogits.empty()) {
    terms.push_back(g3moe::LoadBalancingLossOp::create(b, loc, tensor({}, f32()), routerLogits,
                                                       routerIndices, segmentIds,
                                                       b.getI64IntegerAttr(m.numExperts)));
    coefficients.push_back(m.routerAuxLossCoef);
  }
  if (t.routerZLoss && !routerLogits.empty()) {
    terms.push_back(
        g3moe::RouterZLossOp::create(b, loc, tensor({}, f32()), routerLogits, segmentIds));
    coefficients.push_back(m.routerZLossCoef);
  }
  Value loss = terms.front();
  if (terms.size() > 1)
    loss = g3moe::LossSumOp::create(b, loc, tensor({}, f32()), terms,
                                    b.getDenseF64ArrayAttr(coefficients));
  SmallVector<Value> results = {sig.logitsOnly ? logits : loss};
  if (sig.moeStats) {
    at("moe_statistics");
    for (Value idx : routerIndices)
      results.push_back(g3moe::ExpertLoadOp::create(b, loc, tensor({m.numExperts}, f32()), idx,
                                                    segmentIds, b.getI64IntegerAttr(m.numExperts)));
    Value aux = terms.size() > 1 && t.loadBalancingLoss
                    ? terms[1]
                    : g3moe::LoadBalancingLossOp::create(b, loc, tensor({}, f32()), routerLogits,
                                                         routerIndices, segmentIds,
                                                         b.getI64IntegerAttr(m.numExperts))
                          .getResult();
    results.push_back(aux);
  }
  if (sig.evalOutputs) {
    auto accuracy =
        g3moe::TokenAccuracyOp::create(b, loc, tensor({}, f32()), tensor({}, f32()), logits,
                                       targets, b.getI64IntegerAttr(g3rt::kIgnoreIndex));
    results.push_back(accuracy.getCorrect());
    results.push_back(accuracy.getTotal());
  }
  func::ReturnOp::create(b, loc, results);
}

} // namespace

OwningOpRef<ModuleOp> g3moe::frontend::buildStepModule(MLIRContext &context,
                                                       const CompileConfig &config,
                                                       const BuildOptions &options) {
  context.loadDialect<g3moe::G3MoEDialect, func::FuncDialect>();
  return StepBuilder(context, config, options).build();
}
