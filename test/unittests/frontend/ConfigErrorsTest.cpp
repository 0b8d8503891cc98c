//===- ConfigErrorsTest.cpp - config errors and their messages ------------===//
//
// Every rejected configuration gets an error naming the file, the field and
// the real bound or the supported values.
//
//===----------------------------------------------------------------------===//

#include "ConfigTesting.h"

namespace {

//===----------------------------------------------------------------------===//
// Validation errors: one per rule, each naming the file and the field
//===----------------------------------------------------------------------===//

TEST(ConfigErrors, NonPositiveSizes) {
  EXPECT_REJECTS(tiny(R"("hidden_size": 0)"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("vocab_size": -5)"), "vocab_size");
  EXPECT_REJECTS(tiny(R"("intermediate_size": 0)"), "intermediate_size");
  EXPECT_REJECTS(tiny(R"("num_hidden_layers": 0)"), "num_hidden_layers");
  EXPECT_REJECTS(tiny(R"("num_hidden_layers": 100000000)"), "num_hidden_layers");
  EXPECT_REJECTS(tiny(R"("num_attention_heads": 0)"), "num_attention_heads");
  EXPECT_REJECTS(tiny(R"("max_position_embeddings": 0)"), "max_position_embeddings");
  EXPECT_REJECTS(tiny(R"("query_pre_attn_scalar": 0)"), "query_pre_attn_scalar");
  EXPECT_REJECTS(tiny(R"("rms_norm_eps": -1e-6)"), "rms_norm_eps");
}

TEST(ConfigErrors, MissingShapeFields) {
  // A model config without a shape field is an error, not Gemma3TextConfig's
  // placeholder (2304 for hidden_size).
  for (const char *field : {"hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size",
                            "num_attention_heads", "num_key_value_heads", "head_dim"}) {
    for (const char *type : {"gemma3_text", "g3moe_text"}) {
      std::string msg = parseErr(without(tiny("", type), field));
      EXPECT_CONTAINS(msg, std::string("inline.json: field '") + field + "': missing");
    }
  }
  // In a wrapper's text_config, where transformers 4.x left out fields equal
  // to the class default, only the three that no checkpoint leaves out.
  for (const char *field : {"hidden_size", "intermediate_size", "num_hidden_layers"}) {
    std::string msg = parseErr(wrapped(without(tiny("", "gemma3_text"), field)));
    EXPECT_CONTAINS(msg, std::string("inline.json: field 'text_config.") + field + "': missing");
  }
  std::string msg = parseErr(wrapped(without(tiny("", "gemma3_text"), "hidden_size")));
  EXPECT_CONTAINS(msg, "2304");
  // A G3MoE must give its experts and top-k.
  EXPECT_CONTAINS(parseErr(without(tiny(), "n_routed_experts")),
                  "inline.json: field 'n_routed_experts': missing");
  EXPECT_CONTAINS(parseErr(without(tiny(), "num_experts_per_tok")),
                  "inline.json: field 'num_experts_per_tok': missing");
  EXPECT_CONTAINS(parseErr(wrapped(without(tiny(), "n_routed_experts"), "g3moe")),
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
  msg = parseErr(R"({"model_name_or_path": "tiny-g3moe", "memory_budget_gb": 1e7})");
  EXPECT_CONTAINS(msg, "in [0, 1e6] (0: no budget)");
}

TEST(ConfigErrors, StepSizeBounded) {
  // Each size within its bound, their products not: elements x bytes would
  // overflow 64 bits.
  std::string msg = parseErr(tiny(R"("vocab_size": 2147483647, "hidden_size": 2147483647)"));
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
      "intermediate_size": 2147483647)",
                      "gemma3_text"));
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
  EXPECT_REJECTS(tiny(R"("first_k_dense_replace": 7)"), "first_k_dense_replace");
  EXPECT_REJECTS(tiny(R"("first_k_dense_replace": -1)"), "first_k_dense_replace");
  // first_k == L is allowed: every layer dense.
  EXPECT_TRUE(moeLayers(parseOk(tiny(R"("first_k_dense_replace": 6)")).model).empty());
}

TEST(ConfigErrors, UnsupportedRopeTypes) {
  std::string msg = parseErr(tiny(R"("rope_scaling": {"rope_type": "yarn", "factor": 8.0})"));
  EXPECT_CONTAINS(msg, "inline.json: field 'rope_scaling.rope_type'");
  EXPECT_CONTAINS(msg, "not supported");
  EXPECT_REJECTS(tiny(R"("rope_scaling": {"type": "dynamic", "factor": 2})"), "rope_scaling.type");
  EXPECT_REJECTS(tiny(R"("rope_parameters": {"full_attention":
      {"rope_type": "llama3", "factor": 8}})"),
                 "rope_parameters.full_attention.rope_type");
  EXPECT_REJECTS(tiny(R"("rope_parameters": {"rope_type": "longrope"})"),
                 "rope_parameters.rope_type");
  EXPECT_REJECTS(wrapped(tiny(R"("rope_scaling":
      {"rope_type": "yarn", "factor": 8})",
                              "gemma3_text")),
                 "text_config.rope_scaling.rope_type");
  EXPECT_REJECTS(tiny(R"("rope_parameters": {"chunked_attention": {}})"),
                 "rope_parameters.chunked_attention");
}

TEST(ConfigErrors, LinearFactorMustBePositive) {
  EXPECT_REJECTS(tiny(R"("rope_scaling": {"rope_type": "linear", "factor": 0})"),
                 "rope_scaling.factor");
  EXPECT_REJECTS(tiny(R"("rope_scaling": {"rope_type": "linear", "factor": -2})"),
                 "rope_scaling.factor");
  EXPECT_REJECTS(tiny(R"("rope_scaling": {"rope_type": "linear"})"), "rope_scaling.factor");
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
  EXPECT_REJECTS(R"({"model_config": {"lora_r": 8}})", "model_config.model_name_or_path");
  EXPECT_REJECTS(R"({"learning_rate": 1e-4, "lora_r": 8})", "model_name_or_path");
  EXPECT_REJECTS(R"({"model_type": "gemma3"})", "text_config");
  EXPECT_REJECTS(R"({"model_type": "g3moe", "text_config": null})", "text_config");
  EXPECT_REJECTS(R"({"hidden_size": 64})", "model_type");
  std::string msg = parseErr(R"({"model_type": "llama"})");
  EXPECT_CONTAINS(msg, "inline.json: field 'model_type'");
  EXPECT_CONTAINS(msg, "gemma3_text, gemma3, g3moe, g3moe_text");
}

TEST(ConfigErrors, SlidingWindow) {
  EXPECT_REJECTS(tiny(R"("sliding_window": 0)"), "sliding_window");
  EXPECT_REJECTS(tiny(R"("sliding_window": null)"), "sliding_window");
  EXPECT_REJECTS(tiny(R"("sliding_window_pattern": 0)"), "sliding_window_pattern");
}

TEST(ConfigErrors, OddHeadDim) { EXPECT_REJECTS(tiny(R"("head_dim": 15)"), "head_dim"); }

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
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "lora_r": 0})", "lora_r");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "lora_dropout": 1.0})", "lora_dropout");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "lora_dropout": -0.1})", "lora_dropout");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "lora_target_modules": ["gate_proj", "gate"]})",
                 "lora_target_modules");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "target_modules": ["router"]})",
                 "target_modules");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "lora_target_modules": []})",
                 "lora_target_modules");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "lora_alpha": 0})", "lora_alpha");
  CompileConfig all = parseOk(R"({"model_name_or_path": "tiny-g3moe",
      "lora_target_modules": ["all-linear"]})");
  EXPECT_EQ(all.training.lora.targetModules, kAllSeven);
  CompileConfig csv = parseOk(R"({"model_name_or_path": "tiny-g3moe",
      "target_modules": "q_proj, v_proj"})");
  EXPECT_EQ(csv.training.lora.targetModules, (std::vector<std::string>{"q_proj", "v_proj"}));
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
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "warmup_ratio": 1.5})", "warmup_ratio");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "warmup_ratio": -0.1})", "warmup_ratio");
}

TEST(ConfigErrors, GradientAccumulation) {
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "gradient_accumulation_steps": 0})",
                 "gradient_accumulation_steps");
}

TEST(ConfigErrors, OtherTrainingValues) {
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "learning_rate": -1})", "learning_rate");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "adam_beta2": 1.0})", "adam_beta2");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "num_train_epochs": 0})",
                 "num_train_epochs");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "max_steps": 0})", "max_steps");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "fp16": true})", "fp16");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "bf16": false})", "bf16");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "optim": "sgd"})", "optim");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "evaluation_strategy": "sometimes"})",
                 "evaluation_strategy");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "neftune_noise_alpha": 5})",
                 "neftune_noise_alpha");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe",
      "memory_budget_gb": -1})",
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
  EXPECT_REJECTS(tiny(R"("attn_logit_softcapping": -1)"), "attn_logit_softcapping");
  EXPECT_REJECTS(tiny(R"("final_logit_softcapping": 0)"), "final_logit_softcapping");
  EXPECT_REJECTS(tiny(R"("router_type": "expert_choice")"), "router_type");
  EXPECT_REJECTS(tiny(R"("use_bidirectional_attention": true)"), "use_bidirectional_attention");
  EXPECT_REJECTS(tiny(R"("quantization_config": {"bits": 4})"), "quantization_config");
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
    std::string name = std::string(f).substr(1, std::string(f).find('"', 1) - 1);
    EXPECT_CONTAINS(msg, "inline.json: field '" + name + "'");
    EXPECT_CONTAINS(msg, "later G3MoE design");
  }
}

TEST(ConfigErrors, WrapperTopLevelModelFields) {
  std::string msg =
      parseErr(R"({"model_type": "g3moe", "text_config": )" + tiny() + R"(, "hidden_size": 2304})");
  EXPECT_CONTAINS(msg, "inline.json: field 'hidden_size'");
  EXPECT_CONTAINS(msg, "text_config");
  EXPECT_REJECTS(R"({"model_type": "gemma3", "text_config":
      {"model_type": "g3moe_text"}})",
                 "text_config.model_type");
}

TEST(ConfigErrors, ModelNotOnDisk) {
  std::string msg = parseErr(R"({"model_name_or_path": "google/gemma-3-4b-it"})");
  EXPECT_CONTAINS(msg, "inline.json: field 'model_name_or_path'");
  EXPECT_CONTAINS(msg, "does not download");
  EXPECT_CONTAINS(msg, "local checkpoint directory");
  EXPECT_REJECTS(R"({"model_config": {"model_name_or_path": "nowhere"}})",
                 "model_config.model_name_or_path");
  EXPECT_REJECTS(R"({"model_name_or_path": 42})", "model_name_or_path");
  // A directory without config.json.
  EXPECT_REJECTS(R"({"model_name_or_path": "presets/.."})", "model_name_or_path");
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
  llvm::Expected<CompileConfig> c =
      parseCompileConfig(R"({"model_name_or_path": "gemma-3-4b-it"})", "inline.json", kExamples,
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
  EXPECT_CONTAINS(parseErr(std::string(100000, '[')), "inline.json: invalid JSON");
  EXPECT_CONTAINS(parseErr(std::string(100000, '{')), "inline.json: invalid JSON");
  EXPECT_CONTAINS(parseErr("{\"a\": \"\xff\xfe\"}"), "inline.json: invalid JSON");
}

TEST(ConfigJson, WrongTypes) {
  EXPECT_REJECTS(tiny(R"("hidden_size": "2560")"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": 64.5)"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": null)"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": [64])"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": true)"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": 1e300)"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("hidden_size": 99999999999999999999999)"), "hidden_size");
  EXPECT_REJECTS(tiny(R"("n_routed_experts": true)"), "n_routed_experts");
  EXPECT_REJECTS(tiny(R"("rope_theta": "1e6")"), "rope_theta");
  EXPECT_REJECTS(tiny(R"("rope_scaling": "linear")"), "rope_scaling");
  EXPECT_REJECTS(tiny(R"("rope_scaling": {"rope_type": 3})"), "rope_scaling.rope_type");
  EXPECT_REJECTS(tiny(R"("rope_parameters": 8)"), "rope_parameters");
  EXPECT_REJECTS(tiny(R"("tie_word_embeddings": "yes")"), "tie_word_embeddings");
  EXPECT_REJECTS(tiny(R"("router_type": 1)"), "router_type");
  EXPECT_REJECTS(tiny(R"("model_type": 3)"), "model_type");
  EXPECT_REJECTS(R"({"model_type": "gemma3", "text_config": 5})", "text_config");
  EXPECT_REJECTS(R"({"model_type": ["gemma3_text"]})", "model_type");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "learning_rate":
      "fast"})",
                 "learning_rate");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "seed": 4.5})", "seed");
  EXPECT_REJECTS(R"({"model_name_or_path": "tiny-g3moe", "packing": "no"})", "packing");
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
                         "gemma-3-4b-it-v5/config.json", "presets/g3moe_training_config.json",
                         "presets/g3moe_sft_config.json"};
  const char *values[] = {"null", "true", "-1",     "0",           "1e308", "\"x\"",
                          "[]",   "{}",   "[null]", "{\"a\": []}", "3.5"};
  for (const char *file : files) {
    auto buffer = llvm::MemoryBuffer::getFile(examplePath(file));
    ASSERT_TRUE(static_cast<bool>(buffer)) << file;
    llvm::Expected<llvm::json::Value> doc = llvm::json::parse((*buffer)->getBuffer());
    ASSERT_TRUE(static_cast<bool>(doc)) << file;
    std::string dir = examplePath(file);
    dir = dir.substr(0, dir.rfind('/'));
    std::vector<std::string> keys;
    for (const auto &kv : *doc->getAsObject())
      keys.push_back(kv.first.str());
    for (const std::string &key : keys)
      for (const char *value : values) {
        llvm::json::Value mutated = *doc;
        (*mutated.getAsObject())[key] = llvm::cantFail(llvm::json::parse(value));
        std::string text = llvm::formatv("{0}", mutated).str();
        llvm::Expected<CompileConfig> c = parseCompileConfig(text, "mutated.json", dir);
        if (!c) {
          std::string msg = llvm::toString(c.takeError());
          EXPECT_TRUE(msg.find("mutated.json") != std::string::npos ||
                      msg.find(".json: field") != std::string::npos)
              << key << "=" << value << ": " << msg;
        }
        // The same value as an override.
        llvm::Expected<CompileConfig> o =
            parseCompileConfig((*buffer)->getBuffer(), "override.json", dir, {{key, value}});
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
  CompileConfig c = loadOk("tiny-g3moe/config.json", {{"learning_rate", "3e-4"},
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
  EXPECT_EQ(c.training.lora.targetModules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.training.seqLen, 512);
  EXPECT_EQ(c.training.dataset, "data/chat.jsonl");
}

TEST(ConfigOverrides, WrapperGoesIntoTextConfig) {
  CompileConfig c = loadOk("gemma-3-4b-it/config.json", {{"sliding_window", "512"},
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
  CompileConfig c = loadOk("presets/g3moe_sft_config.json", {{"max_seq_length", "8192"},
                                                             {"gradient_accumulation_steps", "4"},
                                                             {"n_routed_experts", "3"}});
  EXPECT_EQ(c.training.seqLen, 8192);
  EXPECT_EQ(c.training.gradientAccumulationSteps, 4);
  EXPECT_EQ(c.model.numExperts, 3);
  EXPECT_EQ(c.training.lora.rank, 4);
}

TEST(ConfigOverrides, DottedKeysEditObjects) {
  CompileConfig c =
      loadOk("gemma-3-4b-it-v5/config.json", {{"rope_parameters.full_attention.factor", "4"}});
  EXPECT_DOUBLE_EQ(c.model.globalRope.factor, 4.0);
  EXPECT_DOUBLE_EQ(c.model.globalRope.theta, 1e6);
  CompileConfig theta = loadOk("gemma-3-4b-it-v5/config.json", {{"rope_theta", "500000"}});
  EXPECT_DOUBLE_EQ(theta.model.globalRope.theta, 5e5);
  CompileConfig scaled = loadOk("gemma-3-4b-it/config.json", {{"rope_scaling.factor", "2"}});
  EXPECT_DOUBLE_EQ(scaled.model.globalRope.factor, 2.0);
  CompileConfig pattern = loadOk("gemma-3-4b-it-v5/config.json", {{"sliding_window_pattern", "2"}});
  EXPECT_EQ(globalLayers(pattern.model).size(), 17u);
}

TEST(ConfigOverrides, InvalidOverrideNamesField) {
  std::string msg;
  llvm::Expected<CompileConfig> c =
      loadCompileConfig(examplePath("tiny-g3moe/config.json"), {{"num_experts_per_tok", "4"}});
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

  CompileConfig wrapper =
      parseOk(R"({"model_type": "gemma3", "text_config": )" + tiny(R"("bar": 2)", "gemma3_text") +
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
  const char *defaults[][3] = {{"rms_norm_eps", "Gemma3TextConfig", "1e-06"},
                               {"query_pre_attn_scalar", "Gemma3TextConfig", "256"},
                               {"sliding_window", "Gemma3TextConfig", "4096"},
                               {"rope_theta", "Gemma3TextConfig", "1000000"},
                               {"rope_local_base_freq", "Gemma3TextConfig", "10000"},
                               {"sliding_window_pattern", "Gemma3TextConfig", "6"}};
  for (const auto &[field, cls, value] : defaults) {
    CompileConfig c = parseOk(without(tiny("", "gemma3_text"), field));
    ASSERT_EQ(c.warnings.size(), 1u) << field;
    EXPECT_CONTAINS(c.warnings[0], std::string("inline.json: field '") + field +
                                       "': absent; using " + cls + "'s default, " + value);
  }
  // layer_types stands in for the pattern, rope_parameters for the thetas.
  CompileConfig v5 = parseOk(without(without(without(tiny(R"("layer_types": ["sliding_attention",
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
  CompileConfig aux =
      parseOk(without(tiny(R"("load_balancing_loss": true)"), "router_aux_loss_coef"));
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
      without(without(without(tiny("", "gemma3_text"), "pad_token_id"), "tie_word_embeddings"),
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
  CompileConfig dense = parseOk(tiny(R"("num_experts_per_tok": 2)", "gemma3_text"));
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
