//===- OverlappedSumsTest.cpp - exchanges while the step computes ---------===//
//
// The CPU backend's exchanges that overlap its kernels, in jobs of two
// forked processes: runSummingGradients (a micro-step's gradients summed
// over the processes while it runs, a pack as soon as the step is done with
// it) gives the sums taken after the step, to the bit, and most packs leave
// before the step's last instruction; the collective instructions of a
// ZeRO stage 3 step, sent from their own thread while the kernels after
// them run (its parameters received one ahead), give what running every
// instruction in turn gives, to the bit.
// (DataParallelDeviceTest's CPU job trains through both.)
//
//===----------------------------------------------------------------------===//

#include "test/ForkedJob.h"
#include "test/e2e/StepFixtures.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

using namespace g3rt;
using namespace g3moe_test;

namespace {

/// One rank of the gradient sums: exit codes name the failed check.
int overlapRank(const StepProgram &program, const World &world) {
  std::unique_ptr<Communicator> comm = joinGlooJob(world);
  if (!comm)
    return 2;
  Status s;
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

/// One rank of the ZeRO stage 3 step: its micro-step with every instruction
/// in turn, then with the collectives on their own thread; the same
/// gradient accumulators and loss, and kernels that ran while collectives
/// were out. Exit codes name the failed check.
int collectivesRank(const StepProgram &program, const World &world) {
  std::unique_ptr<Communicator> comm = joinGlooJob(world);
  if (!comm)
    return 2;
  HostState state(program, world.rank);
  std::unique_ptr<cpu::CpuBackend> backend;
  if (!cpu::CpuBackend::create(program, state, backend, Placement{0, world.rank, 2, comm.get()})
           .ok() ||
      !initializeParameters(state, 7, 0).ok())
    return 3;
  setInputs(state);
  if (TensorView key = state.input("rng_key"); key.data)
    key.i64()[1] = 5 + world.rank;
  auto snapshot = [&](std::vector<std::vector<uint8_t>> &out) {
    state.forEach(BufferKind::GradAcc, [&](const std::string &, const TensorView &g) {
      const uint8_t *p = static_cast<const uint8_t *>(g.data);
      out.emplace_back(p, p + (p ? g.bytes() : 0));
    });
    const TensorView loss = backend->output("train_micro_step", "loss");
    const uint8_t *p = static_cast<const uint8_t *>(loss.data);
    out.emplace_back(p, p + loss.bytes());
  };
  std::vector<std::vector<uint8_t>> inTurn, queued;
  backend->setAsyncCollectives(false);
  if (!backend->zeroGradients().ok() || !backend->run("train_micro_step").ok())
    return 4;
  snapshot(inTurn);
  if (backend->collectivesOverlapped() != 0)
    return 5;
  backend->setAsyncCollectives(true);
  Status s = backend->zeroGradients();
  if (s.ok())
    s = backend->run("train_micro_step");
  if (!s.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", world.rank, s.message().c_str());
    return 6;
  }
  snapshot(queued);
  std::printf("rank %d: %llu kernels ran while collectives were out\n", world.rank,
              (unsigned long long)backend->collectivesOverlapped());
  std::fflush(stdout);
  if (queued != inTurn)
    return 7;
  // With its receipts one ahead (--g3moe-prefetch-parameters) hundreds of
  // kernels run while parameters travel; without, a handful.
  return backend->collectivesOverlapped() > 100 ? 0 : 8;
}

/// Runs `rank` on step `name` in both processes of a job of two, which must
/// exit 0.
void expectBothRanksPass(const char *name, int (*rank)(const StepProgram &, const World &)) {
  setenv("G3MOE_GLOO_PLUGIN", G3MOE_GLOO_PLUGIN_PATH, 1);
  StepProgram program = loadProgram(name);
  std::vector<int> codes =
      runForkedJob(2, [&](const World &world) { return rank(program, world); });
  EXPECT_EQ(codes, (std::vector<int>{0, 0})) << name;
}

TEST(DataParallelOverlap, CollectivesOnTheirOwnThreadGiveTheSameStep) {
  expectBothRanksPass("g3moe_full_zero3", collectivesRank);
}

TEST(DataParallelOverlap, GradientsSummedAsTheStepRunsAreTheSumsAfterIt) {
  expectBothRanksPass("g3moe_lora", overlapRank);
}

} // namespace
