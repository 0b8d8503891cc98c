//===- TrainingPipeline.cpp - forward graph to training step --------------===//

#include "compiler/Pipelines/TrainingPipeline.h"

#include "compiler/Conversion/Passes.h"
#include "compiler/Pipelines/MemoryFit.h"
#include "dialects/G3MoE/Transforms/Passes.h"
#include "dialects/G3RT/Transforms/Passes.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

void g3moe::buildTrainingPipeline(OpPassManager &pm, const TrainingPipelineOptions &options) {
  // LoRA first: autodiff differentiates with respect to whatever is marked
  // trainable, and the optimizer updates exactly what autodiff returns.
  G3MoELoRAPassOptions lora;
  lora.rank = options.loraRank;
  lora.alpha = options.loraAlpha;
  lora.dropout = options.loraDropout;
  lora.targets.assign(options.loraTargets.begin(), options.loraTargets.end());
  lora.fullFinetune = options.fullFinetune;
  lora.trainRouter = options.trainRouter;
  lora.freezeSharedExperts = options.freezeSharedExperts;
  pm.addPass(createG3MoELoRAPass(lora));
  // After LoRA, so that the adapters run per chunk with their layers; before
  // autodiff, so that the backward follows the chunks.
  if (options.tileTokens > 0) {
    G3MoETileTokensPassOptions tile;
    tile.tokens = options.tileTokens;
    pm.addPass(createG3MoETileTokensPass(tile));
  }
  pm.addPass(createG3MoEAutodiffPass());

  G3MoEOptimizerPassOptions optimizer;
  optimizer.learningRate = options.learningRate;
  optimizer.schedule = options.schedule;
  optimizer.weightDecay = options.weightDecay;
  optimizer.beta1 = options.beta1;
  optimizer.beta2 = options.beta2;
  optimizer.epsilon = options.epsilon;
  optimizer.maxGradNorm = options.maxGradNorm;
  pm.addPass(createG3MoEOptimizerPass(optimizer));
  if (options.zeroStage > 0) {
    G3MoEShardPassOptions shard;
    shard.stage = options.zeroStage;
    shard.processes = options.processes;
    pm.addPass(createG3MoEShardPass(shard));
  }
}

bool g3moe::wantsMemoryFit(const TrainingPipelineOptions &options) {
  return options.memoryBudgetGb != 0.0 || options.recompute != "auto";
}

void g3moe::buildStepPipeline(OpPassManager &pm, const TrainingPipelineOptions &options) {
  // The fit cannot be a list of passes: it compiles the whole step once per
  // plan, on copies of the input, and keeps the one that fits.
  if (wantsMemoryFit(options)) {
    pm.addPass(createFitMemoryPass(options));
    return;
  }
  buildFixedStepPipeline(pm, options);
}

void g3moe::buildFixedStepPipeline(OpPassManager &pm, const TrainingPipelineOptions &options) {
  buildTrainingPipeline(pm, options);
  G3MoEFuseLMHeadLossPassOptions head;
  head.onePass = options.lmHeadOnePass;
  pm.addPass(createG3MoEFuseLMHeadLossPass(head));
  // CSE merges what autodiff's clone of the forward recomputes identically
  // (parameters, random draws) before buffers are assigned.
  pm.addPass(createCSEPass());
  // After CSE, so that each product's users are final; before recomputation,
  // which then clones the fused products.
  pm.addPass(createG3MoEFuseLinearAddPass());
  pm.addPass(createG3MoEFuseNormsPass());
  // After CSE, so that each backward finds the forward it differentiates.
  if (options.saveAttentionStats)
    pm.addPass(createG3MoESaveAttentionStatsPass());
  // After CSE, which would merge the new draws back into the forward's.
  pm.addPass(createG3MoERegenerateRandomPass());
  // After the regeneration, so that the backward's dropouts draw their own
  // masks too.
  G3MoEFuseDropoutPassOptions dropout;
  dropout.intoProducts = options.dropoutInProducts;
  pm.addPass(createG3MoEFuseDropoutPass(dropout));
  // The masked input gradients through A, which --g3moe-fuse-dropout just
  // made, join the wide input gradients they are added to.
  if (options.dropoutInProducts)
    pm.addPass(createG3MoEFuseLinearAddPass());
  // After the fusions, whose low-rank terms it splits off again where it
  // must; before recomputation, which then recomputes the e4m3 products.
  if (options.fp8Base)
    pm.addPass(createG3MoEFp8BasePass());
  // After CSE, which would merge the recomputed copies back into the
  // forward's. The MLPs' and experts' intermediates are the largest
  // activations of a MoE step at long context.
  if (!options.recomputeScopes.empty() || !options.checkpointScopes.empty() ||
      !options.keepAttentionScopes.empty()) {
    G3MoERecomputePassOptions recompute;
    recompute.scopes.assign(options.recomputeScopes.begin(), options.recomputeScopes.end());
    recompute.checkpoints.assign(options.checkpointScopes.begin(), options.checkpointScopes.end());
    recompute.keepAttention.assign(options.keepAttentionScopes.begin(),
                                   options.keepAttentionScopes.end());
    pm.addPass(createG3MoERecomputePass(recompute));
  }
  // After recomputation, which works on @forward_backward before it is
  // inlined here.
  pm.addPass(createG3MoEAccumulateEarlyPass());
  if (options.zeroStage == 3)
    pm.addPass(createG3MoEPrefetchParametersPass());
  pm.addPass(createG3MoELowerToG3RTPass());
  if (options.offloadCount > 0) {
    g3moe::lowered::G3RTOffloadToHostPassOptions offload;
    offload.count = options.offloadCount;
    offload.minBytes = options.offloadMinBytes;
    pm.addPass(g3moe::lowered::createG3RTOffloadToHostPass(offload));
  }
  pm.addPass(g3moe::lowered::createG3RTPlanMemoryPass());
}

void g3moe::registerTrainingPipeline() {
  PassPipelineRegistration<TrainingPipelineOptions>(
      "g3moe-step-pipeline",
      "the training pipeline, then lowering to g3rt and memory planning "
      "(with memory-budget-gb: the least recomputation that fits)",
      buildStepPipeline);
  PassPipelineRegistration<TrainingPipelineOptions>(
      "g3moe-training-pipeline",
      "LoRA (or full fine-tuning), autodiff and the optimizer: the forward "
      "graph to a complete training step",
      buildTrainingPipeline);
}
