//===- ConfigTest.cpp - tests of config loading and validation ------------===//
//
// The example configs resolve to the values of G3MOE_SPEC.md; every rejected
// value produces a message naming the file and the field; no input crashes.
//
//===----------------------------------------------------------------------===//

#include "ConfigTesting.h"

namespace {

//===----------------------------------------------------------------------===//
// Example files
//===----------------------------------------------------------------------===//

TEST(ConfigExamples, TinyG3MoE) {
  CompileConfig c = loadOk("tiny-g3moe/config.json");
  const ModelConfig &m = c.model;
  EXPECT_EQ(m.modelType, "g3moe_text");
  EXPECT_EQ(m.checkpointPrefix, "");
  EXPECT_EQ(m.vocabSize, 512);
  EXPECT_EQ(m.hiddenSize, 64);
  EXPECT_EQ(m.intermediateSize, 128);
  EXPECT_EQ(m.numLayers, 6);
  EXPECT_EQ(m.numHeads, 4);
  EXPECT_EQ(m.numKVHeads, 2);
  EXPECT_EQ(m.headDim, 16);
  EXPECT_EQ(m.slidingWindow, 8);
  EXPECT_DOUBLE_EQ(m.attentionScale(), 0.25);
  EXPECT_DOUBLE_EQ(m.embedScale(/*bf16=*/true), 8.0);
  EXPECT_EQ(globalLayers(m), (std::vector<int64_t>{5}));
  EXPECT_EQ(moeLayers(m), (std::vector<int64_t>{2, 3, 4, 5}));
  EXPECT_TRUE(m.isMoE());
  EXPECT_EQ(m.numExperts, 4);
  EXPECT_EQ(m.topK, 2);
  EXPECT_EQ(m.firstKDenseReplace, 2);
  EXPECT_EQ(m.router, RouterKind::SparseMixer);
  EXPECT_DOUBLE_EQ(m.routerJitterNoise, 0.01);
  EXPECT_DOUBLE_EQ(m.inputJitterNoise, 0.01);
  EXPECT_DOUBLE_EQ(m.routerAuxLossCoef, 0.001);
  EXPECT_EQ(m.numSharedExperts, 0);
  EXPECT_DOUBLE_EQ(m.globalRope.theta, 1e6);
  EXPECT_DOUBLE_EQ(m.globalRope.factor, 8.0);
  EXPECT_DOUBLE_EQ(m.slidingRope.theta, 1e4);
  EXPECT_DOUBLE_EQ(m.slidingRope.factor, 1.0);
  EXPECT_TRUE(m.tieWordEmbeddings);
  EXPECT_EQ(m.padTokenId, 0);
  EXPECT_EQ(m.eosTokenId, 1);
  EXPECT_EQ(m.bosTokenId, 2);
  EXPECT_FALSE(m.finalLogitSoftcap.has_value());
  EXPECT_FALSE(m.attnLogitSoftcap.has_value());
  EXPECT_TRUE(c.warnings.empty()) << c.warnings.front();
  EXPECT_EQ(c.modelSource, examplePath("tiny-g3moe/config.json"));
  // Training defaults.
  EXPECT_EQ(c.training.seqLen, 2048);
  EXPECT_EQ(c.training.microBatch, 1);
  EXPECT_EQ(c.training.finetuning, "lora");
  EXPECT_EQ(c.training.lora.targetModules, kMLP);
}

TEST(ConfigExamples, TinyGemma3IsDense) {
  CompileConfig c = loadOk("tiny-gemma3/config.json");
  EXPECT_EQ(c.model.modelType, "gemma3_text");
  EXPECT_FALSE(c.model.isMoE());
  EXPECT_TRUE(moeLayers(c.model).empty());
  EXPECT_EQ(globalLayers(c.model), (std::vector<int64_t>{5}));
  EXPECT_DOUBLE_EQ(c.model.globalRope.factor, 8.0);
  EXPECT_EQ(c.model.hiddenSize, 64);
  EXPECT_TRUE(c.warnings.empty());
}

TEST(ConfigExamples, TinyG3MoEWithTwoExperts) {
  CompileConfig c = loadOk("tiny-g3moe-e2/config.json");
  EXPECT_EQ(c.model.numExperts, 2);
  EXPECT_EQ(c.model.topK, 2);
  EXPECT_EQ(moeLayers(c.model), (std::vector<int64_t>{2, 3, 4, 5}));
}

TEST(ConfigExamples, G3MoE4B) {
  CompileConfig c = loadOk("g3moe-4b/config.json");
  const ModelConfig &m = c.model;
  EXPECT_EQ(m.modelType, "g3moe_text");
  EXPECT_EQ(m.vocabSize, 262208);
  EXPECT_EQ(m.hiddenSize, 2560);
  EXPECT_EQ(m.intermediateSize, 10240);
  EXPECT_EQ(m.numLayers, 34);
  EXPECT_EQ(m.numHeads, 8);
  EXPECT_EQ(m.numKVHeads, 4);
  EXPECT_EQ(m.headDim, 256);
  EXPECT_EQ(m.slidingWindow, 1024);
  EXPECT_DOUBLE_EQ(m.embedScale(/*bf16=*/true), 50.5);
  EXPECT_DOUBLE_EQ(m.attentionScale(), 1.0 / 16.0);
  EXPECT_EQ(globalLayers(m), (std::vector<int64_t>{5, 11, 17, 23, 29}));
  std::vector<int64_t> moe = moeLayers(m);
  ASSERT_EQ(moe.size(), 26u);
  EXPECT_EQ(moe.front(), 8);
  EXPECT_EQ(moe.back(), 33);
  EXPECT_EQ(m.numExperts, 3);
  EXPECT_EQ(m.topK, 2);
  EXPECT_EQ(m.router, RouterKind::SparseMixer);
  EXPECT_EQ(m.numSharedExperts, 0);
  EXPECT_DOUBLE_EQ(m.globalRope.theta, 1e6);
  EXPECT_DOUBLE_EQ(m.globalRope.factor, 8.0);
  EXPECT_DOUBLE_EQ(m.slidingRope.theta, 1e4);
  EXPECT_DOUBLE_EQ(m.slidingRope.factor, 1.0);
  EXPECT_TRUE(c.warnings.empty());
}

TEST(ConfigExamples, Gemma34BItMultimodal) {
  CompileConfig c = loadOk("gemma-3-4b-it/config.json");
  const ModelConfig &m = c.model;
  EXPECT_EQ(m.modelType, "gemma3_text");
  EXPECT_EQ(m.checkpointPrefix, "language_model.");
  EXPECT_FALSE(m.isMoE());
  EXPECT_EQ(m.hiddenSize, 2560);
  EXPECT_EQ(m.numLayers, 34);
  EXPECT_EQ(m.numKVHeads, 4);
  EXPECT_EQ(m.slidingWindow, 1024);
  EXPECT_EQ(m.eosTokenId, 1);
  EXPECT_EQ(globalLayers(m), (std::vector<int64_t>{5, 11, 17, 23, 29}));
  EXPECT_DOUBLE_EQ(m.globalRope.factor, 8.0);
  EXPECT_DOUBLE_EQ(m.slidingRope.factor, 1.0);
  EXPECT_DOUBLE_EQ(m.embedScale(/*bf16=*/true), 50.5);
  EXPECT_TRUE(c.warnings.empty()) << c.warnings.front();
}

TEST(ConfigExamples, TransformersV4AndV5FormsAgree) {
  CompileConfig v4 = loadOk("gemma-3-4b-it/config.json");
  CompileConfig v5 = loadOk("gemma-3-4b-it-v5/config.json");
  EXPECT_TRUE(v5.warnings.empty()) << v5.warnings.front();
  EXPECT_EQ(v5.model.checkpointPrefix, "");
  ASSERT_EQ(v4.model.layers.size(), v5.model.layers.size());
  for (size_t i = 0; i < v4.model.layers.size(); ++i) {
    EXPECT_EQ(v4.model.layers[i].attention, v5.model.layers[i].attention) << i;
    EXPECT_EQ(v4.model.layers[i].moe, v5.model.layers[i].moe) << i;
  }
  EXPECT_DOUBLE_EQ(v4.model.globalRope.theta, v5.model.globalRope.theta);
  EXPECT_DOUBLE_EQ(v4.model.globalRope.factor, v5.model.globalRope.factor);
  EXPECT_DOUBLE_EQ(v4.model.slidingRope.theta, v5.model.slidingRope.theta);
  EXPECT_DOUBLE_EQ(v4.model.slidingRope.factor, v5.model.slidingRope.factor);
  EXPECT_EQ(v4.model.hiddenSize, v5.model.hiddenSize);
  EXPECT_EQ(v4.model.numKVHeads, v5.model.numKVHeads);
  EXPECT_EQ(v4.model.headDim, v5.model.headDim);
  EXPECT_EQ(v4.model.slidingWindow, v5.model.slidingWindow);
  EXPECT_EQ(v4.model.vocabSize, v5.model.vocabSize);
}

struct PresetExpectation {
  const char *file;
  int64_t rank;
  double alpha;
  double lr;
  double epochs;
  int64_t microBatch;
  int64_t ga;
  double warmup;
  int64_t logging, eval, save, saveLimit;
};

TEST(ConfigExamples, FlatPresets) {
  const PresetExpectation presets[] = {
      {"presets/g3moe_sft_config.json", 4, 16, 1e-4, 10, 1, 32, 0.05, 5, 100, 500, 3},
      {"presets/g3moe_small_dataset_config.json", 4, 16, 2e-4, 20, 2, 32, 0.10, 5, 50, 100, 5},
      {"presets/g3moe_large_dataset_config.json", 8, 32, 1e-4, 10, 1, 32, 0.05, 10, 100, 250, 3},
      {"presets/g3moe_120k_deepspeed_config.json", 16, 32, 5e-5, 5, 1, 64, 0.03, 1, 50, 100, 2},
  };
  for (const PresetExpectation &p : presets) {
    SCOPED_TRACE(p.file);
    CompileConfig c = loadOk(p.file);
    const TrainingOptions &t = c.training;
    EXPECT_EQ(t.lora.rank, p.rank);
    EXPECT_DOUBLE_EQ(t.lora.alpha, p.alpha);
    EXPECT_DOUBLE_EQ(t.lora.dropout, 0.05);
    EXPECT_EQ(t.lora.targetModules, kAllSeven);
    EXPECT_DOUBLE_EQ(t.learningRate, p.lr);
    EXPECT_DOUBLE_EQ(t.numTrainEpochs, p.epochs);
    EXPECT_EQ(t.microBatch, p.microBatch);
    EXPECT_EQ(t.gradientAccumulationSteps, p.ga);
    EXPECT_DOUBLE_EQ(t.warmupRatio, p.warmup);
    EXPECT_EQ(t.warmupSteps, 0);
    EXPECT_EQ(t.loggingSteps, p.logging);
    EXPECT_EQ(t.evalSteps, p.eval);
    EXPECT_EQ(t.saveSteps, p.save);
    EXPECT_EQ(t.saveTotalLimit, p.saveLimit);
    EXPECT_EQ(t.seqLen, 120000);
    EXPECT_EQ(t.finetuning, "lora");
    EXPECT_DOUBLE_EQ(t.weightDecay, 0.01);
    EXPECT_DOUBLE_EQ(t.adamBeta1, 0.9);
    EXPECT_DOUBLE_EQ(t.adamBeta2, 0.999);
    EXPECT_DOUBLE_EQ(t.adamEpsilon, 1e-8);
    EXPECT_DOUBLE_EQ(t.maxGradNorm, 1.0);
    EXPECT_EQ(t.lrSchedulerType, "cosine");
    EXPECT_TRUE(t.gradientCheckpointing);
    EXPECT_FALSE(t.packing);
    EXPECT_EQ(t.seed, 42);
    EXPECT_DOUBLE_EQ(t.testSize, 0.1);
    EXPECT_EQ(t.maxSteps, -1);
    // Relative data paths in a file are resolved against the file's folder.
    EXPECT_EQ(t.dataset, std::string(G3MOE_EXAMPLES_DIR) + "/data/chat.jsonl");
    // The model: gemma-3-4b-it upcycled by g3moe_params.
    const ModelConfig &m = c.model;
    EXPECT_EQ(m.modelType, "g3moe_text");
    EXPECT_EQ(m.checkpointPrefix, "language_model.");
    EXPECT_EQ(m.numExperts, 2);
    EXPECT_EQ(m.topK, 2);
    EXPECT_EQ(m.firstKDenseReplace, 8);
    EXPECT_EQ(m.numSharedExperts, 0);
    EXPECT_EQ(m.numKVHeads, 4);
    EXPECT_EQ(moeLayers(m).size(), 26u);
    EXPECT_EQ(globalLayers(m), (std::vector<int64_t>{5, 11, 17, 23, 29}));
    EXPECT_DOUBLE_EQ(m.embedScale(/*bf16=*/true), 50.5);
    EXPECT_NE(c.modelSource.find("gemma-3-4b-it/config.json"), std::string::npos);
    // DeepSpeed is accepted but said to be ignored.
    EXPECT_TRUE(hasWarning(c, "field 'deepspeed'"));
  }
}

TEST(ConfigExamples, NestedPreset) {
  CompileConfig c = loadOk("presets/g3moe_training_config.json");
  const TrainingOptions &t = c.training;
  EXPECT_EQ(t.lora.rank, 16);
  EXPECT_DOUBLE_EQ(t.lora.alpha, 32);
  EXPECT_DOUBLE_EQ(t.lora.dropout, 0.1);
  EXPECT_EQ(t.lora.targetModules, kMLP);
  EXPECT_DOUBLE_EQ(t.learningRate, 2e-5);
  EXPECT_EQ(t.gradientAccumulationSteps, 8);
  EXPECT_EQ(t.microBatch, 2);
  EXPECT_DOUBLE_EQ(t.numTrainEpochs, 3);
  EXPECT_DOUBLE_EQ(t.warmupRatio, 0.1);
  EXPECT_EQ(t.seqLen, 131072);
  EXPECT_EQ(t.evalSteps, 500);
  EXPECT_EQ(t.saveSteps, 500);
  // Relative data paths in a file are resolved against the file's folder.
  EXPECT_EQ(t.dataset, std::string(G3MOE_EXAMPLES_DIR) + "/data/chat.jsonl");
  EXPECT_EQ(c.model.numExperts, 2);
  EXPECT_EQ(c.model.firstKDenseReplace, 8);
  EXPECT_DOUBLE_EQ(c.model.globalRope.factor, 8.0);
  EXPECT_TRUE(c.warnings.empty()) << c.warnings.front();
}

TEST(ConfigExamples, EmbedScaleIsSqrtInTheStepsDtype) {
  ModelConfig m;
  m.hiddenSize = 2560;
  EXPECT_DOUBLE_EQ(m.embedScale(/*bf16=*/true), 50.5);
  m.hiddenSize = 2304;
  EXPECT_DOUBLE_EQ(m.embedScale(/*bf16=*/true), 48.0);
  m.hiddenSize = 64;
  EXPECT_DOUBLE_EQ(m.embedScale(/*bf16=*/true), 8.0);
  m.hiddenSize = 1152; // sqrt = 33.94..., bf16 has 8 bits: 34.0
  EXPECT_DOUBLE_EQ(m.embedScale(/*bf16=*/true), 34.0);
  // An fp32 step keeps √H in fp32, as transformers does in fp32.
  EXPECT_EQ(m.embedScale(/*bf16=*/false), double(std::sqrt(1152.0f)));
  m.hiddenSize = 2560;
  EXPECT_EQ(m.embedScale(/*bf16=*/false), double(float(50.596442562694072)));
  m.queryPreAttnScalar = 256;
  EXPECT_DOUBLE_EQ(m.attentionScale(), 0.0625);
}

TEST(ConfigExamples, RouterNames) {
  EXPECT_EQ(stringifyRouterKind(RouterKind::SparseMixer), "sparsemixer");
  EXPECT_EQ(stringifyRouterKind(RouterKind::SoftmaxTopK), "softmax_topk");
  EXPECT_EQ(stringifyRouterKind(RouterKind::SigmoidGrouped), "sigmoid_grouped");
}

//===----------------------------------------------------------------------===//
// Accepted forms
//===----------------------------------------------------------------------===//

TEST(ConfigForms, Gemma3TextDefaults) {
  // The Hub's gemma-3-4b-it: transformers 4.x wrote text_config without the
  // fields equal to Gemma3TextConfig's defaults. Those are used, each with a
  // warning that names it and the value.
  CompileConfig c = parseOk(wrapped(R"({"model_type": "gemma3_text",
      "hidden_size": 2560, "intermediate_size": 10240,
      "num_hidden_layers": 34, "sliding_window": 1024,
      "rope_scaling": {"factor": 8.0, "rope_type": "linear"}})"));
  const ModelConfig &m = c.model;
  EXPECT_EQ(m.vocabSize, 262208);
  EXPECT_EQ(m.hiddenSize, 2560);
  EXPECT_EQ(m.intermediateSize, 10240);
  EXPECT_EQ(m.numLayers, 34);
  EXPECT_EQ(m.numHeads, 8);
  EXPECT_EQ(m.numKVHeads, 4);
  EXPECT_EQ(m.headDim, 256);
  EXPECT_DOUBLE_EQ(m.queryPreAttnScalar, 256);
  EXPECT_EQ(m.slidingWindow, 1024);
  EXPECT_EQ(m.maxPositionEmbeddings, 131072);
  EXPECT_DOUBLE_EQ(m.globalRope.theta, 1e6);
  EXPECT_DOUBLE_EQ(m.globalRope.factor, 8.0);
  EXPECT_DOUBLE_EQ(m.slidingRope.theta, 1e4);
  EXPECT_DOUBLE_EQ(m.rmsNormEps, 1e-6);
  EXPECT_EQ(globalLayers(m), (std::vector<int64_t>{5, 11, 17, 23, 29}));
  EXPECT_FALSE(m.isMoE());
  const char *defaulted[][2] = {{"vocab_size", "262208"},         {"num_attention_heads", "8"},
                                {"num_key_value_heads", "4"},     {"head_dim", "256"},
                                {"query_pre_attn_scalar", "256"}, {"rms_norm_eps", "1e-06"},
                                {"rope_theta", "1000000"},        {"rope_local_base_freq", "10000"},
                                {"sliding_window_pattern", "6"}};
  for (const auto &[field, value] : defaulted) {
    std::string needle = std::string("inline.json: field 'text_config.") + field +
                         "': absent; using Gemma3TextConfig's "
                         "default, " +
                         value;
    EXPECT_TRUE(hasWarning(c, needle)) << needle;
  }
  EXPECT_EQ(c.warnings.size(), std::size(defaulted));
}

TEST(ConfigForms, Transformers5WrittenConfigsAreQuiet) {
  // Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
  // num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
  // head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
  // max_position_embeddings=2048).to_json_string(), transformers 5.25.0.
  const std::string text = R"({
  "_sliding_window_pattern": 6, "attention_bias": false,
  "attention_dropout": 0.0, "attn_logit_softcapping": null,
  "bos_token_id": 2, "eos_token_id": 1, "final_logit_softcapping": null,
  "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
  "layer_types": ["sliding_attention", "sliding_attention",
    "sliding_attention", "sliding_attention", "sliding_attention",
    "full_attention"],
  "max_position_embeddings": 2048, "model_type": "gemma3_text",
  "num_attention_heads": 4, "num_hidden_layers": 6, "num_key_value_heads": 2,
  "pad_token_id": 0, "query_pre_attn_scalar": 16, "rms_norm_eps": 1e-06,
  "rope_parameters": {
    "full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
    "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
  "sliding_window": 8, "tie_word_embeddings": true,
  "transformers_version": "5.25.0", "use_bidirectional_attention": false,
  "use_cache": true, "vocab_size": 512})";
  CompileConfig c = parseOk(text);
  EXPECT_TRUE(c.warnings.empty()) << c.warnings.front();
  EXPECT_EQ(globalLayers(c.model), (std::vector<int64_t>{5}));
  EXPECT_EQ(c.model.hiddenSize, 64);

  // Its Gemma3Config wrapper (with sliding_window_pattern=2 given, which
  // transformers 5 keeps next to _sliding_window_pattern), and the same as a
  // G3MoE.
  std::string inner = with(text, R"("sliding_window_pattern": 2,
      "_sliding_window_pattern": 2, "layer_types": ["sliding_attention",
      "full_attention", "sliding_attention", "full_attention",
      "sliding_attention", "full_attention"])");
  std::string wrapper = R"({"boi_token_index": 255999,
      "eoi_token_index": 256000, "image_token_index": 262144,
      "initializer_range": 0.02, "mm_tokens_per_image": 256,
      "model_type": "gemma3", "text_config": )" +
                        inner + R"(, "tie_word_embeddings": true,
      "transformers_version": "5.25.0", "vision_config": {"hidden_size": 32,
      "model_type": "siglip_vision_model"}})";
  CompileConfig w = parseOk(wrapper);
  EXPECT_TRUE(w.warnings.empty()) << w.warnings.front();
  EXPECT_EQ(globalLayers(w.model), (std::vector<int64_t>{1, 3, 5}));

  std::string moeInner = with(inner, R"("model_type": "g3moe_text",
      "n_routed_experts": 4, "num_experts_per_tok": 2,
      "first_k_dense_replace": 2, "router_jitter_noise": 0.01,
      "input_jitter_noise": 0.01, "n_shared_experts": 0)");
  CompileConfig g = parseOk(wrapped(moeInner, "g3moe"));
  EXPECT_TRUE(g.warnings.empty()) << g.warnings.front();
  EXPECT_EQ(moeLayers(g.model), (std::vector<int64_t>{2, 3, 4, 5}));
}

TEST(ConfigForms, G3MoEWrapper) {
  CompileConfig c = parseOk(R"({"model_type": "g3moe", "text_config": )" + tiny() +
                            R"(, "vision_config": {"x": 1}})");
  EXPECT_EQ(c.model.modelType, "g3moe_text");
  EXPECT_EQ(c.model.checkpointPrefix, "language_model.");
  EXPECT_EQ(c.model.numExperts, 4);
}

TEST(ConfigForms, SharedExpertsHonouredWhenPresent) {
  EXPECT_EQ(parseOk(tiny()).model.numSharedExperts, 0);
  EXPECT_EQ(parseOk(tiny(R"("n_shared_experts": 1)")).model.numSharedExperts, 1);
}

TEST(ConfigForms, ExpertCountAliasesAndDense) {
  CompileConfig aliased =
      parseOk(tiny(R"("num_local_experts": 4, "num_experts_per_tok": 2)", "gemma3_text"));
  EXPECT_EQ(aliased.model.numExperts, 4);
  EXPECT_EQ(aliased.model.modelType, "g3moe_text");
  CompileConfig dense = parseOk(tiny(R"("n_routed_experts": null)"));
  EXPECT_FALSE(dense.model.isMoE());
  EXPECT_TRUE(moeLayers(dense.model).empty());
  EXPECT_REJECTS(tiny(R"("num_experts": 8)"), "num_experts");
}

TEST(ConfigForms, OtherRouters) {
  CompileConfig soft = parseOk(tiny(R"("router_type": "softmax_topk",
      "num_experts_per_tok": 3, "norm_topk_prob": false)"));
  EXPECT_EQ(soft.model.router, RouterKind::SoftmaxTopK);
  EXPECT_EQ(soft.model.topK, 3);
  EXPECT_FALSE(soft.model.normTopkProb);
  CompileConfig grouped = parseOk(tiny(R"("router_type": "sigmoid_grouped",
      "n_routed_experts": 8, "n_group": 4, "topk_group": 2,
      "routed_scaling_factor": 2.5)"));
  EXPECT_EQ(grouped.model.router, RouterKind::SigmoidGrouped);
  EXPECT_EQ(grouped.model.numGroups, 4);
  EXPECT_EQ(grouped.model.topkGroup, 2);
  EXPECT_DOUBLE_EQ(grouped.model.routedScalingFactor, 2.5);
}

TEST(ConfigForms, SoftcapsHonoured) {
  CompileConfig c = parseOk(tiny(R"("final_logit_softcapping": 30.0,
      "attn_logit_softcapping": 50)"));
  EXPECT_DOUBLE_EQ(*c.model.finalLogitSoftcap, 30.0);
  EXPECT_DOUBLE_EQ(*c.model.attnLogitSoftcap, 50.0);
}

TEST(ConfigForms, LayerTypesTakePrecedence) {
  CompileConfig c = parseOk(tiny(R"("layer_types": ["full_attention",
      "sliding_attention", "sliding_attention", "full_attention",
      "sliding_attention", "sliding_attention"])"));
  EXPECT_EQ(globalLayers(c.model), (std::vector<int64_t>{0, 3}));
  CompileConfig both = parseOk(tiny(R"("sliding_window_pattern": 2,
      "layer_types": ["sliding_attention", "sliding_attention",
      "sliding_attention", "sliding_attention", "sliding_attention",
      "full_attention"])"));
  EXPECT_EQ(globalLayers(both.model), (std::vector<int64_t>{5}));
  EXPECT_TRUE(hasWarning(both, "field 'sliding_window_pattern'"));
  CompileConfig pattern2 = parseOk(tiny(R"("sliding_window_pattern": 2)"));
  EXPECT_EQ(globalLayers(pattern2.model), (std::vector<int64_t>{1, 3, 5}));
}

TEST(ConfigForms, RopeParametersFlatAndPerType) {
  CompileConfig flat = parseOk(tiny(R"("rope_parameters": {"rope_type":
      "linear", "factor": 4.0, "rope_theta": 500000.0})"));
  EXPECT_DOUBLE_EQ(flat.model.globalRope.theta, 5e5);
  EXPECT_DOUBLE_EQ(flat.model.globalRope.factor, 4.0);
  EXPECT_DOUBLE_EQ(flat.model.slidingRope.theta, 1e4);
  CompileConfig perType = parseOk(tiny(R"("rope_parameters": {
      "full_attention": {"rope_type": "default", "rope_theta": 2e6},
      "sliding_attention": {"rope_type": "default", "rope_theta": 5e3}})"));
  EXPECT_DOUBLE_EQ(perType.model.globalRope.theta, 2e6);
  EXPECT_DOUBLE_EQ(perType.model.globalRope.factor, 1.0);
  EXPECT_DOUBLE_EQ(perType.model.slidingRope.theta, 5e3);
  // The legacy "type" key.
  CompileConfig legacy = parseOk(tiny(R"("rope_scaling": {"type": "linear", "factor": 2})"));
  EXPECT_DOUBLE_EQ(legacy.model.globalRope.factor, 2.0);
  EXPECT_DOUBLE_EQ(legacy.model.slidingRope.factor, 1.0);
}

TEST(ConfigForms, TrainingOptionsInModelConfig) {
  CompileConfig c = parseOk(tiny(R"("seq_len": 512, "micro_batch": 4,
      "finetuning": "full", "train_router": true, "dense_ffn_no_grad": true,
      "load_balancing_loss": true, "router_z_loss": true,
      "memory_budget_gb": 2, "assistant_only_loss": true, "packing": true,
      "dataset": "chat.jsonl", "lora_target_modules": "all-linear")"));
  const TrainingOptions &t = c.training;
  EXPECT_EQ(t.seqLen, 512);
  EXPECT_EQ(t.microBatch, 4);
  EXPECT_EQ(t.finetuning, "full");
  EXPECT_TRUE(t.trainRouter);
  EXPECT_TRUE(t.denseFFNNoGrad);
  EXPECT_TRUE(t.loadBalancingLoss);
  EXPECT_TRUE(t.routerZLoss);
  EXPECT_EQ(t.memoryBudgetBytes, int64_t(2) << 30);
  EXPECT_EQ(t.memoryBudgetOrigin, "inline.json: field 'memory_budget_gb'");
  EXPECT_TRUE(t.assistantOnlyLoss);
  EXPECT_TRUE(t.packing);
  EXPECT_TRUE(llvm::sys::path::is_absolute(t.dataset)) << t.dataset;
  EXPECT_EQ(llvm::sys::path::filename(t.dataset), "chat.jsonl");
  EXPECT_EQ(t.lora.targetModules, kAllSeven);
}

TEST(ConfigForms, MemoryBudgetAbsentZeroOrGiven) {
  // Absent: no budget and no origin (g3moe-compile may then ask the GPU).
  TrainingOptions absent = parseOk(tiny()).training;
  EXPECT_EQ(absent.memoryBudgetBytes, 0);
  EXPECT_EQ(absent.memoryBudgetOrigin, "");
  // 0 is "no budget", stated: it keeps its origin.
  TrainingOptions zero = parseOk(tiny(), {{"memory_budget_gb", "0"}}).training;
  EXPECT_EQ(zero.memoryBudgetBytes, 0);
  EXPECT_EQ(zero.memoryBudgetOrigin, "--set memory_budget_gb=0");
  // --set beats the file, and names itself.
  TrainingOptions set =
      parseOk(tiny(R"("memory_budget_gb": 2)"), {{"training.memory_budget_gb", "76"}}).training;
  EXPECT_EQ(set.memoryBudgetBytes, int64_t(76) << 30);
  EXPECT_EQ(set.memoryBudgetOrigin, "--set training.memory_budget_gb=76");
  // A positive budget under one byte is still a budget.
  EXPECT_EQ(parseOk(tiny(R"("memory_budget_gb": 1e-12)")).training.memoryBudgetBytes, 1);
}

TEST(ConfigForms, EosTokenList) {
  EXPECT_EQ(parseOk(tiny(R"("eos_token_id": [1, 106])")).model.eosTokenId, 1);
  EXPECT_REJECTS(tiny(R"("eos_token_id": [])"), "eos_token_id");
  EXPECT_REJECTS(tiny(R"("eos_token_id": [1, 9999])"), "eos_token_id");
}

TEST(ConfigForms, LaterEraFieldsWithNeutralValuesAreAccepted) {
  CompileConfig c = parseOk(tiny(R"("no_rope_layer_interval": 0,
      "use_sliding_window": true, "no_rope_layers": null,
      "router_entropy_coef": 0.0)"));
  EXPECT_TRUE(c.model.isMoE());
}

TEST(ConfigForms, IgnoredDeepSeekAndMetadata) {
  CompileConfig c = parseOk(tiny(R"("kv_lora_rank": 512, "q_lora_rank": 1536,
      "qk_rope_head_dim": 64, "torch_dtype": "bfloat16",
      "transformers_version": "4.52.0", "use_cache": true,
      "cache_implementation": "hybrid", "_name_or_path": "x",
      "architectures": ["G3MoEForCausalLM"], "use_bfloat16": true)"));
  EXPECT_TRUE(c.warnings.empty()) << c.warnings.front();
}

} // namespace
