//===- config.h - the configuration a step.bin carries ----------*- C++ -*-===//
//
// The model configuration and the training options the compiler resolved
// (the module attributes `g3moe.model` and `g3moe.training`), as step.fbs's
// ModelConfig and TrainingOptions tables decode them: read once by the
// loader, then used by every part of the runtime as plain values. A field a
// step.bin does not state has the default given here, which is also the
// schema's default.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_STEP_CONFIG_H
#define G3MOE_RUNTIME_STEP_CONFIG_H

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace g3rt {

/// The router of a MoE layer (config.json's `router_type`).
enum class RouterType : uint8_t { SparseMixer = 0, SoftmaxTopK = 1, SigmoidGrouped = 2 };

/// What the step trains: LoRA adapters or every weight.
enum class Finetuning : uint8_t { LoRA = 0, Full = 1 };

/// The learning-rate schedule (HF's `lr_scheduler_type`).
enum class LRSchedule : uint8_t { Cosine = 0, Linear = 1, Constant = 2, ConstantWithWarmup = 3 };

/// Whether the step was compiled for training or as a deterministic eval step.
enum class StepMode : uint8_t { Train = 0, Eval = 1 };

/// The dtype of the frozen weights and activations: bf16, or fp32 (--fp32).
enum class Precision : uint8_t { BF16 = 0, FP32 = 1 };

/// The count that divides an accumulation window's summed cross-entropy
/// (HF's num_items_in_batch; G3MOE_SPEC.md §4.5, docs/config.md).
enum class LossDenominator : uint8_t {
  /// The targets after the shift, i.e. the cross-entropy terms: today's
  /// transformers Trainer (`labels[..., 1:] != -100`), the default.
  Shifted = 0,
  /// The labels before the shift, one more per row: the Trainer of
  /// transformers 4.46-4.5x, for reproducing runs made with it.
  Unshifted = 1,
};

/// The names config files and HF use: "sparsemixer", "softmax_topk",
/// "sigmoid_grouped".
inline const char *routerTypeName(RouterType r) {
  switch (r) {
  case RouterType::SoftmaxTopK:
    return "softmax_topk";
  case RouterType::SigmoidGrouped:
    return "sigmoid_grouped";
  default:
    return "sparsemixer";
  }
}

/// "lora" or "full".
inline const char *finetuningName(Finetuning f) { return f == Finetuning::Full ? "full" : "lora"; }

/// "cosine", "linear", "constant" or "constant_with_warmup".
inline const char *lrScheduleName(LRSchedule s) {
  switch (s) {
  case LRSchedule::Linear:
    return "linear";
  case LRSchedule::Constant:
    return "constant";
  case LRSchedule::ConstantWithWarmup:
    return "constant_with_warmup";
  default:
    return "cosine";
  }
}

/// "train" or "eval".
inline const char *stepModeName(StepMode m) { return m == StepMode::Eval ? "eval" : "train"; }

/// "bf16" or "fp32".
inline const char *precisionName(Precision p) { return p == Precision::FP32 ? "fp32" : "bf16"; }

/// "shifted" or "unshifted".
inline const char *lossDenominatorName(LossDenominator d) {
  return d == LossDenominator::Unshifted ? "unshifted" : "shifted";
}

/// The longest data line g3moe-run reads where neither the step nor
/// --max-line-bytes says (64 MiB).
inline constexpr int64_t kDefaultMaxLineBytes = int64_t(64) << 20;

/// The resolved model configuration, under config.json's field names in
/// camelCase. Sizes a step always states are 0 where it does not.
struct ModelConfig {
  std::string modelType;
  /// Where the text model's tensors sit in a checkpoint ("model.", ...).
  std::string checkpointPrefix;
  int64_t vocabSize = 0;
  int64_t hiddenSize = 0;
  int64_t intermediateSize = 0;
  int64_t numHiddenLayers = 0;
  int64_t numAttentionHeads = 0;
  int64_t numKeyValueHeads = 0;
  int64_t headDim = 0;
  bool tieWordEmbeddings = true;
  double initializerRange = 0.02;
  int64_t padTokenId = 0;
  int64_t bosTokenId = 2;
  int64_t eosTokenId = 1;
  int64_t maxPositionEmbeddings = 131072;
  double rmsNormEps = 1e-6;
  int64_t slidingWindow = 4096;
  std::optional<double> queryPreAttnScalar;
  /// rope_theta: the global layers' RoPE base.
  double ropeTheta = 1e6;
  /// rope_local_base_freq: the sliding-window layers' RoPE base.
  double ropeLocalBaseFreq = 1e4;
  std::optional<double> finalLogitSoftcapping;
  std::optional<double> attnLogitSoftcapping;

  // Mixture of experts; 0 routed experts is a dense Gemma-3.
  int64_t nRoutedExperts = 0;
  int64_t numExpertsPerTok = 2;
  int64_t firstKDenseReplace = 0;
  RouterType routerType = RouterType::SparseMixer;
  double routerJitterNoise = 0.01;
  double inputJitterNoise = 0.01;
  double routerAuxLossCoef = 0.001;
  double routerZLossCoef = 1e-4;
  double routedScalingFactor = 2.5;
  int64_t nGroup = 1;
  int64_t topkGroup = 1;
  bool normTopkProb = true;
  int64_t nSharedExperts = 0;
  bool freezeSharedExperts = true;

  bool isMoE() const { return nRoutedExperts > 0; }
};

/// The compiled training options (step.fbs's TrainingOptions). g3moe-run's
/// flags (TrainOptions, runtime/train/trainer.h) override the run-time ones.
struct TrainingConfig {
  StepMode mode = StepMode::Train;
  Precision precision = Precision::BF16;
  int64_t seqLen = 0;
  int64_t microBatch = 1;
  Finetuning finetuning = Finetuning::LoRA;
  int64_t loraR = 16;
  double loraAlpha = 32.0;
  double loraDropout = 0.0;
  std::vector<std::string> loraTargetModules;
  bool trainRouter = false;
  bool denseFFNNoGrad = false;
  int64_t seed = 42;
  double learningRate = 2e-5;
  LRSchedule lrSchedulerType = LRSchedule::Cosine;
  double warmupRatio = 0.0;
  int64_t warmupSteps = 0;
  double weightDecay = 0.01;
  double adamBeta1 = 0.9;
  double adamBeta2 = 0.999;
  double adamEpsilon = 1e-8;
  double maxGradNorm = 1.0;
  int64_t gradientAccumulationSteps = 1;
  double numTrainEpochs = 3.0;
  /// Optimizer steps to run; -1 trains for numTrainEpochs.
  int64_t maxSteps = -1;
  int64_t loggingSteps = 1;
  int64_t saveSteps = 0;
  int64_t saveTotalLimit = 0;
  /// 0: evaluate only after the last step.
  int64_t evalSteps = 0;
  /// The training data; empty where the configuration names none.
  std::string dataset;
  double testSize = 0.0;
  int64_t maxLineBytes = kDefaultMaxLineBytes;
  /// Processes of a data-parallel job the step was compiled for; 0: any
  /// ("auto").
  int64_t dataParallel = 0;
  /// ZeRO stage (0: every process holds the whole state).
  int64_t zeroStage = 0;
  bool packing = false;
  bool assistantOnlyLoss = false;
  LossDenominator lossDenominator = LossDenominator::Shifted;
  /// Empty: g3moe-run's default output folder.
  std::string outputDir;

  bool isLoRA() const { return finetuning == Finetuning::LoRA; }
};

} // namespace g3rt

#endif // G3MOE_RUNTIME_STEP_CONFIG_H
