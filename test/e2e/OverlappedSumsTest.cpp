//===- OverlappedSumsTest.cpp - gradient sums while the step runs ---------===//
//
// The CPU backend's runSummingGradients in a job of two forked processes:
// the gradients of a micro-step summed over the processes while it runs, a
// pack as soon as the step is done with it, are the sums taken after the
// step, to the bit, and most packs leave before the step's last
// instruction. (DataParallelDeviceTest's CPU job trains through it.)
//
//===----------------------------------------------------------------------===//

#include "runtime/dist/load_communicator.h"
#include "test/ForkedJob.h"
#include "test/e2e/StepFixtures.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

using namespace g3rt;
using namespace g3moe_test;

namespace {

/// One rank: exit codes name the failed check.
int overlapRank(const StepProgram &program, const World &world) {
  GlooOptions gloo;
  gloo.host = "127.0.0.1";
  gloo.timeout = std::chrono::seconds(30);
  std::unique_ptr<Communicator> comm;
  Status s = loadGlooCommunicator(world, gloo, comm);
  if (!s.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", world.rank, s.message().c_str());
    return 2;
  }
  CpuStep step(program);
  Point point;
  point.randomizeLoraB = true;
  point.key = 5 + world.rank; // each rank its own dropout masks
  prepare(step, point);
  // The micro-step's own gradients, summed over the ranks afterwards.
  if (!step.cpu->zeroGradients().ok() || !step.cpu->run("train_micro_step").ok())
    return 3;
  std::vector<std::vector<float>> want;
  std::vector<std::pair<std::string, TensorView>> views;
  step.state.forEach(BufferKind::GradAcc, [&](const std::string &name, const TensorView &g) {
    const float *p = static_cast<const float *>(g.data);
    want.emplace_back(p, p + g.numel());
    views.emplace_back(name, g);
  });
  for (size_t i = 0; i < views.size(); ++i)
    views[i].second.data = want[i].data();
  if (want.size() < 10 || !sumInBuckets(*comm, views, size_t(1) << 20).ok())
    return 4;
  // The same micro-step summing as it runs, in packs of 64 floats.
  bool summed = false;
  s = step.cpu->zeroGradients();
  if (s.ok())
    s = step.cpu->runSummingGradients("train_micro_step", *comm, 64, summed);
  if (!s.ok() || !summed) {
    std::fprintf(stderr, "rank %d: %s\n", world.rank, s.message().c_str());
    return 5;
  }
  size_t k = 0;
  bool same = true;
  step.state.forEach(BufferKind::GradAcc, [&](const std::string &, const TensorView &g) {
    same = same && std::memcmp(g.data, want[k++].data(), g.bytes()) == 0;
  });
  if (!same)
    return 6;
  const cpu::CpuBackend::SumsSent sent = step.cpu->lastSumsSent();
  std::printf("rank %d: %zu packs, %zu before the last instruction\n", world.rank, sent.packs,
              sent.early);
  std::fflush(stdout);
  return sent.packs >= 8 && 2 * sent.early > sent.packs ? 0 : 7;
}

TEST(DataParallelOverlap, GradientsSummedAsTheStepRunsAreTheSumsAfterIt) {
  setenv("G3MOE_GLOO_PLUGIN", G3MOE_GLOO_PLUGIN_PATH, 1);
  StepProgram program = loadProgram("g3moe_lora");
  std::vector<int> codes =
      runForkedJob(2, [&](const World &world) { return overlapRank(program, world); });
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

} // namespace
