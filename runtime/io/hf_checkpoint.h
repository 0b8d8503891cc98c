//===- hf_checkpoint.h - HF checkpoint directories --------------*- C++ -*-===//
//
// A Hugging Face checkpoint directory: config.json plus model.safetensors, or
// shards listed by model.safetensors.index.json. Reading maps the tensor names
// of text-only, multimodal (transformers 4.x and 5.x layouts) and G3MoE
// checkpoints onto the names a step uses; writing produces a directory that
// transformers' from_pretrained loads.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_IO_HF_CHECKPOINT_H
#define G3MOE_RUNTIME_IO_HF_CHECKPOINT_H

#include "runtime/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace g3rt {

class HostState;
struct StepProgram;

/// What a checkpoint tensor name means for the text model.
enum class TensorRole {
  /// A text-model tensor; its step name is in `stepName`.
  Text,
  /// A vision tower or multimodal projector tensor (ignored: SFT is text-only).
  Vision,
};

/// Maps a checkpoint tensor name onto the step's naming: strips the
/// multimodal prefixes (`language_model.model.` of transformers 4.x,
/// `model.language_model.` of 5.x, `language_model.lm_head.`), recognises
/// vision weights. Text-only and G3MoE names are already step names.
TensorRole classifyCheckpointTensor(const std::string &name, std::string &stepName);

/// An opened checkpoint directory. Only headers are read on open; tensor data
/// is read on demand.
class HFCheckpoint {
public:
  /// Where one tensor lives.
  struct Location {
    size_t file = 0;
    const SafetensorsEntry *entry = nullptr;
  };

  /// Opens `dir` (or a single .safetensors file): model.safetensors if it
  /// exists, else model.safetensors.index.json and every shard it names (a
  /// missing shard or a tensor missing from its shard is an error), and
  /// config.json when present (invalid JSON is an error).
  static Status open(const std::string &dir, HFCheckpoint &out);

  const std::string &dir() const { return dir_; }
  /// config.json, or null when the directory has none.
  const nlohmann::json &config() const { return config_; }
  /// Tensors by checkpoint name.
  const std::map<std::string, Location> &tensors() const { return tensors_; }
  /// The file holding tensor `name` (for messages); "" if unknown.
  std::string fileOf(const std::string &name) const;
  /// The tensor's entry, or null.
  const SafetensorsEntry *find(const std::string &name) const;
  /// Reads tensor `name` into `dst` (same element count; float dtypes convert).
  Status read(const std::string &name, const TensorView &dst) const;

  // Movable, not copyable: locations point into the files.
  HFCheckpoint() = default;
  HFCheckpoint(HFCheckpoint &&) = default;
  HFCheckpoint &operator=(HFCheckpoint &&) = default;
  HFCheckpoint(const HFCheckpoint &) = delete;
  HFCheckpoint &operator=(const HFCheckpoint &) = delete;

private:
  std::string dir_;
  nlohmann::json config_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, Location> tensors_;
};

/// The HF config.json of the step's model: `gemma3_text` (Gemma3TextConfig
/// fields) for dense models, `g3moe_text` (G3MoETextConfig fields) for MoE
/// ones. Sizes come from the step's model configuration; RoPE, attention,
/// normalisation and router settings from the step's instructions.
Status hfConfigFromStep(const StepProgram &program, nlohmann::ordered_json &out);

/// Writes the step's model as an HF checkpoint into `dir` (created if
/// needed): config.json and model.safetensors with HF names (stacked experts
/// split per expert, the untied lm_head when there is one), bf16 parameters
/// as bf16, fp32 ones (masters) as fp32. LoRA tensors are never written; with
/// `mergeLora` every base weight that has an adapter becomes
/// W + (lora_alpha / lora_r)·B·A (per expert for stacked weights). Each file
/// is written atomically.
Status saveHFCheckpoint(const HostState &host, const std::string &dir, bool mergeLora);

} // namespace g3rt

#endif // G3MOE_RUNTIME_IO_HF_CHECKPOINT_H
