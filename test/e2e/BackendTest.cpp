//===- BackendTest.cpp - backends and the device path, on the CPU ---------===//
//
// How a backend takes a step: each names the kernels it lacks, and the CPU
// backend runs on the host state it was made with. Then the trainer's use of
// a device backend (what it uploads, when it downloads, where it zeroes the
// accumulators and reads outputs), checked without a GPU: a "mirror" backend
// runs the step with the CPU backend on a second HostState that shares
// nothing with the trainer's. The CPU kernels are deterministic, so a run on
// the mirror must equal a plain CPU run bit for bit; a missed upload (the
// mirror would train stale inputs), a missed zeroing or download (the saved
// files would hold the host's stale parameters) shows as a difference. The
// mirror is registered in the CUDA slot, so --device cuda / auto find it.
// Also: how --device is resolved when the backend is absent, sees no device
// or cannot take the step.
//
//===----------------------------------------------------------------------===//

#include "runtime/cpu/cpu_backend.h"
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/io/safetensors.h"
#include "runtime/train/backend_choice.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/inspect.h"
#include "runtime/train/trainer.h"
#include "test/e2e/MirrorBackend.h"
#include "test/e2e/StepFixtures.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

using namespace g3rt;
using namespace g3moe_test;
namespace fs = std::filesystem;

namespace {

/// Eleven examples of varied length (as ResumeTest.cpp writes them).
std::string writeData(const std::string &dir) { return g3moe_test::writeData(dir, 11, 6, 11); }

/// The provider's behaviour, set per test.
int visibleDevices = 1;
std::string createError;

const BackendProvider kMirror = {
    "mirror",
    [](std::string &why) {
      if (visibleDevices == 0)
        why = "none here";
      return visibleDevices;
    },
    [](const StepProgram &program, HostState &, const Placement &, std::unique_ptr<Backend> &out) {
      if (!createError.empty())
        return Status::error(createError);
      out = std::make_unique<MirrorBackend>(program);
      return Status();
    }};

/// Registers the mirror in the CUDA slot for one test, and removes it after.
class DeviceBackendTest : public ::testing::Test {
protected:
  void SetUp() override {
    previous_ = cudaBackendProvider();
    registerCudaBackendProvider(&kMirror);
    visibleDevices = 1;
    createError.clear();
    mirrorLog = MirrorLog();
  }
  void TearDown() override { registerCudaBackendProvider(previous_); }

private:
  const BackendProvider *previous_ = nullptr;
};

TrainOptions baseOptions(const std::string &data, const std::string &out) {
  TrainOptions o;
  o.dataPath = data;
  o.outputDir = out;
  o.maxSteps = 6;
  o.gradientAccumulationSteps = 2;
  o.learningRate = 1e-2;
  o.warmupSteps = 1;
  o.loggingSteps = 2;
  o.seed = 7;
  o.testSize = 0.2;
  o.evalSteps = 3;
  o.saveSteps = 3;
  return o;
}

/// A run on the mirror equals the CPU run bit for bit: losses, gradient
/// norms, evaluations, checkpoints and final files.
void checkMirrorMatchesCpu(const std::string &stepName) {
  StepProgram program = loadProgram(stepName);
  std::string dir = scratch("g3moe-device", "mirror-" + stepName);
  std::string data = writeData(dir);

  TrainOptions onCpu = baseOptions(data, dir + "/cpu");
  TrainResult cpu;
  std::string cpuLog;
  Status s = runTraining(program, onCpu, cpu, &cpuLog);
  ASSERT_TRUE(s.ok()) << s.message() << "\n" << cpuLog;
  EXPECT_EQ(mirrorLog.runs, 0) << "the CPU default ran on the device";
  EXPECT_EQ(cpuLog.rfind("backend: CPU (", 0), 0u) << cpuLog;

  TrainOptions onMirror = baseOptions(data, dir + "/mirror");
  onMirror.device = "cuda";
  TrainResult mirror;
  std::string mirrorText;
  s = runTraining(program, onMirror, mirror, &mirrorText);
  ASSERT_TRUE(s.ok()) << s.message() << "\n" << mirrorText;
  EXPECT_EQ(mirror.backend, "CPU mirror");
  EXPECT_EQ(mirrorText.rfind("backend: CPU mirror\n", 0), 0u) << mirrorText;
  EXPECT_EQ(mirror.losses, cpu.losses);
  EXPECT_EQ(mirror.gradNorms, cpu.gradNorms);
  EXPECT_EQ(mirror.learningRates, cpu.learningRates);
  EXPECT_EQ(mirror.evalLosses, cpu.evalLosses);
  EXPECT_EQ(mirror.evalAccuracies, cpu.evalAccuracies);
  // The state went up once; every optimizer step zeroed the device's
  // accumulators; the host was brought up to date for the two checkpoints,
  // not after every step (nothing ran between the last checkpoint and the
  // final save).
  EXPECT_EQ(mirrorLog.stateUploads, 1);
  EXPECT_EQ(mirrorLog.zeroings, 6);
  EXPECT_EQ(mirrorLog.inputUploads, mirrorLog.runs);
  EXPECT_EQ(mirrorLog.downloads, 2);

  ASSERT_EQ(mirror.checkpoints.size(), cpu.checkpoints.size());
  for (size_t i = 0; i < cpu.checkpoints.size(); ++i)
    for (const fs::directory_entry &e : fs::directory_iterator(cpu.checkpoints[i])) {
      std::string file = e.path().filename().string();
      if (e.path().extension() == ".safetensors" || file == "rng_state.json") {
        EXPECT_EQ(bytesOf(mirror.checkpoints[i] + "/" + file), bytesOf(e.path().string()))
            << mirror.checkpoints[i] << "/" << file;
      }
    }
  ASSERT_EQ(mirror.savedFiles.size(), cpu.savedFiles.size());
  for (size_t i = 0; i < cpu.savedFiles.size(); ++i)
    if (cpu.savedFiles[i].find(".safetensors") != std::string::npos) {
      EXPECT_EQ(bytesOf(mirror.savedFiles[i]), bytesOf(cpu.savedFiles[i])) << cpu.savedFiles[i];
    }

  // The device's checkpoint resumes on the CPU as the CPU's own would.
  TrainOptions resumed = baseOptions(data, dir + "/resumed");
  resumed.resume = mirror.checkpoints.front();
  TrainResult r;
  s = runTraining(program, resumed, r);
  ASSERT_TRUE(s.ok()) << s.message();
  ASSERT_EQ(r.firstStep, 3);
  EXPECT_EQ(r.losses, std::vector<double>(cpu.losses.begin() + 3, cpu.losses.end()));

  // And the CPU's resumes on the device.
  TrainOptions back = baseOptions(data, dir + "/back");
  back.device = "cuda";
  back.resume = cpu.checkpoints.front();
  TrainResult b;
  s = runTraining(program, back, b);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(b.losses, std::vector<double>(cpu.losses.begin() + 3, cpu.losses.end()));

  // --eval-only on the device, from the final checkpoint.
  TrainOptions eval = baseOptions(data, dir + "/eval");
  eval.evalOnly = true;
  eval.resume = cpu.checkpoints.back();
  TrainResult ec, ed;
  ASSERT_TRUE(runTraining(program, eval, ec).ok());
  eval.device = "cuda";
  ASSERT_TRUE(runTraining(program, eval, ed).ok());
  EXPECT_EQ(ed.evalLosses, ec.evalLosses);
  EXPECT_EQ(ed.evalAccuracies, ec.evalAccuracies);
}

/// A kernel table without "rms_norm": what a backend that lacks a kernel
/// reports.
KernelFn allButRmsNorm(std::string_view name) {
  return name == "rms_norm" ? nullptr : cpu::findCpuKernel(name);
}

TEST(Backends, NameTheKernelsTheyLack) {
  StepProgram program = loadProgram("g3moe_lora");
  ResolvedKernels kernels;
  ASSERT_TRUE(resolveKernels(program, "CPU", cpu::findCpuKernel, kernels).ok());
  const FunctionDesc *fb = program.findFunction("forward_backward");
  ASSERT_TRUE(fb);
  ASSERT_EQ(kernels.at("forward_backward").size(), fb->instrs.size());
  for (size_t i = 0; i < fb->instrs.size(); ++i)
    EXPECT_EQ(kernels.at("forward_backward")[i], cpu::findCpuKernel(fb->instrs[i].kernel));

  ResolvedKernels partial;
  Status s = resolveKernels(program, "test", allButRmsNorm, partial);
  ASSERT_FALSE(s.ok());
  // Named once, with the first entry point that uses it.
  EXPECT_EQ(s.message().rfind("the test backend has no kernel rms_norm (used by ", 0), 0u)
      << s.message();
  EXPECT_EQ(s.message().find("rms_norm", 40), std::string::npos) << s.message();
  EXPECT_TRUE(partial.empty());
}

TEST(Backends, CpuBackendRunsOnItsOwnHostStateOnly) {
  StepProgram program = loadProgram("g3moe_lora");
  CpuStep step(program);
  ASSERT_TRUE(step.cpu);
  EXPECT_TRUE(step.cpu->uploadState(step.state).ok());
  HostState other(program);
  Status s = step.cpu->uploadInputs(other);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("the host state it was made with"), std::string::npos);
  std::unique_ptr<cpu::CpuBackend> wrong;
  StepProgram copy = program;
  s = cpu::CpuBackend::create(copy, step.state, wrong);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("the state of another step"), std::string::npos) << s.message();
  EXPECT_EQ(step.cpu->placement().rank, 0);
  EXPECT_EQ(step.cpu->placement().worldSize, 1);
}

/// The tensors of `kinds` a host state holds, by kind and name.
std::set<std::string> held(const HostState &h, std::initializer_list<BufferKind> kinds) {
  std::set<std::string> names;
  for (BufferKind k : kinds)
    h.forEach(k, [&](const std::string &name, const TensorView &) {
      names.insert(std::to_string(int(k)) + ":" + name);
    });
  return names;
}

/// Process 0's and 1's shares of `kinds` are disjoint, neither empty, and
/// together what a process of the unsharded view holds.
void expectDivided(const StepProgram &program, std::initializer_list<BufferKind> kinds) {
  HostState all(program), first(program, 0), second(program, 1);
  std::set<std::string> a = held(first, kinds), b = held(second, kinds), whole = held(all, kinds);
  EXPECT_FALSE(a.empty());
  EXPECT_FALSE(b.empty());
  EXPECT_EQ(a.size() + b.size(), whole.size());
  std::set<std::string> joined = a;
  joined.insert(b.begin(), b.end());
  EXPECT_EQ(joined, whole);
}

TEST(Backends, EachProcessOfAShardedStepHoldsItsShareOfTheState) {
  // ZeRO over 2 processes: each holds the parameters and inputs, and the
  // moments of the updates it owns (stage 1), and at stage 2 the gradient
  // accumulators of the tensors it owns; together, each once. A process
  // runs only its own updates.
  StepProgram one = loadProgram("g3moe_lora_zero1"), two = loadProgram("g3moe_lora_zero2");
  expectDivided(one, {BufferKind::ExpAvg, BufferKind::ExpAvgSq});
  expectDivided(two, {BufferKind::ExpAvg, BufferKind::ExpAvgSq, BufferKind::GradAcc});
  EXPECT_EQ(held(HostState(one, 1), {BufferKind::GradAcc}),
            held(HostState(one), {BufferKind::GradAcc}));
  EXPECT_TRUE(HostState(two, 1).param("model.embed_tokens.weight").data);
  size_t owned = 0, updates = 0;
  for (const FunctionDesc &fn : one.functions)
    for (const InstrDesc &in : fn.instrs)
      if (in.kernel == "adamw") {
        ++updates;
        owned += runsOnProcess(in, 1);
      }
  EXPECT_GT(updates, owned);
  EXPECT_GT(owned, 0u);
  EXPECT_EQ(momentOwners(one).size(),
            held(HostState(one), {BufferKind::ExpAvg, BufferKind::ExpAvgSq}).size());
}

TEST(Backends, EachProcessOfAStageThreeStepHoldsItsShareOfTheParameters) {
  // ZeRO stage 3 over 2 processes divides the trained parameters too; a
  // process can hold another's for as long as it needs it (a save).
  StepProgram three = loadProgram("g3moe_full_zero3");
  expectDivided(three,
                {BufferKind::Param, BufferKind::ExpAvg, BufferKind::ExpAvgSq, BufferKind::GradAcc});
  HostState first(three, 0);
  std::string away;
  for (const ParamDesc &p : three.params)
    if (!first.param(p.name).data) {
      EXPECT_TRUE(p.trainable) << p.name;
      EXPECT_TRUE(first.heldElsewhere(BufferKind::Param, p.name)) << p.name;
      away = p.name;
    }
  ASSERT_FALSE(away.empty());
  TensorView held = first.hold(BufferKind::Param, away);
  ASSERT_TRUE(held.data);
  EXPECT_EQ(first.param(away).data, held.data);
  EXPECT_FALSE(first.heldElsewhere(BufferKind::Param, away));
  first.release(BufferKind::Param, away);
  EXPECT_FALSE(first.param(away).data);
  EXPECT_TRUE(first.heldElsewhere(BufferKind::Param, away));
}

} // namespace

TEST_F(DeviceBackendTest, MirrorTrainsLoRAMoEAsTheCPUDoes) { checkMirrorMatchesCpu("g3moe_lora"); }

TEST_F(DeviceBackendTest, MirrorTrainsFullFineTuningAsTheCPUDoes) {
  checkMirrorMatchesCpu("gemma3_full");
}

TEST_F(DeviceBackendTest, GradientDumpOnTheDeviceIsTheCPUs) {
  StepProgram program = loadProgram("g3moe_lora_fp32");
  std::string dir = scratch("g3moe-device", "dump");
  std::string data = writeData(dir);
  TrainOptions o;
  o.dataPath = data;
  o.seed = 3;
  for (const char *device : {"cpu", "cuda"}) {
    o.device = device;
    InspectOptions what;
    what.dumpGradients = dir + "/" + device + ".safetensors";
    std::ostringstream log;
    Status s = runInspection(program, o, what, log);
    ASSERT_TRUE(s.ok()) << device << ": " << s.message() << "\n" << log.str();
  }
  EXPECT_EQ(mirrorLog.runs, 1);
  EXPECT_EQ(bytesOf(dir + "/cpu.safetensors"), bytesOf(dir + "/cuda.safetensors"));
}

TEST_F(DeviceBackendTest, DeviceSelection) {
  StepProgram program = loadProgram("g3moe_lora");
  HostState host(program);
  std::unique_ptr<Backend> backend;
  std::string description;
  auto onCpu = [&] {
    ASSERT_TRUE(backend);
    EXPECT_EQ(backend->description().rfind("CPU (", 0), 0u) << backend->description();
    EXPECT_EQ(description.rfind(backend->description(), 0), 0u) << description;
  };

  ASSERT_TRUE(selectBackend(program, host, "cpu", Placement{}, backend, description).ok());
  onCpu();
  EXPECT_EQ(description.find("CUDA not used"), std::string::npos) << description;
  // Rank 3 of a job, the fourth process of its machine: the CPU is its one
  // device, and the placement keeps the rank.
  ASSERT_TRUE(selectBackend(program, host, "cpu", Placement{3, 3, 4}, backend, description).ok());
  onCpu();
  EXPECT_EQ(backend->placement().device, 0);
  EXPECT_EQ(backend->placement().rank, 3);
  EXPECT_EQ(backend->placement().worldSize, 4);

  ASSERT_TRUE(selectBackend(program, host, "auto", Placement{}, backend, description).ok());
  ASSERT_TRUE(backend);
  EXPECT_EQ(description, "CPU mirror");

  Status s = selectBackend(program, host, "gpu", Placement{}, backend, description);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("unknown device 'gpu'"), std::string::npos) << s.message();

  // No device visible: cuda is an error naming why, auto the CPU.
  visibleDevices = 0;
  s = selectBackend(program, host, "cuda", Placement{}, backend, description);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "--device cuda: no CUDA device visible (cudaGetDeviceCount: none here)");
  ASSERT_TRUE(selectBackend(program, host, "auto", Placement{}, backend, description).ok());
  onCpu();
  EXPECT_EQ(description.find("CUDA not used"), std::string::npos) << description;

  // A device that cannot take the step: cuda fails, auto says why and uses
  // the CPU.
  visibleDevices = 1;
  createError = "the CUDA backend has no kernel 'k'";
  s = selectBackend(program, host, "cuda", Placement{}, backend, description);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "--device cuda: the CUDA backend has no kernel 'k'");
  ASSERT_TRUE(selectBackend(program, host, "auto", Placement{}, backend, description).ok());
  onCpu();
  EXPECT_NE(description.find("; CUDA not used: the CUDA backend has no kernel 'k'"),
            std::string::npos)
      << description;

  // A program built without CUDA.
  registerCudaBackendProvider(nullptr);
  s = selectBackend(program, host, "cuda", Placement{}, backend, description);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("built without CUDA"), std::string::npos) << s.message();
  ASSERT_TRUE(selectBackend(program, host, "auto", Placement{}, backend, description).ok());
  onCpu();

  // Training fails before anything is written.
  TrainOptions o;
  o.dataPath = "/nonexistent.jsonl";
  o.outputDir = scratch("g3moe-device", "no-device") + "/out";
  o.device = "cuda";
  TrainResult r;
  s = train(program, o, std::cerr, r);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--device cuda"), std::string::npos) << s.message();
  EXPECT_FALSE(fs::exists(o.outputDir));
}
