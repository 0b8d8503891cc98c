//===- CudaTrainTest.cpp - g3moe-run's training loop on the GPU -----------===//
//
// The Trainer (runtime/train/trainer.h) with --device cuda against the CPU
// reference: the same tiny steps, seed, data and options for ten optimizer
// steps with evaluation. The losses must agree step by step (fp32 dense
// closely; bf16 MoE, where a one-ulp difference can reroute a token, within
// a few percent, both falling), and a checkpoint the CUDA run writes must
// resume on the CPU and continue as the CUDA run did. With the own attention
// kernels, a CUDA run repeats another exactly, and replaying CUDA graphs
// gives what launching kernel by kernel gives. --dump-gradients on the GPU
// gives the CPU's loss and gradients. The backend's NCCL gradient sums work
// at world size 1 and fail in time when a peer never joins.
//
// The CPU runs come first, so that on a machine without a GPU they still
// run (and are checked to learn) before the test skips.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_backend.h"
#include "runtime/dist/communicator.h"
#include "runtime/exec/backend.h"
#include "runtime/exec/state.h"
#include "runtime/io/safetensors.h"
#include "runtime/train/backend_choice.h"
#include "runtime/train/inspect.h"
#include "runtime/train/trainer.h"
#include "test/e2e/StepFixtures.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

using namespace g3rt;
using namespace g3moe_test;
namespace fs = std::filesystem;

namespace {

/// Twelve examples of varied length (padding, a short last window): two are
/// held out for evaluation, the other ten make five [2, 16] micro-batches an
/// epoch, three accumulation windows of two.
std::string writeData(const std::string &dir) { return g3moe_test::writeData(dir, 12, 7, 10); }

bool cudaDeviceVisible() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

/// One tiny step and how closely the GPU must follow the CPU.
struct Case {
  const char *step;
  double learningRate;
  /// Largest |gpu - cpu| / |cpu| of a step's loss (and of eval_loss).
  double relativeTolerance;
  /// Largest |gpu - cpu| / |cpu| of one micro-batch's gradients (as vectors),
  /// as CudaStepTest.cpp holds forward_backward.
  double gradientTolerance;
};

std::ostream &operator<<(std::ostream &os, const Case &c) { return os << c.step; }

TrainOptions optionsFor(const Case &c, const std::string &data, const std::string &out,
                        const std::string &device) {
  TrainOptions o;
  o.dataPath = data;
  o.outputDir = out;
  o.device = device;
  o.maxSteps = 10;
  o.gradientAccumulationSteps = 2;
  o.learningRate = c.learningRate;
  o.lrSchedulerType = "constant";
  o.warmupSteps = 1;
  o.loggingSteps = 5;
  o.seed = 7;
  o.testSize = 2.0 / 12.0;
  o.evalSteps = 5;
  o.noSave = true;
  return o;
}

/// Trains and fails the test (with the log) on an error.
void run(const StepProgram &program, const TrainOptions &o, TrainResult &r) {
  std::ostringstream log;
  Status s = train(program, o, log, r);
  ASSERT_TRUE(s.ok()) << o.device << ": " << s.message() << "\n" << log.str();
}

void expectClose(const std::vector<double> &cpu, const std::vector<double> &gpu, double rtol,
                 const std::string &what) {
  ASSERT_EQ(cpu.size(), gpu.size()) << what;
  for (size_t i = 0; i < cpu.size(); ++i)
    EXPECT_LE(std::fabs(gpu[i] - cpu[i]), rtol * std::fabs(cpu[i]) + 1e-12)
        << what << " " << i << ": CPU " << cpu[i] << ", CUDA " << gpu[i];
}

class CudaTrain : public ::testing::TestWithParam<Case> {
protected:
  void SetUp() override { cuda::registerCudaBackend(); }
};

TEST_P(CudaTrain, LossesFollowTheCPU) {
  const Case &c = GetParam();
  StepProgram program;
  Status s = loadStep(stepPath(c.step), program);
  ASSERT_TRUE(s.ok()) << s.message();
  std::string dir = scratch("g3moe-cuda-train", std::string(c.step) + "-losses");
  std::string data = writeData(dir);

  TrainResult cpu;
  run(program, optionsFor(c, data, dir + "/cpu", "cpu"), cpu);
  ASSERT_EQ(cpu.losses.size(), 10u);
  EXPECT_EQ(cpu.backend.rfind("CPU", 0), 0u) << cpu.backend;
  // Guards the comparison: the run learns.
  EXPECT_LT(cpu.losses.back(), cpu.losses.front());
  if (!cudaDeviceVisible())
    GTEST_SKIP() << "no CUDA device visible";

  TrainResult gpu;
  run(program, optionsFor(c, data, dir + "/cuda", "cuda"), gpu);
  EXPECT_EQ(gpu.backend.rfind("CUDA on ", 0), 0u) << gpu.backend;
  ASSERT_EQ(gpu.losses.size(), 10u);
  EXPECT_LT(gpu.losses.back(), gpu.losses.front());
  expectClose(cpu.losses, gpu.losses, c.relativeTolerance, std::string(c.step) + " step loss");
  // Evaluation ran on the device after steps 5 and 10.
  EXPECT_EQ(gpu.evalSteps, cpu.evalSteps);
  expectClose(cpu.evalLosses, gpu.evalLosses, c.relativeTolerance,
              std::string(c.step) + " eval_loss");
  // The learning-rate schedule is arithmetic on the same inputs.
  expectClose(cpu.learningRates, gpu.learningRates, 1e-6, std::string(c.step) + " lr");
  for (size_t i = 0; i < cpu.losses.size(); ++i)
    std::printf("  %-18s step %2zu  loss CPU %.6f  CUDA %.6f\n", c.step, i + 1, cpu.losses[i],
                gpu.losses[i]);

  // With the own attention kernels (cuDNN's adds dq with atomics), a run
  // repeats another bit for bit: the same cuBLASLt algorithms, no float
  // atomics, fixed-order reductions.
  // Replaying the entry points as CUDA graphs (the default) gives what
  // launching their kernels one by one gives.
  setenv("G3MOE_CUDA_ATTENTION", "own", 1);
  TrainResult first, again, kernelByKernel;
  run(program, optionsFor(c, data, dir + "/cuda-own", "cuda"), first);
  run(program, optionsFor(c, data, dir + "/cuda-own-again", "cuda"), again);
  setenv("G3MOE_CUDA_GRAPHS", "0", 1);
  run(program, optionsFor(c, data, dir + "/cuda-own-kernels", "cuda"), kernelByKernel);
  unsetenv("G3MOE_CUDA_GRAPHS");
  unsetenv("G3MOE_CUDA_ATTENTION");
  EXPECT_EQ(again.losses, first.losses) << c.step;
  EXPECT_EQ(again.evalLosses, first.evalLosses) << c.step;
  EXPECT_EQ(kernelByKernel.losses, first.losses) << c.step;
  EXPECT_EQ(kernelByKernel.evalLosses, first.evalLosses) << c.step;
}

TEST_P(CudaTrain, CudaCheckpointResumesOnTheCPU) {
  const Case &c = GetParam();
  if (!cudaDeviceVisible())
    GTEST_SKIP() << "no CUDA device visible";
  StepProgram program;
  Status s = loadStep(stepPath(c.step), program);
  ASSERT_TRUE(s.ok()) << s.message();
  std::string dir = scratch("g3moe-cuda-train", std::string(c.step) + "-resume");
  std::string data = writeData(dir);

  // The whole run on the GPU, with a checkpoint after step 5 (downloaded
  // from the device) and the final parameters.
  TrainOptions onGpu = optionsFor(c, data, dir + "/cuda", "cuda");
  onGpu.noSave = false;
  onGpu.saveSteps = 5;
  TrainResult gpu;
  run(program, onGpu, gpu);
  ASSERT_EQ(gpu.losses.size(), 10u);
  ASSERT_FALSE(gpu.checkpoints.empty());
  std::string checkpoint = gpu.checkpoints.front();
  ASSERT_TRUE(fs::exists(checkpoint + "/optimizer.safetensors")) << checkpoint;

  // Steps 6-10 on the CPU from that checkpoint follow the GPU's.
  TrainOptions onCpu = optionsFor(c, data, dir + "/cpu", "cpu");
  onCpu.resume = checkpoint;
  TrainResult resumed;
  run(program, onCpu, resumed);
  EXPECT_EQ(resumed.firstStep, 5);
  std::vector<double> gpuTail(gpu.losses.begin() + 5, gpu.losses.end());
  expectClose(gpuTail, resumed.losses, c.relativeTolerance,
              std::string(c.step) + " resumed step loss");
  ASSERT_FALSE(resumed.evalLosses.empty());
  ASSERT_FALSE(gpu.evalLosses.empty());
  EXPECT_LE(std::fabs(resumed.evalLosses.back() - gpu.evalLosses.back()),
            c.relativeTolerance * std::fabs(gpu.evalLosses.back()));

  // --eval-only on the GPU from the final checkpoint matches the CPU's.
  TrainOptions evalGpu = optionsFor(c, data, dir + "/cuda", "cuda");
  evalGpu.evalOnly = true;
  evalGpu.resume = gpu.checkpoints.back();
  TrainOptions evalCpu = evalGpu;
  evalCpu.device = "cpu";
  TrainResult eg, ec;
  run(program, evalGpu, eg);
  run(program, evalCpu, ec);
  expectClose(ec.evalLosses, eg.evalLosses, c.relativeTolerance,
              std::string(c.step) + " --eval-only eval_loss");
}

TEST_P(CudaTrain, GradientDumpFollowsTheCPU) {
  const Case &c = GetParam();
  if (!cudaDeviceVisible())
    GTEST_SKIP() << "no CUDA device visible";
  StepProgram program;
  Status s = loadStep(stepPath(c.step), program);
  ASSERT_TRUE(s.ok()) << s.message();
  std::string dir = scratch("g3moe-cuda-train", std::string(c.step) + "-dump");
  std::string data = writeData(dir);

  // g3moe-run --dump-gradients on each device, from the same seeded state.
  std::map<std::string, SafetensorsFile> dumps;
  for (const char *device : {"cpu", "cuda"}) {
    TrainOptions o = optionsFor(c, data, dir, device);
    InspectOptions what;
    what.dumpGradients = dir + "/" + device + ".safetensors";
    std::ostringstream log;
    s = runInspection(program, o, what, log);
    ASSERT_TRUE(s.ok()) << device << ": " << s.message() << "\n" << log.str();
    ASSERT_TRUE(SafetensorsFile::open(what.dumpGradients, dumps[device]).ok());
  }
  const SafetensorsFile &cpu = dumps["cpu"], &gpu = dumps["cuda"];
  std::vector<float> a, b;
  ASSERT_TRUE(cpu.readFloats("loss", a).ok());
  ASSERT_TRUE(gpu.readFloats("loss", b).ok());
  EXPECT_NEAR(b[0], a[0], c.relativeTolerance * std::fabs(a[0])) << c.step;
  // Every gradient is there; their norms agree as loosely as the step's
  // tolerance allows (routing makes bf16 MoE gradients coarser).
  double err = 0, norm = 0;
  for (const SafetensorsEntry &e : cpu.entries()) {
    if (e.name.rfind("grad/", 0) != 0)
      continue;
    ASSERT_TRUE(gpu.find(e.name)) << e.name;
    ASSERT_TRUE(cpu.readFloats(e.name, a).ok());
    ASSERT_TRUE(gpu.readFloats(e.name, b).ok());
    ASSERT_EQ(a.size(), b.size()) << e.name;
    for (size_t i = 0; i < a.size(); ++i) {
      err += double(b[i] - a[i]) * (b[i] - a[i]);
      norm += double(a[i]) * a[i];
    }
  }
  EXPECT_GT(norm, 0.0);
  EXPECT_LE(std::sqrt(err), c.gradientTolerance * std::sqrt(norm)) << c.step;
}

// fp32 dense: losses within 1e-3 of the CPU per step. bf16 MoE (LoRA and
// full): the trajectories within 5 %. The ZeRO stage-2 and stage-3 steps of
// one process run their owned updates, reduces and broadcasts on the device.
INSTANTIATE_TEST_SUITE_P(TinySteps, CudaTrain,
                         ::testing::Values(Case{"gemma3_full_fp32", 2e-3, 1e-3, 2e-2},
                                           Case{"g3moe_lora", 1e-2, 5e-2, 1e-1},
                                           Case{"g3moe_full", 2e-3, 5e-2, 1e-1},
                                           Case{"g3moe_lora_zero2_alone", 1e-2, 5e-2, 1e-1},
                                           Case{"g3moe_full_zero3_alone", 2e-3, 5e-2, 1e-1}),
                         [](const ::testing::TestParamInfo<Case> &info) {
                           return std::string(info.param.step);
                         });

/// A job of two processes of which this is rank 0 and the other never comes:
/// the broadcast of NCCL's id "succeeds", so NCCL itself must notice.
class AbsentPeer final : public Communicator {
public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::chrono::milliseconds timeout() const override { return std::chrono::seconds(3); }
  Status allReduceSum(float *, size_t) override { return Status(); }
  Status allReduceSum(double *, size_t) override { return Status(); }
  Status broadcast(void *, size_t, int) override { return Status(); }
  Status barrier() override { return Status(); }
};

/// The CUDA backend of the tiny LoRA MoE step with every gradient
/// accumulator set to a pattern (kept in `host`).
class NcclGradientSums : public ::testing::Test {
protected:
  void SetUp() override {
    if (!cudaDeviceVisible())
      GTEST_SKIP() << "no CUDA device visible";
    cuda::registerCudaBackend();
    Status s = loadStep(stepPath("g3moe_lora"), program);
    ASSERT_TRUE(s.ok()) << s.message();
    host = std::make_unique<HostState>(program);
    std::string description;
    s = selectBackend(program, *host, "cuda", Placement{}, backend, description);
    ASSERT_TRUE(s.ok()) << s.message();
    int64_t k = 0;
    host->forEach(BufferKind::GradAcc, [&](const std::string &, const TensorView &g) {
      for (int64_t i = 0; i < g.numel(); ++i)
        g.store(i, float((k++ % 97) - 48) / 16.0f);
    });
    s = backend->uploadState(*host);
    ASSERT_TRUE(s.ok()) << s.message();
  }

  StepProgram program;
  std::unique_ptr<HostState> host;
  std::unique_ptr<Backend> backend;
};

/// NCCL at world size 1 (the one GPU of the test machine): the backend sums
/// its gradients itself, and the sum over one process is the identity.
TEST_F(NcclGradientSums, WorldOfOneIsTheIdentity) {
  std::unique_ptr<Communicator> solo = makeSoloCommunicator();
  bool done = false;
  for (int round = 0; round < 2; ++round) { // joins, then reuses the communicator
    Status s = backend->sumGradients(*solo, done);
    ASSERT_TRUE(s.ok()) << s.message();
  }
  EXPECT_TRUE(done) << "this build has no NCCL";
  HostState back(program);
  ASSERT_TRUE(backend->downloadState(back).ok());
  int64_t tensors = 0;
  host->forEach(BufferKind::GradAcc, [&](const std::string &name, const TensorView &want) {
    TensorView got = back.state(BufferKind::GradAcc, name);
    ++tensors;
    for (int64_t i = 0; i < want.numel(); ++i)
      ASSERT_EQ(got.load(i), want.load(i)) << name << " " << i;
  });
  EXPECT_GT(tensors, 0);
}

/// A peer that never joins fails the first sum within the job's timeout,
/// with an error naming NCCL, the rank and what was waited for.
TEST_F(NcclGradientSums, APeerThatNeverJoinsFailsWithinTheTimeout) {
  AbsentPeer job;
  bool done = false;
  auto t0 = std::chrono::steady_clock::now();
  Status s = backend->sumGradients(job, done);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("NCCL (rank 0 of 2)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("joining the communicator"), std::string::npos) << s.message();
  EXPECT_LT(seconds, 30.0);
}

} // namespace
