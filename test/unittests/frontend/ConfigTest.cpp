//===- ConfigTest.cpp - tests of config loading and validation ------------===//
//
// The example configs resolve to the values of G3MOE_SPEC.md; every rejected
// value produces a message naming the file and the field; no input crashes.
//
//===----------------------------------------------------------------------===//

#include "frontend/Config.h"
#include "llvm/Support/Path.h"

#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"

#include "gtest/gtest.h"

#include <cmath>
#include <string>
#include <vector>

using namespace g3moe::frontend;

namespace {

const std::string kExamples = G3MOE_EXAMPLES_DIR;

std::string examplePath(const std::string &rel) {
  return kExamples + "/" + rel;
}

CompileConfig loadOk(const std::string &rel,
                     std::vector<ConfigOverride> overrides = {}) {
  llvm::Expected<CompileConfig> c =
      loadCompileConfig(examplePath(rel), overrides);
  if (!c) {
    ADD_FAILURE() << rel << ": " << llvm::toString(c.takeError());
    return CompileConfig();
  }
  return std::move(*c);
}

CompileConfig parseOk(const std::string &json,
                      std::vector<ConfigOverride> overrides = {}) {
  llvm::Expected<CompileConfig> c =
      parseCompileConfig(json, "inline.json", kExamples, overrides);
  if (!c) {
    ADD_FAILURE() << llvm::toString(c.takeError());
    return CompileConfig();
  }
  return std::move(*c);
}

/// The error message of a config that must be rejected ("" if accepted).
std::string parseErr(const std::string &json,
                     std::vector<ConfigOverride> overrides = {}) {
  llvm::Expected<CompileConfig> c =
      parseCompileConfig(json, "inline.json", kExamples, overrides);
  if (c)
    return "";
  return llvm::toString(c.takeError());
}

#define EXPECT_REJECTS(json, field, ...)                                       \
  do {                                                                         \
    std::string msg_ = parseErr(json, ##__VA_ARGS__);                          \
    EXPECT_NE(msg_, "") << "accepted: " << json;                               \
    EXPECT_EQ(msg_.rfind("inline.json: ", 0), 0u) << msg_;                     \
    EXPECT_NE(msg_.find("field '" field "'"), std::string::npos) << msg_;      \
  } while (false)

#define EXPECT_CONTAINS(haystack, needle)                                      \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos)             \
      << "'" << (needle) << "' not in: " << (haystack)

/// The tiny G3MoE of G3MOE_SPEC.md §5 as inline JSON, complete (no field
/// left to a default that warns); `extra` holds fields (without braces) that
/// are added or replace the base ones.
std::string tiny(const std::string &extra = "",
                 const std::string &type = "g3moe_text") {
  std::string base = R"({"model_type": ")" + type + R"(",
    "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8,
    "sliding_window_pattern": 6, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048)";
  if (type == "g3moe_text")
    base += R"(, "n_routed_experts": 4, "num_experts_per_tok": 2,
      "first_k_dense_replace": 2, "router_jitter_noise": 0.01,
      "input_jitter_noise": 0.01, "n_shared_experts": 0)";
  llvm::json::Value doc = llvm::cantFail(llvm::json::parse(base + "}"));
  llvm::json::Object &obj = *doc.getAsObject();
  if (!extra.empty()) {
    llvm::Expected<llvm::json::Value> more =
        llvm::json::parse("{" + extra + "}");
    if (!more) {
      ADD_FAILURE() << "bad test JSON: " << llvm::toString(more.takeError());
      return "";
    }
    for (const auto &kv : *more->getAsObject())
      obj[kv.first] = kv.second;
  }
  // The RoPE bases, unless the test gives them per layer type.
  if (!obj.get("rope_parameters")) {
    obj.try_emplace("rope_theta", 1000000.0);
    obj.try_emplace("rope_local_base_freq", 10000.0);
  }
  return llvm::formatv("{0}", doc).str();
}

/// `json` (an object) without the field `key`.
std::string without(const std::string &json, llvm::StringRef key) {
  llvm::json::Value doc = llvm::cantFail(llvm::json::parse(json));
  doc.getAsObject()->erase(key);
  return llvm::formatv("{0}", doc).str();
}

/// `json` (an object) with the fields of `extra` (without braces) added or
/// replaced.
std::string with(const std::string &json, const std::string &extra) {
  llvm::json::Value doc = llvm::cantFail(llvm::json::parse(json));
  llvm::json::Value more = llvm::cantFail(llvm::json::parse("{" + extra + "}"));
  for (const auto &kv : *more.getAsObject())
    (*doc.getAsObject())[kv.first] = kv.second;
  return llvm::formatv("{0}", doc).str();
}

/// A multimodal wrapper of type `type` around the text config `text`.
std::string wrapped(const std::string &text,
                    const std::string &type = "gemma3") {
  return R"({"model_type": ")" + type + R"(", "text_config": )" + text +
         R"(, "vision_config": {"model_type": "siglip_vision_model"}})";
}

std::vector<int64_t> globalLayers(const ModelConfig &m) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < m.layers.size(); ++i)
    if (m.layers[i].attention == AttentionKind::Global)
      out.push_back(static_cast<int64_t>(i));
  return out;
}

std::vector<int64_t> moeLayers(const ModelConfig &m) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < m.layers.size(); ++i)
    if (m.layers[i].moe)
      out.push_back(static_cast<int64_t>(i));
  return out;
}

bool hasWarning(const CompileConfig &c, const std::string &needle) {
  for (const std::string &w : c.warnings)
    if (w.find(needle) != std::string::npos)
      return true;
  return false;
}

const std::vector<std::string> kAllSeven = {"q_proj",   "k_proj",    "v_proj",
                                            "o_proj",   "gate_proj", "up_proj",
                                            "down_proj"};
const std::vector<std::string> kMLP = {"gate_proj", "up_proj", "down_proj"};

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
      {"presets/g3moe_sft_config.json", 4, 16, 1e-4, 10, 1, 32, 0.05, 5, 100,
       500, 3},
      {"presets/g3moe_small_dataset_config.json", 4, 16, 2e-4, 20, 2, 32, 0.10,
       5, 50, 100, 5},
      {"presets/g3moe_large_dataset_config.json", 8, 32, 1e-4, 10, 1, 32, 0.05,
       10, 100, 250, 3},
      {"presets/g3moe_120k_deepspeed_config.json", 16, 32, 5e-5, 5, 1, 64, 0.03,
       1, 50, 100, 2},
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
    EXPECT_NE(c.modelSource.find("gemma-3-4b-it/config.json"),
              std::string::npos);
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
  const char *defaulted[][2] = {
      {"vocab_size", "262208"},       {"num_attention_heads", "8"},
      {"num_key_value_heads", "4"},   {"head_dim", "256"},
      {"query_pre_attn_scalar", "256"}, {"rms_norm_eps", "1e-06"},
      {"rope_theta", "1000000"},      {"rope_local_base_freq", "10000"},
      {"sliding_window_pattern", "6"}};
  for (const auto &[field, value] : defaulted) {
    std::string needle = std::string("inline.json: field 'text_config.") +
                         field + "': absent; using Gemma3TextConfig's "
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
  CompileConfig c = parseOk(R"({"model_type": "g3moe", "text_config": )" +
                            tiny() + R"(, "vision_config": {"x": 1}})");
  EXPECT_EQ(c.model.modelType, "g3moe_text");
  EXPECT_EQ(c.model.checkpointPrefix, "language_model.");
  EXPECT_EQ(c.model.numExperts, 4);
}

TEST(ConfigForms, SharedExpertsHonouredWhenPresent) {
  EXPECT_EQ(parseOk(tiny()).model.numSharedExperts, 0);
  EXPECT_EQ(parseOk(tiny(R"("n_shared_experts": 1)")).model.numSharedExperts,
            1);
}

TEST(ConfigForms, ExpertCountAliasesAndDense) {
  CompileConfig aliased = parseOk(tiny(
      R"("num_local_experts": 4, "num_experts_per_tok": 2)", "gemma3_text"));
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
  CompileConfig legacy =
      parseOk(tiny(R"("rope_scaling": {"type": "linear", "factor": 2})"));
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
  EXPECT_TRUE(t.assistantOnlyLoss);
  EXPECT_TRUE(t.packing);
  EXPECT_TRUE(llvm::sys::path::is_absolute(t.dataset)) << t.dataset;
  EXPECT_EQ(llvm::sys::path::filename(t.dataset), "chat.jsonl");
  EXPECT_EQ(t.lora.targetModules, kAllSeven);
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

//===----------------------------------------------------------------------===//
// Validation errors: one per rule, each naming the file and the field
//===----------------------------------------------------------------------===//

TEST(ConfigErrors, NonPositiveSizes) {
  EXPECT_REJECTS(tiny(R"("hidden_size": 0)"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("vocab_size": -5)"), "vocab_size");
  EXPECT_REJECTS(tiny(R"("intermediate_size": 0)"), "intermediate_size");
  EXPECT_REJECTS(tiny(R"("num_hidden_layers": 0)"), "num_hidden_layers");
  EXPECT_REJECTS(tiny(R"("num_hidden_layers": 100000000)"),
                 "num_hidden_layers");
  EXPECT_REJECTS(tiny(R"("num_attention_heads": 0)"), "num_attention_heads");
  EXPECT_REJECTS(tiny(R"("max_position_embeddings": 0)"),
                 "max_position_embeddings");
  EXPECT_REJECTS(tiny(R"("query_pre_attn_scalar": 0)"),
                 "query_pre_attn_scalar");
  EXPECT_REJECTS(tiny(R"("rms_norm_eps": -1e-6)"), "rms_norm_eps");
}

TEST(ConfigErrors, MissingShapeFields) {
  // A model config without a shape field is an error, not Gemma3TextConfig's
  // placeholder (2304 for hidden_size).
  for (const char *field : {"hidden_size", "intermediate_size",
                            "num_hidden_layers", "vocab_size",
                            "num_attention_heads", "num_key_value_heads",
                            "head_dim"}) {
    for (const char *type : {"gemma3_text", "g3moe_text"}) {
      std::string msg = parseErr(without(tiny("", type), field));
      EXPECT_CONTAINS(msg, std::string("inline.json: field '") + field +
                               "': missing");
    }
  }
  // In a wrapper's text_config, where transformers 4.x left out fields equal
  // to the class default, only the three that no checkpoint leaves out.
  for (const char *field :
       {"hidden_size", "intermediate_size", "num_hidden_layers"}) {
    std::string msg = parseErr(wrapped(without(tiny("", "gemma3_text"), field)));
    EXPECT_CONTAINS(msg, std::string("inline.json: field 'text_config.") +
                             field + "': missing");
  }
  std::string msg =
      parseErr(wrapped(without(tiny("", "gemma3_text"), "hidden_size")));
  EXPECT_CONTAINS(msg, "2304");
  // A G3MoE must give its experts and top-k.
  EXPECT_CONTAINS(parseErr(without(tiny(), "n_routed_experts")),
                  "inline.json: field 'n_routed_experts': missing");
  EXPECT_CONTAINS(parseErr(without(tiny(), "num_experts_per_tok")),
                  "inline.json: field 'num_experts_per_tok': missing");
  EXPECT_CONTAINS(
      parseErr(wrapped(without(tiny(), "n_routed_experts"), "g3moe")),
      "inline.json: field 'text_config.n_routed_experts': missing");
}

TEST(ConfigErrors, BoundsAreStated) {
  std::string msg = parseErr(tiny(R"("vocab_size": 1099511627776)"));
  EXPECT_CONTAINS(msg, "inline.json: field 'vocab_size': must be an integer in "
                       "[1, 2147483647] (token ids are int32), got "
                       "1099511627776");
  msg = parseErr(tiny(R"("hidden_size": 1e300)"));
  EXPECT_CONTAINS(msg, "field 'hidden_size': must be an integer in [1, "
                       "2147483647], got 1");
  msg = parseErr(tiny(R"("num_hidden_layers": 100000000)"));
  EXPECT_CONTAINS(msg, "must be an integer in [1, 4096], got 100000000");
  msg = parseErr(tiny(R"("max_position_embeddings": 4294967296)"));
  EXPECT_CONTAINS(msg, "[1, 2147483647] (positions are int32)");
  msg = parseErr(tiny(R"("n_routed_experts": 100000)"));
  EXPECT_CONTAINS(msg, "must be an integer in [0, 65536], got 100000");
  msg = parseErr(tiny(R"("first_k_dense_replace": 7)"));
  EXPECT_CONTAINS(msg, "[0, 6] (num_hidden_layers), got 7");
  msg = parseErr(tiny(R"("micro_batch": 4294967296)"));
  EXPECT_CONTAINS(msg, "field 'micro_batch': must be an integer in [1, "
                       "2147483647], got 4294967296");
  msg = parseErr(R"({"model_name_or_path": "tiny-g3moe", "lora_r": 0})");
  EXPECT_CONTAINS(msg, "field 'lora_r': must be an integer in [1, "
                       "2147483647], got 0");
  msg = parseErr(R"({"model_name_or_path": "tiny-g3moe", "seed": 1e19})");
  EXPECT_CONTAINS(msg, "field 'seed': must be an integer between -9e18 and "
                       "9e18");
  msg = parseErr(
      R"({"model_name_or_path": "tiny-g3moe", "memory_budget_gb": 1e7})");
  EXPECT_CONTAINS(msg, "in (0, 1e6]");
}

TEST(ConfigErrors, StepSizeBounded) {
  // Each size within its bound, their products not: elements x bytes would
  // overflow 64 bits.
  std::string msg = parseErr(
      tiny(R"("vocab_size": 2147483647, "hidden_size": 2147483647)"));
  EXPECT_CONTAINS(msg, "inline.json: field 'hidden_size': is 2147483647, "
                       "which makes the step too large");
  EXPECT_CONTAINS(msg, "2^52");
  msg = parseErr(tiny(R"("micro_batch": 2147483647)"));
  EXPECT_CONTAINS(msg, "field 'micro_batch': is 2147483647, which makes");
  msg = parseErr(tiny(R"("n_routed_experts": 65536, "intermediate_size":
      2147483647, "hidden_size": 65536)"));
  EXPECT_CONTAINS(msg, "field 'intermediate_size'");
  // The defaulted sequence length is named the way presets spell it.
  msg = parseErr(tiny(R"("num_hidden_layers": 1024,
      "intermediate_size": 2147483647)", "gemma3_text"));
  EXPECT_CONTAINS(msg, "field 'max_seq_length': is 2048 (the default");
  // The largest real configurations pass: 256 experts on Gemma-3-4B, and
  // the 4B at 128K tokens.
  EXPECT_EQ(parseErr(R"({"model_name_or_path": "gemma-3-4b-it",
      "g3moe_params": {"n_routed_experts": 256, "num_experts_per_tok": 2}})"),
            "");
  loadOk("g3moe-4b/config.json", {{"seq_len", "131072"}, {"micro_batch", "8"}});
}

TEST(ConfigErrors, HeadsNotMultipleOfKVHeads) {
  EXPECT_REJECTS(tiny(R"("num_key_value_heads": 3)"), "num_key_value_heads");
}

TEST(ConfigErrors, TopKAboveExpertCount) {
  EXPECT_REJECTS(tiny(R"("router_type": "softmax_topk", "n_routed_experts": 2,
      "num_experts_per_tok": 3)"),
                 "num_experts_per_tok");
}

TEST(ConfigErrors, SparseMixerNeedsTopTwo) {
  EXPECT_REJECTS(tiny(R"("num_experts_per_tok": 1)"), "num_experts_per_tok");
  std::string msg = parseErr(tiny(R"("num_experts_per_tok": 4)"));
  EXPECT_CONTAINS(msg, "inline.json: field 'num_experts_per_tok'");
  EXPECT_CONTAINS(msg, "sparsemixer");
}

TEST(ConfigErrors, TopkGroupAboveGroupCount) {
  // The seed's g3moe_params (n_group 4, topk_group 8), §7 D12.
  EXPECT_REJECTS(tiny(R"("n_group": 4, "topk_group": 8)"), "topk_group");
}

TEST(ConfigErrors, GroupsMustDivideExperts) {
  EXPECT_REJECTS(tiny(R"("router_type": "sigmoid_grouped",
      "n_routed_experts": 6, "n_group": 4, "topk_group": 2)"),
                 "n_group");
}

TEST(ConfigErrors, FirstKDenseReplaceOutOfRange) {
  EXPECT_REJECTS(tiny(R"("first_k_dense_replace": 7)"),
                 "first_k_dense_replace");
  EXPECT_REJECTS(tiny(R"("first_k_dense_replace": -1)"),
                 "first_k_dense_replace");
  // first_k == L is allowed: every layer dense.
  EXPECT_TRUE(
      moeLayers(parseOk(tiny(R"("first_k_dense_replace": 6)")).model).empty());
}

TEST(ConfigErrors, UnsupportedRopeTypes) {
  std::string msg =
      parseErr(tiny(R"("rope_scaling": {"rope_type": "yarn", "factor": 8.0})"));
  EXPECT_CONTAINS(msg, "inline.json: field 'rope_scaling.rope_type'");
  EXPECT_CONTAINS(msg, "not supported");
  EXPECT_REJECTS(tiny(R"("rope_scaling": {"type": "dynamic", "factor": 2})"),
                 "rope_scaling.type");
  EXPECT_REJECTS(tiny(R"("rope_parameters": {"full_attention":
      {"rope_type": "llama3", "factor": 8}})"),
                 "rope_parameters.full_attention.rope_type");
  EXPECT_REJECTS(tiny(R"("rope_parameters": {"rope_type": "longrope"})"),
                 "rope_parameters.rope_type");
  EXPECT_REJECTS(wrapped(tiny(R"("rope_scaling":
      {"rope_type": "yarn", "factor": 8})", "gemma3_text")),
                 "text_config.rope_scaling.rope_type");
  EXPECT_REJECTS(tiny(R"("rope_parameters": {"chunked_attention": {}})"),
                 "rope_parameters.chunked_attention");
}

TEST(ConfigErrors, LinearFactorMustBePositive) {
  EXPECT_REJECTS(
      tiny(R"("rope_scaling": {"rope_type": "linear", "factor": 0})"),
      "rope_scaling.factor");
  EXPECT_REJECTS(
      tiny(R"("rope_scaling": {"rope_type": "linear", "factor": -2})"),
      "rope_scaling.factor");
  EXPECT_REJECTS(tiny(R"("rope_scaling": {"rope_type": "linear"})"),
                 "rope_scaling.factor");
  EXPECT_REJECTS(tiny(R"("rope_parameters": {"full_attention":
      {"rope_type": "linear", "factor": 0}})"),
                 "rope_parameters.full_attention.factor");
}

TEST(ConfigErrors, ConflictingRopeDescriptions) {
  EXPECT_REJECTS(tiny(R"("rope_scaling": {"rope_type": "linear", "factor": 8},
      "rope_parameters": {"full_attention": {"rope_type": "linear",
      "factor": 4}})"),
                 "rope_scaling");
  EXPECT_REJECTS(tiny(R"("rope_theta": 10000.0, "rope_parameters":
      {"full_attention": {"rope_type": "default", "rope_theta": 1e6}})"),
                 "rope_theta");
}

TEST(ConfigErrors, MissingRequiredFields) {
  EXPECT_REJECTS(R"({"model_config": {"lora_r": 8}})",
                 "model_config.model_name_or_path");
  EXPECT_REJECTS(R"({"learning_rate": 1e-4, "lora_r": 8})",
                 "model_name_or_path");
  EXPECT_REJECTS(R"({"model_type": "gemma3"})", "text_config");
  EXPECT_REJECTS(R"({"model_type": "g3moe", "text_config": null})",
                 "text_config");
  EXPECT_REJECTS(R"({"hidden_size": 64})", "model_type");
  std::string msg = parseErr(R"({"model_type": "llama"})");
  EXPECT_CONTAINS(msg, "inline.json: field 'model_type'");
  EXPECT_CONTAINS(msg, "gemma3_text, gemma3, g3moe, g3moe_text");
}

TEST(ConfigErrors, SlidingWindow) {
  EXPECT_REJECTS(tiny(R"("sliding_window": 0)"), "sliding_window");
  EXPECT_REJECTS(tiny(R"("sliding_window": null)"), "sliding_window");
  EXPECT_REJECTS(tiny(R"("sliding_window_pattern": 0)"),
                 "sliding_window_pattern");
}

TEST(ConfigErrors, OddHeadDim) {
  EXPECT_REJECTS(tiny(R"("head_dim": 15)"), "head_dim");
}

TEST(ConfigErrors, SeqLenOutOfRange) {
  EXPECT_REJECTS(tiny(R"("seq_len": 0)"), "seq_len");
  EXPECT_REJECTS(tiny(R"("seq_len": 4096)"), "seq_len");
  // The default 2048 does not fit a model with 1024 positions.
  EXPECT_REJECTS(tiny(R"("max_position_embeddings": 1024)"), "max_seq_length");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "max_seq_length": 200000})",
                 "max_seq_length");
  std::string msg = parseErr(tiny(), {{"seq_len", "0"}});
  EXPECT_CONTAINS(msg, "field 'seq_len'");
  EXPECT_CONTAINS(msg, "--set seq_len=0");
}

TEST(ConfigErrors, MicroBatch) {
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "per_device_train_batch_size": 0})",
                 "per_device_train_batch_size");
  EXPECT_REJECTS(tiny(R"("micro_batch": -1)"), "micro_batch");
}

TEST(ConfigErrors, Lora) {
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "lora_r": 0})",
                 "lora_r");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "lora_dropout": 1.0})",
                 "lora_dropout");
  EXPECT_REJECTS(
      R"({"model_name_or_path": "tiny-g3moe", "lora_dropout": -0.1})",
      "lora_dropout");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "lora_target_modules": ["gate_proj", "gate"]})",
                 "lora_target_modules");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "target_modules": ["router"]})",
                 "target_modules");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "lora_target_modules": []})",
                 "lora_target_modules");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "lora_alpha": 0})",
                 "lora_alpha");
  CompileConfig all = parseOk(R"({"model_name_or_path": "tiny-g3moe",
      "lora_target_modules": ["all-linear"]})");
  EXPECT_EQ(all.training.lora.targetModules, kAllSeven);
  CompileConfig csv = parseOk(R"({"model_name_or_path": "tiny-g3moe",
      "target_modules": "q_proj, v_proj"})");
  EXPECT_EQ(csv.training.lora.targetModules,
            (std::vector<std::string>{"q_proj", "v_proj"}));
}

TEST(ConfigErrors, Scheduler) {
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "lr_scheduler_type": "polynomial"})",
                 "lr_scheduler_type");
  EXPECT_EQ(parseOk(R"({"model_name_or_path": "tiny-g3moe",
      "lr_scheduler_type": "constant_with_warmup"})")
                .training.lrSchedulerType,
            "constant_with_warmup");
}

TEST(ConfigErrors, Finetuning) {
  EXPECT_REJECTS(tiny(R"("finetuning": "qlora")"), "finetuning");
  EXPECT_EQ(parseOk(R"({"model_name_or_path": "tiny-g3moe",
      "use_lora": false})")
                .training.finetuning,
            "full");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "use_lora": true,
      "finetuning": "full"})",
                 "use_lora");
}

TEST(ConfigErrors, WarmupRatio) {
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "warmup_ratio": 1.5})",
                 "warmup_ratio");
  EXPECT_REJECTS(
      R"({"model_name_or_path": "tiny-g3moe", "warmup_ratio": -0.1})",
      "warmup_ratio");
}

TEST(ConfigErrors, GradientAccumulation) {
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "gradient_accumulation_steps": 0})",
                 "gradient_accumulation_steps");
}

TEST(ConfigErrors, OtherTrainingValues) {
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "learning_rate": -1})",
                 "learning_rate");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "adam_beta2": 1.0})",
                 "adam_beta2");
  EXPECT_REJECTS(
      R"({"model_name_or_path": "tiny-g3moe", "num_train_epochs": 0})",
      "num_train_epochs");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "max_steps": 0})",
                 "max_steps");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "fp16": true})",
                 "fp16");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "bf16": false})",
                 "bf16");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "optim": "sgd"})",
                 "optim");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "evaluation_strategy": "sometimes"})",
                 "evaluation_strategy");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "neftune_noise_alpha": 5})",
                 "neftune_noise_alpha");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "memory_budget_gb": 0})",
                 "memory_budget_gb");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "eval_strategy": "steps", "evaluation_strategy": "epoch"})",
                 "evaluation_strategy");
}

TEST(ConfigErrors, UnsupportedModelFeatures) {
  EXPECT_REJECTS(tiny(R"("hidden_activation": "gelu")"), "hidden_activation");
  EXPECT_REJECTS(tiny(R"("hidden_act": "silu")"), "hidden_act");
  EXPECT_EQ(parseErr(tiny(R"("hidden_activation": "gelu_tanh")")), "");
  EXPECT_REJECTS(tiny(R"("attention_bias": true)"), "attention_bias");
  EXPECT_REJECTS(tiny(R"("attention_dropout": 0.1)"), "attention_dropout");
  EXPECT_REJECTS(tiny(R"("attn_logit_softcapping": -1)"),
                 "attn_logit_softcapping");
  EXPECT_REJECTS(tiny(R"("final_logit_softcapping": 0)"),
                 "final_logit_softcapping");
  EXPECT_REJECTS(tiny(R"("router_type": "expert_choice")"), "router_type");
  EXPECT_REJECTS(tiny(R"("use_bidirectional_attention": true)"),
                 "use_bidirectional_attention");
  EXPECT_REJECTS(tiny(R"("quantization_config": {"bits": 4})"),
                 "quantization_config");
  EXPECT_REJECTS(tiny(R"("pad_token_id": 512)"), "pad_token_id");
  EXPECT_REJECTS(tiny(R"("input_jitter_noise": -0.5)"), "input_jitter_noise");
  EXPECT_REJECTS(tiny(R"("router_aux_loss_coef": -1)"), "router_aux_loss_coef");
  EXPECT_REJECTS(tiny(R"("n_shared_experts": -1)"), "n_shared_experts");
  EXPECT_REJECTS(tiny(R"("rope_theta": 0)"), "rope_theta");
  EXPECT_REJECTS(tiny(R"("rope_parameters": {"full_attention":
      {"rope_type": "default", "partial_rotary_factor": 0.25}})"),
                 "rope_parameters.full_attention.partial_rotary_factor");
}

TEST(ConfigErrors, LayerTypes) {
  EXPECT_REJECTS(tiny(R"("layer_types": ["full_attention"])"), "layer_types");
  EXPECT_REJECTS(tiny(R"("layer_types": ["sliding_attention",
      "sliding_attention", "chunked_attention", "sliding_attention",
      "sliding_attention", "full_attention"])"),
                 "layer_types");
  EXPECT_REJECTS(tiny(R"("layer_types": "full_attention")"), "layer_types");
}

TEST(ConfigErrors, LaterEraFields) {
  const char *fields[] = {R"("ema_alpha": 0.99)",
                          R"("balancing_strength": 0.01)",
                          R"("no_rope_layer_interval": 4)",
                          R"("no_rope_layers": [1, 0, 1])",
                          R"("use_sliding_window": false)",
                          R"("router_dim": 128)",
                          R"("ortho_loss_coef": 0.01)",
                          R"("specialization_strength": 0.01)",
                          R"("router_entropy_coef": 0.003)",
                          R"("usage_uniformity_coef": 0.001)",
                          R"("gslb_coef": 0.05)",
                          R"("routing_temperature": 1.0)",
                          R"("ortho_strength": 1.0)"};
  for (const char *f : fields) {
    std::string msg = parseErr(tiny(f));
    std::string name =
        std::string(f).substr(1, std::string(f).find('"', 1) - 1);
    EXPECT_CONTAINS(msg, "inline.json: field '" + name + "'");
    EXPECT_CONTAINS(msg, "later G3MoE design");
  }
}

TEST(ConfigErrors, WrapperTopLevelModelFields) {
  std::string msg = parseErr(R"({"model_type": "g3moe", "text_config": )" +
                             tiny() + R"(, "hidden_size": 2304})");
  EXPECT_CONTAINS(msg, "inline.json: field 'hidden_size'");
  EXPECT_CONTAINS(msg, "text_config");
  EXPECT_REJECTS(R"({"model_type": "gemma3", "text_config":
      {"model_type": "g3moe_text"}})",
                 "text_config.model_type");
}

TEST(ConfigErrors, ModelNotOnDisk) {
  std::string msg =
      parseErr(R"({"model_name_or_path": "google/gemma-3-4b-it"})");
  EXPECT_CONTAINS(msg, "inline.json: field 'model_name_or_path'");
  EXPECT_CONTAINS(msg, "does not download");
  EXPECT_CONTAINS(msg, "local checkpoint directory");
  EXPECT_REJECTS(R"({"model_config": {"model_name_or_path": "nowhere"}})",
                 "model_config.model_name_or_path");
  EXPECT_REJECTS(R"({"model_name_or_path": 42})", "model_name_or_path");
  // A directory without config.json.
  EXPECT_REJECTS(R"({"model_name_or_path": "presets/.."})",
                 "model_name_or_path");
  // A preset pointing at a preset.
  EXPECT_REJECTS(R"({"model_name_or_path": "presets/g3moe_sft_config.json"})",
                 "model_name_or_path");
}

TEST(ConfigErrors, ModelFieldInPresetBody) {
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "num_experts_per_tok": 2})",
                 "num_experts_per_tok");
}

TEST(ConfigErrors, G3MoEParamsNamedWithTheirPath) {
  EXPECT_REJECTS(R"({"model_config": {"model_name_or_path": "gemma-3-4b-it",
      "g3moe_params": {"n_routed_experts": 2, "num_experts_per_tok": 3}}})",
                 "model_config.g3moe_params.num_experts_per_tok");
  EXPECT_REJECTS(R"({"model_name_or_path": "gemma-3-4b-it",
      "g3moe_params": {"n_routed_experts": 2, "num_experts_per_tok": 2,
      "n_group": 4, "topk_group": 8}})",
                 "g3moe_params.topk_group");
  // Upcycling a dense model needs the expert count and top-k: the G3MoE
  // class defaults (256 experts, top-8) are not used silently.
  std::string msg = parseErr(R"({"model_name_or_path": "tiny-gemma3",
      "g3moe_params": {"first_k_dense_replace": 2}})");
  EXPECT_CONTAINS(msg, "inline.json: field 'g3moe_params.n_routed_experts': "
                       "missing");
  msg = parseErr(R"({"model_name_or_path": "tiny-gemma3",
      "g3moe_params": {"n_routed_experts": 2}})");
  EXPECT_CONTAINS(msg, "inline.json: field 'g3moe_params.num_experts_per_tok': "
                       "missing");
  EXPECT_REJECTS(R"({"model_name_or_path": "gemma-3-4b-it",
      "g3moe_params": {"n_routed_experts": 2, "ema_alpha": 0.9}})",
                 "g3moe_params.ema_alpha");
  EXPECT_REJECTS(R"({"model_name_or_path": "gemma-3-4b-it",
      "g3moe_params": [1]})",
                 "g3moe_params");
}

TEST(ConfigErrors, ErrorsInTheReferencedModelFileNameThatFile) {
  llvm::Expected<CompileConfig> c = parseCompileConfig(
      R"({"model_name_or_path": "gemma-3-4b-it"})", "inline.json", kExamples,
      {{"training.seq_len", "7"}, {"head_dim", "255"}});
  ASSERT_FALSE(static_cast<bool>(c));
  std::string msg = llvm::toString(c.takeError());
  EXPECT_CONTAINS(msg, "field 'head_dim'");
  EXPECT_CONTAINS(msg, "--set head_dim=255");
}

//===----------------------------------------------------------------------===//
// Malformed JSON and wrong types
//===----------------------------------------------------------------------===//

TEST(ConfigJson, Malformed) {
  std::string msg = parseErr(R"({"model_type": "gemma3_text", })");
  EXPECT_CONTAINS(msg, "inline.json: invalid JSON: ");
  msg = parseErr("{\"model_type\": \"gemma3_text\",\n  \"hidden_size\": }");
  EXPECT_CONTAINS(msg, "inline.json: invalid JSON: [2:");
  EXPECT_CONTAINS(parseErr(""), "inline.json: invalid JSON");
  EXPECT_CONTAINS(parseErr("[1, 2]"), "inline.json: ");
  EXPECT_CONTAINS(parseErr("null"), "inline.json: ");
  EXPECT_CONTAINS(parseErr("\"gemma\""), "inline.json: ");
  EXPECT_CONTAINS(parseErr(std::string(100000, '[')),
                  "inline.json: invalid JSON");
  EXPECT_CONTAINS(parseErr(std::string(100000, '{')),
                  "inline.json: invalid JSON");
  EXPECT_CONTAINS(parseErr("{\"a\": \"\xff\xfe\"}"),
                  "inline.json: invalid JSON");
}

TEST(ConfigJson, WrongTypes) {
  EXPECT_REJECTS(tiny(R"("hidden_size": "2560")"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": 64.5)"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": null)"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": [64])"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": true)"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": 1e300)"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": 99999999999999999999999)"),
                 "hidden_size");
  EXPECT_REJECTS(tiny(R"("n_routed_experts": true)"), "n_routed_experts");
  EXPECT_REJECTS(tiny(R"("rope_theta": "1e6")"), "rope_theta");
  EXPECT_REJECTS(tiny(R"("rope_scaling": "linear")"), "rope_scaling");
  EXPECT_REJECTS(tiny(R"("rope_scaling": {"rope_type": 3})"),
                 "rope_scaling.rope_type");
  EXPECT_REJECTS(tiny(R"("rope_parameters": 8)"), "rope_parameters");
  EXPECT_REJECTS(tiny(R"("tie_word_embeddings": "yes")"),
                 "tie_word_embeddings");
  EXPECT_REJECTS(tiny(R"("router_type": 1)"), "router_type");
  EXPECT_REJECTS(tiny(R"("model_type": 3)"), "model_type");
  EXPECT_REJECTS(R"({"model_type": "gemma3", "text_config": 5})",
                 "text_config");
  EXPECT_REJECTS(R"({"model_type": ["gemma3_text"]})", "model_type");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "learning_rate":
      "fast"})",
                 "learning_rate");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "seed": 4.5})",
                 "seed");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "packing": "no"})",
                 "packing");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "lora_target_modules": [1]})",
                 "lora_target_modules");
  EXPECT_REJECTS(R"({"model_config": "tiny-g3moe"})", "model_config");
  EXPECT_REJECTS(R"({"model_config": {"model_name_or_path": "tiny-g3moe"},
      "training_config": [1]})",
                 "training_config");
  // Null for a training option means "use the default", as HfArgumentParser.
  EXPECT_EQ(parseOk(R"({"model_name_or_path": "tiny-g3moe",
      "max_seq_length": null})")
                .training.seqLen,
            2048);
}

/// Every top-level field of every example replaced by values of every JSON
/// type: the loader must answer, never crash, and name the file.
TEST(ConfigJson, NoCrashOnMutatedExamples) {
  const char *files[] = {"tiny-g3moe/config.json", "gemma-3-4b-it/config.json",
                         "gemma-3-4b-it-v5/config.json",
                         "presets/g3moe_training_config.json",
                         "presets/g3moe_sft_config.json"};
  const char *values[] = {"null",   "true",        "-1", "0",
                          "1e308",  "\"x\"",       "[]", "{}",
                          "[null]", "{\"a\": []}", "3.5"};
  for (const char *file : files) {
    auto buffer = llvm::MemoryBuffer::getFile(examplePath(file));
    ASSERT_TRUE(static_cast<bool>(buffer)) << file;
    llvm::Expected<llvm::json::Value> doc =
        llvm::json::parse((*buffer)->getBuffer());
    ASSERT_TRUE(static_cast<bool>(doc)) << file;
    std::string dir = examplePath(file);
    dir = dir.substr(0, dir.rfind('/'));
    std::vector<std::string> keys;
    for (const auto &kv : *doc->getAsObject())
      keys.push_back(kv.first.str());
    for (const std::string &key : keys)
      for (const char *value : values) {
        llvm::json::Value mutated = *doc;
        (*mutated.getAsObject())[key] =
            llvm::cantFail(llvm::json::parse(value));
        std::string text = llvm::formatv("{0}", mutated).str();
        llvm::Expected<CompileConfig> c =
            parseCompileConfig(text, "mutated.json", dir);
        if (!c) {
          std::string msg = llvm::toString(c.takeError());
          EXPECT_TRUE(msg.find("mutated.json") != std::string::npos ||
                      msg.find(".json: field") != std::string::npos)
              << key << "=" << value << ": " << msg;
        }
        // The same value as an override.
        llvm::Expected<CompileConfig> o = parseCompileConfig(
            (*buffer)->getBuffer(), "override.json", dir, {{key, value}});
        if (!o) {
          EXPECT_CONTAINS(llvm::toString(o.takeError()), ".json");
        }
      }
  }
}

//===----------------------------------------------------------------------===//
// Overrides
//===----------------------------------------------------------------------===//

TEST(ConfigOverrides, ModelAndTrainingKeys) {
  CompileConfig c = loadOk("tiny-g3moe/config.json",
                           {{"learning_rate", "3e-4"},
                            {"training.lora_r", "8"},
                            {"model.n_routed_experts", "8"},
                            {"router_type", "softmax_topk"},
                            {"num_experts_per_tok", "4"},
                            {"lora_target_modules", "q_proj,v_proj"},
                            {"seq_len", "512"},
                            {"dataset", "data/chat.jsonl"}});
  EXPECT_DOUBLE_EQ(c.training.learningRate, 3e-4);
  EXPECT_EQ(c.training.lora.rank, 8);
  EXPECT_EQ(c.model.numExperts, 8);
  EXPECT_EQ(c.model.router, RouterKind::SoftmaxTopK);
  EXPECT_EQ(c.model.topK, 4);
  EXPECT_EQ(c.training.lora.targetModules,
            (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.training.seqLen, 512);
  EXPECT_EQ(c.training.dataset, "data/chat.jsonl");
}

TEST(ConfigOverrides, WrapperGoesIntoTextConfig) {
  CompileConfig c =
      loadOk("gemma-3-4b-it/config.json", {{"sliding_window", "512"},
                                           {"n_routed_experts", "3"},
                                           {"num_experts_per_tok", "2"},
                                           {"first_k_dense_replace", "8"}});
  EXPECT_EQ(c.model.slidingWindow, 512);
  EXPECT_EQ(c.model.numExperts, 3);
  EXPECT_EQ(c.model.modelType, "g3moe_text");
  EXPECT_EQ(c.model.checkpointPrefix, "language_model.");
  EXPECT_EQ(moeLayers(c.model).size(), 26u);
}

TEST(ConfigOverrides, PresetTrainingAndModel) {
  CompileConfig c = loadOk("presets/g3moe_sft_config.json",
                           {{"max_seq_length", "8192"},
                            {"gradient_accumulation_steps", "4"},
                            {"n_routed_experts", "3"}});
  EXPECT_EQ(c.training.seqLen, 8192);
  EXPECT_EQ(c.training.gradientAccumulationSteps, 4);
  EXPECT_EQ(c.model.numExperts, 3);
  EXPECT_EQ(c.training.lora.rank, 4);
}

TEST(ConfigOverrides, DottedKeysEditObjects) {
  CompileConfig c = loadOk("gemma-3-4b-it-v5/config.json",
                           {{"rope_parameters.full_attention.factor", "4"}});
  EXPECT_DOUBLE_EQ(c.model.globalRope.factor, 4.0);
  EXPECT_DOUBLE_EQ(c.model.globalRope.theta, 1e6);
  CompileConfig theta =
      loadOk("gemma-3-4b-it-v5/config.json", {{"rope_theta", "500000"}});
  EXPECT_DOUBLE_EQ(theta.model.globalRope.theta, 5e5);
  CompileConfig scaled =
      loadOk("gemma-3-4b-it/config.json", {{"rope_scaling.factor", "2"}});
  EXPECT_DOUBLE_EQ(scaled.model.globalRope.factor, 2.0);
  CompileConfig pattern =
      loadOk("gemma-3-4b-it-v5/config.json", {{"sliding_window_pattern", "2"}});
  EXPECT_EQ(globalLayers(pattern.model).size(), 17u);
}

TEST(ConfigOverrides, InvalidOverrideNamesField) {
  std::string msg;
  llvm::Expected<CompileConfig> c = loadCompileConfig(
      examplePath("tiny-g3moe/config.json"), {{"num_experts_per_tok", "4"}});
  ASSERT_FALSE(static_cast<bool>(c));
  msg = llvm::toString(c.takeError());
  EXPECT_CONTAINS(msg, "tiny-g3moe/config.json: field 'num_experts_per_tok'");
  EXPECT_CONTAINS(msg, "--set num_experts_per_tok=4");
  EXPECT_CONTAINS(msg, "sparsemixer");

  EXPECT_REJECTS(tiny(), "hidden_size", {{"hidden_size", "big"}});
  EXPECT_REJECTS(tiny(), "warmup_ratio", {{"training.warmup_ratio", "2"}});
  EXPECT_REJECTS(tiny(), "no_such_field", {{"no_such_field", "1"}});
  EXPECT_REJECTS(tiny(), "learning_rate", {{"model.learning_rate", "1"}});
  EXPECT_REJECTS(tiny(), "hidden_size", {{"training.hidden_size", "1"}});
  EXPECT_REJECTS(tiny(), "ema_alpha", {{"ema_alpha", "0.9"}});
  EXPECT_REJECTS(tiny(), "hidden_size", {{"hidden_size.x", "1"}});
  EXPECT_REJECTS(tiny(), "", {{"", "1"}});
}

//===----------------------------------------------------------------------===//
// Warnings
//===----------------------------------------------------------------------===//

TEST(ConfigWarnings, UnknownFields) {
  CompileConfig c = parseOk(tiny(R"("foo_bar": 1)"));
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_CONTAINS(c.warnings[0], "inline.json: field 'foo_bar'");
  EXPECT_CONTAINS(c.warnings[0], "unknown");

  CompileConfig wrapper = parseOk(R"({"model_type": "gemma3", "text_config": )" +
                                  tiny(R"("bar": 2)", "gemma3_text") +
                                  R"(, "baz": 3, "vision_config": {"anything": 1}})");
  EXPECT_TRUE(hasWarning(wrapper, "inline.json: field 'text_config.bar'"));
  EXPECT_TRUE(hasWarning(wrapper, "inline.json: field 'baz'"));
  EXPECT_FALSE(hasWarning(wrapper, "vision_config"));
  EXPECT_EQ(wrapper.warnings.size(), 2u);

  CompileConfig preset = parseOk(R"({"model_config": {"model_name_or_path":
      "tiny-g3moe", "mystery": 1}, "data_config": {"dataset_name": "d",
      "odd": true}, "training_config": {"learning_rate": 1e-4,
      "strange": 0}, "_comment": "hi"})");
  EXPECT_TRUE(hasWarning(preset, "field 'model_config.mystery'"));
  EXPECT_TRUE(hasWarning(preset, "field 'data_config.odd'"));
  EXPECT_TRUE(hasWarning(preset, "field 'training_config.strange'"));
  EXPECT_EQ(preset.warnings.size(), 3u);
  EXPECT_EQ(llvm::sys::path::filename(preset.training.dataset), "d");
}

TEST(ConfigWarnings, DefaultedFieldsAreNamed) {
  // Fields HF's class defaults and checkpoints rely on: the default is used,
  // and the warning names the field and the value.
  const char *defaults[][3] = {
      {"rms_norm_eps", "Gemma3TextConfig", "1e-06"},
      {"query_pre_attn_scalar", "Gemma3TextConfig", "256"},
      {"sliding_window", "Gemma3TextConfig", "4096"},
      {"rope_theta", "Gemma3TextConfig", "1000000"},
      {"rope_local_base_freq", "Gemma3TextConfig", "10000"},
      {"sliding_window_pattern", "Gemma3TextConfig", "6"}};
  for (const auto &[field, cls, value] : defaults) {
    CompileConfig c = parseOk(without(tiny("", "gemma3_text"), field));
    ASSERT_EQ(c.warnings.size(), 1u) << field;
    EXPECT_CONTAINS(c.warnings[0], std::string("inline.json: field '") +
                                       field + "': absent; using " + cls +
                                       "'s default, " + value);
  }
  // layer_types stands in for the pattern, rope_parameters for the thetas.
  CompileConfig v5 = parseOk(without(
      without(without(tiny(R"("layer_types": ["sliding_attention",
      "sliding_attention", "sliding_attention", "sliding_attention",
      "sliding_attention", "full_attention"], "rope_parameters":
      {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
      "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})",
                           "gemma3_text"),
                      "sliding_window_pattern"),
              "rope_theta"),
      "rope_local_base_freq"));
  EXPECT_TRUE(v5.warnings.empty()) << v5.warnings.front();

  // MoE fields of G3MoETextConfig.
  CompileConfig k = parseOk(without(tiny(), "first_k_dense_replace"));
  EXPECT_TRUE(hasWarning(k, "field 'first_k_dense_replace': absent; using "
                            "G3MoETextConfig's default, 3"));
  EXPECT_EQ(moeLayers(k.model), (std::vector<int64_t>{3, 4, 5}));
  CompileConfig shared = parseOk(without(tiny(), "n_shared_experts"));
  EXPECT_TRUE(hasWarning(shared, "field 'n_shared_experts': absent; using 0"));
  EXPECT_EQ(shared.model.numSharedExperts, 0);
  CompileConfig aux = parseOk(without(tiny(R"("load_balancing_loss": true)"),
                                      "router_aux_loss_coef"));
  EXPECT_TRUE(hasWarning(aux, "field 'router_aux_loss_coef': absent; using "
                              "G3MoETextConfig's default, 0.001"));
  CompileConfig grouped = parseOk(tiny(R"("router_type": "sigmoid_grouped",
      "n_routed_experts": 8)"));
  EXPECT_TRUE(hasWarning(grouped, "field 'n_group': absent"));
  EXPECT_TRUE(hasWarning(grouped, "field 'topk_group': absent"));
  EXPECT_TRUE(hasWarning(grouped, "field 'routed_scaling_factor': absent"));
  EXPECT_TRUE(hasWarning(grouped, "field 'norm_topk_prob': absent"));
  // Fields the same in every Gemma-3 checkpoint, or that only bound or
  // initialise, are used silently.
  CompileConfig quiet = parseOk(without(
      without(without(without(tiny("", "gemma3_text"), "pad_token_id"),
                      "tie_word_embeddings"),
              "initializer_range"),
      "max_position_embeddings"));
  EXPECT_TRUE(quiet.warnings.empty()) << quiet.warnings.front();
}

TEST(ConfigWarnings, TransformersPrivateFieldsAreIgnored) {
  CompileConfig c = parseOk(tiny(R"("_sliding_window_pattern": 2,
      "_attn_implementation": "eager", "_experts_implementation": null)"));
  EXPECT_TRUE(c.warnings.empty()) << c.warnings.front();
  // transformers derives the layer types from sliding_window_pattern, never
  // from _sliding_window_pattern.
  EXPECT_EQ(globalLayers(c.model), (std::vector<int64_t>{5}));
}

TEST(ConfigWarnings, IgnoredButNotable) {
  CompileConfig dense =
      parseOk(tiny(R"("num_experts_per_tok": 2)", "gemma3_text"));
  EXPECT_TRUE(hasWarning(dense, "field 'num_experts_per_tok'"));
  CompileConfig sparse = parseOk(tiny(R"("n_group": 1, "topk_group": 1)"));
  EXPECT_TRUE(hasWarning(sparse, "field 'n_group'"));
  CompileConfig later = parseOk(R"({"model_name_or_path": "tiny-g3moe",
      "deepspeed": "zero3.json", "gradient_checkpointing_kwargs":
      {"use_reentrant": false}})");
  EXPECT_TRUE(hasWarning(later, "field 'deepspeed'"));
  EXPECT_TRUE(hasWarning(later, "field 'gradient_checkpointing_kwargs'"));
}

} // namespace
