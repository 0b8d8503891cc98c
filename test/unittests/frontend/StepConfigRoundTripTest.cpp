//===- StepConfigRoundTripTest.cpp - configuration into step.bin and back -===//
//
// The module attributes the frontend records (g3moe.model, g3moe.training)
// through the step writer's typed tables into the runtime loader's
// ModelConfig / TrainingConfig: every value arrives, and a key the schema
// has no field for (or a value of another type) fails the write instead of
// being dropped.
//
//===----------------------------------------------------------------------===//

#include "compiler/Serialize/StepWriter.h"
#include "frontend/Config.h"
#include "frontend/ModelBuilder.h"
#include "runtime/step/program.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "llvm/ADT/STLExtras.h"

#include "gtest/gtest.h"

#include <string>
#include <vector>

using namespace g3moe::frontend;

namespace {

CompileConfig loadOk(const std::string &rel, const std::vector<ConfigOverride> &overrides) {
  llvm::Expected<CompileConfig> c =
      loadCompileConfig(std::string(G3MOE_EXAMPLES_DIR) + "/" + rel, overrides);
  if (!c) {
    ADD_FAILURE() << llvm::toString(c.takeError());
    return CompileConfig();
  }
  return std::move(*c);
}

/// The step module of `config` without its functions: only the module
/// attributes are left for the writer.
mlir::OwningOpRef<mlir::ModuleOp> attributesOnly(mlir::MLIRContext &context,
                                                 const CompileConfig &config, bool fp32) {
  BuildOptions options;
  options.fp32 = fp32;
  mlir::OwningOpRef<mlir::ModuleOp> module = buildStepModule(context, config, options);
  for (mlir::func::FuncOp f : llvm::make_early_inc_range(module->getOps<mlir::func::FuncOp>()))
    f.erase();
  return module;
}

/// Writes `module` as a step.bin and loads it back.
g3rt::StepProgram roundTrip(mlir::ModuleOp module) {
  std::vector<uint8_t> bytes;
  EXPECT_TRUE(mlir::succeeded(g3moe::writeStep(module, bytes)));
  g3rt::StepProgram program;
  g3rt::Status s = g3rt::parseStep(bytes, "rt.step", program);
  EXPECT_TRUE(s.ok()) << s.message();
  return program;
}

TEST(StepConfigRoundTrip, MoELoRAStepCarriesEveryValue) {
  mlir::MLIRContext context;
  CompileConfig c = loadOk("tiny-g3moe/config.json", {{"lora_r", "4"},
                                                      {"lora_alpha", "16"},
                                                      {"seq_len", "16"},
                                                      {"micro_batch", "2"},
                                                      {"loss_denominator", "unshifted"},
                                                      {"max_line_bytes", "4096"},
                                                      {"lr_scheduler_type", "linear"},
                                                      {"router_type", "sigmoid_grouped"},
                                                      {"n_group", "2"},
                                                      {"topk_group", "1"},
                                                      {"num_experts_per_tok", "2"},
                                                      {"logging_steps", "1"},
                                                      {"packing", "true"},
                                                      {"dataset", "/data/chat.jsonl"},
                                                      {"output_dir", "/tmp/out"}});
  g3rt::StepProgram p = roundTrip(*attributesOnly(context, c, /*fp32=*/false));
  const ModelConfig &m = c.model;
  const TrainingOptions &t = c.training;

  EXPECT_EQ(p.model.modelType, m.modelType);
  EXPECT_EQ(p.model.checkpointPrefix, m.checkpointPrefix);
  EXPECT_EQ(p.model.vocabSize, m.vocabSize);
  EXPECT_EQ(p.model.hiddenSize, m.hiddenSize);
  EXPECT_EQ(p.model.intermediateSize, m.intermediateSize);
  EXPECT_EQ(p.model.numHiddenLayers, m.numLayers);
  EXPECT_EQ(p.model.numAttentionHeads, m.numHeads);
  EXPECT_EQ(p.model.numKeyValueHeads, m.numKVHeads);
  EXPECT_EQ(p.model.headDim, m.headDim);
  EXPECT_EQ(p.model.tieWordEmbeddings, m.tieWordEmbeddings);
  EXPECT_EQ(p.model.initializerRange, m.initializerRange);
  EXPECT_EQ(p.model.padTokenId, m.padTokenId);
  EXPECT_EQ(p.model.bosTokenId, m.bosTokenId);
  EXPECT_EQ(p.model.eosTokenId, m.eosTokenId);
  EXPECT_EQ(p.model.maxPositionEmbeddings, m.maxPositionEmbeddings);
  EXPECT_EQ(p.model.rmsNormEps, m.rmsNormEps);
  EXPECT_EQ(p.model.slidingWindow, m.slidingWindow);
  EXPECT_EQ(p.model.queryPreAttnScalar, m.queryPreAttnScalar);
  EXPECT_EQ(p.model.ropeTheta, m.globalRope.theta);
  EXPECT_EQ(p.model.ropeLocalBaseFreq, m.slidingRope.theta);
  EXPECT_EQ(p.model.finalLogitSoftcapping, m.finalLogitSoftcap);
  EXPECT_EQ(p.model.attnLogitSoftcapping, m.attnLogitSoftcap);
  EXPECT_EQ(p.model.nRoutedExperts, m.numExperts);
  EXPECT_EQ(p.model.numExpertsPerTok, m.topK);
  EXPECT_EQ(p.model.firstKDenseReplace, m.firstKDenseReplace);
  EXPECT_EQ(g3rt::routerTypeName(p.model.routerType), stringifyRouterKind(m.router).str());
  EXPECT_EQ(p.model.routerType, g3rt::RouterType::SigmoidGrouped);
  EXPECT_EQ(p.model.routerJitterNoise, m.routerJitterNoise);
  EXPECT_EQ(p.model.inputJitterNoise, m.inputJitterNoise);
  EXPECT_EQ(p.model.routerAuxLossCoef, m.routerAuxLossCoef);
  EXPECT_EQ(p.model.routerZLossCoef, m.routerZLossCoef);
  EXPECT_EQ(p.model.routedScalingFactor, m.routedScalingFactor);
  EXPECT_EQ(p.model.nGroup, m.numGroups);
  EXPECT_EQ(p.model.topkGroup, m.topkGroup);
  EXPECT_EQ(p.model.normTopkProb, m.normTopkProb);
  EXPECT_EQ(p.model.nSharedExperts, m.numSharedExperts);
  EXPECT_EQ(p.model.freezeSharedExperts, m.freezeSharedExperts);

  EXPECT_EQ(p.training.mode, g3rt::StepMode::Train);
  EXPECT_EQ(p.training.precision, g3rt::Precision::BF16);
  EXPECT_EQ(p.training.seqLen, 16);
  EXPECT_EQ(p.training.microBatch, 2);
  EXPECT_EQ(g3rt::finetuningName(p.training.finetuning), t.finetuning);
  EXPECT_EQ(p.training.loraR, 4);
  EXPECT_EQ(p.training.loraAlpha, 16.0);
  EXPECT_EQ(p.training.loraDropout, t.lora.dropout);
  EXPECT_EQ(p.training.loraTargetModules, t.lora.targetModules);
  EXPECT_EQ(p.training.trainRouter, t.trainRouter);
  EXPECT_EQ(p.training.denseFFNNoGrad, t.denseFFNNoGrad);
  EXPECT_EQ(p.training.seed, t.seed);
  EXPECT_EQ(p.training.learningRate, t.learningRate);
  EXPECT_EQ(p.training.lrSchedulerType, g3rt::LRSchedule::Linear);
  EXPECT_EQ(p.training.warmupRatio, t.warmupRatio);
  EXPECT_EQ(p.training.warmupSteps, t.warmupSteps);
  EXPECT_EQ(p.training.weightDecay, t.weightDecay);
  EXPECT_EQ(p.training.adamBeta1, t.adamBeta1);
  EXPECT_EQ(p.training.adamBeta2, t.adamBeta2);
  EXPECT_EQ(p.training.adamEpsilon, t.adamEpsilon);
  EXPECT_EQ(p.training.maxGradNorm, t.maxGradNorm);
  EXPECT_EQ(p.training.gradientAccumulationSteps, t.gradientAccumulationSteps);
  EXPECT_EQ(p.training.numTrainEpochs, t.numTrainEpochs);
  EXPECT_EQ(p.training.maxSteps, t.maxSteps);
  EXPECT_EQ(p.training.loggingSteps, 1);
  EXPECT_EQ(p.training.saveSteps, t.saveSteps);
  EXPECT_EQ(p.training.saveTotalLimit, t.saveTotalLimit);
  EXPECT_EQ(p.training.evalSteps, t.evalSteps);
  EXPECT_EQ(p.training.dataset, "/data/chat.jsonl");
  EXPECT_EQ(p.training.testSize, t.testSize);
  EXPECT_EQ(p.training.maxLineBytes, 4096);
  EXPECT_TRUE(p.training.packing);
  EXPECT_EQ(p.training.assistantOnlyLoss, t.assistantOnlyLoss);
  EXPECT_EQ(p.training.lossDenominator, g3rt::LossDenominator::Unshifted);
  EXPECT_EQ(p.training.outputDir, "/tmp/out");
}

TEST(StepConfigRoundTrip, DenseFullFineTuningFp32Step) {
  mlir::MLIRContext context;
  CompileConfig c =
      loadOk("tiny-gemma3/config.json",
             {{"finetuning", "full"}, {"seq_len", "8"}, {"final_logit_softcapping", "30"}});
  g3rt::StepProgram p = roundTrip(*attributesOnly(context, c, /*fp32=*/true));
  EXPECT_FALSE(p.model.isMoE());
  EXPECT_EQ(p.model.hiddenSize, c.model.hiddenSize);
  EXPECT_EQ(p.model.finalLogitSoftcapping, std::optional<double>(30.0));
  EXPECT_FALSE(p.training.isLoRA());
  EXPECT_EQ(p.training.precision, g3rt::Precision::FP32);
  EXPECT_EQ(p.training.seqLen, 8);
}

/// Runs the writer on `module` and returns its diagnostics.
std::string writeErrors(mlir::MLIRContext &context, mlir::ModuleOp module) {
  std::string errors;
  mlir::ScopedDiagnosticHandler handler(&context, [&](mlir::Diagnostic &d) {
    errors += d.str() + "\n";
    return mlir::success();
  });
  std::vector<uint8_t> bytes;
  EXPECT_TRUE(mlir::failed(g3moe::writeStep(module, bytes)));
  return errors;
}

/// `module`'s dictionary `name` with `key` set to `value`.
void setKey(mlir::ModuleOp module, llvm::StringRef name, llvm::StringRef key,
            mlir::Attribute value) {
  mlir::NamedAttrList attrs(module->getAttrOfType<mlir::DictionaryAttr>(name));
  attrs.set(key, value);
  module->setAttr(name, attrs.getDictionary(module->getContext()));
}

TEST(StepConfigRoundTrip, UnrepresentableConfigurationFailsTheWrite) {
  mlir::MLIRContext context;
  CompileConfig c = loadOk("tiny-g3moe/config.json", {});
  mlir::Builder b(&context);

  mlir::OwningOpRef<mlir::ModuleOp> module = attributesOnly(context, c, false);
  setKey(*module, "g3moe.model", "new_fact", b.getI64IntegerAttr(1));
  std::string e = writeErrors(context, *module);
  EXPECT_NE(e.find("cannot write g3moe.model into step.bin: step.bin has no field for "
                   "'new_fact'"),
            std::string::npos)
      << e;

  module = attributesOnly(context, c, false);
  setKey(*module, "g3moe.training", "lora_r", b.getStringAttr("four"));
  setKey(*module, "g3moe.training", "loss_denominator", b.getStringAttr("mean"));
  e = writeErrors(context, *module);
  EXPECT_NE(e.find("'lora_r' is not an integer"), std::string::npos) << e;
  EXPECT_NE(e.find("'loss_denominator' is 'mean', which step.bin cannot represent"),
            std::string::npos)
      << e;
}

} // namespace
