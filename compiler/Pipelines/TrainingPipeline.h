//===- TrainingPipeline.h - forward graph to training step ------*- C++ -*-===//
//
// The pipeline that turns the frontend's forward graph into the complete
// training step. g3moe-compile and g3moe-opt (--g3moe-training-pipeline) build
// it with the same function, so the tests run what ships.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_COMPILER_PIPELINES_TRAININGPIPELINE_H
#define G3MOE_COMPILER_PIPELINES_TRAININGPIPELINE_H

#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassOptions.h"

namespace g3moe {

/// The smallest activation the host offload moves by default: layer
/// boundaries and kept activations, not the small per-token tables.
inline constexpr int64_t kOffloadMinBytes = int64_t(64) << 20;

/// Options of the training pipeline: the trainable set and the optimizer.
struct TrainingPipelineOptions : public mlir::PassPipelineOptions<TrainingPipelineOptions> {
  Option<bool> fullFinetune{*this, "full-finetune",
                            llvm::cl::desc("train every weight (no adapters)"),
                            llvm::cl::init(false)};
  Option<int64_t> loraRank{*this, "lora-rank", llvm::cl::desc("LoRA rank"), llvm::cl::init(16)};
  Option<double> loraAlpha{*this, "lora-alpha", llvm::cl::desc("LoRA alpha"), llvm::cl::init(32.0)};
  Option<double> loraDropout{*this, "lora-dropout", llvm::cl::desc("LoRA dropout probability"),
                             llvm::cl::init(0.0)};
  ListOption<std::string> loraTargets{*this, "lora-targets",
                                      llvm::cl::desc("LoRA target module suffixes")};
  Option<bool> fp8Base{*this, "fp8-base",
                       llvm::cl::desc("run the products of frozen weights in e4m3 "
                                      "(--g3moe-fp8-base)"),
                       llvm::cl::init(false)};
  Option<bool> trainRouter{*this, "train-router",
                           llvm::cl::desc("make the router weights trainable"),
                           llvm::cl::init(false)};
  Option<bool> freezeSharedExperts{*this, "freeze-shared-experts",
                                   llvm::cl::desc("keep shared experts frozen"),
                                   llvm::cl::init(true)};
  Option<double> learningRate{*this, "learning-rate", llvm::cl::desc("peak learning rate"),
                              llvm::cl::init(2e-5)};
  Option<std::string> schedule{*this, "schedule", llvm::cl::desc("LR schedule"),
                               llvm::cl::init("cosine")};
  Option<double> weightDecay{*this, "weight-decay", llvm::cl::desc("weight decay"),
                             llvm::cl::init(0.01)};
  Option<double> beta1{*this, "beta1", llvm::cl::desc("AdamW beta1"), llvm::cl::init(0.9)};
  Option<double> beta2{*this, "beta2", llvm::cl::desc("AdamW beta2"), llvm::cl::init(0.999)};
  Option<double> epsilon{*this, "epsilon", llvm::cl::desc("AdamW epsilon"), llvm::cl::init(1e-8)};
  ListOption<std::string> recomputeScopes{
      *this, "recompute-scopes",
      llvm::cl::desc("module-path substrings whose activations the backward recomputes "
                     "(none: keep every activation)")};
  ListOption<std::string> checkpointScopes{
      *this, "checkpoint-scopes",
      llvm::cl::desc("module-path substrings (decoder layers) the backward recomputes whole "
                     "from their inputs, which alone are kept")};
  ListOption<std::string> keepAttentionScopes{
      *this, "keep-attention-scopes",
      llvm::cl::desc("module-path substrings of checkpoint scopes whose attention output and "
                     "softmax statistics are kept for the backward instead of recomputed")};
  Option<int64_t> tileTokens{
      *this, "tile-tokens",
      llvm::cl::desc("run the feed-forward blocks on chunks of this many tokens, so that only "
                     "one chunk's intermediates are alive at a time (0: whole; -1: the memory "
                     "fit's choice under memory-budget-gb, else whole)"),
      llvm::cl::init(-1)};
  Option<int64_t> offloadCount{
      *this, "offload-count",
      llvm::cl::desc("keep this many long-idle activations (longest gaps first) in host "
                     "memory between their uses (--g3rt-offload-to-host; 0: none; -1: the "
                     "memory fit's choice under memory-budget-gb, else none)"),
      llvm::cl::init(-1)};
  Option<int64_t> offloadMinBytes{
      *this, "offload-min-bytes",
      llvm::cl::desc("the smallest activation offload-count moves to host memory, in bytes"),
      llvm::cl::init(kOffloadMinBytes)};
  Option<bool> saveAttentionStats{
      *this, "save-attention-stats",
      llvm::cl::desc("hand each attention gradient its forward's output and softmax "
                     "statistics (faster backward; the output lives until the backward)"),
      llvm::cl::init(true)};
  Option<double> maxGradNorm{*this, "max-grad-norm", llvm::cl::desc("clipping threshold (0: off)"),
                             llvm::cl::init(1.0)};
  Option<bool> lmHeadOnePass{
      *this, "lm-head-one-pass",
      llvm::cl::desc("step pipeline: the LM head's loss and input gradient in one pass over the "
                     "logits (lm_head_cross_entropy_and_grad) where the table is frozen"),
      llvm::cl::init(true)};
  Option<bool> dropoutInProducts{
      *this, "dropout-in-products",
      llvm::cl::desc("step pipeline: LoRA dropouts applied inside the low-rank products that "
                     "read or write the dropped tensor (one dropout_mask of bits per draw), "
                     "which is then never stored"),
      llvm::cl::init(true)};
  Option<int64_t> zeroStage{*this, "zero-stage",
                            llvm::cl::desc("ZeRO stage of the training step (0 to 3)"),
                            llvm::cl::init(0)};
  Option<int64_t> processes{*this, "processes",
                            llvm::cl::desc("data-parallel processes the ZeRO shards divide among"),
                            llvm::cl::init(1)};
  Option<double> memoryBudgetGb{
      *this, "memory-budget-gb",
      llvm::cl::desc("step pipeline: device memory the step may take, in GiB (2^30 "
                     "bytes); the pipeline then compiles the least recomputation that "
                     "fits, choosing recompute-scopes, checkpoint-scopes, keep-attention-scopes, "
                     "save-attention-stats and tile-tokens (0: no budget)"),
      llvm::cl::init(0.0)};
  Option<double> hostMemoryBudgetGb{
      *this, "host-memory-budget-gb",
      llvm::cl::desc("step pipeline: host memory the memory fit may keep activations in, in "
                     "GiB, when nothing fits memory-budget-gb otherwise (-1: no limit; 0: "
                     "none)"),
      llvm::cl::init(-1.0)};
  Option<std::string> recompute{
      *this, "recompute",
      llvm::cl::desc("step pipeline: the recompute levels the memory fit may choose: "
                     "auto (the least that fits memory-budget-gb; without a budget, "
                     "recompute-scopes and checkpoint-scopes as given), none, mlp or layers"),
      llvm::cl::init("auto")};
};

/// Adds LoRA insertion (or full fine-tuning), autodiff and the optimizer to
/// `pm`, which runs on the module.
void buildTrainingPipeline(mlir::OpPassManager &pm, const TrainingPipelineOptions &options);

/// The training pipeline, then the lowering to g3rt launches and the memory
/// plan: everything before serialisation to step.bin. With memory-budget-gb
/// or a recompute level other than auto, the one G3MoEFitMemoryPass
/// (MemoryFit.h), which runs buildFixedStepPipeline for each plan it tries and
/// keeps the one that fits; otherwise buildFixedStepPipeline itself.
void buildStepPipeline(mlir::OpPassManager &pm, const TrainingPipelineOptions &options);

/// The step pipeline with recompute-scopes and save-attention-stats as given
/// (memory-budget-gb and recompute ignored): what each plan compiles to.
void buildFixedStepPipeline(mlir::OpPassManager &pm, const TrainingPipelineOptions &options);

/// Whether `options` ask buildStepPipeline for a memory fit.
bool wantsMemoryFit(const TrainingPipelineOptions &options);

/// Registers `--g3moe-training-pipeline` and `--g3moe-step-pipeline` for
/// g3moe-opt.
void registerTrainingPipeline();

} // namespace g3moe

#endif // G3MOE_COMPILER_PIPELINES_TRAININGPIPELINE_H
