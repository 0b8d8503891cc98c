//===- ConfigFields.cpp - which fields exist and how each is taken --------===//
//
// The tables of the fields the config reader knows: the text-model fields it
// honours, HF metadata it skips, later-era G3MoE fields it refuses, wrapper
// keys, and every training option with its spellings, its type and what
// happens to it; and the checks that accept one training option's value.
//
//===----------------------------------------------------------------------===//

#include "frontend/ConfigInternal.h"

using namespace llvm;

namespace g3moe::frontend::detail {

namespace tables {

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
const char *const kDeepSeekLeftovers[] = {"kv_lora_rank", "q_lora_rank", "qk_rope_head_dim"};

/// Fields of later G3MoE designs (G3MOE_SPEC.md §6). Each would change the
/// model or the loss; g3moe implements the June design only.
const char *const kLaterEraFields[] = {"no_rope_layers",      "no_rope_layer_interval",
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
const char *const kWrapperKeys[] = {"vision_config",   "mm_tokens_per_image", "boi_token_index",
                                    "eoi_token_index", "image_token_index",   "boi_token_id",
                                    "eoi_token_id",    "image_token_id",      "initializer_range",
                                    "pad_token_id",    "eos_token_id",        "bos_token_id"};

const char *const kLoraModules[] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                    "gate_proj", "up_proj", "down_proj"};

} // namespace tables

const ArrayRef<const char *> kModelFields = tables::kModelFields;
const ArrayRef<const char *> kExpertAliases = tables::kExpertAliases;
const ArrayRef<const char *> kMoEFields = tables::kMoEFields;
const ArrayRef<const char *> kModelMetadata = tables::kModelMetadata;
const ArrayRef<const char *> kDeepSeekLeftovers = tables::kDeepSeekLeftovers;
const ArrayRef<const char *> kLaterEraFields = tables::kLaterEraFields;
const ArrayRef<const char *> kWrapperKeys = tables::kWrapperKeys;
const ArrayRef<const char *> kLoraModules = tables::kLoraModules;

namespace {

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
    {"fp8_base", "fp8_base", TK::Bool, true, nullptr},
    {"load_balancing_loss", "load_balancing_loss", TK::Bool, true, nullptr},
    {"router_z_loss", "router_z_loss", TK::Bool, true, nullptr},
    {"gradient_checkpointing", "gradient_checkpointing", TK::Bool, false, nullptr},
    {"memory_budget_gb", "memory_budget_gb", TK::Number, true, nullptr},
    {"host_memory_budget_gb", "host_memory_budget_gb", TK::Number, true, nullptr},
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
    {"gradient_accumulation_steps", "gradient_accumulation_steps", TK::Int, false, nullptr},
    {"logging_steps", "logging_steps", TK::Int, false, nullptr},
    {"eval_steps", "eval_steps", TK::Int, false, nullptr},
    {"save_steps", "save_steps", TK::Int, false, nullptr},
    {"save_total_limit", "save_total_limit", TK::Int, false, nullptr},
    {"seed", "seed", TK::Int, false, nullptr},
    {"test_size", "test_size", TK::Number, false, nullptr},
    {"max_line_bytes", "max_line_bytes", TK::Int, true, nullptr},
    // The parallel layout (docs/config.md): processes and ZeRO stage.
    {"data_parallel", "data_parallel", TK::IntOrAuto, true, nullptr},
    {"zero_stage", "zero_stage", TK::Int, true, nullptr},
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
    {"use_liger_kernel", nullptr, TK::IgnoreNotable, false, "g3moe uses its own fused kernels"},
    {"torch_compile", nullptr, TK::IgnoreNotable, false, "g3moe compiles the step itself"},
    {"padding_free", nullptr, TK::IgnoreNotable, false,
     "use packing; documents are separated by masks either way"},
    {"completion_only_loss", nullptr, TK::IgnoreNotable, false,
     "only conversational data is read; see assistant_only_loss"},
    {"resume_from_checkpoint", nullptr, TK::IgnoreNotable, false,
     "pass the checkpoint to g3moe-run instead"},
    {"use_multi_domain", nullptr, TK::IgnoreNotable, false, "g3moe-run reads one dataset file"},
    {"max_samples", nullptr, TK::IgnoreNotable, false, "g3moe-run reads the whole dataset file"},
    {"max_samples_per_domain", nullptr, TK::IgnoreNotable, false,
     "g3moe-run reads the whole dataset file"},
};

} // namespace

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

Error setTrainKey(Ctx &c, const TrainKey &tk, const json::Value &v, const Origin &o) {
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
  case TK::IntOrAuto:
    if (v.getAsString() != std::optional<StringRef>("auto") && !asInt(v) && !isWholeNumber(v))
      return fail(o, "must be an integer or \"auto\", got " + render(v));
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
      return fail(o, "must be a list of module names or a string, got " + render(v));
    for (const json::Value &item : *a)
      if (!item.getAsString())
        return fail(o, "must be a list of module names (strings), got " + render(item) +
                           " in the list");
    break;
  }
  case TK::UseLora: {
    std::optional<bool> b = v.getAsBoolean();
    if (!b)
      return fail(o, "must be true or false, got " + render(v));
    return setField(c.train, tk.canonical, json::Value(*b ? "lora" : "full"), o);
  }
  }
  return setField(c.train, tk.canonical, v, o);
}

} // namespace g3moe::frontend::detail
