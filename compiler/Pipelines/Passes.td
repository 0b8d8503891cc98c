//===- Passes.td - g3moe pipeline-level passes -------------*- tablegen -*-===//
//
// Passes that run whole pipelines: the memory fit runs the step pipeline once
// per candidate plan.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_PIPELINES_PASSES_TD
#define G3MOE_PIPELINES_PASSES_TD

include "mlir/Pass/PassBase.td"

def G3MoEFitMemoryPass : Pass<"g3moe-fit-memory", "mlir::ModuleOp"> {
  let summary = "compile the step with the least recomputation that fits a memory budget";
  let description = [{
    Runs the step pipeline (LoRA, autodiff, optimizer, fusions, lowering to
    g3rt, memory planning) on a copy of the forward module for each candidate
    plan, measures the device memory of each lowered step (the planned arena
    plus weights, LoRA masters, gradient accumulators, Adam moments, inputs
    and the bound on cuDNN attention's scratch) and replaces the module with
    the step of the least recomputation that fits `memory-budget-gb`: none, then the feed-forward blocks (dense
    MLPs, MoE experts) of every layer, narrowed to the fewest leading layers
    that fit, then whole layers, narrowed to the fewest checkpoints that fit
    (sliding-window layers first); at each level first with the attention
    outputs kept for the backward, then recomputed. Every plan after the
    first runs the feed-forward blocks on chunks of tokens (`tile-tokens`,
    unless the pipeline fixes it). When no plan fits, the most frugal one
    keeps its longest-idle activations (the layer checkpoints) in host memory
    (`offload-count`, --g3rt-offload-to-host): the fewest that fit, within
    `host-memory-budget-gb`. `recompute` restricts the
    search to one level. A remark says what it chose; when nothing fits, the
    error lists each plan tried and its need.

    `--g3moe-step-pipeline` adds this pass, with its own options, when given
    `memory-budget-gb` or a `recompute` level; it is not a flag of its own,
    since the pipeline it runs needs all of the step pipeline's options.
    g3moe-compile runs the same search (compiler/Pipelines/MemoryFit.h).
  }];
  let options = [
    Option<"memoryBudgetGb", "memory-budget-gb", "double", /*default=*/"0.0",
           "device memory the step may take, in GiB (2^30 bytes); 0: no budget">,
    Option<"hostMemoryBudgetGb", "host-memory-budget-gb", "double", /*default=*/"-1.0",
           "host memory the step may keep activations in, in GiB; -1: no limit, 0: none">,
    Option<"recompute", "recompute", "std::string", /*default=*/"\"auto\"",
           "levels the search may choose: auto, none, mlp or layers">,
  ];
}

#endif // G3MOE_PIPELINES_PASSES_TD
