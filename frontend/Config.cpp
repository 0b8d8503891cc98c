//===- Config.cpp - model and training configuration ----------------------===//
//
// Reads an HF config.json (gemma3_text, gemma3, g3moe, g3moe_text) or a seed
// recipe training preset (flat or nested) that names one, applies --set
// overrides, and resolves everything into a validated CompileConfig.
// docs/config.md lists every field and what happens to it.
//
//===----------------------------------------------------------------------===//

#include "frontend/Config.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/SmallString.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/Twine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>

using namespace llvm;
using namespace g3moe::frontend;

namespace {

//===----------------------------------------------------------------------===//
// Values with provenance
//===----------------------------------------------------------------------===//

/// Where a value came from. Two fields that say the same thing are settled by
/// priority (a preset's g3moe_params beat the model file, --set beats both);
/// at equal priority they must agree.
enum class Priority { File = 0, Preset = 1, Override = 2 };

struct Origin {
  std::string file;
  /// Dotted path of the field inside `file`, or the --set key.
  std::string path;
  Priority priority = Priority::File;
  /// "--set key=value" for overrides, to point the user at the command line.
  std::string setText;
};

struct Entry {
  json::Value value = nullptr;
  Origin origin;
};

/// Fields by canonical name. A std::map keeps warnings and errors in a stable
/// order; json::Object iterates in hash order.
using FieldMap = std::map<std::string, Entry>;

std::string render(const json::Value &v) {
  std::string s = formatv("{0}", v).str();
  if (s.size() > 60)
    s = s.substr(0, 57) + "...";
  return s;
}

/// A number for messages: 1e-05, 0.25, 131072.
std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

std::string describe(const Origin &o, const Twine &what) {
  std::string msg = (Twine(o.file) + ": field '" + o.path + "': " + what).str();
  if (o.priority == Priority::Override)
    msg += " (from " + o.setText + ")";
  return msg;
}

Error fail(const Origin &o, const Twine &what) {
  return createStringError(describe(o, what), inconvertibleErrorCode());
}

Error failFile(StringRef file, const Twine &what) {
  return createStringError((Twine(file) + ": " + what).str(),
                           inconvertibleErrorCode());
}

std::vector<std::string> sortedKeys(const json::Object &o) {
  std::vector<std::string> keys;
  for (const auto &kv : o)
    keys.push_back(kv.first.str());
  llvm::sort(keys);
  return keys;
}

/// An integer that fits int64_t with room to spare. json::Value::getAsInteger
/// would convert doubles at the very edge of the range, which is undefined.
std::optional<int64_t> asInt(const json::Value &v) {
  std::optional<double> d = v.getAsNumber();
  if (!d || !(std::fabs(*d) < 9.0e18))
    return std::nullopt;
  return v.getAsInteger();
}

/// A whole number, whether or not it fits int64_t (1e300 is one).
bool isWholeNumber(const json::Value &v) {
  std::optional<double> d = v.getAsNumber();
  return d && std::isfinite(*d) && *d == std::trunc(*d);
}

std::optional<double> asFiniteNumber(const json::Value &v) {
  std::optional<double> d = v.getAsNumber();
  if (!d || !std::isfinite(*d))
    return std::nullopt;
  return d;
}

/// The JSON parser recurses once per nesting level and so does json::Value's
/// destructor; a hostile file of nested brackets must not exhaust the stack.
constexpr unsigned kMaxJsonDepth = 200;

Expected<json::Value> parseJson(StringRef text, StringRef file) {
  unsigned depth = 0;
  bool inString = false, escaped = false;
  for (char ch : text) {
    if (inString) {
      if (escaped)
        escaped = false;
      else if (ch == '\\')
        escaped = true;
      else if (ch == '"')
        inString = false;
      continue;
    }
    if (ch == '"') {
      inString = true;
    } else if (ch == '[' || ch == '{') {
      if (++depth > kMaxJsonDepth)
        return failFile(file, "invalid JSON: nested deeper than " +
                                  Twine(kMaxJsonDepth) + " levels");
    } else if ((ch == ']' || ch == '}') && depth > 0) {
      --depth;
    }
  }
  Expected<json::Value> v = json::parse(text);
  if (!v)
    return failFile(file, "invalid JSON: " + toString(v.takeError()));
  return v;
}

//===----------------------------------------------------------------------===//
// Field tables
//===----------------------------------------------------------------------===//

/// Text-model fields g3moe honours (resolveModel reads each one).
const char *const kModelFields[] = {"vocab_size",
                                    "hidden_size",
                                    "intermediate_size",
                                    "num_hidden_layers",
                                    "num_attention_heads",
                                    "num_key_value_heads",
                                    "head_dim",
                                    "query_pre_attn_scalar",
                                    "sliding_window",
                                    "sliding_window_pattern",
                                    "layer_types",
                                    "rope_theta",
                                    "rope_local_base_freq",
                                    "rope_scaling",
                                    "rope_parameters",
                                    "rope_scaling_factor",
                                    "max_position_embeddings",
                                    "rms_norm_eps",
                                    "hidden_activation",
                                    "hidden_act",
                                    "attention_bias",
                                    "attention_dropout",
                                    "final_logit_softcapping",
                                    "attn_logit_softcapping",
                                    "tie_word_embeddings",
                                    "initializer_range",
                                    "pad_token_id",
                                    "eos_token_id",
                                    "bos_token_id",
                                    "use_bidirectional_attention",
                                    "n_routed_experts",
                                    "num_experts_per_tok",
                                    "first_k_dense_replace",
                                    "router_type",
                                    "router_jitter_noise",
                                    "input_jitter_noise",
                                    "router_aux_loss_coef",
                                    "router_z_loss_coef",
                                    "n_shared_experts",
                                    "freeze_shared_experts",
                                    "routed_scaling_factor",
                                    "n_group",
                                    "topk_group",
                                    "norm_topk_prob"};

/// Other spellings of n_routed_experts (Qwen-MoE / Mixtral style).
const char *const kExpertAliases[] = {"num_experts", "num_local_experts"};

/// MoE fields; they mean nothing for a dense model.
const char *const kMoEFields[] = {"num_experts_per_tok",
                                  "first_k_dense_replace",
                                  "router_type",
                                  "router_jitter_noise",
                                  "input_jitter_noise",
                                  "router_aux_loss_coef",
                                  "router_z_loss_coef",
                                  "n_shared_experts",
                                  "freeze_shared_experts",
                                  "routed_scaling_factor",
                                  "n_group",
                                  "topk_group",
                                  "norm_topk_prob"};

/// HF bookkeeping, inference-only and generation settings: no effect on a
/// training step.
const char *const kModelMetadata[] = {"architectures",
                                      "torch_dtype",
                                      "dtype",
                                      "transformers_version",
                                      "_name_or_path",
                                      "name_or_path",
                                      "use_bfloat16",
                                      "use_cache",
                                      "cache_implementation",
                                      "attn_implementation",
                                      "_attn_implementation",
                                      "_attn_implementation_autoset",
                                      "auto_map",
                                      "return_dict",
                                      "output_hidden_states",
                                      "output_attentions",
                                      "torchscript",
                                      "is_encoder_decoder",
                                      "is_decoder",
                                      "add_cross_attention",
                                      "tie_encoder_decoder",
                                      "id2label",
                                      "label2id",
                                      "problem_type",
                                      "tokenizer_class",
                                      "pruned_heads",
                                      "chunk_size_feed_forward",
                                      "task_specific_params",
                                      "finetuning_task",
                                      "prefix",
                                      "sep_token_id",
                                      "decoder_start_token_id",
                                      "max_length",
                                      "min_length",
                                      "do_sample",
                                      "early_stopping",
                                      "num_beams",
                                      "num_beam_groups",
                                      "diversity_penalty",
                                      "temperature",
                                      "top_k",
                                      "top_p",
                                      "typical_p",
                                      "repetition_penalty",
                                      "length_penalty",
                                      "no_repeat_ngram_size",
                                      "encoder_no_repeat_ngram_size",
                                      "bad_words_ids",
                                      "num_return_sequences",
                                      "output_scores",
                                      "return_dict_in_generate",
                                      "forced_bos_token_id",
                                      "forced_eos_token_id",
                                      "remove_invalid_values",
                                      "exponential_decay_length_penalty",
                                      "suppress_tokens",
                                      "begin_suppress_tokens",
                                      "tf_legacy_loss",
                                      "cross_attention_hidden_size",
                                      "use_return_dict"};

/// DeepSeek-V3 MLA leftovers in G3MoETextConfig; nothing ever read them.
const char *const kDeepSeekLeftovers[] = {"kv_lora_rank", "q_lora_rank",
                                          "qk_rope_head_dim"};

/// Fields of later G3MoE designs (G3MOE_SPEC.md §6). Each would change the
/// model or the loss; g3moe implements the June design only.
const char *const kLaterEraFields[] = {
    "no_rope_layers",      "no_rope_layer_interval",
    "use_sliding_window",  "ema_alpha",
    "balancing_strength",  "ortho_loss_coef",
    "ortho_strength",      "specialization_strength",
    "router_entropy_coef", "usage_uniformity_coef",
    "router_dim",          "gslb_coef",
    "routing_temperature", "lb_l2_coef",
    "lb_cv_coef",          "lb_entropy_floor_coef",
    "lb_topk_l2_coef",     "lb_topk_cv_coef",
    "lb_bias_to_hn",       "lb_bias_scale"};

/// Top-level keys of a multimodal wrapper (Gemma3Config / G3MoEConfig) that
/// concern the vision tower or generation. SFT here is text-only (§7 D22).
const char *const kWrapperKeys[] = {
    "vision_config",   "mm_tokens_per_image", "boi_token_index",
    "eoi_token_index", "image_token_index",   "boi_token_id",
    "eoi_token_id",    "image_token_id",      "initializer_range",
    "pad_token_id",    "eos_token_id",        "bos_token_id"};

const char *const kLoraModules[] = {"q_proj",   "k_proj",    "v_proj",
                                    "o_proj",   "gate_proj", "up_proj",
                                    "down_proj"};

template <size_t N> bool inTable(const char *const (&table)[N], StringRef key) {
  for (const char *name : table)
    if (key == name)
      return true;
  return false;
}

/// transformers' private attributes (`_name_or_path`, `_attn_implementation`,
/// and `_sliding_window_pattern`, which transformers 5 writes next to
/// `layer_types` but never reads back: it derives the layer types from
/// `sliding_window_pattern` or 6). None describes the model.
bool isPrivateKey(StringRef key) { return key.starts_with("_"); }

enum class TK {
  Int,
  Number,
  Bool,
  String,
  /// A string or a list of strings (LoRA target modules).
  Targets,
  /// use_lora: true -> finetuning "lora", false -> "full".
  UseLora,
  /// Accepted, no effect on the compiled step or the run.
  Ignore,
  /// Accepted and ignored, with a warning when it is switched on.
  IgnoreNotable,
  /// Must be false / must be true / must be null.
  MustBeFalse,
  MustBeTrue,
  MustBeNull,
};

struct TrainKey {
  const char *name;
  const char *canonical;
  TK kind;
  /// g3moe's own options, accepted in model config files too.
  bool anyConfig;
  /// Why an ignored key is ignored or a rejected value rejected.
  const char *note;
};

const TrainKey kTrainKeys[] = {
    // Compile-time.
    {"max_seq_length", "seq_len", TK::Int, false, nullptr},
    {"max_length", "seq_len", TK::Int, false, nullptr},
    {"seq_len", "seq_len", TK::Int, true, nullptr},
    {"per_device_train_batch_size", "micro_batch", TK::Int, false, nullptr},
    {"micro_batch", "micro_batch", TK::Int, true, nullptr},
    {"finetuning", "finetuning", TK::String, true, nullptr},
    {"use_lora", "finetuning", TK::UseLora, false, nullptr},
    {"lora_r", "lora_r", TK::Int, false, nullptr},
    {"lora_rank", "lora_r", TK::Int, false, nullptr},
    {"lora_alpha", "lora_alpha", TK::Number, false, nullptr},
    {"lora_dropout", "lora_dropout", TK::Number, false, nullptr},
    {"lora_target_modules", "lora_target_modules", TK::Targets, true, nullptr},
    {"target_modules", "lora_target_modules", TK::Targets, false, nullptr},
    {"train_router", "train_router", TK::Bool, true, nullptr},
    {"dense_ffn_no_grad", "dense_ffn_no_grad", TK::Bool, true, nullptr},
    {"load_balancing_loss", "load_balancing_loss", TK::Bool, true, nullptr},
    {"router_z_loss", "router_z_loss", TK::Bool, true, nullptr},
    {"gradient_checkpointing", "gradient_checkpointing", TK::Bool, false,
     nullptr},
    {"memory_budget_gb", "memory_budget_gb", TK::Number, true, nullptr},
    {"assistant_only_loss", "assistant_only_loss", TK::Bool, true, nullptr},
    {"packing", "packing", TK::Bool, true, nullptr},
    // Run-time.
    {"learning_rate", "learning_rate", TK::Number, false, nullptr},
    {"weight_decay", "weight_decay", TK::Number, false, nullptr},
    {"adam_beta1", "adam_beta1", TK::Number, false, nullptr},
    {"adam_beta2", "adam_beta2", TK::Number, false, nullptr},
    {"adam_epsilon", "adam_epsilon", TK::Number, false, nullptr},
    {"max_grad_norm", "max_grad_norm", TK::Number, false, nullptr},
    {"lr_scheduler_type", "lr_scheduler_type", TK::String, false, nullptr},
    {"warmup_ratio", "warmup_ratio", TK::Number, false, nullptr},
    {"warmup_steps", "warmup_steps", TK::Int, false, nullptr},
    {"num_train_epochs", "num_train_epochs", TK::Number, false, nullptr},
    {"max_steps", "max_steps", TK::Int, false, nullptr},
    {"gradient_accumulation_steps", "gradient_accumulation_steps", TK::Int,
     false, nullptr},
    {"logging_steps", "logging_steps", TK::Int, false, nullptr},
    {"eval_steps", "eval_steps", TK::Int, false, nullptr},
    {"save_steps", "save_steps", TK::Int, false, nullptr},
    {"save_total_limit", "save_total_limit", TK::Int, false, nullptr},
    {"seed", "seed", TK::Int, false, nullptr},
    {"test_size", "test_size", TK::Number, false, nullptr},
    {"max_line_bytes", "max_line_bytes", TK::Int, true, nullptr},
    {"dataset", "dataset", TK::String, true, nullptr},
    {"dataset_name", "dataset", TK::String, false, nullptr},
    {"data_path", "dataset", TK::String, false, nullptr},
    {"output_dir", "output_dir", TK::String, false, nullptr},
    {"loss_denominator", "loss_denominator", TK::String, true, nullptr},
    // Validated, then only carried by the runtime's defaults.
    {"eval_strategy", "eval_strategy", TK::String, false, nullptr},
    {"evaluation_strategy", "eval_strategy", TK::String, false, nullptr},
    {"save_strategy", "save_strategy", TK::String, false, nullptr},
    {"optim", "optim", TK::String, false, nullptr},
    // Precision is fixed by DESIGN.md: bf16 weights and activations, fp32
    // masters.
    {"bf16", "bf16", TK::MustBeTrue, false,
     "g3moe always trains with bf16 weights and activations and fp32 master "
     "weights; bf16 = false (fp32 training) is not supported"},
    {"fp16", "fp16", TK::MustBeFalse, false,
     "fp16 mixed precision is not supported; g3moe trains in bf16"},
    {"neftune_noise_alpha", "neftune_noise_alpha", TK::MustBeNull, false,
     "NEFTune embedding noise is not implemented"},
    // Accepted without effect.
    {"_comment", nullptr, TK::Ignore, true, nullptr},
    {"tokenizer_name_or_path", nullptr, TK::Ignore, false, nullptr},
    {"trust_remote_code", nullptr, TK::Ignore, false, nullptr},
    {"text_only", nullptr, TK::Ignore, false, nullptr},
    {"streaming", nullptr, TK::Ignore, false, nullptr},
    {"overwrite_output_dir", nullptr, TK::Ignore, false, nullptr},
    {"per_device_eval_batch_size", nullptr, TK::Ignore, false, nullptr},
    {"eval_accumulation_steps", nullptr, TK::Ignore, false, nullptr},
    {"logging_dir", nullptr, TK::Ignore, false, nullptr},
    {"logging_first_step", nullptr, TK::Ignore, false, nullptr},
    {"logging_strategy", nullptr, TK::Ignore, false, nullptr},
    {"logging_nan_inf_filter", nullptr, TK::Ignore, false, nullptr},
    {"eval_delay", nullptr, TK::Ignore, false, nullptr},
    {"load_best_model_at_end", nullptr, TK::Ignore, false, nullptr},
    {"metric_for_best_model", nullptr, TK::Ignore, false, nullptr},
    {"greater_is_better", nullptr, TK::Ignore, false, nullptr},
    {"prediction_loss_only", nullptr, TK::Ignore, false, nullptr},
    {"bf16_full_eval", nullptr, TK::Ignore, false, nullptr},
    {"tf32", nullptr, TK::Ignore, false, nullptr},
    {"dataloader_drop_last", nullptr, TK::Ignore, false, nullptr},
    {"dataloader_num_workers", nullptr, TK::Ignore, false, nullptr},
    {"dataloader_pin_memory", nullptr, TK::Ignore, false, nullptr},
    {"dataloader_persistent_workers", nullptr, TK::Ignore, false, nullptr},
    {"dataloader_prefetch_factor", nullptr, TK::Ignore, false, nullptr},
    {"dataset_num_proc", nullptr, TK::Ignore, false, nullptr},
    {"remove_unused_columns", nullptr, TK::Ignore, false, nullptr},
    {"label_names", nullptr, TK::Ignore, false, nullptr},
    {"dataset_text_field", nullptr, TK::Ignore, false, nullptr},
    {"skip_prepare_dataset", nullptr, TK::Ignore, false, nullptr},
    {"report_to", nullptr, TK::Ignore, false, nullptr},
    {"run_name", nullptr, TK::Ignore, false, nullptr},
    {"project", nullptr, TK::Ignore, false, nullptr},
    {"data_seed", nullptr, TK::Ignore, false, nullptr},
    {"ddp_find_unused_parameters", nullptr, TK::Ignore, false, nullptr},
    {"ddp_broadcast_buffers", nullptr, TK::Ignore, false, nullptr},
    {"ddp_timeout", nullptr, TK::Ignore, false, nullptr},
    {"local_rank", nullptr, TK::Ignore, false, nullptr},
    {"log_on_each_node", nullptr, TK::Ignore, false, nullptr},
    {"disable_tqdm", nullptr, TK::Ignore, false, nullptr},
    {"save_safetensors", nullptr, TK::Ignore, false, nullptr},
    {"push_to_hub", nullptr, TK::Ignore, false, nullptr},
    {"hub_model_id", nullptr, TK::Ignore, false, nullptr},
    {"hub_strategy", nullptr, TK::Ignore, false, nullptr},
    {"include_num_input_tokens_seen", nullptr, TK::Ignore, false, nullptr},
    // Accepted and ignored, but the user may expect an effect.
    {"deepspeed", nullptr, TK::IgnoreNotable, false,
     "g3moe plans its own parallel layout and sharding (DESIGN.md "
     "\"Scale-out\"); DeepSpeed JSON is not read"},
    {"deepspeed_config", nullptr, TK::IgnoreNotable, false,
     "g3moe plans its own parallel layout and sharding (DESIGN.md "
     "\"Scale-out\"); DeepSpeed JSON is not read"},
    {"gradient_checkpointing_kwargs", nullptr, TK::IgnoreNotable, false,
     "the compiler chooses what to recompute under the memory budget"},
    {"activation_offloading", nullptr, TK::IgnoreNotable, false,
     "the compiler chooses host offload under the memory budget"},
    {"use_liger_kernel", nullptr, TK::IgnoreNotable, false,
     "g3moe uses its own fused kernels"},
    {"torch_compile", nullptr, TK::IgnoreNotable, false,
     "g3moe compiles the step itself"},
    {"padding_free", nullptr, TK::IgnoreNotable, false,
     "use packing; documents are separated by masks either way"},
    {"completion_only_loss", nullptr, TK::IgnoreNotable, false,
     "only conversational data is read; see assistant_only_loss"},
    {"resume_from_checkpoint", nullptr, TK::IgnoreNotable, false,
     "pass the checkpoint to g3moe-run instead"},
    {"use_multi_domain", nullptr, TK::IgnoreNotable, false,
     "g3moe-run reads one dataset file"},
    {"max_samples", nullptr, TK::IgnoreNotable, false,
     "g3moe-run reads the whole dataset file"},
    {"max_samples_per_domain", nullptr, TK::IgnoreNotable, false,
     "g3moe-run reads the whole dataset file"},
};

const TrainKey *findTrainKey(StringRef key) {
  for (const TrainKey &tk : kTrainKeys)
    if (key == tk.name)
      return &tk;
  // Python data-loader and DDP knobs of any name.
  static const TrainKey runtimeKnob = {"", nullptr, TK::Ignore, false, nullptr};
  if (key.starts_with("dataloader_") || key.starts_with("ddp_"))
    return &runtimeKnob;
  return nullptr;
}

/// Off, empty or zero: the value a switch or a coefficient has when it does
/// nothing.
bool isOffValue(const json::Value &v) {
  switch (v.kind()) {
  case json::Value::Null:
    return true;
  case json::Value::Boolean:
    return !*v.getAsBoolean();
  case json::Value::Number:
    return *v.getAsNumber() == 0.0;
  case json::Value::String:
    return v.getAsString()->empty();
  case json::Value::Array:
    return v.getAsArray()->empty();
  case json::Value::Object:
    return v.getAsObject()->empty();
  }
  return false;
}

//===----------------------------------------------------------------------===//
// Collection: files, presets and overrides into two field maps
//===----------------------------------------------------------------------===//

struct Ctx {
  /// The file that was given (a preset or a model config).
  std::string topFile;
  std::vector<std::string> warnings;
  /// Text-model fields, canonical names.
  FieldMap model;
  /// Training options, canonical names, type-checked.
  FieldMap train;

  /// Where the text config lives, to name fields left at their defaults.
  std::string modelFile;
  std::string modelPrefix;
  /// gemma3_text or g3moe_text.
  std::string textType;
  std::string checkpointPrefix;
  /// The text model is a wrapper's text_config (gemma3 / g3moe).
  bool wrapper = false;
  /// G3MoETextConfig's MoE defaults apply (g3moe files and upcycled presets).
  bool g3moeDefaults = false;
  /// Where MoE fields left at their defaults are named when a preset's
  /// g3moe_params upcycled the model: that is where the user adds them.
  std::string moeFile;
  std::string moePrefix;

  void warn(const Origin &o, const Twine &what) {
    warnings.push_back(describe(o, what));
  }

  Origin defaultOrigin(StringRef key) const {
    if (!moeFile.empty() &&
        (key == "n_routed_experts" || inTable(kMoEFields, key)))
      return Origin{moeFile, (Twine(moePrefix) + key).str(), Priority::Preset,
                    ""};
    return Origin{modelFile, (Twine(modelPrefix) + key).str(), Priority::File,
                  ""};
  }
};

/// Stores a value under its canonical name. A weaker source never replaces a
/// stronger one; two spellings in one source must agree.
Error setField(FieldMap &map, StringRef canonical, json::Value value,
               Origin origin) {
  auto it = map.find(canonical.str());
  if (it != map.end()) {
    const Entry &old = it->second;
    if (old.origin.priority > origin.priority)
      return Error::success();
    if (old.origin.priority == origin.priority &&
        origin.priority != Priority::Override && old.value != value)
      return fail(origin, "conflicts with '" + old.origin.path + "' (" +
                              render(old.value) + ") in " + old.origin.file);
  }
  map[canonical.str()] = Entry{std::move(value), std::move(origin)};
  return Error::success();
}

Error checkLaterEra(StringRef key, const json::Value &v, const Origin &o) {
  // use_sliding_window = true is the June behaviour; false turns sliding
  // attention off, which belongs to the later design.
  bool off = key == "use_sliding_window"
                 ? (v.kind() == json::Value::Null || v.getAsBoolean() == true)
                 : isOffValue(v);
  if (off)
    return Error::success();
  return fail(o, "belongs to a later G3MoE design (G3MOE_SPEC.md §6) that "
                 "g3moe does not implement (it implements the June R0/R1 "
                 "design); remove the field");
}

Error setTrainKey(Ctx &c, const TrainKey &tk, const json::Value &v,
                  const Origin &o) {
  // HfArgumentParser semantics: null leaves the default in place.
  if (v.kind() == json::Value::Null)
    return Error::success();
  switch (tk.kind) {
  case TK::Ignore:
    return Error::success();
  case TK::IgnoreNotable:
    if (!isOffValue(v))
      c.warn(o, Twine("ignored: ") + tk.note);
    return Error::success();
  case TK::MustBeNull:
    return fail(o, tk.note);
  case TK::MustBeFalse:
  case TK::MustBeTrue: {
    std::optional<bool> b = v.getAsBoolean();
    if (!b)
      return fail(o, "must be true or false, got " + render(v));
    if (*b != (tk.kind == TK::MustBeTrue))
      return fail(o, tk.note);
    return Error::success();
  }
  case TK::Int:
    // An integer too large for int64_t is left to the range check, which
    // states the bound.
    if (!asInt(v) && !isWholeNumber(v))
      return fail(o, "must be an integer, got " + render(v));
    break;
  case TK::Number:
    if (!asFiniteNumber(v))
      return fail(o, "must be a number, got " + render(v));
    break;
  case TK::Bool:
    if (!v.getAsBoolean())
      return fail(o, "must be true or false, got " + render(v));
    break;
  case TK::String:
    if (!v.getAsString())
      return fail(o, "must be a string, got " + render(v));
    break;
  case TK::Targets: {
    if (v.getAsString())
      break;
    const json::Array *a = v.getAsArray();
    if (!a)
      return fail(o, "must be a list of module names or a string, got " +
                         render(v));
    for (const json::Value &item : *a)
      if (!item.getAsString())
        return fail(o, "must be a list of module names (strings), got " +
                           render(item) + " in the list");
    break;
  }
  case TK::UseLora: {
    std::optional<bool> b = v.getAsBoolean();
    if (!b)
      return fail(o, "must be true or false, got " + render(v));
    return setField(c.train, tk.canonical, json::Value(*b ? "lora" : "full"),
                    o);
  }
  }
  return setField(c.train, tk.canonical, v, o);
}

/// Adds one field of a text config (or of g3moe_params, or a top-level key of
/// a flat config file) to the maps. `allowTraining` accepts g3moe's own
/// training options.
Error collectModelKey(Ctx &c, StringRef key, const json::Value &v,
                      const Origin &o, bool allowTraining) {
  if (inTable(kModelFields, key))
    return setField(c.model, key, v, o);
  if (inTable(kExpertAliases, key))
    return setField(c.model, "n_routed_experts", v, o);
  if (key == "model_type" || inTable(kModelMetadata, key) ||
      inTable(kDeepSeekLeftovers, key) || isPrivateKey(key))
    return Error::success();
  if (inTable(kLaterEraFields, key))
    return checkLaterEra(key, v, o);
  if (key == "quantization_config")
    return fail(o, "quantized checkpoints are not supported; g3moe reads "
                   "bf16/fp32 safetensors");
  if (allowTraining)
    if (const TrainKey *tk = findTrainKey(key); tk && tk->anyConfig)
      return setTrainKey(c, *tk, v, o);
  c.warn(o, "unknown field, ignored");
  return Error::success();
}

Error collectTextConfig(Ctx &c, const json::Object &obj, StringRef file,
                        StringRef prefix) {
  for (const std::string &key : sortedKeys(obj)) {
    Origin o{file.str(), (prefix + key).str(), Priority::File, ""};
    if (Error e = collectModelKey(c, key, *obj.get(key), o, true))
      return e;
  }
  return Error::success();
}

/// Reads an HF config.json (already parsed) into the context.
Error collectHFConfig(Ctx &c, const json::Object &root, StringRef file) {
  Origin typeOrigin{file.str(), "model_type", Priority::File, ""};
  const json::Value *typeValue = root.get("model_type");
  if (!typeValue)
    return fail(typeOrigin,
                "missing; expected an HF config.json with model_type "
                "gemma3_text, gemma3, g3moe or g3moe_text, or a training "
                "preset with model_name_or_path or model_config");
  std::optional<StringRef> type = typeValue->getAsString();
  if (!type)
    return fail(typeOrigin, "must be a string, got " + render(*typeValue));

  c.modelFile = file.str();
  if (*type == "gemma3_text" || *type == "g3moe_text") {
    c.textType = type->str();
    c.g3moeDefaults = *type == "g3moe_text";
    c.modelPrefix = "";
    c.checkpointPrefix = "";
    return collectTextConfig(c, root, file, "");
  }
  if (*type != "gemma3" && *type != "g3moe")
    return fail(typeOrigin, "unknown model type '" + *type +
                                "'; supported: gemma3_text, gemma3, g3moe, "
                                "g3moe_text");

  // Multimodal wrapper: the text model is text_config.
  std::string textType = *type == "gemma3" ? "gemma3_text" : "g3moe_text";
  c.textType = textType;
  c.g3moeDefaults = *type == "g3moe";
  c.modelPrefix = "text_config.";
  c.checkpointPrefix = "language_model.";
  c.wrapper = true;
  Origin textOrigin{file.str(), "text_config", Priority::File, ""};
  const json::Value *textValue = root.get("text_config");
  if (!textValue || textValue->kind() == json::Value::Null)
    return fail(textOrigin, "missing; a " + *type +
                                " config describes its text model in "
                                "text_config");
  const json::Object *text = textValue->getAsObject();
  if (!text)
    return fail(textOrigin, "must be an object, got " + render(*textValue));
  if (const json::Value *inner = text->get("model_type")) {
    std::optional<StringRef> innerType = inner->getAsString();
    if (!innerType || *innerType != textType)
      return fail(
          Origin{file.str(), "text_config.model_type", Priority::File, ""},
          "must be '" + textType + "' inside a " + *type + " config, got " +
              render(*inner));
  }
  if (Error e = collectTextConfig(c, *text, file, "text_config."))
    return e;

  for (const std::string &key : sortedKeys(root)) {
    const json::Value &v = *root.get(key);
    Origin o{file.str(), key, Priority::File, ""};
    if (key == "text_config" || key == "model_type" ||
        inTable(kWrapperKeys, key) || inTable(kModelMetadata, key) ||
        isPrivateKey(key))
      continue;
    if (key == "tie_word_embeddings") {
      // Newer Gemma3Config carries the flag at the top too; it must agree
      // with the text model's, and fills in when the text model has none.
      auto it = c.model.find("tie_word_embeddings");
      if (it != c.model.end() && it->second.value != v)
        return fail(o, "is " + render(v) +
                           " but text_config.tie_word_embeddings is " +
                           render(it->second.value));
      if (Error e = setField(c.model, key, v, o))
        return e;
      continue;
    }
    if (inTable(kLaterEraFields, key)) {
      if (Error e = checkLaterEra(key, v, o))
        return e;
      continue;
    }
    if (inTable(kModelFields, key) || inTable(kExpertAliases, key))
      return fail(o, "is a text-model field at the top level of a " + *type +
                         " config; put it in text_config (upstream merged "
                         "top-level fields into text_config and clobbered "
                         "the real ones, G3MOE_SPEC.md §7 D3)");
    if (key == "quantization_config")
      return fail(o, "quantized checkpoints are not supported; g3moe reads "
                     "bf16/fp32 safetensors");
    if (const TrainKey *tk = findTrainKey(key); tk && tk->anyConfig) {
      if (Error e = setTrainKey(c, *tk, v, o))
        return e;
      continue;
    }
    c.warn(o, "unknown field, ignored");
  }
  return Error::success();
}

/// g3moe_params of a preset: MoE fields (and any other text-model field)
/// applied over the model's text config; a dense Gemma-3 becomes a G3MoE.
Error applyG3MoEParams(Ctx &c, const json::Value &paramsValue,
                       const Origin &base) {
  if (paramsValue.kind() == json::Value::Null)
    return Error::success();
  const json::Object *params = paramsValue.getAsObject();
  if (!params)
    return fail(base, "must be an object, got " + render(paramsValue));
  c.g3moeDefaults = true;
  c.moeFile = base.file;
  c.moePrefix = base.path + ".";
  for (const std::string &key : sortedKeys(*params)) {
    const json::Value &v = *params->get(key);
    Origin o{base.file, base.path + "." + key, Priority::Preset, ""};
    if (key == "attn_implementation")
      continue;
    if (Error e = collectModelKey(c, key, v, o, false))
      return e;
  }
  return Error::success();
}

Expected<std::string> resolveModelPath(const json::Value &v, const Origin &o,
                                       StringRef baseDir) {
  std::optional<StringRef> name = v.getAsString();
  if (!name)
    return fail(o, "must be a string (a local checkpoint directory or "
                   "config.json), got " +
                       render(v));
  if (name->empty())
    return fail(o, "is empty; point it at a local checkpoint directory");
  SmallString<256> path;
  if (sys::path::is_absolute(*name) || baseDir.empty()) {
    path = *name;
  } else {
    path = baseDir;
    sys::path::append(path, *name);
  }
  sys::path::remove_dots(path, /*remove_dot_dot=*/true);
  if (sys::fs::is_directory(path)) {
    SmallString<256> config = path;
    sys::path::append(config, "config.json");
    if (!sys::fs::is_regular_file(config))
      return fail(o, "directory '" + path + "' has no config.json");
    return std::string(config);
  }
  if (sys::fs::is_regular_file(path))
    return std::string(path);
  return fail(o, "'" + *name + "' does not exist locally (looked for '" + path +
                     "'); g3moe does not download from the Hugging "
                     "Face Hub: point it at a local checkpoint directory "
                     "that contains config.json");
}

Error collectPresetSection(Ctx &c, const json::Object &section, StringRef file,
                           StringRef prefix) {
  for (const std::string &key : sortedKeys(section)) {
    if (key == "model_name_or_path" || key == "g3moe_params")
      continue;
    const json::Value &v = *section.get(key);
    Origin o{file.str(), (prefix + key).str(), Priority::Preset, ""};
    if (const TrainKey *tk = findTrainKey(key)) {
      if (Error e = setTrainKey(c, *tk, v, o))
        return e;
      continue;
    }
    if (inTable(kModelFields, key) || inTable(kExpertAliases, key) ||
        key == "rope_scaling_factor")
      return fail(o, "is a model field; in a training preset model fields "
                     "go in g3moe_params");
    c.warn(o, "unknown field, ignored");
  }
  return Error::success();
}

/// Whether a file without model_type looks like a flat preset that forgot
/// model_name_or_path.
bool looksLikePreset(const json::Object &root) {
  for (const auto &kv : root) {
    StringRef key = kv.first;
    if (key == "model_type" || key == "_comment")
      continue;
    if (const TrainKey *tk = findTrainKey(key); tk && !tk->anyConfig)
      return true;
    if (key == "data_config" || key == "training_config" ||
        key == "g3moe_params")
      return true;
  }
  return false;
}

Error collectModelFile(Ctx &c, StringRef path, const Origin &pointer);

Error collectPreset(Ctx &c, const json::Object &root, StringRef file,
                    StringRef baseDir) {
  const json::Value *modelConfigValue = root.get("model_config");
  bool nested = modelConfigValue != nullptr;
  const json::Value *nameValue = nullptr;
  Origin nameOrigin{file.str(), "model_name_or_path", Priority::Preset, ""};
  const json::Value *paramsValue = root.get("g3moe_params");
  Origin paramsOrigin{file.str(), "g3moe_params", Priority::Preset, ""};

  if (nested) {
    const json::Object *modelConfig = modelConfigValue->getAsObject();
    if (!modelConfig)
      return fail(Origin{file.str(), "model_config", Priority::Preset, ""},
                  "must be an object, got " + render(*modelConfigValue));
    if ((nameValue = modelConfig->get("model_name_or_path")))
      nameOrigin.path = "model_config.model_name_or_path";
    else
      nameValue = root.get("model_name_or_path");
    if (!nameValue)
      return fail(Origin{file.str(), "model_config.model_name_or_path",
                         Priority::Preset, ""},
                  "missing; a training preset must name the model (a local "
                  "checkpoint directory)");
    if (const json::Value *inner = modelConfig->get("g3moe_params")) {
      if (paramsValue)
        return fail(Origin{file.str(), "model_config.g3moe_params",
                           Priority::Preset, ""},
                    "given twice (also at the top level)");
      paramsValue = inner;
      paramsOrigin.path = "model_config.g3moe_params";
    }
    if (Error e = collectPresetSection(c, *modelConfig, file, "model_config."))
      return e;
  } else {
    nameValue = root.get("model_name_or_path");
    if (!nameValue)
      return fail(nameOrigin, "missing; a training preset must name the "
                              "model (a local checkpoint directory)");
  }

  for (const std::string &key : sortedKeys(root)) {
    const json::Value &v = *root.get(key);
    if (key == "model_config")
      continue;
    if (nested && (key == "data_config" || key == "training_config")) {
      const json::Object *section = v.getAsObject();
      if (!section)
        return fail(Origin{file.str(), key, Priority::Preset, ""},
                    "must be an object, got " + render(v));
      if (Error e = collectPresetSection(c, *section, file, key + "."))
        return e;
      continue;
    }
    if (key == "model_name_or_path" || key == "g3moe_params")
      continue;
    json::Object single;
    single[key] = v;
    if (Error e = collectPresetSection(c, single, file, ""))
      return e;
  }

  if (nameValue->kind() == json::Value::Null)
    return fail(nameOrigin, "missing; a training preset must name the model "
                            "(a local checkpoint directory)");
  Expected<std::string> modelPath =
      resolveModelPath(*nameValue, nameOrigin, baseDir);
  if (!modelPath)
    return modelPath.takeError();
  if (Error e = collectModelFile(c, *modelPath, nameOrigin))
    return e;
  if (paramsValue)
    if (Error e = applyG3MoEParams(c, *paramsValue, paramsOrigin))
      return e;
  return Error::success();
}

Error collectModelFile(Ctx &c, StringRef path, const Origin &pointer) {
  ErrorOr<std::unique_ptr<MemoryBuffer>> buffer = MemoryBuffer::getFile(path);
  if (!buffer)
    return fail(pointer,
                "cannot read '" + path + "': " + buffer.getError().message());
  Expected<json::Value> doc = parseJson((*buffer)->getBuffer(), path);
  if (!doc)
    return doc.takeError();
  const json::Object *root = doc->getAsObject();
  if (!root)
    return failFile(path, "expected a JSON object at the top level");
  if (root->get("model_name_or_path") || root->get("model_config"))
    return fail(pointer,
                "'" + path + "' is a training preset, not a model config");
  return collectHFConfig(c, *root, path);
}

/// Applies one --set. The value is JSON when it parses, else a string.
Error applyOverride(Ctx &c, const ConfigOverride &ov) {
  std::string setText = "--set " + ov.key + "=" + ov.value;
  StringRef key = StringRef(ov.key).trim();
  bool forceModel = key.consume_front("model.");
  bool forceTraining = !forceModel && key.consume_front("training.");
  Origin o{c.topFile, key.str(), Priority::Override, setText};
  if (key.empty())
    return fail(o, "empty key");
  // llvm::json asserts that keys and strings are UTF-8; the command line
  // may hold any bytes.
  if (!json::isUTF8(ov.key) || !json::isUTF8(ov.value))
    return fail(o, "is not valid UTF-8");

  json::Value value(ov.value);
  if (!ov.value.empty()) {
    Expected<json::Value> parsed = parseJson(ov.value, "");
    if (parsed)
      value = std::move(*parsed);
    else
      consumeError(parsed.takeError());
  }

  auto [head, rest] = key.split('.');
  bool isModelKey =
      inTable(kModelFields, head) || inTable(kExpertAliases, head) ||
      inTable(kLaterEraFields, head) || inTable(kDeepSeekLeftovers, head);
  const TrainKey *tk = findTrainKey(key);

  if (forceModel || (!forceTraining && isModelKey)) {
    if (!isModelKey)
      return fail(o, "unknown model field");
    if (inTable(kDeepSeekLeftovers, head))
      return Error::success();
    if (inTable(kLaterEraFields, head))
      return checkLaterEra(head, value, o);
    StringRef canonical =
        inTable(kExpertAliases, head) ? "n_routed_experts" : head;
    if (rest.empty())
      return setField(c.model, canonical, std::move(value), o);
    // Sub-fields are named below the field itself.
    o.path = canonical.str();
    // A dotted key edits inside an object field, e.g.
    // rope_parameters.full_attention.factor.
    json::Value whole = json::Object();
    auto it = c.model.find(canonical.str());
    if (it != c.model.end() && it->second.value.kind() != json::Value::Null)
      whole = it->second.value;
    json::Value *cursor = &whole;
    SmallVector<StringRef, 4> parts;
    rest.split(parts, '.');
    for (size_t i = 0; i < parts.size(); ++i) {
      json::Object *obj = cursor->getAsObject();
      if (!obj)
        return fail(o, "cannot set '" + parts[i] +
                           "' inside a value that is not an object");
      if (i + 1 == parts.size()) {
        (*obj)[parts[i]] = std::move(value);
        break;
      }
      json::Value *next = obj->get(parts[i]);
      if (!next || next->kind() == json::Value::Null) {
        (*obj)[parts[i]] = json::Object();
        next = obj->get(parts[i]);
      }
      cursor = next;
    }
    return setField(c.model, canonical, std::move(whole), o);
  }
  if (!tk)
    return fail(o, forceTraining ? "unknown training option"
                                 : "unknown field (neither a model field nor "
                                   "a training option)");
  if (!tk->canonical && tk->kind == TK::Ignore)
    return Error::success();
  return setTrainKey(c, *tk, value, o);
}

//===----------------------------------------------------------------------===//
// Resolution: field maps to ModelConfig / TrainingOptions
//===----------------------------------------------------------------------===//

/// The transformers class whose defaults fill in the text model's backbone.
StringRef textClass(const Ctx &c) {
  return c.textType == "g3moe_text" ? "G3MoETextConfig" : "Gemma3TextConfig";
}

/// Typed access to one field map; absent fields keep the caller's default.
struct Reader {
  Ctx &c;
  FieldMap &map;
  /// For fields absent from `map`: the training options are named in the
  /// given file; the model fields at their place in the text config.
  bool isModel;

  const Entry *find(StringRef key) const {
    auto it = map.find(key.str());
    return it == map.end() ? nullptr : &it->second;
  }
  bool has(StringRef key) const { return find(key) != nullptr; }
  bool isNull(StringRef key) const {
    const Entry *e = find(key);
    return e && e->value.kind() == json::Value::Null;
  }
  Origin origin(StringRef key) const {
    if (const Entry *e = find(key))
      return e->origin;
    if (isModel)
      return c.defaultOrigin(key);
    return Origin{c.topFile, key.str(), Priority::File, ""};
  }
  /// " (the default)" when the field was not given, for messages about
  /// defaults that fail validation.
  std::string defaulted(StringRef key) const {
    return has(key) ? "" : " (the default; the field is absent)";
  }
  /// Warns, naming the field, that an absent field takes the default `value`
  /// of the config class `cls` (as transformers would).
  void noteDefault(StringRef key, const Twine &value, StringRef cls) const {
    if (!has(key))
      c.warn(origin(key), "absent; using " + cls + "'s default, " + value);
  }

  Error integer(StringRef key, int64_t &out, bool nullable = false) const {
    const Entry *e = find(key);
    if (!e || (nullable && e->value.kind() == json::Value::Null))
      return Error::success();
    std::optional<int64_t> v = asInt(e->value);
    if (!v && isWholeNumber(e->value))
      return fail(e->origin, "must be an integer between -9e18 and 9e18, got " +
                                 render(e->value));
    if (!v)
      return fail(e->origin, "must be an integer, got " + render(e->value));
    out = *v;
    return Error::success();
  }
  /// An integer in [lo, hi]. An absent field (or, where `nullable`, a null
  /// one) keeps `out`, which is checked all the same. `why` says where the
  /// bound comes from; the message states the bound, also for numbers too
  /// large for int64_t.
  Error integerIn(StringRef key, int64_t &out, int64_t lo, int64_t hi,
                  StringRef why = "", bool nullable = false) const {
    const Entry *e = find(key);
    std::string got;
    if (e && !(nullable && e->value.kind() == json::Value::Null)) {
      std::optional<int64_t> v = asInt(e->value);
      if (!v && !isWholeNumber(e->value))
        return fail(e->origin, "must be an integer, got " + render(e->value));
      if (v)
        out = *v;
      else
        got = render(e->value);
    }
    if (got.empty() && out >= lo && out <= hi)
      return Error::success();
    if (got.empty())
      got = std::to_string(out);
    return fail(origin(key), "must be an integer in [" + Twine(lo) + ", " +
                                 Twine(hi) + "]" + why + ", got " + got +
                                 defaulted(key));
  }
  Error number(StringRef key, double &out, bool nullable = false) const {
    const Entry *e = find(key);
    if (!e || (nullable && e->value.kind() == json::Value::Null))
      return Error::success();
    std::optional<double> v = asFiniteNumber(e->value);
    if (!v)
      return fail(e->origin, "must be a number, got " + render(e->value));
    out = *v;
    return Error::success();
  }
  Error boolean(StringRef key, bool &out, bool nullable = false) const {
    const Entry *e = find(key);
    if (!e || (nullable && e->value.kind() == json::Value::Null))
      return Error::success();
    std::optional<bool> v = e->value.getAsBoolean();
    if (!v)
      return fail(e->origin, "must be true or false, got " + render(e->value));
    out = *v;
    return Error::success();
  }
  Error string(StringRef key, std::string &out, bool nullable = false) const {
    const Entry *e = find(key);
    if (!e || (nullable && e->value.kind() == json::Value::Null))
      return Error::success();
    std::optional<StringRef> v = e->value.getAsString();
    if (!v)
      return fail(e->origin, "must be a string, got " + render(e->value));
    out = v->str();
    return Error::success();
  }
};

/// The largest dimension: token ids and positions are int32, and no
/// dimension of a real model comes near it. Products of dimensions are bounded
/// separately (checkStepSize).
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();
/// One LayerSpec per layer is allocated; keep a hostile value from doing so.
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxExperts = 65536;

/// A RoPE description from rope_scaling, rope_parameters or
/// rope_scaling_factor.
struct RopeSource {
  bool present = false;
  /// "default" or "linear" after validation.
  std::string type = "default";
  double factor = 1.0;
  std::optional<double> theta;
  Origin origin;
  /// Path of this description, for conflict messages.
  std::string path;
};

/// Parses one dict of rope_type / type / factor (/ rope_theta).
Error parseRopeDict(Ctx &c, const json::Value &v, const Origin &at,
                    bool allowTheta, RopeSource &out) {
  const json::Object *obj = v.getAsObject();
  if (!obj)
    return fail(at, "must be an object, got " + render(v));
  out.present = true;
  out.origin = at;
  out.path = at.path;
  auto sub = [&](StringRef key) {
    Origin o = at;
    o.path = at.path + "." + key.str();
    return o;
  };
  const json::Value *typeValue = obj->get("rope_type");
  StringRef typeKey = "rope_type";
  if (!typeValue || typeValue->kind() == json::Value::Null) {
    typeValue = obj->get("type");
    typeKey = "type";
  }
  const json::Value *factorValue = obj->get("factor");
  if (factorValue && factorValue->kind() == json::Value::Null)
    factorValue = nullptr;
  std::string type = "default";
  if (typeValue && typeValue->kind() != json::Value::Null) {
    std::optional<StringRef> t = typeValue->getAsString();
    if (!t)
      return fail(sub(typeKey), "must be a string, got " + render(*typeValue));
    type = t->str();
  } else if (factorValue) {
    return fail(sub("rope_type"), "missing; a factor needs a rope_type "
                                  "('linear')");
  }
  if (type != "default" && type != "linear")
    return fail(sub(typeKey),
                "RoPE type '" + type +
                    "' is not supported (only 'default' "
                    "and 'linear' are; yarn, dynamic, llama3 and longrope "
                    "change the rotary frequencies in ways g3moe does not "
                    "implement)");
  out.type = type;
  out.factor = 1.0;
  if (type == "linear") {
    if (!factorValue)
      return fail(sub("factor"), "missing; rope_type 'linear' needs a factor");
    std::optional<double> f = asFiniteNumber(*factorValue);
    if (!f)
      return fail(sub("factor"),
                  "must be a number, got " + render(*factorValue));
    if (*f <= 0)
      return fail(sub("factor"), "must be > 0, got " + render(*factorValue));
    out.factor = *f;
  } else if (factorValue) {
    std::optional<double> f = asFiniteNumber(*factorValue);
    if (!f || *f != 1.0)
      c.warn(sub("factor"), "ignored: rope_type 'default' does not scale");
  }
  if (const json::Value *p = obj->get("partial_rotary_factor")) {
    std::optional<double> f = asFiniteNumber(*p);
    if (p->kind() != json::Value::Null && (!f || *f != 1.0))
      return fail(sub("partial_rotary_factor"),
                  "partial rotary embeddings are not supported (Gemma-3 "
                  "rotates the whole head)");
  }
  if (const json::Value *t = obj->get("rope_theta")) {
    if (!allowTheta)
      return fail(sub("rope_theta"), "is not read inside rope_scaling; set "
                                     "rope_theta next to it");
    if (t->kind() != json::Value::Null) {
      std::optional<double> theta = asFiniteNumber(*t);
      if (!theta)
        return fail(sub("rope_theta"), "must be a number, got " + render(*t));
      if (*theta <= 0)
        return fail(sub("rope_theta"), "must be > 0, got " + render(*t));
      out.theta = *theta;
    }
  }
  for (const std::string &key : sortedKeys(*obj))
    if (key != "rope_type" && key != "type" && key != "factor" &&
        key != "rope_theta" && key != "partial_rotary_factor")
      c.warn(sub(key), "ignored: only used by RoPE types g3moe does not "
                       "support");
  return Error::success();
}

/// Picks among sources that describe the same thing: the strongest source
/// wins; equal sources must agree.
template <typename Same>
Expected<const RopeSource *> pickRope(ArrayRef<const RopeSource *> sources,
                                      StringRef what, Same same) {
  const RopeSource *best = nullptr;
  for (const RopeSource *s : sources) {
    if (!s->present)
      continue;
    if (!best || s->origin.priority > best->origin.priority) {
      best = s;
      continue;
    }
    if (s->origin.priority == best->origin.priority && !same(*best, *s))
      return fail(s->origin,
                  "conflicts with '" + best->path + "' about the " + what);
  }
  return best;
}

Error resolveRope(Ctx &c, const Reader &r, ModelConfig &m) {
  RopeSource scaling, params, paramsSliding, factorField;

  if (const Entry *e = r.find("rope_scaling"))
    if (e->value.kind() != json::Value::Null)
      if (Error err = parseRopeDict(c, e->value, e->origin, false, scaling))
        return err;

  if (const Entry *e = r.find("rope_scaling_factor"))
    if (e->value.kind() != json::Value::Null) {
      std::optional<double> f = asFiniteNumber(e->value);
      if (!f)
        return fail(e->origin, "must be a number, got " + render(e->value));
      if (*f <= 0)
        return fail(e->origin, "must be > 0, got " + render(e->value));
      factorField.present = true;
      factorField.type = *f == 1.0 ? "default" : "linear";
      factorField.factor = *f;
      factorField.origin = e->origin;
      factorField.path = e->origin.path;
    }

  if (const Entry *e = r.find("rope_parameters"))
    if (e->value.kind() != json::Value::Null) {
      const json::Object *obj = e->value.getAsObject();
      if (!obj)
        return fail(e->origin, "must be an object, got " + render(e->value));
      bool perType = false;
      for (const auto &kv : *obj)
        if (kv.first == "full_attention" || kv.first == "sliding_attention" ||
            kv.second.getAsObject())
          perType = true;
      if (!perType) {
        // One dict for the whole model: it describes the global layers.
        if (Error err = parseRopeDict(c, e->value, e->origin, true, params))
          return err;
      } else {
        for (const std::string &key : sortedKeys(*obj)) {
          Origin o = e->origin;
          o.path += "." + key;
          const json::Value &v = *obj->get(key);
          if (key == "full_attention") {
            if (Error err = parseRopeDict(c, v, o, true, params))
              return err;
          } else if (key == "sliding_attention") {
            if (Error err = parseRopeDict(c, v, o, true, paramsSliding))
              return err;
          } else {
            return fail(o, "unknown layer type '" + key +
                               "' (expected "
                               "full_attention or sliding_attention)");
          }
        }
      }
    }

  auto sameScaling = [](const RopeSource &a, const RopeSource &b) {
    return a.type == b.type && a.factor == b.factor;
  };
  Expected<const RopeSource *> global = pickRope(
      {&params, &scaling, &factorField}, "global RoPE scaling", sameScaling);
  if (!global)
    return global.takeError();
  if (*global)
    m.globalRope.factor = (*global)->factor;

  // Thetas: rope_parameters.<type>.rope_theta against rope_theta /
  // rope_local_base_freq, by the same rule.
  auto pickTheta = [&](const RopeSource &fromParams, StringRef field,
                       double &out) -> Error {
    RopeSource plain;
    if (const Entry *e = r.find(field))
      if (e->value.kind() != json::Value::Null) {
        std::optional<double> t = asFiniteNumber(e->value);
        if (!t)
          return fail(e->origin, "must be a number, got " + render(e->value));
        if (*t <= 0)
          return fail(e->origin, "must be > 0, got " + render(e->value));
        plain.present = true;
        plain.theta = *t;
        plain.origin = e->origin;
        plain.path = e->origin.path;
      }
    RopeSource withTheta;
    if (fromParams.present && fromParams.theta) {
      withTheta = fromParams;
      withTheta.path = fromParams.path + ".rope_theta";
    }
    Expected<const RopeSource *> best =
        pickRope({&withTheta, &plain}, "RoPE base frequency",
                 [](const RopeSource &a, const RopeSource &b) {
                   return a.theta == b.theta;
                 });
    if (!best)
      return best.takeError();
    if (*best)
      out = *(*best)->theta;
    else
      r.noteDefault(field, std::to_string(static_cast<int64_t>(out)),
                    textClass(c));
    return Error::success();
  };
  if (Error e = pickTheta(params, "rope_theta", m.globalRope.theta))
    return e;
  if (Error e =
          pickTheta(paramsSliding, "rope_local_base_freq", m.slidingRope.theta))
    return e;
  // Sliding layers are scaled only when the file says so per layer type
  // (transformers 5.x); rope_scaling never reaches them (§7 D21).
  if (paramsSliding.present)
    m.slidingRope.factor = paramsSliding.factor;
  return Error::success();
}

Error resolveLayers(Ctx &c, const Reader &r, ModelConfig &m) {
  int64_t pattern = 6;
  if (Error e = r.integerIn("sliding_window_pattern", pattern, 1, kMaxSize, "",
                            /*nullable=*/true))
    return e;
  if ((!r.has("layer_types") || r.isNull("layer_types")) &&
      (!r.has("sliding_window_pattern") || r.isNull("sliding_window_pattern")))
    c.warn(r.origin("sliding_window_pattern"),
           Twine(r.has("sliding_window_pattern") ? "null" : "absent") +
               "; using " + textClass(c) +
               "'s default, 6 (there are no layer_types either; every "
               "sixth layer is global)");
  std::vector<AttentionKind> fromPattern;
  for (int64_t l = 0; l < m.numLayers; ++l)
    fromPattern.push_back((l + 1) % pattern != 0 ? AttentionKind::Sliding
                                                 : AttentionKind::Global);

  std::vector<AttentionKind> kinds = fromPattern;
  const Entry *typesEntry = r.find("layer_types");
  if (typesEntry && typesEntry->value.kind() != json::Value::Null) {
    const json::Array *types = typesEntry->value.getAsArray();
    if (!types)
      return fail(typesEntry->origin, "must be a list of \"sliding_attention\" "
                                      "/ \"full_attention\", got " +
                                          render(typesEntry->value));
    if (static_cast<int64_t>(types->size()) != m.numLayers)
      return fail(typesEntry->origin, "has " + Twine(types->size()) +
                                          " entries but num_hidden_layers is " +
                                          Twine(m.numLayers));
    std::vector<AttentionKind> fromTypes;
    for (size_t i = 0; i < types->size(); ++i) {
      std::optional<StringRef> t = (*types)[i].getAsString();
      if (t && *t == "sliding_attention")
        fromTypes.push_back(AttentionKind::Sliding);
      else if (t && *t == "full_attention")
        fromTypes.push_back(AttentionKind::Global);
      else
        return fail(typesEntry->origin,
                    "entry " + Twine(i) + " is " + render((*types)[i]) +
                        "; expected \"sliding_attention\" or "
                        "\"full_attention\"");
    }
    const Entry *patternEntry = r.find("sliding_window_pattern");
    bool patternWins =
        patternEntry && patternEntry->value.kind() != json::Value::Null &&
        patternEntry->origin.priority > typesEntry->origin.priority;
    if (!patternWins) {
      if (patternEntry && patternEntry->value.kind() != json::Value::Null &&
          fromTypes != fromPattern)
        c.warn(patternEntry->origin,
               "ignored: layer_types takes precedence and disagrees with it");
      kinds = std::move(fromTypes);
    }
  }

  m.layers.clear();
  for (int64_t l = 0; l < m.numLayers; ++l) {
    LayerSpec spec;
    spec.attention = kinds[l];
    spec.moe = m.numExperts > 0 && l >= m.firstKDenseReplace;
    m.layers.push_back(spec);
  }
  return Error::success();
}

Error checkActivation(const Reader &r, StringRef key) {
  const Entry *e = r.find(key);
  if (!e || e->value.kind() == json::Value::Null)
    return Error::success();
  std::optional<StringRef> s = e->value.getAsString();
  if (!s)
    return fail(e->origin, "must be a string, got " + render(e->value));
  if (*s != "gelu_pytorch_tanh" && *s != "gelu_tanh")
    return fail(e->origin, "activation '" + *s +
                               "' is not supported; Gemma-3 uses the tanh "
                               "GELU (gelu_pytorch_tanh or gelu_tanh)");
  return Error::success();
}

Error checkTokenId(const Reader &r, StringRef key, int64_t &out,
                   int64_t vocab) {
  const Entry *e = r.find(key);
  if (e && e->value.getAsArray()) {
    // eos_token_id may list several stop tokens; the first is the one the
    // data pipeline appends.
    const json::Array &a = *e->value.getAsArray();
    if (a.empty())
      return fail(e->origin, "must be a token id or a non-empty list of ids");
    for (const json::Value &item : a)
      if (!asInt(item) || *asInt(item) < 0 || *asInt(item) >= vocab)
        return fail(e->origin, "entry " + render(item) +
                                   " is not a token id in [0, " + Twine(vocab) +
                                   ")");
    out = *asInt(a[0]);
    return Error::success();
  }
  if (Error err = r.integer(key, out))
    return err;
  if (out < 0 || out >= vocab)
    return fail(r.origin(key), "must be a token id in [0, " + Twine(vocab) +
                                   "), got " + Twine(out) + r.defaulted(key));
  return Error::success();
}

Error resolveModel(Ctx &c, ModelConfig &m) {
  Reader r{c, c.model, true};
  m = ModelConfig();
  m.modelType = c.textType;
  m.checkpointPrefix = c.checkpointPrefix;

  // Gemma3TextConfig defaults (G3MoETextConfig has the same), for the fields
  // that may be absent.
  m.queryPreAttnScalar = 256;
  m.slidingWindow = 4096;
  m.rmsNormEps = 1e-6;
  m.tieWordEmbeddings = true;
  m.initializerRange = 0.02;
  m.padTokenId = 0;
  m.eosTokenId = 1;
  m.bosTokenId = 2;
  m.maxPositionEmbeddings = 131072;
  m.globalRope = RopeSpec{1000000.0, 1.0};
  m.slidingRope = RopeSpec{10000.0, 1.0};

  // The shape. Checkpoint configs always give the first three: the class
  // defaults (2304, 9216, 26) are placeholders, and a config without them is
  // incomplete. transformers writes the other four in every text config, but
  // 4.x left fields equal to the class default out of a wrapper's
  // text_config, and the Hub's Gemma-3-4B relies on that for its heads,
  // head_dim and vocabulary: there the default is used, with a warning.
  struct SizeField {
    const char *key;
    int64_t *out;
    int64_t classDefault;
    int64_t max;
    const char *why;
    bool defaultInWrapper;
  };
  SizeField sizes[] = {
      {"vocab_size", &m.vocabSize, 262208, kMaxSize, " (token ids are int32)",
       true},
      {"hidden_size", &m.hiddenSize, 2304, kMaxSize, "", false},
      {"intermediate_size", &m.intermediateSize, 9216, kMaxSize, "", false},
      {"num_hidden_layers", &m.numLayers, 26, kMaxLayers, "", false},
      {"num_attention_heads", &m.numHeads, 8, kMaxSize, "", true},
      {"num_key_value_heads", &m.numKVHeads, 4, kMaxSize, "", true},
      {"head_dim", &m.headDim, 256, kMaxSize, "", true},
  };
  for (const SizeField &f : sizes) {
    if (!r.has(f.key)) {
      if (!f.defaultInWrapper)
        return fail(r.origin(f.key),
                    "missing; a model config must give the model's shape, and "
                    "every checkpoint's does (" +
                        textClass(c) + "'s default, " + Twine(f.classDefault) +
                        ", is a placeholder)");
      if (!c.wrapper)
        return fail(r.origin(f.key),
                    "missing; a " + c.textType +
                        " config must give the model's shape, and "
                        "transformers writes every field of one (" +
                        textClass(c) + "'s default, " + Twine(f.classDefault) +
                        ", is taken only in a multimodal config's "
                        "text_config, which transformers 4.x wrote without "
                        "the fields equal to it)");
      c.warn(r.origin(f.key),
             "absent; using " + textClass(c) + "'s default, " +
                 Twine(f.classDefault) +
                 ", as transformers does (4.x left fields equal to it out "
                 "of text_config)");
      *f.out = f.classDefault;
    }
    if (Error e = r.integerIn(f.key, *f.out, 1, f.max, f.why))
      return e;
  }
  // Only an upper bound of the sequence length: the default changes nothing
  // else.
  if (Error e = r.integerIn("max_position_embeddings", m.maxPositionEmbeddings,
                            1, kMaxSize, " (positions are int32)"))
    return e;
  if (m.numHeads % m.numKVHeads != 0)
    return fail(r.origin("num_key_value_heads"),
                "num_attention_heads (" + Twine(m.numHeads) +
                    ") must be a multiple of num_key_value_heads (" +
                    Twine(m.numKVHeads) + ")" +
                    r.defaulted("num_key_value_heads"));
  if (m.headDim % 2 != 0)
    return fail(r.origin("head_dim"),
                "must be even (RoPE rotates pairs of dimensions), got " +
                    Twine(m.headDim));

  if (r.isNull("sliding_window"))
    return fail(r.origin("sliding_window"),
                "must be an integer >= 1; null (no sliding window) is not "
                "supported for Gemma-3");
  r.noteDefault("sliding_window", Twine(m.slidingWindow), textClass(c));
  if (Error e = r.integerIn("sliding_window", m.slidingWindow, 1, kMaxSize))
    return e;

  r.noteDefault("query_pre_attn_scalar", num(m.queryPreAttnScalar),
                textClass(c));
  if (Error e = r.number("query_pre_attn_scalar", m.queryPreAttnScalar))
    return e;
  if (m.queryPreAttnScalar <= 0)
    return fail(r.origin("query_pre_attn_scalar"),
                "must be > 0, got " + num(m.queryPreAttnScalar));
  r.noteDefault("rms_norm_eps", num(m.rmsNormEps), textClass(c));
  if (Error e = r.number("rms_norm_eps", m.rmsNormEps))
    return e;
  if (m.rmsNormEps <= 0)
    return fail(r.origin("rms_norm_eps"),
                "must be > 0, got " + num(m.rmsNormEps));
  if (Error e = r.number("initializer_range", m.initializerRange))
    return e;
  if (m.initializerRange <= 0)
    return fail(r.origin("initializer_range"),
                "must be > 0, got " + num(m.initializerRange));

  if (Error e = checkActivation(r, "hidden_activation"))
    return e;
  if (Error e = checkActivation(r, "hidden_act"))
    return e;

  bool attentionBias = false;
  if (Error e = r.boolean("attention_bias", attentionBias, true))
    return e;
  if (attentionBias)
    return fail(r.origin("attention_bias"),
                "must be false; Gemma-3 attention has no biases");
  double attentionDropout = 0;
  if (Error e = r.number("attention_dropout", attentionDropout, true))
    return e;
  if (attentionDropout != 0)
    return fail(r.origin("attention_dropout"),
                "must be 0; attention dropout is not implemented");
  bool bidirectional = false;
  if (Error e = r.boolean("use_bidirectional_attention", bidirectional, true))
    return e;
  if (bidirectional)
    return fail(r.origin("use_bidirectional_attention"),
                "must be false; g3moe trains causal decoders");

  for (const char *key :
       {"final_logit_softcapping", "attn_logit_softcapping"}) {
    const Entry *e = r.find(key);
    if (!e || e->value.kind() == json::Value::Null)
      continue;
    std::optional<double> v = asFiniteNumber(e->value);
    if (!v || *v <= 0)
      return fail(e->origin,
                  "must be null or a positive number, got " + render(e->value));
    (StringRef(key) == "final_logit_softcapping" ? m.finalLogitSoftcap
                                                 : m.attnLogitSoftcap) = *v;
  }
  if (Error e = r.boolean("tie_word_embeddings", m.tieWordEmbeddings))
    return e;

  if (Error e = checkTokenId(r, "pad_token_id", m.padTokenId, m.vocabSize))
    return e;
  if (Error e = checkTokenId(r, "eos_token_id", m.eosTokenId, m.vocabSize))
    return e;
  if (Error e = checkTokenId(r, "bos_token_id", m.bosTokenId, m.vocabSize))
    return e;

  // MoE. A G3MoE config (or a preset's g3moe_params) must say how many
  // experts there are: G3MoETextConfig's default, 256, is DeepSeek-V3's and
  // would be a silent change of shape. Elsewhere absent means dense.
  m.numExperts = 0;
  if (c.g3moeDefaults && !r.has("n_routed_experts"))
    return fail(r.origin("n_routed_experts"),
                "missing; a G3MoE model must give its number of routed "
                "experts (0 or null for a dense model); G3MoETextConfig's "
                "default, 256, is not used silently");
  if (Error e = r.integerIn("n_routed_experts", m.numExperts, 0, kMaxExperts,
                            "", /*nullable=*/true))
    return e;
  if (m.numExperts > 0 && m.modelType == "gemma3_text")
    m.modelType = "g3moe_text";

  if (m.numExperts == 0) {
    // A dense model keeps ModelConfig's neutral MoE values.
    for (const char *key : kMoEFields)
      if (const Entry *e = r.find(key); e && !isOffValue(e->value))
        c.warn(e->origin, "ignored: the model is dense (n_routed_experts is "
                          "0 or absent)");
    if (Error e = resolveRope(c, r, m))
      return e;
    return resolveLayers(c, r, m);
  }

  // The other G3MoETextConfig defaults; n_shared_experts defaults to 0
  // because the R0/R1 block had no shared expert (§7 A2).
  m.topK = 8;
  m.firstKDenseReplace = 3;
  m.router = RouterKind::SparseMixer;
  m.routerJitterNoise = 0.01;
  m.inputJitterNoise = 0.01;
  m.routerAuxLossCoef = 0.001;
  m.routerZLossCoef = 0.0001;
  m.numSharedExperts = 0;
  m.freezeSharedExperts = true;
  m.routedScalingFactor = 2.5;
  m.numGroups = 8;
  m.topkGroup = 4;
  m.normTopkProb = true;

  // The routing width is as much the model's as the expert count; the class
  // default 8 is DeepSeek-V3's (and SparseMixer needs 2).
  if (!r.has("num_experts_per_tok"))
    return fail(r.origin("num_experts_per_tok"),
                "missing; a G3MoE model must give the experts each token is "
                "routed to (2 for router 'sparsemixer'); G3MoETextConfig's "
                "default, 8, is not used silently");
  if (Error e =
          r.integerIn("num_experts_per_tok", m.topK, 1, kMaxExperts))
    return e;
  if (m.topK > m.numExperts)
    return fail(r.origin("num_experts_per_tok"),
                "is " + Twine(m.topK) + r.defaulted("num_experts_per_tok") +
                    " but there are only " + Twine(m.numExperts) +
                    " routed experts (n_routed_experts)");
  std::string router = "sparsemixer";
  if (Error e = r.string("router_type", router, true))
    return e;
  if (router == "sparsemixer")
    m.router = RouterKind::SparseMixer;
  else if (router == "softmax_topk")
    m.router = RouterKind::SoftmaxTopK;
  else if (router == "sigmoid_grouped")
    m.router = RouterKind::SigmoidGrouped;
  else
    return fail(r.origin("router_type"),
                "unknown router '" + router +
                    "'; supported: sparsemixer, softmax_topk, "
                    "sigmoid_grouped");
  if (m.router == RouterKind::SparseMixer && m.topK != 2)
    return fail(r.origin("num_experts_per_tok"),
                "is " + Twine(m.topK) + r.defaulted("num_experts_per_tok") +
                    " but router 'sparsemixer' is defined only for top-2 "
                    "routing (G3MOE_SPEC.md §7 A3); set it to 2");

  // The MoE fields a G3MoE checkpoint normally states; an absent one takes
  // G3MoETextConfig's default, with a warning where it changes the step.
  r.noteDefault("first_k_dense_replace", Twine(m.firstKDenseReplace),
                "G3MoETextConfig");
  if (m.router == RouterKind::SparseMixer)
    r.noteDefault("router_jitter_noise", num(m.routerJitterNoise),
                  "G3MoETextConfig");
  r.noteDefault("input_jitter_noise", num(m.inputJitterNoise),
                "G3MoETextConfig");
  if (!r.has("n_shared_experts"))
    c.warn(r.origin("n_shared_experts"),
           "absent; using 0 (no shared expert, as in the R0/R1 block); "
           "G3MoETextConfig's default, 1, was never used (G3MOE_SPEC.md §7 "
           "A2)");
  if (m.router == RouterKind::SigmoidGrouped) {
    r.noteDefault("routed_scaling_factor", num(m.routedScalingFactor),
                  "G3MoETextConfig");
    r.noteDefault("n_group", Twine(m.numGroups), "G3MoETextConfig");
    r.noteDefault("topk_group", Twine(m.topkGroup), "G3MoETextConfig");
  }
  if (m.router != RouterKind::SparseMixer)
    r.noteDefault("norm_topk_prob", "true", "G3MoETextConfig");

  if (Error e = r.integerIn("first_k_dense_replace", m.firstKDenseReplace, 0,
                            m.numLayers, " (num_hidden_layers)"))
    return e;

  struct NonNegative {
    const char *key;
    double *out;
    double below;
  };
  NonNegative coefs[] = {
      {"router_jitter_noise", &m.routerJitterNoise, 1.0},
      {"input_jitter_noise", &m.inputJitterNoise, 1.0},
      {"router_aux_loss_coef", &m.routerAuxLossCoef, 0},
      {"router_z_loss_coef", &m.routerZLossCoef, 0},
  };
  for (const NonNegative &f : coefs) {
    if (Error e = r.number(f.key, *f.out))
      return e;
    if (*f.out < 0 || (f.below > 0 && *f.out >= f.below))
      return fail(r.origin(f.key), (f.below > 0 ? "must be in [0, 1), got "
                                                : "must be >= 0, got ") +
                                       num(*f.out));
  }

  if (Error e = r.integerIn("n_shared_experts", m.numSharedExperts, 0,
                            kMaxExperts, "", /*nullable=*/true))
    return e;
  if (m.numSharedExperts > 0)
    r.noteDefault("freeze_shared_experts", "true", "G3MoETextConfig");
  if (Error e = r.boolean("freeze_shared_experts", m.freezeSharedExperts))
    return e;
  if (Error e = r.number("routed_scaling_factor", m.routedScalingFactor))
    return e;
  if (m.routedScalingFactor <= 0)
    return fail(r.origin("routed_scaling_factor"),
                "must be > 0, got " + num(m.routedScalingFactor));
  if (Error e = r.boolean("norm_topk_prob", m.normTopkProb))
    return e;

  // Group-limited routing. topk_group > n_group is rejected whatever the
  // router, as in the seed's g3moe_params (§7 D12).
  if (Error e = r.integerIn("n_group", m.numGroups, 1, kMaxExperts))
    return e;
  if (Error e = r.integerIn("topk_group", m.topkGroup, 1, kMaxExperts))
    return e;
  if (m.topkGroup > m.numGroups)
    return fail(r.origin("topk_group"),
                "is " + Twine(m.topkGroup) + r.defaulted("topk_group") +
                    " but there are only " + Twine(m.numGroups) +
                    " groups (n_group); topk_group must be <= n_group "
                    "(G3MOE_SPEC.md §7 D12)");
  if (m.router == RouterKind::SigmoidGrouped) {
    if (m.numExperts % m.numGroups != 0)
      return fail(r.origin("n_group"),
                  "is " + Twine(m.numGroups) + r.defaulted("n_group") +
                      ", which does not divide n_routed_experts (" +
                      Twine(m.numExperts) +
                      "); router 'sigmoid_grouped' splits the experts "
                      "into equal groups");
    int64_t reachable = m.topkGroup * (m.numExperts / m.numGroups);
    if (m.topK > reachable)
      return fail(r.origin("num_experts_per_tok"),
                  "is " + Twine(m.topK) + " but topk_group (" +
                      Twine(m.topkGroup) + ") groups hold only " +
                      Twine(reachable) + " experts");
  } else {
    const char *unused[] = {"n_group", "topk_group", "routed_scaling_factor"};
    for (const char *key : unused)
      if (const Entry *e = r.find(key))
        c.warn(e->origin, "has no effect with router '" + router + "'");
    if (m.router == RouterKind::SparseMixer)
      if (const Entry *e = r.find("norm_topk_prob"))
        c.warn(e->origin, "has no effect with router 'sparsemixer'");
  }

  if (Error e = resolveRope(c, r, m))
    return e;
  return resolveLayers(c, r, m);
}

Error resolveTraining(Ctx &c, const ModelConfig &m, TrainingOptions &t) {
  Reader r{c, c.train, false};
  // Messages name the field the way the seed presets spell it.
  auto at = [&](StringRef canonical, StringRef spelled) {
    Origin o = r.origin(canonical);
    if (!r.has(canonical))
      o.path = spelled.str();
    return o;
  };
  auto absent = [&](StringRef key) { return r.defaulted(key); };

  if (Error e = r.integer("seq_len", t.seqLen))
    return e;
  if (t.seqLen < 1 || t.seqLen > m.maxPositionEmbeddings)
    return fail(at("seq_len", "max_seq_length"),
                "must be in [1, max_position_embeddings = " +
                    Twine(m.maxPositionEmbeddings) + "], got " +
                    Twine(t.seqLen) + absent("seq_len"));
  if (Error e = r.integerIn("micro_batch", t.microBatch, 1, kMaxSize))
    return e;

  if (Error e = r.string("finetuning", t.finetuning))
    return e;
  if (t.finetuning != "lora" && t.finetuning != "full")
    return fail(at("finetuning", "finetuning"),
                "must be 'lora' or 'full', got '" + t.finetuning + "'");

  if (Error e = r.integerIn("lora_r", t.lora.rank, 1, kMaxSize))
    return e;
  if (Error e = r.number("lora_alpha", t.lora.alpha))
    return e;
  if (t.lora.alpha <= 0)
    return fail(at("lora_alpha", "lora_alpha"),
                "must be > 0, got " + num(t.lora.alpha));
  if (Error e = r.number("lora_dropout", t.lora.dropout))
    return e;
  if (t.lora.dropout < 0 || t.lora.dropout >= 1)
    return fail(at("lora_dropout", "lora_dropout"),
                "must be in [0, 1), got " + num(t.lora.dropout));

  if (const Entry *e = r.find("lora_target_modules")) {
    std::vector<std::string> names;
    if (std::optional<StringRef> s = e->value.getAsString()) {
      SmallVector<StringRef, 8> parts;
      s->split(parts, ',', -1, false);
      for (StringRef p : parts)
        names.push_back(p.trim().str());
    } else {
      for (const json::Value &item : *e->value.getAsArray())
        names.push_back(item.getAsString()->str());
    }
    std::vector<std::string> targets;
    for (const std::string &name : names) {
      if (name == "all-linear") {
        for (const char *mod : kLoraModules)
          if (!is_contained(targets, mod))
            targets.push_back(mod);
        continue;
      }
      if (!inTable(kLoraModules, name))
        return fail(e->origin, "unknown LoRA target '" + name +
                                   "'; supported: q_proj, k_proj, v_proj, "
                                   "o_proj, gate_proj, up_proj, down_proj, "
                                   "all-linear");
      if (!is_contained(targets, name))
        targets.push_back(name);
    }
    if (targets.empty())
      return fail(e->origin, "names no module");
    t.lora.targetModules = std::move(targets);
  }

  struct BoolField {
    const char *key;
    bool *out;
  };
  BoolField bools[] = {
      {"train_router", &t.trainRouter},
      {"dense_ffn_no_grad", &t.denseFFNNoGrad},
      {"load_balancing_loss", &t.loadBalancingLoss},
      {"router_z_loss", &t.routerZLoss},
      {"gradient_checkpointing", &t.gradientCheckpointing},
      {"packing", &t.packing},
      {"assistant_only_loss", &t.assistantOnlyLoss},
  };
  for (const BoolField &f : bools)
    if (Error e = r.boolean(f.key, *f.out))
      return e;

  if (const Entry *e = r.find("memory_budget_gb")) {
    double gb = *asFiniteNumber(e->value);
    if (gb <= 0 || gb > 1e6)
      return fail(e->origin, "must be a number of GiB in (0, 1e6], got " +
                                 render(e->value));
    t.memoryBudgetBytes = static_cast<int64_t>(gb * 1024.0 * 1024.0 * 1024.0);
  }

  struct NumField {
    const char *key;
    double *out;
    double lo, hi;
    bool loOpen, hiOpen;
  };
  const double inf = std::numeric_limits<double>::infinity();
  NumField nums[] = {
      {"learning_rate", &t.learningRate, 0, inf, false, true},
      {"weight_decay", &t.weightDecay, 0, inf, false, true},
      {"adam_beta1", &t.adamBeta1, 0, 1, false, true},
      {"adam_beta2", &t.adamBeta2, 0, 1, false, true},
      {"adam_epsilon", &t.adamEpsilon, 0, inf, true, true},
      {"max_grad_norm", &t.maxGradNorm, 0, inf, false, true},
      {"warmup_ratio", &t.warmupRatio, 0, 1, false, false},
      {"num_train_epochs", &t.numTrainEpochs, 0, inf, true, true},
      {"test_size", &t.testSize, 0, 1, false, true},
  };
  for (const NumField &f : nums) {
    if (Error e = r.number(f.key, *f.out))
      return e;
    double v = *f.out;
    bool ok =
        (f.loOpen ? v > f.lo : v >= f.lo) && (f.hiOpen ? v < f.hi : v <= f.hi);
    if (!ok) {
      std::string range = std::string(f.loOpen ? "(" : "[") + num(f.lo) + ", " +
                          (f.hi == inf ? "inf" : num(f.hi)) +
                          (f.hiOpen ? ")" : "]");
      return fail(r.origin(f.key), "must be in " + range + ", got " + num(v));
    }
  }

  struct IntField {
    const char *key;
    int64_t *out;
    int64_t lo;
  };
  IntField ints[] = {
      {"warmup_steps", &t.warmupSteps, 0},
      {"gradient_accumulation_steps", &t.gradientAccumulationSteps, 1},
      {"logging_steps", &t.loggingSteps, 1},
      {"eval_steps", &t.evalSteps, 1},
      {"save_steps", &t.saveSteps, 1},
      {"save_total_limit", &t.saveTotalLimit, 0},
      {"max_steps", &t.maxSteps, -1},
      {"seed", &t.seed, 0},
      {"max_line_bytes", &t.maxLineBytes, 1},
  };
  for (const IntField &f : ints) {
    if (Error e = r.integer(f.key, *f.out))
      return e;
    if (*f.out < f.lo)
      return fail(r.origin(f.key),
                  "must be >= " + Twine(f.lo) + ", got " + Twine(*f.out));
  }
  if (t.maxSteps == 0)
    return fail(r.origin("max_steps"),
                "must be -1 (train for num_train_epochs) or >= 1, got 0");

  if (Error e = r.string("lr_scheduler_type", t.lrSchedulerType))
    return e;
  if (t.lrSchedulerType != "cosine" && t.lrSchedulerType != "linear" &&
      t.lrSchedulerType != "constant" &&
      t.lrSchedulerType != "constant_with_warmup")
    return fail(r.origin("lr_scheduler_type"),
                "unsupported schedule '" + t.lrSchedulerType +
                    "'; supported: cosine, linear, constant, "
                    "constant_with_warmup");

  if (Error e = r.string("loss_denominator", t.lossDenominator))
    return e;
  if (t.lossDenominator != "shifted" && t.lossDenominator != "unshifted")
    return fail(r.origin("loss_denominator"),
                "unsupported loss denominator '" + t.lossDenominator +
                    "'; supported: shifted (today's transformers), unshifted "
                    "(transformers 4.46-4.5x)");

  if (Error e = r.string("dataset", t.dataset))
    return e;
  // A relative data path in a file means the file's folder, as the model path
  // does; on the command line it means the working directory.
  if (!t.dataset.empty() && sys::path::is_relative(t.dataset)) {
    const Origin &o = r.origin("dataset");
    if (o.setText.empty()) {
      SmallString<256> resolved(sys::path::parent_path(o.file));
      sys::path::append(resolved, t.dataset);
      sys::fs::make_absolute(resolved);
      sys::path::remove_dots(resolved, /*remove_dot_dot=*/true);
      t.dataset = resolved.str().str();
    }
  }
  if (Error e = r.string("output_dir", t.outputDir))
    return e;

  struct Choice {
    const char *key;
    std::vector<StringRef> allowed;
    const char *why;
  };
  Choice choices[] = {
      {"eval_strategy", {"no", "steps", "epoch"}, ""},
      {"save_strategy", {"no", "steps", "epoch", "best"}, ""},
      {"optim",
       {"adamw_torch", "adamw_torch_fused", "adamw_hf"},
       "; g3moe's optimizer is AdamW (G3MOE_SPEC.md §4.6)"},
  };
  for (const Choice &ch : choices) {
    std::string v;
    if (Error e = r.string(ch.key, v))
      return e;
    if (r.has(ch.key) && !is_contained(ch.allowed, v))
      return fail(r.origin(ch.key),
                  "unsupported value '" + v +
                      "'; supported: " + join(ch.allowed, ", ") + ch.why);
  }
  return Error::success();
}

/// Warns about MoE loss coefficients left at their default when the loss they
/// scale is switched on (only then do they matter).
void noteLossCoefficientDefaults(Ctx &c, const ModelConfig &m,
                                 const TrainingOptions &t) {
  if (!m.isMoE())
    return;
  Reader r{c, c.model, true};
  if (t.loadBalancingLoss)
    r.noteDefault("router_aux_loss_coef", num(m.routerAuxLossCoef),
                  "G3MoETextConfig");
  if (t.routerZLoss)
    r.noteDefault("router_z_loss_coef", num(m.routerZLossCoef),
                  "G3MoETextConfig");
}

/// The most elements a step may hold: its byte counts (up to 8 bytes an
/// element, summed over every buffer of the arena) then stay far inside
/// int64_t, whatever the planner adds up.
constexpr double kMaxStepElements = 4503599627370496.0; // 2^52

/// The sizes that decide how large a step's tensors are, as doubles so that
/// their products cannot overflow.
struct StepDims {
  double layers = 1, vocab = 1, hidden = 1, inter = 1, heads = 1, kvHeads = 1,
         headDim = 1, experts = 0, topK = 0, shared = 0, rank = 0, batch = 1,
         seq = 1;
};

/// An upper bound of the elements of the tensors a step holds: the weights
/// with their gradients and AdamW moments, LoRA adapters (on every expert
/// too) and one micro-batch's activations (a generous number per token and
/// layer, plus the fp32 logits and their gradient).
double stepElements(const StepDims &d) {
  double width = std::max({d.inter * std::max(1.0, d.shared),
                           d.heads * d.headDim, d.kvHeads * d.headDim,
                           d.hidden});
  double perLayer = 2 * d.hidden * d.headDim * (d.heads + d.kvHeads) +
                    3 * d.inter * d.hidden * (1 + d.shared) +
                    d.experts * (3 * d.inter * d.hidden + d.hidden) +
                    4 * d.hidden + 2 * d.headDim;
  double weights = 2 * d.vocab * d.hidden + d.layers * perLayer;
  double adapters = 7 * d.rank * d.layers * (1 + d.experts) * (d.hidden + width);
  double tokens = d.batch * d.seq;
  double activations =
      tokens * (4 * d.vocab + 16 * d.layers *
                                  (d.hidden + width * (1 + d.topK) +
                                   d.experts + d.heads));
  return 4 * (weights + adapters) + activations;
}

/// Each size is bounded on its own; their products must be too, or the
/// compiler's and the runtime's size arithmetic (elements x bytes, arena
/// offsets) could overflow. The sizes are taken one at a time, in the order
/// below, the others at their least; the first that takes the estimate past
/// the limit is named.
Error checkStepSize(Ctx &c, const ModelConfig &m, const TrainingOptions &t) {
  struct Dim {
    const char *key;
    /// How a training option is named when it is absent.
    const char *spelled;
    bool model;
    double value;
    double StepDims::*field;
  };
  bool moe = m.isMoE();
  const Dim dims[] = {
      {"num_hidden_layers", nullptr, true, double(m.numLayers),
       &StepDims::layers},
      {"vocab_size", nullptr, true, double(m.vocabSize), &StepDims::vocab},
      {"hidden_size", nullptr, true, double(m.hiddenSize), &StepDims::hidden},
      {"intermediate_size", nullptr, true, double(m.intermediateSize),
       &StepDims::inter},
      {"num_attention_heads", nullptr, true, double(m.numHeads),
       &StepDims::heads},
      {"num_key_value_heads", nullptr, true, double(m.numKVHeads),
       &StepDims::kvHeads},
      {"head_dim", nullptr, true, double(m.headDim), &StepDims::headDim},
      {"n_routed_experts", nullptr, true, double(m.numExperts),
       &StepDims::experts},
      {"num_experts_per_tok", nullptr, true, moe ? double(m.topK) : 0.0,
       &StepDims::topK},
      {"n_shared_experts", nullptr, true,
       moe ? double(m.numSharedExperts) : 0.0, &StepDims::shared},
      {"lora_r", "lora_r", false,
       t.finetuning == "lora" ? double(t.lora.rank) : 0.0, &StepDims::rank},
      {"seq_len", "max_seq_length", false, double(t.seqLen), &StepDims::seq},
      {"micro_batch", "per_device_train_batch_size", false,
       double(t.microBatch), &StepDims::batch},
  };
  StepDims partial;
  for (const Dim &dim : dims) {
    partial.*dim.field = dim.value;
    if (stepElements(partial) <= kMaxStepElements)
      continue;
    StepDims all;
    for (const Dim &each : dims)
      all.*each.field = each.value;
    Reader r{c, dim.model ? c.model : c.train, dim.model};
    Origin o = r.origin(dim.key);
    if (!dim.model && !r.has(dim.key))
      o.path = dim.spelled;
    return fail(o, "is " + Twine(static_cast<int64_t>(dim.value)) +
                       r.defaulted(dim.key) +
                       ", which makes the step too large: it would hold "
                       "about " +
                       formatv("{0:e1}", stepElements(all)).str() +
                       " elements (weights with their gradients and AdamW "
                       "moments, adapters, one micro-batch's activations), "
                       "more than the 2^52 g3moe allows so that its byte "
                       "counts fit in 64 bits");
  }
  return Error::success();
}

} // namespace

//===----------------------------------------------------------------------===//
// Public API
//===----------------------------------------------------------------------===//

double ModelConfig::embedScale(bool bf16) const {
  // HF keeps √H as a buffer in the model's dtype: the double goes to fp32,
  // then, in a bf16 model, rounds to nearest-even bf16.
  float f = static_cast<float>(std::sqrt(static_cast<double>(hiddenSize)));
  if (!bf16)
    return f;
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  bits &= 0xFFFF0000u;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

double ModelConfig::attentionScale() const {
  return 1.0 / std::sqrt(queryPreAttnScalar);
}

StringRef g3moe::frontend::stringifyRouterKind(RouterKind kind) {
  switch (kind) {
  case RouterKind::SparseMixer:
    return "sparsemixer";
  case RouterKind::SoftmaxTopK:
    return "softmax_topk";
  case RouterKind::SigmoidGrouped:
    return "sigmoid_grouped";
  }
  return "sparsemixer";
}

Expected<CompileConfig>
g3moe::frontend::parseCompileConfig(StringRef jsonText, StringRef displayName,
                                    StringRef baseDir,
                                    ArrayRef<ConfigOverride> overrides) {
  Ctx c;
  c.topFile = displayName.str();
  Expected<json::Value> doc = parseJson(jsonText, displayName);
  if (!doc)
    return doc.takeError();
  const json::Object *root = doc->getAsObject();
  if (!root)
    return failFile(displayName, "expected a JSON object at the top level, "
                                 "got " +
                                     render(*doc));

  CompileConfig result;
  if (root->get("model_name_or_path") || root->get("model_config") ||
      (!root->get("model_type") && looksLikePreset(*root))) {
    if (Error e = collectPreset(c, *root, displayName, baseDir))
      return e;
  } else {
    if (Error e = collectHFConfig(c, *root, displayName))
      return e;
  }
  for (const ConfigOverride &ov : overrides)
    if (Error e = applyOverride(c, ov))
      return e;

  if (Error e = resolveModel(c, result.model))
    return e;
  if (Error e = resolveTraining(c, result.model, result.training))
    return e;
  if (Error e = checkStepSize(c, result.model, result.training))
    return e;
  noteLossCoefficientDefaults(c, result.model, result.training);
  result.modelSource = c.modelFile;
  result.warnings = std::move(c.warnings);
  return result;
}

Expected<CompileConfig>
g3moe::frontend::loadCompileConfig(StringRef path,
                                   ArrayRef<ConfigOverride> overrides) {
  ErrorOr<std::unique_ptr<MemoryBuffer>> buffer =
      MemoryBuffer::getFile(path, /*IsText=*/true);
  if (!buffer)
    return failFile(path, "cannot read: " + buffer.getError().message());
  StringRef baseDir = sys::path::parent_path(path);
  return parseCompileConfig((*buffer)->getBuffer(), path, baseDir, overrides);
}
