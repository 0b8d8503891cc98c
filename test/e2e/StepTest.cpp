//===- StepTest.cpp - whole tiny models through step.bin ------------------===//
//
// End-to-end checks of compiled steps on the CPU backend: finite-difference
// gradients of whole fp32 models, memorisation of a small set, determinism,
// the memory plan against the executor's high-water mark, and rejection of
// damaged step.bin files.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/random.h"
#include "runtime/exec/executor.h"
#include "runtime/schemas/container.h"
#include "runtime/train/data.h"
#include "runtime/train/init.h"
#include "runtime/train/trainer.h"
#include "test/e2e/StepFixtures.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

using namespace g3rt;
using namespace g3moe_test;

namespace {

std::string memorizeData() {
  return std::string(G3MOE_EXAMPLES_DIR) + "/data/memorize.jsonl";
}

StepProgram load(const std::string &name) {
  StepProgram program;
  Status s = loadStep(stepPath(name), program);
  EXPECT_TRUE(s.ok()) << s.message();
  return program;
}

/// Writes the first micro-batch of the memorisation set into the inputs.
void setInputs(Executor &ex, int64_t labelsInWindow = 0) {
  DataSpec spec;
  spec.path = memorizeData();
  spec.vocabSize = 512;
  spec.seqLen = 16;
  DataSplit data;
  ASSERT_TRUE(loadTrainingData(spec, data).ok());
  MicroBatch mb;
  assembleMicroBatch(data.train, {0, 1}, 2, 16, 0, mb);
  auto copy = [&](const char *name, const std::vector<int32_t> &v) {
    TensorView t = ex.input(name);
    ASSERT_NE(t.data, nullptr) << name;
    ASSERT_EQ(size_t(t.numel()), v.size());
    std::memcpy(t.data, v.data(), v.size() * 4);
  };
  copy("input_ids", mb.inputIds);
  copy("targets", mb.targets);
  copy("positions", mb.positions);
  copy("segment_ids", mb.segmentIds);
  ex.input("num_items").store(0, float(labelsInWindow ? labelsInWindow : mb.labelCount));
  if (TensorView key = ex.input("rng_key"); key.data) {
    key.i64()[0] = 1234;
    key.i64()[1] = 5;
  }
}

double runLoss(Executor &ex, const char *function) {
  Status s = ex.run(function);
  EXPECT_TRUE(s.ok()) << s.message();
  return ex.output(function, "loss").load(0);
}

/// Compares the gradients of @forward_backward at the parameters drawn from
/// `seed` with central differences of @forward's loss, one random direction
/// per parameter tensor so that a failure names the parameter. Returns false
/// when the point is unusable: for some parameter the loss jumps along every
/// direction tried (a routing choice sits so close to a tie that any step
/// flips it). Mismatches are appended to `failures`.
bool checkGradientsAt(const StepProgram &program, uint64_t seed, bool randomizeLoraB,
                      std::vector<std::string> &failures) {
  Executor ex(program);
  EXPECT_TRUE(initializeParameters(ex, seed, 0).ok());
  // LoRA B starts at 0, which would leave A without gradient: move it off 0.
  if (randomizeLoraB)
    for (const ParamDesc &p : program.params)
      if (p.name.find("lora_B") != std::string::npos) {
        TensorView t = ex.param(p.name);
        for (int64_t i = 0; i < t.numel(); ++i)
          t.store(i, 0.05f * (2 * uniformAt(seed, 0, streamOf(p.name), uint64_t(i)) - 1));
      }
  setInputs(ex);

  double loss = runLoss(ex, "forward_backward");
  // The gradients live in the arena, which every later run reuses: keep a copy.
  std::map<std::string, std::vector<float>> grads;
  double gradNormSq = 0;
  for (const ParamDesc &p : program.params)
    if (p.trainable) {
      TensorView grad = ex.output("forward_backward", "grad:" + p.name);
      EXPECT_NE(grad.data, nullptr) << "no gradient output for " << p.name;
      if (!grad.data)
        return true;
      grads[p.name] = toFloat(grad);
      for (float g : grads[p.name])
        gradNormSq += double(g) * g;
    }
  EXPECT_GT(gradNormSq, 0) << "all gradients are zero";
  EXPECT_EQ(loss, runLoss(ex, "forward")) << "forward and forward_backward disagree";

  // Small steps: routing is piecewise constant, and larger ones flip choices.
  // A direction along which the loss jumps (a choice flips inside the step)
  // shows as central differences at eps and eps/2 that disagree; such a
  // direction proves nothing, so another one is drawn.
  const double eps = 1e-4;
  for (const ParamDesc &p : program.params) {
    if (!p.trainable)
      continue;
    const std::vector<float> &grad = grads[p.name];
    TensorView param = ex.param(p.name);
    std::vector<float> saved = toFloat(param), dir(saved.size());
    auto quotient = [&](double h) {
      auto set = [&](double by) {
        for (size_t i = 0; i < dir.size(); ++i)
          param.f32()[i] = float(saved[i] + by * dir[i]);
      };
      set(h);
      double plus = runLoss(ex, "forward");
      set(-h);
      double minus = runLoss(ex, "forward");
      set(0);
      return (plus - minus) / (2 * h);
    };
    bool smooth = false;
    double analytic = 0, numeric = 0;
    for (uint64_t attempt = 0; attempt < 4 && !smooth; ++attempt) {
      analytic = 0;
      for (size_t i = 0; i < dir.size(); ++i) {
        dir[i] = 2 * uniformAt(11 + attempt, 0, streamOf(p.name), i) - 1;
        analytic += double(grad[i]) * dir[i];
      }
      numeric = quotient(eps);
      smooth = std::fabs(numeric - quotient(eps / 2)) <= 3e-2 * std::fabs(numeric) + 3e-2;
    }
    if (!smooth)
      return false;
    // fp32 losses near 6 resolve differences of about 5e-7, so the quotient
    // is only good to about 5e-3 at this step.
    if (std::fabs(numeric - analytic) > 3e-2 * std::fabs(analytic) + 1.5e-2)
      failures.push_back(p.name + ": finite differences " + std::to_string(numeric) +
                         ", gradient " + std::to_string(analytic));
  }
  return true;
}

void checkWholeModelGradient(const std::string &stepName, bool randomizeLoraB) {
  StepProgram program = load(stepName);
  for (uint64_t seed = 7; seed < 11; ++seed) {
    std::vector<std::string> failures;
    if (!checkGradientsAt(program, seed, randomizeLoraB, failures))
      continue;
    for (const std::string &f : failures)
      ADD_FAILURE() << stepName << " (seed " << seed << "): " << f;
    return;
  }
  ADD_FAILURE() << stepName << ": every parameter point tried sits next to a routing tie";
}

TEST(StepGradient, DenseGemma3FullFinetune) {
  checkWholeModelGradient("gemma3_full_fp32", false);
}

TEST(StepGradient, G3MoESoftmaxTopKWithAuxLosses) {
  checkWholeModelGradient("g3moe_topk_full_fp32", false);
}

TEST(StepGradient, G3MoESigmoidGroupedWithSharedExpert) {
  checkWholeModelGradient("g3moe_grouped_full_fp32", false);
}

TEST(StepGradient, G3MoESparseMixerLoRAEverywhereAndRouter) {
  checkWholeModelGradient("g3moe_lora_fp32", true);
}

/// Recomputing whole decoder layers in the backward (with LoRA dropout, the
/// router's random draws and the fused LoRA adds recomputed too), or the MLPs
/// of the first layers (as g3moe-compile chooses under a budget), gives the
/// loss and gradients of the step that keeps every activation, exactly: the
/// recomputed ops are the same kernels on the same inputs.
class StepRecompute : public ::testing::TestWithParam<const char *> {};

TEST_P(StepRecompute, SameLossAndGradientsAsKeepingActivations) {
  StepProgram kept = load("g3moe_lora_fp32"), recomputed = load(GetParam());
  ASSERT_LT(recomputed.findFunction("forward_backward")->arenaBytes,
            kept.findFunction("forward_backward")->arenaBytes)
      << "recomputation should shrink the arena";
  Executor a(kept), b(recomputed);
  for (Executor *ex : {&a, &b}) {
    ASSERT_TRUE(initializeParameters(*ex, 7, 0).ok());
    for (const ParamDesc &p : kept.params)
      if (p.name.find("lora_B") != std::string::npos) {
        TensorView t = ex->param(p.name);
        for (int64_t i = 0; i < t.numel(); ++i)
          t.store(i, 0.05f * (2 * uniformAt(7, 0, streamOf(p.name), uint64_t(i)) - 1));
      }
    setInputs(*ex);
  }
  EXPECT_EQ(runLoss(a, "forward_backward"), runLoss(b, "forward_backward"));
  int compared = 0;
  for (const ParamDesc &p : kept.params) {
    if (!p.trainable)
      continue;
    std::vector<float> ga = toFloat(a.output("forward_backward", "grad:" + p.name)),
                       gb = toFloat(b.output("forward_backward", "grad:" + p.name));
    EXPECT_EQ(ga, gb) << p.name;
    ++compared;
  }
  EXPECT_GT(compared, 10);
}

INSTANTIATE_TEST_SUITE_P(Steps, StepRecompute,
                         ::testing::Values("g3moe_lora_fp32_recompute", "g3moe_lora_fp32_partial"));

TrainResult trainTiny(const std::string &stepName, int64_t steps, double lr,
                      uint64_t seed = 42) {
  StepProgram program = load(stepName);
  TrainOptions options;
  options.dataPath = memorizeData();
  options.maxSteps = steps;
  options.learningRate = lr;
  options.lrSchedulerType = "constant";
  options.gradientAccumulationSteps = 2;
  options.seed = int64_t(seed);
  options.noSave = true;
  std::ostringstream log;
  TrainResult result;
  Status s = train(program, options, log, result);
  EXPECT_TRUE(s.ok()) << s.message() << "\n" << log.str();
  return result;
}

TEST(StepTraining, TinyG3MoEMemorises) {
  TrainResult r = trainTiny("g3moe_full", 150, 5e-3);
  ASSERT_EQ(r.optimizerSteps, 150);
  EXPECT_GT(r.losses.front(), 5.0);
  EXPECT_LT(r.losses.back(), 0.02) << "first loss " << r.losses.front();
}

TEST(StepTraining, TinyGemma3Memorises) {
  TrainResult r = trainTiny("gemma3_full", 150, 5e-3);
  EXPECT_GT(r.losses.front(), 5.0);
  EXPECT_LT(r.losses.back(), 0.02) << "first loss " << r.losses.front();
}

TEST(StepTraining, LoRALossFalls) {
  TrainResult r = trainTiny("g3moe_lora", 60, 1e-2);
  EXPECT_LT(r.losses.back(), 0.9 * r.losses.front());
}

TEST(StepTraining, SameSeedSameLosses) {
  TrainResult a = trainTiny("g3moe_lora", 6, 1e-2, 5), b = trainTiny("g3moe_lora", 6, 1e-2, 5),
              c = trainTiny("g3moe_lora", 6, 1e-2, 6);
  EXPECT_EQ(a.losses, b.losses);
  EXPECT_NE(a.losses, c.losses);
}

TEST(StepTraining, FirstWarmupUpdateUsesLearningRateZero) {
  StepProgram program = load("g3moe_lora");
  TrainOptions options;
  options.dataPath = memorizeData();
  options.maxSteps = 4;
  options.warmupSteps = 2;
  options.learningRate = 1e-2;
  options.lrSchedulerType = "linear";
  options.noSave = true;
  std::ostringstream log;
  TrainResult r;
  ASSERT_TRUE(train(program, options, log, r).ok()) << log.str();
  ASSERT_EQ(r.learningRates.size(), 4u);
  EXPECT_EQ(r.learningRates[0], 0.0);
  EXPECT_NEAR(r.learningRates[1], 5e-3, 1e-9);
  EXPECT_NEAR(r.learningRates[2], 1e-2, 1e-9);
  EXPECT_NEAR(r.learningRates[3], 5e-3, 1e-9);
}

TEST(StepMemory, PlanPeakEqualsExecutorHighWater) {
  for (const char *name : {"g3moe_lora", "gemma3_full", "g3moe_topk_full_fp32"}) {
    StepProgram program = load(name);
    for (const FunctionDesc &fn : program.functions)
      EXPECT_TRUE(checkArenaPlan(fn).ok()) << name << " " << fn.name;
    Executor ex(program);
    ASSERT_TRUE(initializeParameters(ex, 1, 0).ok());
    setInputs(ex);
    for (const FunctionDesc &fn : program.functions) {
      Status s = ex.run(fn.name);
      ASSERT_TRUE(s.ok()) << s.message();
    }
    EXPECT_EQ(ex.arenaHighWater(), program.arenaBytes) << name;
    EXPECT_GT(program.arenaBytes, 0u);
  }
}

TEST(StepMemory, OverlappingLiveBuffersAreRejected) {
  FunctionDesc fn;
  fn.name = "f";
  fn.arenaBytes = 1024;
  BufferDesc a;
  a.shape = {64};
  a.bytes = 256;
  a.offset = 0;
  BufferDesc b = a;
  b.offset = 128;
  fn.buffers = {a, b};
  InstrDesc writeA, readAWriteB;
  writeA.kernel = "fill";
  writeA.outputs = {0};
  readAWriteB.kernel = "copy";
  readAWriteB.inputs = {0};
  readAWriteB.outputs = {1};
  fn.instrs = {writeA, readAWriteB};
  Status s = checkArenaPlan(fn);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("overlaps"), std::string::npos) << s.message();
  // Disjoint lifetimes may share bytes.
  fn.instrs[1].inputs.clear();
  InstrDesc writeB = fn.instrs[1];
  fn.instrs = {writeA, writeB};
  EXPECT_TRUE(checkArenaPlan(fn).ok());
}

std::vector<uint8_t> stepBytes() {
  std::vector<uint8_t> bytes;
  EXPECT_TRUE(readFile(stepPath("g3moe_lora"), bytes).ok());
  return bytes;
}

std::string parseError(const std::vector<uint8_t> &bytes) {
  StepProgram program;
  Status s = parseStep(bytes, "bad.step", program);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message().rfind("bad.step: ", 0), 0u) << s.message();
  return s.message();
}

TEST(StepFile, LoadsIntact) {
  StepProgram program;
  Status s = parseStep(stepBytes(), "ok.step", program);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_NE(program.findFunction("train_micro_step"), nullptr);
  EXPECT_NE(program.findFunction("optimizer_step"), nullptr);
}

TEST(StepFile, RejectsTruncated) {
  std::vector<uint8_t> bytes = stepBytes();
  for (size_t keep : {size_t(0), size_t(10), size_t(40), bytes.size() / 2, bytes.size() - 1}) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + long(keep));
    std::string m = parseError(cut);
    EXPECT_TRUE(m.find("truncated") != std::string::npos ||
                m.find("not a step.bin") != std::string::npos)
        << keep << ": " << m;
  }
}

TEST(StepFile, RejectsCorruptPayload) {
  std::vector<uint8_t> bytes = stepBytes();
  for (size_t at : {kStepHeaderBytes + 5, bytes.size() / 2, bytes.size() - 3}) {
    std::vector<uint8_t> bad = bytes;
    bad[at] ^= 0x40;
    EXPECT_NE(parseError(bad).find("corrupt"), std::string::npos) << at;
  }
}

TEST(StepFile, RejectsOtherVersionAndMagic) {
  std::vector<uint8_t> bytes = stepBytes();
  std::vector<uint8_t> version = bytes;
  version[8] = 99;
  EXPECT_NE(parseError(version).find("version 99 is not supported"), std::string::npos);
  std::vector<uint8_t> magic = bytes;
  magic[0] = 'X';
  EXPECT_NE(parseError(magic).find("not a step.bin"), std::string::npos);
}

/// A payload changed consistently (checksum recomputed) must still be
/// rejected by the FlatBuffer verifier or the program checks.
TEST(StepFile, RejectsConsistentlyDamagedPayload) {
  std::vector<uint8_t> bytes = stepBytes();
  std::vector<uint8_t> payload(bytes.begin() + long(kStepHeaderBytes), bytes.end());
  // Rename a kernel: "rms_norm" -> "rms_nxrm". FlatBuffers stores a string
  // as its length, its bytes and a NUL; matching all three finds a kernel name
  // rather than the text inside the configuration JSON.
  std::string needle("\x08\0\0\0rms_norm\0", 13);
  auto it = std::search(payload.begin(), payload.end(), needle.begin(), needle.end());
  ASSERT_NE(it, payload.end());
  it[4 + 5] = 'x';
  std::string m = parseError(wrapStepPayload(payload.data(), payload.size()));
  EXPECT_NE(m.find("no kernel of that name"), std::string::npos) << m;

  // Garbage that keeps the size: the FlatBuffer verifier refuses it.
  std::vector<uint8_t> garbage(payload.size(), 0xab);
  m = parseError(wrapStepPayload(garbage.data(), garbage.size()));
  EXPECT_NE(m.find("malformed"), std::string::npos) << m;
}

TEST(StepFile, MissingFileIsAnError) {
  StepProgram program;
  Status s = loadStep("/nonexistent/x.step", program);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("/nonexistent/x.step"), std::string::npos);
}

} // namespace
