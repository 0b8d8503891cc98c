//===- DeviceBudgetTest.cpp - memory_budget_gb and the GPU's default ------===//
//
// Where g3moe-compile's memory budget comes from (DeviceBudget.h), with fake
// GPUs: memory_budget_gb when stated (0: none, and no GPU is asked), else the
// visible GPU's total less the reserve, else none. The last tests run the
// whole driver (in a forked child, as it owns LLVM's command line) and check
// that the GPU's default is what the planner fits the step to.
//
//===----------------------------------------------------------------------===//

#include "compiler/Driver/DeviceBudget.h"
#include "compiler/Driver/CompileMain.h"
#include "frontend/Config.h"

#include "gtest/gtest.h"

#include <cstdlib>
#include <string>
#include <vector>

using namespace g3moe::compiler;
using g3moe::frontend::CompileConfig;
using g3moe::frontend::ConfigOverride;

namespace {

const std::string kTinyG3MoE = G3MOE_EXAMPLES_DIR "/tiny-g3moe/config.json";
constexpr int64_t kGiB = int64_t(1) << 30;

/// The tiny example's training options with `overrides` applied.
g3moe::frontend::TrainingOptions tinyTraining(std::vector<ConfigOverride> overrides = {}) {
  llvm::Expected<CompileConfig> c = g3moe::frontend::loadCompileConfig(kTinyG3MoE, overrides);
  if (!c) {
    ADD_FAILURE() << llvm::toString(c.takeError());
    return {};
  }
  return c->training;
}

/// A query that finds a GPU named `name` of `totalBytes` and counts its calls.
DeviceQuery fakeGpu(std::string name, int64_t totalBytes, int *calls) {
  return [=] {
    ++*calls;
    VisibleDevice d;
    d.found = true;
    d.name = name;
    d.totalBytes = totalBytes;
    return d;
  };
}

TEST(DeviceBudget, TotalLessTheReserve) {
  EXPECT_EQ(kDeviceReserveBytes, 7 * kGiB / 2);
  EXPECT_EQ(deviceBudgetBytes(80 * kGiB), 80 * kGiB - kDeviceReserveBytes);
  EXPECT_EQ(deviceBudgetBytes(kDeviceReserveBytes + 1), 1);
  EXPECT_EQ(deviceBudgetBytes(kDeviceReserveBytes), 0);
  EXPECT_EQ(deviceBudgetBytes(0), 0);
}

TEST(DeviceBudget, AbsentFieldTakesTheVisibleGpu) {
  int calls = 0;
  MemoryBudget b = resolveMemoryBudget(tinyTraining(), fakeGpu("Fake H100", 80 * kGiB, &calls));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(b.origin, MemoryBudget::Origin::Device);
  EXPECT_EQ(b.bytes, 80 * kGiB - kDeviceReserveBytes);
  EXPECT_EQ(describeBudget(b),
            "memory budget 76.5 GiB from the visible GPU Fake H100, 80.0 GiB less a 3.5 GiB "
            "reserve");
}

TEST(DeviceBudget, NoDeviceNoBudget) {
  int calls = 0;
  DeviceQuery none = [&] {
    ++calls;
    VisibleDevice d;
    d.why = "cudaGetDeviceCount: no CUDA-capable device is detected";
    return d;
  };
  MemoryBudget b = resolveMemoryBudget(tinyTraining(), none);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(b.origin, MemoryBudget::Origin::None);
  EXPECT_EQ(b.bytes, 0);
  EXPECT_EQ(describeBudget(b), "no memory budget: no memory_budget_gb and no visible GPU "
                               "(cudaGetDeviceCount: no CUDA-capable device is detected)");

  // A driver built into a tool that does not look.
  b = resolveMemoryBudget(tinyTraining(), DeviceQuery());
  EXPECT_EQ(b.bytes, 0);
  EXPECT_EQ(describeBudget(b), "no memory budget: no memory_budget_gb");
}

TEST(DeviceBudget, GpuNoLargerThanTheReserveGivesNone) {
  int calls = 0;
  MemoryBudget b = resolveMemoryBudget(tinyTraining(), fakeGpu("Fake 2GB", 2 * kGiB, &calls));
  EXPECT_EQ(b.bytes, 0);
  EXPECT_EQ(b.origin, MemoryBudget::Origin::None);
  EXPECT_EQ(describeBudget(b), "no memory budget: no memory_budget_gb, and the visible GPU "
                               "Fake 2GB, 2.0 GiB, is not larger than the 3.5 GiB the CUDA "
                               "backend reserves");
}

TEST(DeviceBudget, StatedBudgetWinsWithoutAskingTheGpu) {
  int calls = 0;
  MemoryBudget b = resolveMemoryBudget(tinyTraining({{"memory_budget_gb", "2"}}),
                                       fakeGpu("Fake H100", 80 * kGiB, &calls));
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(b.origin, MemoryBudget::Origin::Stated);
  EXPECT_EQ(b.bytes, 2 * kGiB);
  EXPECT_EQ(describeBudget(b), "memory budget 2.0 GiB from --set memory_budget_gb=2");

  // A small one prints in MiB.
  b = resolveMemoryBudget(tinyTraining({{"training.memory_budget_gb", "0.0043"}}),
                          fakeGpu("Fake H100", 80 * kGiB, &calls));
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(describeBudget(b), "memory budget 4.4 MiB from --set training.memory_budget_gb=0.0043");
}

TEST(DeviceBudget, StatedZeroIsNoBudget) {
  int calls = 0;
  MemoryBudget b = resolveMemoryBudget(tinyTraining({{"memory_budget_gb", "0"}}),
                                       fakeGpu("Fake H100", 80 * kGiB, &calls));
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(b.origin, MemoryBudget::Origin::Stated);
  EXPECT_EQ(b.bytes, 0);
  EXPECT_EQ(describeBudget(b),
            "no memory budget: memory_budget_gb is 0 (--set memory_budget_gb=0)");
}

TEST(DeviceBudget, ConfigFieldNamesItsFile) {
  llvm::Expected<CompileConfig> c = g3moe::frontend::parseCompileConfig(
      R"({"model_name_or_path": "tiny-g3moe", "memory_budget_gb": 1.5})", "preset.json",
      G3MOE_EXAMPLES_DIR);
  ASSERT_TRUE(bool(c)) << llvm::toString(c.takeError());
  int calls = 0;
  MemoryBudget b = resolveMemoryBudget(c->training, fakeGpu("Fake H100", 80 * kGiB, &calls));
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(b.bytes, 3 * kGiB / 2);
  EXPECT_EQ(describeBudget(b), "memory budget 1.5 GiB from preset.json: field 'memory_budget_gb'");
}

/// Runs g3moe-compile's driver on the tiny G3MoE (the e2e test's partial
/// recompute step) with `extra` arguments and a GPU of `totalBytes`, and
/// exits with its exit code. Only ever called in a death test's child.
[[noreturn]] void compileTiny(int64_t totalBytes, std::vector<std::string> extra) {
  std::vector<std::string> args = {"g3moe-compile",
                                   kTinyG3MoE,
                                   "--fp32",
                                   "--seq-len=16",
                                   "--micro-batch=2",
                                   "--set=lora_r=4",
                                   "--set=lora_alpha=16",
                                   "--set=lora_dropout=0.05",
                                   "--set=train_router=true",
                                   "--set=router_jitter_noise=0",
                                   "--set=lora_target_modules=all-linear",
                                   "--emit=g3rt-mlir",
                                   "-o",
                                   "/dev/null"};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char *> argv;
  for (std::string &a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  int calls = 0;
  std::exit(runCompileMain(int(args.size()), argv.data(), fakeGpu("Fake GPU", totalBytes, &calls)));
}

TEST(DeviceBudgetDeathTest, TheGpuDefaultIsWhatTheStepIsFittedTo) {
  // A GPU that leaves 4.4 MiB past the reserve: the budget under which the
  // e2e test's step recomputes part of its MLPs (test/e2e/CMakeLists.txt).
  const int64_t total = kDeviceReserveBytes + int64_t(0.0043 * double(kGiB));
  EXPECT_EXIT(compileTiny(total, {}), testing::ExitedWithCode(0),
              "memory budget 4.4 MiB from the visible GPU Fake GPU, 3.5 GiB less a 3.5 GiB "
              "reserve\n"
              "g3moe-compile: device memory [0-9.]+ GiB \\(arena, persistent tensors and [0-9.]+ "
              "GiB of attention scratch\\), "
              "budget 0.0 GiB; recompute mlp in [0-9]+ of 6 layers");
  // memory_budget_gb=0 turns the default off: nothing is recomputed.
  EXPECT_EXIT(compileTiny(total, {"--set=memory_budget_gb=0"}), testing::ExitedWithCode(0),
              "no memory budget: memory_budget_gb is 0 \\(--set memory_budget_gb=0\\)\n"
              "g3moe-compile: device memory [0-9.]+ GiB \\(arena, persistent tensors and [0-9.]+ "
              "GiB of attention scratch\\); "
              "recompute none\n");
  // A GPU too small for the step: the compile fails, saying where the budget
  // came from and how to compile for another card.
  EXPECT_EXIT(compileTiny(kDeviceReserveBytes + (int64_t(1) << 20), {}), testing::ExitedWithCode(1),
              "the step does not fit memory_budget_gb.*"
              "give memory_budget_gb for a larger card \\(--set memory_budget_gb=N\\)\n"
              "memory budget 1.0 MiB from the visible GPU Fake GPU, 3.5 GiB less a 3.5 GiB "
              "reserve\n");
}

} // namespace
