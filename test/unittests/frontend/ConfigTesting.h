//===- ConfigTesting.h - shared helpers of the config tests ----*- C++ -*-===//
//
// Example paths, small JSON editing helpers and queries on a resolved
// configuration, shared by ConfigTest.cpp and ConfigErrorsTest.cpp.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_TEST_UNITTESTS_FRONTEND_CONFIGTESTING_H
#define G3MOE_TEST_UNITTESTS_FRONTEND_CONFIGTESTING_H

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

namespace g3moe_config_testing {

inline const std::string kExamples = G3MOE_EXAMPLES_DIR;

inline std::string examplePath(const std::string &rel) { return kExamples + "/" + rel; }

inline CompileConfig loadOk(const std::string &rel, std::vector<ConfigOverride> overrides = {}) {
  llvm::Expected<CompileConfig> c = loadCompileConfig(examplePath(rel), overrides);
  if (!c) {
    ADD_FAILURE() << rel << ": " << llvm::toString(c.takeError());
    return CompileConfig();
  }
  return std::move(*c);
}

inline CompileConfig parseOk(const std::string &json, std::vector<ConfigOverride> overrides = {}) {
  llvm::Expected<CompileConfig> c = parseCompileConfig(json, "inline.json", kExamples, overrides);
  if (!c) {
    ADD_FAILURE() << llvm::toString(c.takeError());
    return CompileConfig();
  }
  return std::move(*c);
}

/// The error message of a config that must be rejected ("" if accepted).
inline std::string parseErr(const std::string &json, std::vector<ConfigOverride> overrides = {}) {
  llvm::Expected<CompileConfig> c = parseCompileConfig(json, "inline.json", kExamples, overrides);
  if (c)
    return "";
  return llvm::toString(c.takeError());
}

#define EXPECT_REJECTS(json, field, ...)                                                           \
  do {                                                                                             \
    std::string msg_ = parseErr(json, ##__VA_ARGS__);                                              \
    EXPECT_NE(msg_, "") << "accepted: " << json;                                                   \
    EXPECT_EQ(msg_.rfind("inline.json: ", 0), 0u) << msg_;                                         \
    EXPECT_NE(msg_.find("field '" field "'"), std::string::npos) << msg_;                          \
  } while (false)

#define EXPECT_CONTAINS(haystack, needle)                                                          \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos)                                 \
      << "'" << (needle) << "' not in: " << (haystack)

/// The tiny G3MoE of G3MOE_SPEC.md §5 as inline JSON, complete (no field
/// left to a default that warns); `extra` holds fields (without braces) that
/// are added or replace the base ones.
inline std::string tiny(const std::string &extra = "", const std::string &type = "g3moe_text") {
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
    llvm::Expected<llvm::json::Value> more = llvm::json::parse("{" + extra + "}");
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
inline std::string without(const std::string &json, llvm::StringRef key) {
  llvm::json::Value doc = llvm::cantFail(llvm::json::parse(json));
  doc.getAsObject()->erase(key);
  return llvm::formatv("{0}", doc).str();
}

/// `json` (an object) with the fields of `extra` (without braces) added or
/// replaced.
inline std::string with(const std::string &json, const std::string &extra) {
  llvm::json::Value doc = llvm::cantFail(llvm::json::parse(json));
  llvm::json::Value more = llvm::cantFail(llvm::json::parse("{" + extra + "}"));
  for (const auto &kv : *more.getAsObject())
    (*doc.getAsObject())[kv.first] = kv.second;
  return llvm::formatv("{0}", doc).str();
}

/// A multimodal wrapper of type `type` around the text config `text`.
inline std::string wrapped(const std::string &text, const std::string &type = "gemma3") {
  return R"({"model_type": ")" + type + R"(", "text_config": )" + text +
         R"(, "vision_config": {"model_type": "siglip_vision_model"}})";
}

inline std::vector<int64_t> globalLayers(const ModelConfig &m) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < m.layers.size(); ++i)
    if (m.layers[i].attention == AttentionKind::Global)
      out.push_back(static_cast<int64_t>(i));
  return out;
}

inline std::vector<int64_t> moeLayers(const ModelConfig &m) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < m.layers.size(); ++i)
    if (m.layers[i].moe)
      out.push_back(static_cast<int64_t>(i));
  return out;
}

inline bool hasWarning(const CompileConfig &c, const std::string &needle) {
  for (const std::string &w : c.warnings)
    if (w.find(needle) != std::string::npos)
      return true;
  return false;
}

inline const std::vector<std::string> kAllSeven = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};
inline const std::vector<std::string> kMLP = {"gate_proj", "up_proj", "down_proj"};

} // namespace g3moe_config_testing

using namespace g3moe_config_testing;

#endif // G3MOE_TEST_UNITTESTS_FRONTEND_CONFIGTESTING_H
