//===- ConfigFuzzer.cpp - fuzz target: the config reader ------------------===//
//
// The input is a config file as g3moe-compile reads it: an HF config.json or
// a training preset, whose model path resolves against examples/presets (so
// the presets' "../gemma-3-4b-it" finds a real model config). A short input
// is also tried as a --set override on the tiny G3MoE config: "key=value"
// (dotted keys edit inside a field), or without '=' the value of a key chosen
// by its length.
//
//===----------------------------------------------------------------------===//

#include "FuzzSupport.h"

#include "frontend/Config.h"

#include "llvm/Support/MemoryBuffer.h"

#include <iterator>
#include <string>

namespace {

using namespace g3moe::frontend;

void parse(llvm::StringRef text, llvm::StringRef baseDir,
           llvm::ArrayRef<ConfigOverride> overrides = {}) {
  llvm::Expected<CompileConfig> config = parseCompileConfig(text, "fuzz.json", baseDir, overrides);
  if (!config)
    llvm::consumeError(config.takeError());
}

/// Keys of differing kinds: integers, floats, strings, lists, objects, both
/// parts, and an unknown key.
const char *const kOverrideKeys[] = {
    "num_hidden_layers", "lora_r",           "model.n_routed_experts", "training.learning_rate",
    "router_type",       "layer_types",      "rope_scaling",           "lora_target_modules",
    "sliding_window",    "memory_budget_gb", "model.vocab_size",       "no_such_key",
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const std::string examples =
      g3moe::fuzz::setting("G3MOE_FUZZ_EXAMPLES", G3MOE_FUZZ_EXAMPLES);
  static const std::string tiny = [] {
    auto buffer = llvm::MemoryBuffer::getFile(examples + "/tiny-g3moe/config.json");
    return buffer ? (*buffer)->getBuffer().str() : std::string("{}");
  }();

  llvm::StringRef text(reinterpret_cast<const char *>(data), size);
  parse(text, examples + "/presets");
  if (size <= 256) {
    auto [key, value] = text.split('=');
    ConfigOverride set{key.str(), value.str()};
    if (!text.contains('='))
      set = {kOverrideKeys[size % std::size(kOverrideKeys)], text.str()};
    parse(tiny, examples + "/tiny-g3moe", set);
  }
  return 0;
}
