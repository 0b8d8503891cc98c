//===- StepFixtures.h - shared helpers of the whole-step tests --*- C++ -*-===//
//
// The compiled tiny steps of test/e2e, their parameters and first
// micro-batch, fresh scratch folders and the small synthetic data sets that
// the CPU and GPU whole-step tests share.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_TEST_E2E_STEPFIXTURES_H
#define G3MOE_TEST_E2E_STEPFIXTURES_H

#include "runtime/base/file.h"
#include "runtime/base/random.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/step/program.h"
#include "runtime/train/data.h"
#include "runtime/train/init.h"
#include "runtime/train/trainer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace g3moe_test {

/// `builtIn`, or the environment variable `env` where it is set: the GPU
/// machine runs binaries built elsewhere.
inline std::string pathSetting(const char *env, const char *builtIn) {
  const char *v = std::getenv(env);
  return v && *v ? v : builtIn;
}

/// The compiled test step `name` (test/e2e/CMakeLists.txt builds them).
inline std::string stepPath(const std::string &name) {
  return pathSetting("G3MOE_TEST_STEPS", G3MOE_TEST_STEPS) + "/" + name + ".step";
}

/// The loaded step `name`; a load failure fails the test.
inline g3rt::StepProgram loadProgram(const std::string &name) {
  g3rt::StepProgram program;
  g3rt::Status s = g3rt::loadStep(stepPath(name), program);
  EXPECT_TRUE(s.ok()) << s.message();
  return program;
}

/// A step's host state and the CPU backend that runs on it in place, so that
/// a test can write inputs into `state` and read any buffer after a run.
struct CpuStep {
  explicit CpuStep(const g3rt::StepProgram &program) : state(program) {
    g3rt::Status s = g3rt::cpu::CpuBackend::create(program, state, cpu);
    EXPECT_TRUE(s.ok()) << s.message();
  }
  g3rt::HostState state;
  std::unique_ptr<g3rt::cpu::CpuBackend> cpu;
};

/// The memorisation set of the examples.
inline std::string memorizeData() {
  return std::string(G3MOE_EXAMPLES_DIR) + "/data/memorize.jsonl";
}

/// Writes the first micro-batch of the memorisation set (two rows of 16
/// tokens) into the inputs.
inline void setInputs(g3rt::HostState &state, int64_t labelsInWindow = 0) {
  g3rt::DataSpec spec;
  spec.path = memorizeData();
  spec.vocabSize = 512;
  spec.seqLen = 16;
  g3rt::DataSplit data;
  ASSERT_TRUE(g3rt::loadTrainingData(spec, data).ok());
  g3rt::MicroBatch mb;
  g3rt::assembleMicroBatch(data.train, {0, 1}, 2, 16, 0, mb);
  auto copy = [&](const char *name, const std::vector<int32_t> &v) {
    g3rt::TensorView t = state.input(name);
    ASSERT_NE(t.data, nullptr) << name;
    ASSERT_EQ(size_t(t.numel()), v.size());
    std::memcpy(t.data, v.data(), v.size() * 4);
  };
  copy("input_ids", mb.inputIds);
  copy("targets", mb.targets);
  copy("positions", mb.positions);
  copy("segment_ids", mb.segmentIds);
  state.input("num_items").store(0, float(labelsInWindow ? labelsInWindow : mb.labelCount));
  if (g3rt::TensorView key = state.input("rng_key"); key.data) {
    key.i64()[0] = 1234;
    key.i64()[1] = 5;
  }
}
inline void setInputs(CpuStep &ex, int64_t labelsInWindow = 0) {
  setInputs(ex.state, labelsInWindow);
}

/// Runs entry point `function` and returns its loss.
inline double runLoss(CpuStep &ex, const char *function) {
  g3rt::Status s = ex.cpu->run(function);
  EXPECT_TRUE(s.ok()) << s.message();
  return ex.cpu->output(function, "loss").load(0);
}

/// Where a gradient is checked.
struct Point {
  uint64_t seed = 7;           ///< the parameters' initialisation seed
  bool randomizeLoraB = false; ///< LoRA B moved off 0, where A has no gradient
  int64_t key = 5;             ///< the second word of the step's rng_key
  double routerScale = 1;      ///< multiplies every router weight
};

/// The parameters and the first micro-batch of `point`.
inline void prepare(CpuStep &ex, const Point &point) {
  EXPECT_TRUE(g3rt::initializeParameters(ex.state, point.seed, 0).ok());
  for (const g3rt::ParamDesc &p : ex.state.program().params) {
    g3rt::TensorView t = ex.state.param(p.name);
    if (point.randomizeLoraB && p.name.find("lora_B") != std::string::npos)
      for (int64_t i = 0; i < t.numel(); ++i)
        t.store(i,
                0.05f *
                    (2 * g3rt::uniformAt(point.seed, 0, g3rt::streamOf(p.name), uint64_t(i)) - 1));
    if (point.routerScale != 1 && p.name.find("moe.gate.weight") != std::string::npos)
      for (int64_t i = 0; i < t.numel(); ++i)
        t.store(i, float(point.routerScale * t.load(i)));
  }
  setInputs(ex);
  if (g3rt::TensorView key = ex.state.input("rng_key"); key.data)
    key.i64()[1] = point.key;
}

/// An empty folder `<temp>/<prefix>-<suite>.<test>-<name>` for one test: the
/// running test's name keeps tests that ctest runs side by side apart.
inline std::string scratch(const std::string &prefix, const std::string &name) {
  const ::testing::TestInfo *test = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string owner = test ? std::string(test->test_suite_name()) + "." + test->name() : "";
  for (char &c : owner)
    if (c == '/')
      c = '_';
  std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / (prefix + "-" + owner + "-" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

/// `dir`/data.jsonl: `count` pre-tokenized examples, example i of
/// `minLength + (5 i) % spread` tokens in [3, 503).
inline std::string writeData(const std::string &dir, int count, int minLength, int spread) {
  std::string path = dir + "/data.jsonl";
  std::ofstream out(path);
  for (int i = 0; i < count; ++i) {
    out << "{\"input_ids\": [";
    int n = minLength + (i * 5) % spread;
    for (int t = 0; t < n; ++t)
      out << (t ? ", " : "") << (3 + (i * 37 + t * 11) % 500);
    out << "]}\n";
  }
  return path;
}

/// Runs the training loop. Without `logText` a failure also fails the test
/// (with the log); with it the log goes there for the caller to inspect.
inline g3rt::Status runTraining(const g3rt::StepProgram &program, const g3rt::TrainOptions &o,
                                g3rt::TrainResult &r, std::string *logText = nullptr) {
  std::ostringstream log;
  g3rt::Status s = g3rt::train(program, o, log, r);
  if (logText)
    *logText = log.str();
  EXPECT_TRUE(s.ok() || logText) << s.message() << "\n" << log.str();
  return s;
}

/// The bytes of `path`; a read failure fails the test.
inline std::vector<uint8_t> bytesOf(const std::string &path) {
  std::vector<uint8_t> bytes;
  g3rt::Status s = g3rt::readFile(path, bytes);
  EXPECT_TRUE(s.ok()) << s.message();
  return bytes;
}

/// How many instructions of `program`'s @forward_backward launch `kernel`.
inline int64_t countKernel(const g3rt::StepProgram &program, const std::string &kernel) {
  const g3rt::FunctionDesc *fb = program.findFunction("forward_backward");
  EXPECT_NE(fb, nullptr);
  if (!fb)
    return 0;
  return std::count_if(fb->instrs.begin(), fb->instrs.end(),
                       [&](const g3rt::InstrDesc &i) { return i.kernel == kernel; });
}

/// The loss and every trainable parameter's gradient of one
/// @forward_backward of `name` at the gradient-check point.
struct StepResult {
  double loss = 0;
  std::map<std::string, std::vector<float>> grads;
};

inline StepResult runStep(const std::string &name) {
  g3rt::StepProgram program = loadProgram(name);
  CpuStep step(program);
  Point point;
  point.randomizeLoraB = true;
  prepare(step, point);
  StepResult r;
  r.loss = runLoss(step, "forward_backward");
  for (const g3rt::ParamDesc &p : program.params)
    if (p.trainable) {
      g3rt::TensorView g = step.cpu->output("forward_backward", "grad:" + p.name);
      for (int64_t i = 0; i < g.numel(); ++i)
        r.grads[p.name].push_back(g.load(i));
    }
  return r;
}

/// Each of `got`'s gradients within `rel` times its tensor's largest element
/// (plus `atol`) of `want`'s, element by element.
inline void expectGradientsNear(const StepResult &want, StepResult &got, float rel,
                                float atol = 0) {
  for (const auto &[name, g] : want.grads) {
    const std::vector<float> &t = got.grads[name];
    ASSERT_EQ(g.size(), t.size()) << name;
    float scale = 0, worst = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      scale = std::max(scale, std::abs(g[i]));
      worst = std::max(worst, std::abs(g[i] - t[i]));
    }
    EXPECT_LE(worst, rel * scale + atol) << name << ": largest |g| " << scale;
  }
}

} // namespace g3moe_test

#endif // G3MOE_TEST_E2E_STEPFIXTURES_H
