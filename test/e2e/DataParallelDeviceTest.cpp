//===- DataParallelDeviceTest.cpp - a device backend's own gradient sums --===//
//
// The trainer in a job of two processes whose backend sums the gradients
// itself (as the CUDA backend does with NCCL), checked without a GPU: the
// mirror backend (MirrorBackend.h) in the CUDA slot sums its own copies of
// the accumulators over the job's Gloo communicator. Two processes on the
// mirror must train, evaluate and save exactly what two CPU processes do,
// whose sums go through the host state; that covers what the trainer does
// around a device's sums (the host's copies are stale after them, the
// checkpoints and final files download the device's state).
//
// The ranks are forked processes (test/ForkedJob.h); the parent runs no
// kernel before it forks, so no thread of the CPU backend is copied into
// them.
//
//===----------------------------------------------------------------------===//

#include "runtime/train/trainer.h"
#include "test/ForkedJob.h"
#include "test/e2e/MirrorBackend.h"
#include "test/e2e/StepFixtures.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

using namespace g3rt;
using namespace g3moe_test;

namespace {

TrainOptions optionsFor(const std::string &data, const std::string &out) {
  TrainOptions o;
  o.dataPath = data;
  o.outputDir = out;
  o.maxSteps = 4;
  o.gradientAccumulationSteps = 1;
  o.learningRate = 1e-2;
  o.warmupSteps = 1;
  o.loggingSteps = 1;
  o.seed = 7;
  o.testSize = 2.0 / 12.0;
  o.evalSteps = 2;
  o.saveSteps = 2;
  return o;
}

/// A rank of the job `world` on `device`: trains, then writes what it saw
/// (losses, gradient norms, evaluations, the backend's own sums) to
/// `out`/rank<r>.txt. Returns the process's exit code.
int trainRank(const StepProgram &program, const World &world, const std::string &device,
              const std::string &data, const std::string &out) {
  std::unique_ptr<Communicator> comm = joinGlooJob(world);
  if (!comm)
    return 2;
  TrainOptions o = optionsFor(data, out);
  o.device = device;
  o.communicator = comm.get();
  o.placement = Placement{world.localRank, world.rank, world.size};
  o.noSave = world.rank != 0;
  TrainResult r;
  std::ostringstream log;
  Status s = train(program, o, log, r);
  if (!s.ok()) {
    std::fprintf(stderr, "rank %d: %s\n%s", world.rank, s.message().c_str(), log.str().c_str());
    return 3;
  }
  std::ofstream text(out + "/rank" + std::to_string(world.rank) + ".txt");
  text.precision(17);
  for (const auto *values : {&r.losses, &r.gradNorms, &r.evalLosses}) {
    for (double v : *values)
      text << v << " ";
    text << "\n";
  }
  text << "backend " << r.backend << "\nsums " << mirrorLog.sums << "\n";
  return text ? 0 : 4;
}

std::string textOf(const std::string &path) {
  std::ifstream in(path);
  std::stringstream all;
  all << in.rdbuf();
  return all.str();
}

TEST(DataParallelOnADevice, DeviceSumsTrainAsHostSums) {
  setenv("G3MOE_GLOO_PLUGIN", G3MOE_GLOO_PLUGIN_PATH, 1);
  registerCudaBackendProvider(&mirrorProvider());
  StepProgram program = loadProgram("g3moe_lora");
  const std::string dir = scratch("g3moe-dp-device", "g3moe_lora");
  const std::string data = writeData(dir, 12, 7, 10);

  for (const char *device : {"cpu", "cuda"}) {
    std::vector<int> codes = runForkedJob(2, [&](const World &world) {
      return trainRank(program, world, device, data, dir + "/" + device);
    });
    ASSERT_EQ(codes, (std::vector<int>{0, 0})) << device;
  }
  const std::string cpu = textOf(dir + "/cpu/rank0.txt"), dev = textOf(dir + "/cuda/rank0.txt");
  // The CPU backend sums through the host; the mirror sums its own copies,
  // once per optimizer step.
  EXPECT_NE(cpu.find("backend CPU ("), std::string::npos) << cpu;
  EXPECT_NE(cpu.find("sums 0\n"), std::string::npos) << cpu;
  EXPECT_NE(dev.find("backend CPU mirror\nsums 4\n"), std::string::npos) << dev;
  // The same losses, gradient norms and evaluations, to the bit, on both
  // ranks of both jobs.
  auto numbers = [](const std::string &t) { return t.substr(0, t.find("backend")); };
  EXPECT_EQ(numbers(dev), numbers(cpu));
  EXPECT_EQ(numbers(textOf(dir + "/cuda/rank1.txt")), numbers(cpu));
  EXPECT_EQ(numbers(textOf(dir + "/cpu/rank1.txt")), numbers(cpu));
  EXPECT_GT(numbers(cpu).size(), 20u) << cpu;
  // What rank 0 saved (checkpoints after steps 2 and 4, the adapter) is the
  // same: downloaded from the device after its sums.
  for (const char *file : {"checkpoint-2/optimizer.safetensors",
                           "checkpoint-4/adapter_model.safetensors", "adapter_model.safetensors"})
    EXPECT_EQ(bytesOf(dir + "/cuda/" + file), bytesOf(dir + "/cpu/" + file)) << file;
}

} // namespace
