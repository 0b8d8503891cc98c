//===- StepConfigTest.cpp - step.bin's configuration tables --------------===//
//
// The loader decodes step.fbs's ModelConfig and TrainingOptions tables once
// into StepProgram::model and ::training: stated fields as written, absent
// fields and absent tables as runtime/step/config.h's defaults (so the
// schema's defaults must be those), unknown enum values refused. A step.bin
// of another format version is refused naming the file and asking for a
// recompile.
//
//===----------------------------------------------------------------------===//

#include "runtime/schemas/container.h"
#include "runtime/schemas/step_generated.h"
#include "runtime/step/program.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <unistd.h>

using namespace g3rt;
namespace fbs = g3rt::schema;

namespace {

using Tables =
    std::pair<flatbuffers::Offset<fbs::ModelConfig>, flatbuffers::Offset<fbs::TrainingOptions>>;

/// A step.bin (header included) with no parameters or functions and the
/// configuration tables `build` makes (null offsets: no table).
std::vector<uint8_t>
stepFile(const std::function<Tables(flatbuffers::FlatBufferBuilder &)> &build) {
  flatbuffers::FlatBufferBuilder fb;
  Tables t = build(fb);
  fb.Finish(fbs::CreateStep(fb, t.first, t.second), fbs::StepIdentifier());
  return wrapStepPayload(fb.GetBufferPointer(), fb.GetSize());
}

std::string opt(const std::optional<double> &v) { return v ? std::to_string(*v) : "none"; }

/// Every field, one per line, so that a difference names the field.
std::string render(const ModelConfig &m) {
  std::ostringstream os;
  os << "model_type=" << m.modelType << "\ncheckpoint_prefix=" << m.checkpointPrefix
     << "\nvocab_size=" << m.vocabSize << "\nhidden_size=" << m.hiddenSize
     << "\nintermediate_size=" << m.intermediateSize << "\nnum_hidden_layers=" << m.numHiddenLayers
     << "\nnum_attention_heads=" << m.numAttentionHeads
     << "\nnum_key_value_heads=" << m.numKeyValueHeads << "\nhead_dim=" << m.headDim
     << "\ntie_word_embeddings=" << m.tieWordEmbeddings
     << "\ninitializer_range=" << m.initializerRange << "\npad_token_id=" << m.padTokenId
     << "\nbos_token_id=" << m.bosTokenId << "\neos_token_id=" << m.eosTokenId
     << "\nmax_position_embeddings=" << m.maxPositionEmbeddings << "\nrms_norm_eps=" << m.rmsNormEps
     << "\nsliding_window=" << m.slidingWindow
     << "\nquery_pre_attn_scalar=" << opt(m.queryPreAttnScalar) << "\nrope_theta=" << m.ropeTheta
     << "\nrope_local_base_freq=" << m.ropeLocalBaseFreq
     << "\nfinal_logit_softcapping=" << opt(m.finalLogitSoftcapping)
     << "\nattn_logit_softcapping=" << opt(m.attnLogitSoftcapping)
     << "\nn_routed_experts=" << m.nRoutedExperts << "\nnum_experts_per_tok=" << m.numExpertsPerTok
     << "\nfirst_k_dense_replace=" << m.firstKDenseReplace
     << "\nrouter_type=" << routerTypeName(m.routerType)
     << "\nrouter_jitter_noise=" << m.routerJitterNoise
     << "\ninput_jitter_noise=" << m.inputJitterNoise
     << "\nrouter_aux_loss_coef=" << m.routerAuxLossCoef
     << "\nrouter_z_loss_coef=" << m.routerZLossCoef
     << "\nrouted_scaling_factor=" << m.routedScalingFactor << "\nn_group=" << m.nGroup
     << "\ntopk_group=" << m.topkGroup << "\nnorm_topk_prob=" << m.normTopkProb
     << "\nn_shared_experts=" << m.nSharedExperts
     << "\nfreeze_shared_experts=" << m.freezeSharedExperts << "\n";
  return os.str();
}

std::string render(const TrainingConfig &t) {
  std::ostringstream os;
  os << "mode=" << stepModeName(t.mode) << "\nprecision=" << precisionName(t.precision)
     << "\nseq_len=" << t.seqLen << "\nmicro_batch=" << t.microBatch
     << "\nfinetuning=" << finetuningName(t.finetuning) << "\nlora_r=" << t.loraR
     << "\nlora_alpha=" << t.loraAlpha << "\nlora_dropout=" << t.loraDropout
     << "\nlora_target_modules=";
  for (const std::string &m : t.loraTargetModules)
    os << m << ",";
  os << "\ntrain_router=" << t.trainRouter << "\ndense_ffn_no_grad=" << t.denseFFNNoGrad
     << "\nseed=" << t.seed << "\nlearning_rate=" << t.learningRate
     << "\nlr_scheduler_type=" << lrScheduleName(t.lrSchedulerType)
     << "\nwarmup_ratio=" << t.warmupRatio << "\nwarmup_steps=" << t.warmupSteps
     << "\nweight_decay=" << t.weightDecay << "\nadam_beta1=" << t.adamBeta1
     << "\nadam_beta2=" << t.adamBeta2 << "\nadam_epsilon=" << t.adamEpsilon
     << "\nmax_grad_norm=" << t.maxGradNorm
     << "\ngradient_accumulation_steps=" << t.gradientAccumulationSteps
     << "\nnum_train_epochs=" << t.numTrainEpochs << "\nmax_steps=" << t.maxSteps
     << "\nlogging_steps=" << t.loggingSteps << "\nsave_steps=" << t.saveSteps
     << "\nsave_total_limit=" << t.saveTotalLimit << "\neval_steps=" << t.evalSteps
     << "\ndataset=" << t.dataset << "\ntest_size=" << t.testSize
     << "\nmax_line_bytes=" << t.maxLineBytes << "\npacking=" << t.packing
     << "\nassistant_only_loss=" << t.assistantOnlyLoss
     << "\nloss_denominator=" << lossDenominatorName(t.lossDenominator)
     << "\noutput_dir=" << t.outputDir << "\n";
  return os.str();
}

StepProgram parsed(const std::vector<uint8_t> &file) {
  StepProgram program;
  Status s = parseStep(file, "t.step", program);
  EXPECT_TRUE(s.ok()) << s.message();
  return program;
}

TEST(StepConfig, AbsentTablesHaveTheDefaults) {
  StepProgram p = parsed(stepFile([](flatbuffers::FlatBufferBuilder &) { return Tables(); }));
  EXPECT_EQ(render(p.model), render(ModelConfig()));
  EXPECT_EQ(render(p.training), render(TrainingConfig()));
}

/// Empty tables read every field at the schema's default, which must be
/// config.h's.
TEST(StepConfig, SchemaDefaultsAreTheRuntimeDefaults) {
  StepProgram p = parsed(stepFile([](flatbuffers::FlatBufferBuilder &fb) {
    auto m = fbs::ModelConfigBuilder(fb).Finish();
    auto t = fbs::TrainingOptionsBuilder(fb).Finish();
    return Tables(m, t);
  }));
  EXPECT_EQ(render(p.model), render(ModelConfig()));
  EXPECT_EQ(render(p.training), render(TrainingConfig()));
  EXPECT_EQ(p.training.maxLineBytes, int64_t(64) << 20);
}

/// A model table stating every field, each away from its default.
flatbuffers::Offset<fbs::ModelConfig> statedModel(flatbuffers::FlatBufferBuilder &fb) {
  auto type = fb.CreateString("g3moe_text");
  auto prefix = fb.CreateString("model.");
  fbs::ModelConfigBuilder m(fb);
  m.add_model_type(type);
  m.add_checkpoint_prefix(prefix);
  m.add_vocab_size(512);
  m.add_hidden_size(64);
  m.add_intermediate_size(128);
  m.add_num_hidden_layers(6);
  m.add_num_attention_heads(4);
  m.add_num_key_value_heads(2);
  m.add_head_dim(16);
  m.add_tie_word_embeddings(false);
  m.add_initializer_range(0.5);
  m.add_pad_token_id(3);
  m.add_bos_token_id(4);
  m.add_eos_token_id(5);
  m.add_max_position_embeddings(2048);
  m.add_rms_norm_eps(1e-5);
  m.add_sliding_window(8);
  m.add_query_pre_attn_scalar(16);
  m.add_rope_theta(5e5);
  m.add_rope_local_base_freq(2e4);
  m.add_final_logit_softcapping(30);
  m.add_n_routed_experts(4);
  m.add_num_experts_per_tok(3);
  m.add_first_k_dense_replace(2);
  m.add_router_type(fbs::RouterType::SigmoidGrouped);
  m.add_router_jitter_noise(0.5);
  m.add_input_jitter_noise(0.25);
  m.add_router_aux_loss_coef(0.125);
  m.add_router_z_loss_coef(0.0625);
  m.add_routed_scaling_factor(1.5);
  m.add_n_group(8);
  m.add_topk_group(4);
  m.add_norm_topk_prob(false);
  m.add_n_shared_experts(1);
  m.add_freeze_shared_experts(false);
  return m.Finish();
}

/// A training table stating every field, each away from its default.
flatbuffers::Offset<fbs::TrainingOptions> statedTraining(flatbuffers::FlatBufferBuilder &fb) {
  auto data = fb.CreateString("data.jsonl");
  auto out = fb.CreateString("out");
  auto targets = fb.CreateVectorOfStrings({"q_proj", "v_proj"});
  fbs::TrainingOptionsBuilder t(fb);
  t.add_mode(fbs::StepMode::Eval);
  t.add_precision(fbs::Precision::FP32);
  t.add_seq_len(16);
  t.add_micro_batch(2);
  t.add_finetuning(fbs::Finetuning::Full);
  t.add_lora_r(4);
  t.add_lora_alpha(8);
  t.add_lora_dropout(0.1);
  t.add_lora_target_modules(targets);
  t.add_train_router(true);
  t.add_dense_ffn_no_grad(true);
  t.add_seed(7);
  t.add_learning_rate(1e-3);
  t.add_lr_scheduler_type(fbs::LRSchedule::ConstantWithWarmup);
  t.add_warmup_ratio(0.1);
  t.add_warmup_steps(3);
  t.add_weight_decay(0.5);
  t.add_adam_beta1(0.8);
  t.add_adam_beta2(0.99);
  t.add_adam_epsilon(1e-6);
  t.add_max_grad_norm(2);
  t.add_gradient_accumulation_steps(4);
  t.add_num_train_epochs(1.5);
  t.add_max_steps(100);
  t.add_logging_steps(5);
  t.add_save_steps(50);
  t.add_save_total_limit(2);
  t.add_eval_steps(25);
  t.add_dataset(data);
  t.add_test_size(0.2);
  t.add_max_line_bytes(4096);
  t.add_packing(true);
  t.add_assistant_only_loss(true);
  t.add_loss_denominator(fbs::LossDenominator::Unshifted);
  t.add_output_dir(out);
  return t.Finish();
}

TEST(StepConfig, StatedFieldsAreRead) {
  StepProgram p = parsed(stepFile([](flatbuffers::FlatBufferBuilder &fb) {
    auto model = statedModel(fb);
    return Tables(model, statedTraining(fb));
  }));
  EXPECT_EQ(render(p.model), "model_type=g3moe_text\ncheckpoint_prefix=model.\nvocab_size=512\n"
                             "hidden_size=64\nintermediate_size=128\nnum_hidden_layers=6\n"
                             "num_attention_heads=4\nnum_key_value_heads=2\nhead_dim=16\n"
                             "tie_word_embeddings=0\ninitializer_range=0.5\npad_token_id=3\n"
                             "bos_token_id=4\neos_token_id=5\nmax_position_embeddings=2048\n"
                             "rms_norm_eps=1e-05\nsliding_window=8\n"
                             "query_pre_attn_scalar=16.000000\nrope_theta=500000\n"
                             "rope_local_base_freq=20000\nfinal_logit_softcapping=30.000000\n"
                             "attn_logit_softcapping=none\nn_routed_experts=4\n"
                             "num_experts_per_tok=3\nfirst_k_dense_replace=2\n"
                             "router_type=sigmoid_grouped\nrouter_jitter_noise=0.5\n"
                             "input_jitter_noise=0.25\nrouter_aux_loss_coef=0.125\n"
                             "router_z_loss_coef=0.0625\nrouted_scaling_factor=1.5\nn_group=8\n"
                             "topk_group=4\nnorm_topk_prob=0\nn_shared_experts=1\n"
                             "freeze_shared_experts=0\n");
  EXPECT_EQ(render(p.training),
            "mode=eval\nprecision=fp32\nseq_len=16\nmicro_batch=2\nfinetuning=full\nlora_r=4\n"
            "lora_alpha=8\nlora_dropout=0.1\nlora_target_modules=q_proj,v_proj,\n"
            "train_router=1\ndense_ffn_no_grad=1\nseed=7\nlearning_rate=0.001\n"
            "lr_scheduler_type=constant_with_warmup\nwarmup_ratio=0.1\nwarmup_steps=3\n"
            "weight_decay=0.5\nadam_beta1=0.8\nadam_beta2=0.99\nadam_epsilon=1e-06\n"
            "max_grad_norm=2\ngradient_accumulation_steps=4\nnum_train_epochs=1.5\n"
            "max_steps=100\nlogging_steps=5\nsave_steps=50\nsave_total_limit=2\neval_steps=25\n"
            "dataset=data.jsonl\ntest_size=0.2\nmax_line_bytes=4096\npacking=1\n"
            "assistant_only_loss=1\nloss_denominator=unshifted\noutput_dir=out\n");
  EXPECT_TRUE(p.model.isMoE());
  EXPECT_FALSE(p.training.isLoRA());
}

std::string parseError(const std::vector<uint8_t> &file) {
  StepProgram program;
  Status s = parseStep(file, "bad.step", program);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message().rfind("bad.step: ", 0), 0u) << s.message();
  return s.message();
}

TEST(StepConfig, UnknownEnumValuesAreRefused) {
  std::string m = parseError(stepFile([](flatbuffers::FlatBufferBuilder &fb) {
    fbs::ModelConfigBuilder b(fb);
    b.add_router_type(fbs::RouterType(9));
    return Tables(b.Finish(), 0);
  }));
  EXPECT_NE(m.find("router_type has an unknown value 9"), std::string::npos) << m;
  m = parseError(stepFile([](flatbuffers::FlatBufferBuilder &fb) {
    fbs::TrainingOptionsBuilder b(fb);
    b.add_loss_denominator(fbs::LossDenominator(2));
    return Tables(0, b.Finish());
  }));
  EXPECT_NE(m.find("loss_denominator has an unknown value 2"), std::string::npos) << m;
}

/// The header's version word (bytes 8-11, little-endian) set to `version`.
std::vector<uint8_t> withVersion(std::vector<uint8_t> file, uint32_t version) {
  for (int i = 0; i < 4; ++i)
    file[size_t(8 + i)] = uint8_t(version >> (8 * i));
  return file;
}

TEST(StepConfig, OtherFormatVersionsAskForARecompile) {
  std::vector<uint8_t> file = stepFile([](flatbuffers::FlatBufferBuilder &) { return Tables(); });
  ASSERT_GT(kStepFormatVersion, 1u);
  // Version 1 held the configuration as JSON strings.
  std::string m = parseError(withVersion(file, 1));
  EXPECT_NE(m.find("step.bin format version 1 is not supported (this runtime reads version " +
                   std::to_string(kStepFormatVersion) + ")"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("written by an older g3moe-compile; recompile it with this g3moe-compile"),
            std::string::npos)
      << m;
  m = parseError(withVersion(file, kStepFormatVersion + 1));
  EXPECT_NE(m.find("written by a newer g3moe-compile"), std::string::npos) << m;

  // From a file: the message names it.
  std::string path = ::testing::TempDir() + "old-" + std::to_string(::getpid()) + ".step";
  std::vector<uint8_t> old = withVersion(file, 1);
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char *>(old.data()), std::streamsize(old.size()));
  StepProgram program;
  Status s = loadStep(path, program);
  std::remove(path.c_str());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message().rfind(path + ": step.bin format version 1 ", 0), 0u) << s.message();
  EXPECT_NE(s.message().find("recompile it with this g3moe-compile"), std::string::npos);
}

} // namespace
