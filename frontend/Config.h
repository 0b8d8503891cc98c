//===- Config.h - model and training configuration --------------*- C++ -*-===//
//
// The resolved, validated configuration of one compile: the model (from an HF
// config.json of model_type gemma3_text, gemma3, g3moe or g3moe_text, or from a
// seed-recipe training preset that names one) and the training options. Every
// accepted field is honoured; every inconsistent or unsupported value is
// rejected with a message that names the file and the field.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_FRONTEND_CONFIG_H
#define G3MOE_FRONTEND_CONFIG_H

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace g3moe::frontend {

/// How a decoder layer attends.
enum class AttentionKind { Sliding, Global };

/// The MoE routing rule (DESIGN.md "Model decisions").
enum class RouterKind { SparseMixer, SoftmaxTopK, SigmoidGrouped };

/// Rotary embedding of one attention kind.
struct RopeSpec {
  /// Base frequency theta.
  double theta = 10000.0;
  /// Linear scaling factor; 1 for rope_type "default".
  double factor = 1.0;
};

/// The resolved shape of one decoder layer.
struct LayerSpec {
  AttentionKind attention = AttentionKind::Sliding;
  /// True when the layer's FFN is the MoE block, false for the dense MLP.
  bool moe = false;
};

/// The model, as the graph builder needs it. All sizes are validated.
struct ModelConfig {
  /// model_type of the file that described the model (after unwrapping).
  std::string modelType;
  /// Prefix of the text model's tensors in the checkpoint: "" for text-only
  /// checkpoints, "language_model." for multimodal gemma3 / g3moe ones.
  std::string checkpointPrefix;

  int64_t vocabSize = 0;
  int64_t hiddenSize = 0;
  int64_t intermediateSize = 0;
  int64_t numLayers = 0;
  int64_t numHeads = 0;
  int64_t numKVHeads = 0;
  int64_t headDim = 0;
  double queryPreAttnScalar = 0;
  /// Keys a sliding layer sees: (q - W, q].
  int64_t slidingWindow = 0;
  double rmsNormEps = 1e-6;
  std::optional<double> finalLogitSoftcap;
  std::optional<double> attnLogitSoftcap;
  bool tieWordEmbeddings = true;
  double initializerRange = 0.02;
  int64_t padTokenId = 0;
  int64_t eosTokenId = 1;
  int64_t bosTokenId = 2;
  int64_t maxPositionEmbeddings = 131072;

  /// RoPE of global (full-attention) and sliding layers.
  RopeSpec globalRope{1000000.0, 1.0};
  RopeSpec slidingRope{10000.0, 1.0};

  /// One entry per layer, numLayers long.
  std::vector<LayerSpec> layers;

  // MoE. numExperts == 0 means a dense Gemma-3 model.
  int64_t numExperts = 0;
  int64_t topK = 2;
  int64_t firstKDenseReplace = 0;
  RouterKind router = RouterKind::SparseMixer;
  /// SparseMixer's relative-gap threshold epsilon (config router_jitter_noise).
  double routerJitterNoise = 0.01;
  /// Multiplicative uniform jitter on the MoE input in training.
  double inputJitterNoise = 0.01;
  double routerAuxLossCoef = 0.001;
  double routerZLossCoef = 0.0001;
  /// Shared experts per MoE layer; the shared MLP has width I * n.
  int64_t numSharedExperts = 0;
  bool freezeSharedExperts = true;
  /// sigmoid_grouped and softmax_topk options.
  double routedScalingFactor = 1.0;
  int64_t numGroups = 1;
  int64_t topkGroup = 1;
  bool normTopkProb = true;

  bool isMoE() const { return numExperts > 0; }
  /// √H in fp32, rounded on to bf16 where `bf16`: the embedding scale of HF
  /// Gemma-3, whose buffer takes the model's dtype.
  double embedScale(bool bf16) const;
  /// query_pre_attn_scalar^(-1/2).
  double attentionScale() const;
};

/// LoRA options (PEFT's LoraConfig).
struct LoraOptions {
  int64_t rank = 16;
  double alpha = 32.0;
  double dropout = 0.1;
  /// Module-name suffixes among q_proj, k_proj, v_proj, o_proj, gate_proj,
  /// up_proj, down_proj.
  std::vector<std::string> targetModules = {"gate_proj", "up_proj", "down_proj"};
};

/// Training options. Compile-time ones change the graph or memory plan; the
/// run-time ones are carried into step.bin as defaults for g3moe-run.
struct TrainingOptions {
  // Compile-time.
  int64_t seqLen = 2048;
  int64_t microBatch = 1;
  /// "lora" or "full".
  std::string finetuning = "lora";
  LoraOptions lora;
  bool trainRouter = false;
  /// Parity flag for R1's no_grad dense-layer FFNs (G3MOE_SPEC.md C1).
  bool denseFFNNoGrad = false;
  /// fp8_base: the products of frozen weights in e4m3 (LoRA only).
  bool fp8Base = false;
  bool loadBalancingLoss = false;
  bool routerZLoss = false;
  bool gradientCheckpointing = true;
  /// Bytes the step may use on the device (memory_budget_gb); 0 means no
  /// budget, either because the field is absent or because it was given as 0.
  int64_t memoryBudgetBytes = 0;
  /// Where memory_budget_gb was given, for the compile report: `<file>: field
  /// 'memory_budget_gb'` or `--set memory_budget_gb=76`. Empty when the field
  /// is absent; g3moe-compile then takes the budget from the visible GPU
  /// where it can (compiler/Driver/DeviceBudget.h).
  std::string memoryBudgetOrigin;
  /// Bytes of host memory the step may keep offloaded activations in
  /// (host_memory_budget_gb): -1 for no limit (the field absent), 0 for no
  /// offload.
  int64_t hostMemoryBudgetBytes = -1;

  // Run-time.
  double learningRate = 2e-5;
  double weightDecay = 0.01;
  double adamBeta1 = 0.9;
  double adamBeta2 = 0.999;
  double adamEpsilon = 1e-8;
  double maxGradNorm = 1.0;
  /// "cosine", "linear", "constant" or "constant_with_warmup" (HF names;
  /// only "constant" ignores the warmup).
  std::string lrSchedulerType = "cosine";
  double warmupRatio = 0.0;
  int64_t warmupSteps = 0;
  double numTrainEpochs = 3.0;
  /// Optimizer steps to run; -1 trains for numTrainEpochs (HF max_steps).
  int64_t maxSteps = -1;
  int64_t gradientAccumulationSteps = 1;
  int64_t loggingSteps = 10;
  int64_t evalSteps = 500;
  int64_t saveSteps = 500;
  int64_t saveTotalLimit = 0;
  int64_t seed = 42;
  /// Fraction held out for evaluation; the seed presets set 0.1.
  double testSize = 0.0;
  /// The longest data line g3moe-run reads, in bytes (64 MiB).
  int64_t maxLineBytes = int64_t(64) << 20;
  /// Processes of a data-parallel job; 0: as many as the launcher starts
  /// ("auto").
  int64_t dataParallel = 0;
  /// ZeRO stage: 0 (every process holds the whole state) is the one built.
  int64_t zeroStage = 0;
  bool packing = false;
  bool assistantOnlyLoss = false;
  /// What divides a window's summed cross-entropy: "shifted" (its
  /// cross-entropy terms, today's transformers) or "unshifted" (its labels
  /// before the shift, transformers 4.46-4.5x).
  std::string lossDenominator = "shifted";
  /// Dataset path or name and output directory, as given (may be empty).
  std::string dataset;
  std::string outputDir;
};

/// Everything one compile needs.
struct CompileConfig {
  ModelConfig model;
  TrainingOptions training;
  /// The file the model configuration came from (a preset may point elsewhere).
  std::string modelSource;
  /// Non-fatal notes (unknown fields, ignored fields, class defaults used for
  /// absent fields), one sentence each.
  std::vector<std::string> warnings;
};

/// One `--set key=value` style override. `key` may be prefixed with `model.` or
/// `training.` to say which part it applies to; otherwise the part that knows
/// the key is chosen. `value` is parsed as JSON, falling back to a string.
struct ConfigOverride {
  std::string key;
  std::string value;
};

/// Reads `path` (an HF config.json or a training preset, flat or nested),
/// applies `overrides` on top of the file the way HF's argument parser does,
/// and validates the result. Errors read
/// `<file>: field '<name>': <what is wrong>`.
llvm::Expected<CompileConfig> loadCompileConfig(llvm::StringRef path,
                                                llvm::ArrayRef<ConfigOverride> overrides = {});

/// Same, from JSON text; `displayName` stands for the file in messages and
/// relative model paths are resolved against `baseDir`.
llvm::Expected<CompileConfig> parseCompileConfig(llvm::StringRef jsonText,
                                                 llvm::StringRef displayName,
                                                 llvm::StringRef baseDir,
                                                 llvm::ArrayRef<ConfigOverride> overrides = {});

/// The name of a router kind as written in configs and IR.
llvm::StringRef stringifyRouterKind(RouterKind kind);

} // namespace g3moe::frontend

#endif // G3MOE_FRONTEND_CONFIG_H
