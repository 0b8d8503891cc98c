//===- MemoryFit.h - fit a training step to a memory budget -----*- C++ -*-===//
//
// The memory planner: it builds the step pipeline for candidate plans (what
// the backward keeps and what it recomputes, per decoder layer), measures the
// device memory of each lowered step and returns the least recomputation that
// fits the budget, with a report of what it tried. g3moe-compile calls it
// directly; g3moe-opt reaches it through --g3moe-step-pipeline's
// memory-budget-gb and recompute options.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_COMPILER_PIPELINES_MEMORYFIT_H
#define G3MOE_COMPILER_PIPELINES_MEMORYFIT_H

#include "compiler/Pipelines/TrainingPipeline.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "mlir/Pass/Pass.h"
#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/StringRef.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace g3moe {

//===----------------------------------------------------------------------===//
// Plans
//===----------------------------------------------------------------------===//

/// What the backward does with one decoder layer's activations. The values
/// are ordered from the least memory saved (and the least work added) to the
/// most.
enum class LayerChoice {
  /// Keep every activation the backward reads.
  Keep,
  /// Recompute the feed-forward block (dense MLP or MoE experts) from its
  /// input; the attention, norms and router keep their outputs.
  RecomputeFeedForward,
  /// Keep what enters the layer and its attention's output and softmax
  /// statistics; recompute the rest (projections, norms, feed-forward). For
  /// a global-attention layer at long context: its attention is the layer's
  /// one cost that grows with the square of the tokens.
  RecomputeAllButAttention,
  /// Keep only what enters the layer (a checkpoint at its boundary) and
  /// recompute everything it computes for the backward.
  RecomputeLayer,
};

/// A complete memory choice for a step: one choice per decoder layer plus the
/// choices that are made for every layer at once.
struct MemoryPlan {
  /// One entry per decoder layer, layer 0 first.
  llvm::SmallVector<LayerChoice> layers;
  /// Whether each attention_grad is handed its forward's output and softmax
  /// statistics (--g3moe-save-attention-stats): a faster backward, but the
  /// outputs live until the backward. Otherwise the backward recomputes them.
  bool keepAttentionOutputs = true;
  /// Tokens per chunk of the feed-forward blocks (--g3moe-tile-tokens), 0
  /// for whole blocks.
  int64_t tileTokens = 0;
  /// Activations kept in host memory between their uses, longest-idle first
  /// (--g3rt-offload-to-host's count; kEveryCandidate for all it finds).
  int64_t offloadCount = 0;
  static constexpr int64_t kEveryCandidate = int64_t(1) << 30;

  /// Every one of `numLayers` layers treated as `choice`.
  static MemoryPlan uniform(int64_t numLayers, LayerChoice choice, bool keepAttentionOutputs);
  /// The feed-forward blocks of the first `count` of `numLayers` layers
  /// recomputed, the rest kept.
  static MemoryPlan leadingFeedForward(int64_t count, int64_t numLayers, bool keepAttentionOutputs);
  /// The first `count` layers of `order` (layer indices) checkpointed
  /// (RecomputeLayer), the rest of the `numLayers` layers with their
  /// feed-forward blocks recomputed.
  static MemoryPlan checkpointsIn(llvm::ArrayRef<int64_t> order, int64_t count, int64_t numLayers,
                                  bool keepAttentionOutputs);

  /// The number of layers whose choice is `choice`.
  int64_t count(LayerChoice choice) const;

  /// The module scopes whose cheap ops --g3moe-recompute recomputes (its
  /// `scopes`): the feed-forward blocks of RecomputeFeedForward layers. A plan
  /// that treats every layer so names the blocks once (`moe`, `mlp`).
  std::vector<std::string> recomputeScopes() const;
  /// The scopes --g3moe-recompute recomputes whole (its `checkpoints`): one
  /// per RecomputeLayer or RecomputeAllButAttention layer
  /// (`model.layers.3.`), each from the previous layer's output.
  std::vector<std::string> checkpointScopes() const;
  /// The checkpoints whose attention stays (--g3moe-recompute's
  /// `keep-attention`): the RecomputeAllButAttention layers.
  std::vector<std::string> keepAttentionScopes() const;

  /// What is recomputed, in the words of the compile report: `none`, `mlp`,
  /// `layers`, `mlp in 11 of 34 layers` or `whole layers in 32 of 34 layers
  /// (3 keeping their attention)` (the attention choice of every layer
  /// at once not included).
  std::string describeRecompute() const;
  /// How the plan treats attention outputs and feed-forward blocks, as
  /// ", attention outputs recomputed, feed-forward in chunks of 8192 tokens"
  /// (empty when both are the defaults); what it offloads, the report says
  /// from the step (StepMemory).
  std::string describeExtras() const;

  /// Sets the options the plan decides (recompute-scopes, checkpoint-scopes,
  /// keep-attention-scopes, save-attention-stats, tile-tokens,
  /// offload-count) in the step pipeline's `options`.
  void applyTo(TrainingPipelineOptions &options) const;
};

//===----------------------------------------------------------------------===//
// Measurement
//===----------------------------------------------------------------------===//

/// What a lowered, memory-planned step holds on the device.
struct StepMemory {
  /// The planned arena (g3rt.arena_bytes): activations and temporaries.
  int64_t arenaBytes = 0;
  /// Every persistent buffer counted once by kind and name: weights, LoRA
  /// masters, gradient accumulators, Adam moments, inputs.
  int64_t persistentBytes = 0;
  /// The planned host arena (g3rt.host_bytes): offloaded activations.
  int64_t hostBytes = 0;
  /// How many activations one entry point offloads at most.
  int64_t offloaded = 0;
  /// What cuDNN attention keeps beside the arena for the step's largest
  /// attention call (runtime/kernels/scratch_bounds.h).
  int64_t scratchBytes = 0;

  /// Arena, persistent tensors and attention scratch: what the budget bounds.
  int64_t deviceBytes() const { return arenaBytes + persistentBytes + scratchBytes; }
};

/// Measures a module produced by the step pipeline (after --g3rt-plan-memory).
StepMemory measureStepMemory(mlir::ModuleOp step);

//===----------------------------------------------------------------------===//
// The search
//===----------------------------------------------------------------------===//

/// Which recompute levels the search may choose (g3moe-compile --recompute,
/// the step pipeline's `recompute` option).
enum class RecomputePolicy {
  /// Without a budget nothing; with one, the least of none, every layer's
  /// feed-forward block (then the fewest leading layers' that fit), and whole
  /// layers.
  Auto,
  /// Only the given level, every layer alike.
  None,
  FeedForward,
  Layers,
};

/// Parses `auto`, `none`, `mlp` or `layers`.
std::optional<RecomputePolicy> parseRecomputePolicy(llvm::StringRef spelling);

/// What the search is asked for.
struct MemoryFitOptions {
  /// Device memory the step may take, in bytes; 0 for no budget (the first
  /// plan the policy allows is taken, and measured).
  int64_t budgetBytes = 0;
  RecomputePolicy policy = RecomputePolicy::Auto;
  /// Host memory offloaded activations may take, in bytes; -1 for no limit,
  /// 0 for no offload.
  int64_t hostBudgetBytes = -1;
};

/// One plan the search built, and what its step needs.
struct FitAttempt {
  MemoryPlan plan;
  StepMemory memory;
  bool fits = false;
};

/// The outcome of a search.
struct MemoryFit {
  /// The chosen step, lowered and memory-planned; null when nothing fits.
  mlir::OwningOpRef<mlir::ModuleOp> step;
  /// The chosen plan, and what its step holds.
  MemoryPlan plan;
  StepMemory memory;
  int64_t budgetBytes = 0;
  int64_t hostBudgetBytes = -1;
  /// Every plan built, in the order tried.
  std::vector<FitAttempt> attempts;

  bool fits() const { return static_cast<bool>(step); }
};

/// Runs the pipeline that `populate` adds to a pass manager on `module`; the
/// caller chooses the pass manager (its own, with the command line's
/// --mlir-* options, or a pass's dynamic pipeline).
using PopulateFn = llvm::function_ref<void(mlir::OpPassManager &)>;
using PipelineRunner =
    llvm::function_ref<mlir::LogicalResult(mlir::ModuleOp module, PopulateFn populate)>;

/// Searches for the least recomputation whose step fits `options.budgetBytes`:
/// each level the policy allows, from the least, first with the attention
/// outputs kept, then recomputed; when that is every layer's feed-forward
/// block under Auto, the fewest leading layers' that fit, by bisection, and
/// when that is every layer checkpointed, the fewest checkpoints (sliding-
/// window layers first), and then the most checkpointed global-attention
/// layers that keep their attention (RecomputeAllButAttention) and still
/// fit; every plan after the first tiles the feed-forward
/// blocks (MemoryPlan::tileTokens) unless `pipeline` fixes the chunk. When
/// no plan fits, the most frugal one keeps activations in host memory
/// (MemoryPlan::offloadCount, the fewest that fit by bisection) within
/// `options.hostBudgetBytes`, unless `pipeline` fixes the count. Each
/// candidate is a fresh clone of `forward` (the frontend's module) run through
/// the step pipeline with `pipeline`'s options and the plan's choices.
/// Fails (diagnostics emitted) when a pipeline fails or the module has no
/// layer count (g3moe.model's num_hidden_layers); a step that fits nowhere is
/// a success whose `fits()` is false.
mlir::FailureOr<MemoryFit> fitMemory(mlir::ModuleOp forward,
                                     const TrainingPipelineOptions &pipeline,
                                     const MemoryFitOptions &options, PipelineRunner run);

/// The report's line: device memory, budget and what is recomputed, e.g.
/// `device memory 72.5 GiB (arena, persistent tensors and 0.6 GiB of attention
/// scratch), budget 76.0 GiB;
/// recompute mlp in 33 of 34 layers, attention outputs recomputed`.
std::string describeFit(const MemoryFit &fit);

/// The error when nothing fits: the budget, then each plan tried with its
/// need, one per line.
std::string describeMisfit(const MemoryFit &fit);

//===----------------------------------------------------------------------===//
// The pass
//===----------------------------------------------------------------------===//

/// The fit as a pass (G3MoEFitMemoryPass): runs fitMemory with `step`'s
/// options (memory-budget-gb, recompute and the pipeline options the plans
/// do not decide), replaces the module with the chosen step and says what it
/// chose as a remark. buildStepPipeline adds it when the options ask for a
/// fit.
std::unique_ptr<mlir::Pass> createFitMemoryPass(const TrainingPipelineOptions &step);

} // namespace g3moe

#endif // G3MOE_COMPILER_PIPELINES_MEMORYFIT_H
