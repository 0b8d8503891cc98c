//===- TrainingResolution.cpp - the training options from their fields ----===//
//
// Resolves the collected training options into TrainingOptions: the step's
// shape, LoRA, the switches, AdamW's and the schedule's numbers, the step
// counts, the data and output paths and the strategies HF's Trainer takes.
// Messages name an absent option the way the seed presets spell it.
//
//===----------------------------------------------------------------------===//

#include "frontend/ConfigInternal.h"
#include "runtime/base/units.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/SmallString.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"

using namespace llvm;

namespace g3moe::frontend::detail {

namespace {

/// Where a training option is; an absent one is named the way the seed
/// presets spell it.
Origin spelledOrigin(const Reader &r, StringRef canonical, StringRef spelled) {
  Origin o = r.origin(canonical);
  if (!r.has(canonical))
    o.path = spelled.str();
  return o;
}

/// The sequence length, the micro-batch and the fine-tuning method.
Error resolveStepShape(const Reader &r, const ModelConfig &m, TrainingOptions &t) {
  if (Error e = r.integer("seq_len", t.seqLen))
    return e;
  if (t.seqLen < 1 || t.seqLen > m.maxPositionEmbeddings)
    return fail(spelledOrigin(r, "seq_len", "max_seq_length"),
                "must be in [1, max_position_embeddings = " + Twine(m.maxPositionEmbeddings) +
                    "], got " + Twine(t.seqLen) + r.defaulted("seq_len"));
  if (Error e = r.integerIn("micro_batch", t.microBatch, 1, kMaxSize))
    return e;

  if (Error e = r.string("finetuning", t.finetuning))
    return e;
  if (t.finetuning != "lora" && t.finetuning != "full")
    return fail(spelledOrigin(r, "finetuning", "finetuning"),
                "must be 'lora' or 'full', got '" + t.finetuning + "'");
  return Error::success();
}

/// LoRA's rank, alpha, dropout and target modules.
Error resolveLoRA(const Reader &r, TrainingOptions &t) {
  if (Error e = r.integerIn("lora_r", t.lora.rank, 1, kMaxSize))
    return e;
  if (Error e = r.number("lora_alpha", t.lora.alpha))
    return e;
  if (t.lora.alpha <= 0)
    return fail(spelledOrigin(r, "lora_alpha", "lora_alpha"),
                "must be > 0, got " + num(t.lora.alpha));
  if (Error e = r.number("lora_dropout", t.lora.dropout))
    return e;
  if (t.lora.dropout < 0 || t.lora.dropout >= 1)
    return fail(spelledOrigin(r, "lora_dropout", "lora_dropout"),
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
  return Error::success();
}

/// A size field in GiB, a number in [0, 1e6] (`zero` says what 0 means), as
/// bytes.
Error gibField(const Entry &e, const char *zero, int64_t &bytes) {
  double gb = *asFiniteNumber(e.value);
  if (gb < 0 || gb > 1e6)
    return fail(e.origin, std::string("must be a number of GiB in [0, 1e6] (0: ") + zero +
                              "), got " + render(e.value));
  bytes = g3rt::gibToBytes(gb);
  return Error::success();
}

/// The switches and the memory budget.
Error resolveSwitches(const Reader &r, TrainingOptions &t) {
  struct BoolField {
    const char *key;
    bool *out;
  };
  BoolField bools[] = {
      {"train_router", &t.trainRouter},  {"dense_ffn_no_grad", &t.denseFFNNoGrad},
      {"fp8_base", &t.fp8Base},          {"load_balancing_loss", &t.loadBalancingLoss},
      {"router_z_loss", &t.routerZLoss}, {"gradient_checkpointing", &t.gradientCheckpointing},
      {"packing", &t.packing},           {"assistant_only_loss", &t.assistantOnlyLoss},
  };
  for (const BoolField &f : bools)
    if (Error e = r.boolean(f.key, *f.out))
      return e;
  // Full fine-tuning leaves no frozen weight to quantize.
  if (t.fp8Base && t.finetuning == "full")
    return fail(r.origin("fp8_base"), "needs LoRA (finetuning 'full' trains every weight in "
                                      "fp32 masters, and the products read those)");

  // 0 is "no budget", stated: g3moe-compile then takes none from the GPU
  // either (compiler/Driver/DeviceBudget.h).
  if (const Entry *e = r.find("memory_budget_gb")) {
    if (Error err = gibField(*e, "no budget", t.memoryBudgetBytes))
      return err;
    // A budget under one byte is still a budget, not "none".
    if (*asFiniteNumber(e->value) > 0 && t.memoryBudgetBytes == 0)
      t.memoryBudgetBytes = 1;
    t.memoryBudgetOrigin =
        e->origin.priority == Priority::Override ? e->origin.setText : fieldText(e->origin);
  }
  if (const Entry *e = r.find("host_memory_budget_gb"))
    if (Error err = gibField(*e, "no host offload", t.hostMemoryBudgetBytes))
      return err;
  return Error::success();
}

/// AdamW's and the schedule's numbers, and the step counts.
Error resolveHyperparameters(const Reader &r, TrainingOptions &t) {
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
    bool ok = (f.loOpen ? v > f.lo : v >= f.lo) && (f.hiOpen ? v < f.hi : v <= f.hi);
    if (!ok) {
      std::string range = std::string(f.loOpen ? "(" : "[") + num(f.lo) + ", " +
                          (f.hi == inf ? "inf" : num(f.hi)) + (f.hiOpen ? ")" : "]");
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
      return fail(r.origin(f.key), "must be >= " + Twine(f.lo) + ", got " + Twine(*f.out));
  }
  if (t.maxSteps == 0)
    return fail(r.origin("max_steps"), "must be -1 (train for num_train_epochs) or >= 1, got 0");
  return Error::success();
}

/// The LR schedule and the loss denominator.
Error resolveSchedules(const Reader &r, TrainingOptions &t) {
  if (Error e = r.string("lr_scheduler_type", t.lrSchedulerType))
    return e;
  if (t.lrSchedulerType != "cosine" && t.lrSchedulerType != "linear" &&
      t.lrSchedulerType != "constant" && t.lrSchedulerType != "constant_with_warmup")
    return fail(r.origin("lr_scheduler_type"), "unsupported schedule '" + t.lrSchedulerType +
                                                   "'; supported: cosine, linear, constant, "
                                                   "constant_with_warmup");

  if (Error e = r.string("loss_denominator", t.lossDenominator))
    return e;
  if (t.lossDenominator != "shifted" && t.lossDenominator != "unshifted")
    return fail(r.origin("loss_denominator"),
                "unsupported loss denominator '" + t.lossDenominator +
                    "'; supported: shifted (today's transformers), unshifted "
                    "(transformers 4.46-4.5x)");
  return Error::success();
}

/// The parallel layout: data_parallel (an integer >= 1 or "auto", 0 here)
/// and zero_stage (0 to 3).
Error resolveLayout(const Reader &r, TrainingOptions &t) {
  const Entry *dp = r.find("data_parallel");
  if (dp && !r.isNull("data_parallel") &&
      dp->value.getAsString() != std::optional<StringRef>("auto"))
    if (Error e = r.integerIn("data_parallel", t.dataParallel, 1, int64_t(1) << 20))
      return e;
  if (Error e = r.integerIn("zero_stage", t.zeroStage, 0, 3))
    return e;
  // The shards are laid out at compile time, for a known number of processes.
  if (t.zeroStage > 0 && t.dataParallel < 1)
    return fail(r.origin("zero_stage"),
                "zero_stage " + Twine(t.zeroStage) +
                    " needs data_parallel set to the number of processes (the optimizer "
                    "state is divided among them at compile time), not auto");
  return Error::success();
}

/// The dataset and the output directory.
Error resolvePaths(const Reader &r, TrainingOptions &t) {
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
  return Error::success();
}

/// The strategies and the optimizer name, which the runtime's defaults
/// only carry.
Error resolveStrategies(const Reader &r) {
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
                  "unsupported value '" + v + "'; supported: " + join(ch.allowed, ", ") + ch.why);
  }
  return Error::success();
}

} // namespace

Error resolveTraining(Ctx &c, const ModelConfig &m, TrainingOptions &t) {
  Reader r{c, c.train, false};
  if (Error e = resolveStepShape(r, m, t))
    return e;
  if (Error e = resolveLoRA(r, t))
    return e;
  if (Error e = resolveSwitches(r, t))
    return e;
  if (Error e = resolveHyperparameters(r, t))
    return e;
  if (Error e = resolveSchedules(r, t))
    return e;
  if (Error e = resolvePaths(r, t))
    return e;
  if (Error e = resolveLayout(r, t))
    return e;
  return resolveStrategies(r);
}

void noteLossCoefficientDefaults(Ctx &c, const ModelConfig &m, const TrainingOptions &t) {
  if (!m.isMoE())
    return;
  Reader r{c, c.model, true};
  if (t.loadBalancingLoss)
    r.noteDefault("router_aux_loss_coef", num(m.routerAuxLossCoef), "G3MoETextConfig");
  if (t.routerZLoss)
    r.noteDefault("router_z_loss_coef", num(m.routerZLossCoef), "G3MoETextConfig");
}

} // namespace g3moe::frontend::detail
