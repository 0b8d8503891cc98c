//===- CudaStepTest.cpp - the CUDA backend against the CPU reference ------===//
//
// Differential tests on a GPU: every instruction of compiled tiny steps runs on
// the CPU reference and on the CUDA backend from the same input bytes, and the
// outputs are compared (kernel by kernel, so a failure names the kernel);
// then whole entry points run on the GPU alone and their losses and gradients
// are compared with the CPU's; CUDA graphs and host offload against kernel by
// kernel. Single kernels on larger shapes: CudaKernelTest.cpp.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/random.h"
#include "runtime/cuda/cuda_executor.h"

#include "runtime/train/data.h"
#include "runtime/train/init.h"
#include "test/e2e/StepFixtures.h"
#include "test/gpu/GpuTesting.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>

using namespace g3rt;
using namespace g3moe_test;

namespace {

/// Parameters from a seed, LoRA B moved off 0, and the first micro-batch of
/// the memorisation set as inputs.
void prepare(CpuStep &ex) {
  ASSERT_TRUE(initializeParameters(ex.state, 7, 0).ok());
  for (const ParamDesc &p : ex.state.program().params)
    if (p.name.find("lora_B") != std::string::npos) {
      TensorView t = ex.state.param(p.name);
      for (int64_t i = 0; i < t.numel(); ++i)
        t.store(i, 0.05f * (2 * uniformAt(3, 0, streamOf(p.name), uint64_t(i)) - 1));
    }
  DataSpec spec;
  spec.path = pathSetting("G3MOE_EXAMPLES_DIR", G3MOE_EXAMPLES_DIR) + "/data/memorize.jsonl";
  spec.vocabSize = 512;
  spec.seqLen = 16;
  DataSplit data;
  ASSERT_TRUE(loadTrainingData(spec, data).ok());
  MicroBatch mb;
  assembleMicroBatch(data.train, {0, 1}, 2, 16, 0, mb);
  auto copy = [&](const char *name, const std::vector<int32_t> &v) {
    std::memcpy(ex.state.input(name).data, v.data(), v.size() * 4);
  };
  copy("input_ids", mb.inputIds);
  copy("targets", mb.targets);
  copy("positions", mb.positions);
  copy("segment_ids", mb.segmentIds);
  ex.state.input("num_items").store(0, float(mb.labelCount));
  if (TensorView key = ex.state.input("rng_key"); key.data) {
    key.i64()[0] = 1234;
    key.i64()[1] = 5;
  }
  if (TensorView t = ex.state.input("total_steps"); t.data) {
    *ex.state.input("step").i64() = 3;
    *t.i64() = 10;
    *ex.state.input("warmup_steps").i64() = 2;
  }
}

class CudaStep : public ::testing::TestWithParam<const char *> {};

/// Both ways of running the expert products (G3MOE_EXPERT_GEMM) in turn.
TEST_P(CudaStep, EveryInstructionMatchesTheCPU) {
  StepProgram program;
  Status s = loadStep(stepPath(GetParam()), program);
  ASSERT_TRUE(s.ok()) << s.message();
  for (const char *experts : {"cublas", "grouped"}) {
    SCOPED_TRACE(experts);
    CpuStep cpu(program);
    prepare(cpu);
    std::unique_ptr<cuda::CudaExecutor> gpu;
    {
      ScopedEnv env("G3MOE_EXPERT_GEMM", experts);
      s = cuda::CudaExecutor::create(program, 0, gpu);
    }
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_TRUE(gpu->upload(cpu.state).ok());

    std::map<std::string, double> worstByKernel;
    for (const FunctionDesc &fn : program.functions) {
      ASSERT_TRUE(cpu.cpu->reserveArena(fn).ok());
      ASSERT_TRUE(gpu->reserveArena(fn).ok());
      for (size_t i = 0; i < fn.instrs.size(); ++i) {
        const InstrDesc &instr = fn.instrs[i];
        // The GPU starts from the CPU's input bytes, before the CPU
        // instruction runs (some write their inputs in place).
        for (uint32_t b : instr.inputs)
          ASSERT_TRUE(gpu->toDevice(gpu->deviceView(fn, b), cpu.cpu->view(fn, b).data).ok());
        s = cpu.cpu->runInstruction(fn, i);
        ASSERT_TRUE(s.ok()) << s.message();
        s = gpu->runInstruction(fn, i);
        ASSERT_TRUE(s.ok()) << s.message();
        for (uint32_t b : instr.outputs) {
          TensorView want = cpu.cpu->view(fn, b);
          std::vector<uint8_t> got(want.bytes());
          ASSERT_TRUE(gpu->toHost(gpu->deviceView(fn, b), got.data()).ok());
          double ratio = errorRatio(want, got);
          double &worst = worstByKernel[instr.kernel];
          worst = std::max(worst, ratio);
          EXPECT_LE(ratio, 1.0) << GetParam() << ": " << fn.name << " instruction " << i << " ("
                                << instr.kernel << ") output " << shapeString(want.shape) << " "
                                << dtypeName(want.dtype);
        }
      }
    }
    for (const auto &[kernel, worst] : worstByKernel)
      if (kernel.rfind("expert_linear", 0) == 0 || std::string(experts) == "cublas")
        std::printf("  %-28s %-7s worst error / tolerance %.3g\n", kernel.c_str(), experts, worst);
  }
}

bool endsWith(const std::string &s, const std::string &suffix) {
  return s.size() > suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// Whether `kernel` makes the routing decision (weights and expert indices),
/// or its gradient.
bool isRouter(const std::string &kernel) { return endsWith(kernel, "_router"); }
bool isRouterGrad(const std::string &kernel) { return endsWith(kernel, "_router_grad"); }

/// Runs entry point `function` on the CPU and on the GPU, each on its own
/// values, an instruction at a time, except that the GPU takes the CPU's
/// routing: after each router, the CPU's weights and expert indices replace
/// the GPU's, and each router's gradient reads the CPU's logits. Routing is
/// discrete, so in bf16 a one-ulp difference in an activation can send a
/// token to another expert and change every gradient that sums over routed
/// tokens wholesale; with the routing fixed, what is compared is the kernels
/// alone, at tolerances that catch a wrong kernel.
/// Returns how many tokens the GPU would have routed to other experts.
int64_t runBothWithCpuRouting(CpuStep &cpu, cuda::CudaExecutor &gpu, const char *function) {
  const FunctionDesc *fn = cpu.state.program().findFunction(function);
  EXPECT_TRUE(fn) << function;
  if (fn) {
    EXPECT_TRUE(cpu.cpu->reserveArena(*fn).ok());
    EXPECT_TRUE(gpu.reserveArena(*fn).ok());
  }
  int64_t rerouted = 0;
  for (size_t i = 0; fn && i < fn->instrs.size(); ++i) {
    const InstrDesc &instr = fn->instrs[i];
    // A router's gradient decides again from the logits (SparseMixer's
    // candidate mask, ties): it takes the CPU's logits, copied before the
    // CPU runs (its result may reuse their bytes).
    if (isRouterGrad(instr.kernel)) {
      TensorView logits = cpu.cpu->view(*fn, instr.inputs[0]);
      EXPECT_TRUE(gpu.toDevice(gpu.deviceView(*fn, instr.inputs[0]), logits.data).ok());
    }
    Status s = cpu.cpu->runInstruction(*fn, i);
    EXPECT_TRUE(s.ok()) << s.message();
    s = gpu.runInstruction(*fn, i);
    EXPECT_TRUE(s.ok()) << s.message();
    if (!s.ok())
      return rerouted;
    if (!isRouter(instr.kernel))
      continue;
    TensorView want = cpu.cpu->view(*fn, instr.outputs[1]); // [tokens, k] expert indices
    std::vector<int32_t> got(size_t(want.numel()));
    EXPECT_TRUE(gpu.toHost(gpu.deviceView(*fn, instr.outputs[1]), got.data()).ok());
    const int64_t k = want.shape.back();
    for (int64_t n = 0; n * k < want.numel(); ++n) {
      std::vector<int32_t> a(want.i32() + n * k, want.i32() + (n + 1) * k);
      std::vector<int32_t> b(got.begin() + n * k, got.begin() + (n + 1) * k);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      rerouted += a != b;
    }
    for (uint32_t b : instr.outputs)
      EXPECT_TRUE(gpu.toDevice(gpu.deviceView(*fn, b), cpu.cpu->view(*fn, b).data).ok());
  }
  return rerouted;
}

/// Runs the entry points on the CPU and on the GPU (attention on `attention`,
/// see cudnn_attention.h), the GPU with the CPU's routing, and compares
/// losses and every gradient.
void compareEntryPoints(const char *step, const char *attention) {
  StepProgram program;
  Status s = loadStep(stepPath(step), program);
  ASSERT_TRUE(s.ok()) << s.message();
  CpuStep cpu(program);
  prepare(cpu);
  setenv("G3MOE_CUDA_ATTENTION", attention, 1);
  std::unique_ptr<cuda::CudaExecutor> gpu;
  s = cuda::CudaExecutor::create(program, 0, gpu);
  unsetenv("G3MOE_CUDA_ATTENTION");
  ASSERT_TRUE(s.ok()) << s.message();
  ASSERT_TRUE(gpu->upload(cpu.state).ok());

  int64_t rerouted = 0;
  for (const char *fn : {"forward", "eval_forward", "forward_backward"}) {
    rerouted = runBothWithCpuRouting(cpu, *gpu, fn);
    std::vector<float> gpuLoss;
    ASSERT_TRUE(gpu->output(fn, "loss", gpuLoss).ok());
    double cpuLoss = cpu.cpu->output(fn, "loss").load(0);
    EXPECT_NEAR(gpuLoss[0], cpuLoss, 1e-2 * std::fabs(cpuLoss)) << step << " " << fn;
  }
  // Every gradient, tensor by tensor, by the relative norm of its error.
  // fp32 steps routed the same way on both sides on their own; with the
  // routing fixed, bf16 MoE steps are held to a bound a little above the
  // dense bf16 step's (their expert products round two more bf16
  // intermediates: 2.3 % measured on an H100, against 1.6 %). cuDNN's attention
  // rounds the probabilities and dS to bf16 before the second product of
  // each pair (as PyTorch's flash and cuDNN attention do; the own kernels
  // keep about 16 bits), which moves the bf16 steps' gradients by a few
  // percent more.
  const bool bf16 = std::string(step).find("fp32") == std::string::npos;
  const bool cudnn = bf16 && std::string(attention) == "cudnn";
  EXPECT_TRUE(bf16 || rerouted == 0)
      << step << ": " << rerouted << " tokens routed to other experts than on the CPU in fp32";
  const bool routedInBf16 = bf16 && std::string(step).find("g3moe") != std::string::npos;
  // A step with e4m3 products (fp8_base) agrees with the CPU instruction by
  // instruction (EveryInstructionMatchesTheCPU); over a whole step, an input
  // that differs by a bf16 rounding flips some e4m3 roundings, each 1/16 of
  // its element where a bf16 one is 1/256, and the flips add up layer by
  // layer: 0.17 of a tensor's norm measured on an H100.
  const bool e4m3 = std::string(step).find("fp8") != std::string::npos;
  const double perTensor = e4m3 ? 0.25 : cudnn ? 8e-2 : routedInBf16 ? 3e-2 : 2e-2;
  double worst = 0;
  for (const ParamDesc &p : program.params) {
    if (!p.trainable)
      continue;
    std::vector<float> g;
    ASSERT_TRUE(gpu->output("forward_backward", "grad:" + p.name, g).ok());
    std::vector<float> want = toFloat(cpu.cpu->output("forward_backward", "grad:" + p.name));
    double err = 0, norm = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      err += double(g[i] - want[i]) * (g[i] - want[i]);
      norm += double(want[i]) * want[i];
    }
    EXPECT_LE(std::sqrt(err), perTensor * std::sqrt(norm) + 1e-5) << step << " " << p.name;
    worst = std::max(worst, std::sqrt(err / std::max(norm, 1e-30)));
  }
  std::printf("  %s, attention %s: worst gradient error %.3g of its norm, %lld tokens the GPU "
              "would have routed elsewhere\n",
              step, attention, worst, (long long)rerouted);
}

TEST_P(CudaStep, WholeEntryPointsMatchTheCPU) { compareEntryPoints(GetParam(), "own"); }

// The bf16 steps with attention on cuDNN (fp32 attention never uses it).
class CudaStepCudnn : public ::testing::TestWithParam<const char *> {};

TEST_P(CudaStepCudnn, WholeEntryPointsMatchTheCPU) { compareEntryPoints(GetParam(), "cudnn"); }

/// A step whose range checks fail reports the kernel's error after the run,
/// when it runs kernel by kernel, when it is captured and when the graph is
/// replayed; the same graph then runs good indices.
TEST(CudaGraphs, DeferredRangeChecksReportBadIndices) {
  StepProgram program;
  FunctionDesc fn;
  fn.name = "dispatch";
  auto buffer = [&](BufferKind kind, const char *name, DType t, std::vector<int64_t> shape,
                    uint64_t offset) {
    BufferDesc b;
    b.kind = kind, b.name = name, b.dtype = t, b.shape = shape, b.offset = offset;
    b.bytes = uint64_t(dtypeSize(t));
    for (int64_t d : shape)
      b.bytes *= uint64_t(d);
    fn.buffers.push_back(b);
  };
  buffer(BufferKind::Input, "x", DType::F32, {4, 8}, 0);
  buffer(BufferKind::Input, "indices", DType::I32, {4, 2}, 0);
  buffer(BufferKind::Arena, "permuted", DType::F32, {8, 8}, 0);
  buffer(BufferKind::Arena, "offsets", DType::I32, {4}, 256);
  buffer(BufferKind::Arena, "slots", DType::I32, {4, 2}, 512);
  InstrDesc dispatch;
  dispatch.kernel = "moe_dispatch";
  dispatch.inputs = {0, 1};
  dispatch.outputs = {2, 3, 4};
  dispatch.attrs.set("num_experts", AttrValue::ofInt(3));
  fn.instrs.push_back(dispatch);
  fn.arenaBytes = 768;
  program.functions.push_back(fn);
  program.arenaBytes = 768;
  std::unique_ptr<cuda::CudaExecutor> ex;
  Status s = cuda::CudaExecutor::create(program, 0, ex);
  ASSERT_TRUE(s.ok()) << s.message();
  const FunctionDesc &f = program.functions[0];
  std::vector<float> x(32, 1.0f);
  ASSERT_TRUE(ex->toDevice(ex->deviceView(f, 0), x.data()).ok());
  const std::vector<int32_t> good = {0, 1, 2, 1, 0, 2, 1, 0}, bad = {0, 1, 2, 7, 0, 2, 1, 0};
  for (int run = 0; run < 3; ++run) {
    ASSERT_TRUE(ex->toDevice(ex->deviceView(f, 1), bad.data()).ok());
    s = ex->run("dispatch");
    EXPECT_FALSE(s.ok()) << "run " << run;
    EXPECT_NE(s.message().find("moe_dispatch: expert index 7 at row 1, position 1 is outside "
                               "[0, 3)"),
              std::string::npos)
        << s.message();
  }
  ASSERT_TRUE(ex->toDevice(ex->deviceView(f, 1), good.data()).ok());
  s = ex->run("dispatch");
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(ex->graphStatus("dispatch"), "graph");
  std::vector<int32_t> offsets(4);
  ASSERT_TRUE(ex->toHost(ex->deviceView(f, 3), offsets.data()).ok());
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 3, 6, 8}));
}

/// Entry points are captured as CUDA graphs on their second run and
/// replayed after, the MoE micro-step too (grouped expert products, range
/// checks read after the run); with per-expert cuBLAS products, which read
/// their row counts back, it keeps launching kernel by kernel and says why.
/// Graphs give, run after run, the bytes the kernel-by-kernel executor gives.
TEST(CudaGraphs, StepsAreReplayed) {
  for (auto [step, experts] :
       {std::pair{"gemma3_full", "grouped"}, std::pair{"g3moe_lora", "grouped"},
        std::pair{"g3moe_lora", "cublas"}}) {
    SCOPED_TRACE(std::string(step) + ", " + experts);
    StepProgram program;
    Status s = loadStep(stepPath(step), program);
    ASSERT_TRUE(s.ok()) << s.message();
    CpuStep host(program);
    prepare(host);
    setenv("G3MOE_CUDA_ATTENTION", "own", 1);
    setenv("G3MOE_EXPERT_GEMM", experts, 1);
    std::unique_ptr<cuda::CudaExecutor> graphs, kernels;
    ASSERT_TRUE(cuda::CudaExecutor::create(program, 0, graphs).ok());
    setenv("G3MOE_CUDA_GRAPHS", "0", 1);
    ASSERT_TRUE(cuda::CudaExecutor::create(program, 0, kernels).ok());
    unsetenv("G3MOE_CUDA_GRAPHS");
    unsetenv("G3MOE_CUDA_ATTENTION");
    unsetenv("G3MOE_EXPERT_GEMM");
    for (cuda::CudaExecutor *ex : {graphs.get(), kernels.get()}) {
      ASSERT_TRUE(ex->upload(host.state).ok());
      ex->setOneDocumentPerRow(true);
    }
    TensorView ids = host.state.input("input_ids");
    for (int run = 0; run < 4; ++run) {
      // New tokens each run: a replayed graph reads the inputs anew.
      for (int64_t i = 0; i < ids.numel(); ++i)
        ids.i32()[i] = int32_t(3 + (i * 7 + run * 13) % 40);
      for (cuda::CudaExecutor *ex : {graphs.get(), kernels.get()}) {
        ASSERT_TRUE(ex->upload(host.state, BufferKind::Input).ok());
        s = ex->run("train_micro_step");
        ASSERT_TRUE(s.ok()) << s.message();
        s = ex->run("optimizer_step");
        ASSERT_TRUE(s.ok()) << s.message();
      }
      std::vector<float> a, b;
      ASSERT_TRUE(graphs->output("train_micro_step", "loss", a).ok());
      ASSERT_TRUE(kernels->output("train_micro_step", "loss", b).ok());
      EXPECT_EQ(a, b) << "run " << run;
    }
    HostState fromGraphs(program), fromKernels(program);
    ASSERT_TRUE(graphs->download(fromGraphs).ok());
    ASSERT_TRUE(kernels->download(fromKernels).ok());
    for (const ParamDesc &p : program.params) {
      TensorView x = fromGraphs.param(p.name), y = fromKernels.param(p.name);
      EXPECT_EQ(std::memcmp(x.data, y.data, x.bytes()), 0) << p.name;
    }
    EXPECT_EQ(graphs->graphStatus("optimizer_step"), "graph");
    EXPECT_EQ(kernels->graphStatus("optimizer_step"), "kernels");
    std::string micro = graphs->graphStatus("train_micro_step");
    if (std::string(experts) == "grouped")
      EXPECT_EQ(micro, "graph");
    else
      EXPECT_EQ(micro.rfind("kernels: ", 0), 0u) << micro;
    std::printf("  %-12s %-7s train_micro_step runs as %s\n", step, experts, micro.c_str());
  }
}

/// A step that keeps activations in pinned host memory between the forward
/// and the backward runs the same kernels on the same bytes as the step that
/// keeps them on the device: every loss and every updated parameter is the
/// same, bit for bit, kernel by kernel and replayed as a CUDA graph (the
/// copies then run as a branch of the graph beside the kernels).
TEST(CudaOffload, TrainsLikeKeepingActivationsOnTheDevice) {
  for (const char *experts : {"grouped", "cublas"}) {
    SCOPED_TRACE(experts);
    std::vector<StepProgram> programs(2);
    for (auto [i, name] : {std::pair{0, "g3moe_lora"}, std::pair{1, "g3moe_lora_offload"}}) {
      Status s = loadStep(stepPath(name), programs[i]);
      ASSERT_TRUE(s.ok()) << s.message();
    }
    ASSERT_GT(programs[1].hostBytes, 0u);
    std::vector<std::unique_ptr<CpuStep>> hosts;
    std::vector<std::unique_ptr<cuda::CudaExecutor>> gpus(2);
    setenv("G3MOE_EXPERT_GEMM", experts, 1);
    for (int i = 0; i < 2; ++i) {
      hosts.push_back(std::make_unique<CpuStep>(programs[i]));
      prepare(*hosts.back());
      Status s = cuda::CudaExecutor::create(programs[i], 0, gpus[i]);
      ASSERT_TRUE(s.ok()) << s.message();
      ASSERT_TRUE(gpus[i]->upload(hosts[i]->state).ok());
      gpus[i]->setOneDocumentPerRow(true);
    }
    unsetenv("G3MOE_EXPERT_GEMM");
    for (int run = 0; run < 4; ++run) {
      std::vector<float> loss[2];
      for (int i = 0; i < 2; ++i) {
        TensorView ids = hosts[i]->state.input("input_ids");
        for (int64_t t = 0; t < ids.numel(); ++t)
          ids.i32()[t] = int32_t(3 + (t * 7 + run * 13) % 40);
        ASSERT_TRUE(gpus[i]->upload(hosts[i]->state, BufferKind::Input).ok());
        for (const char *fn : {"train_micro_step", "optimizer_step"}) {
          Status s = gpus[i]->run(fn);
          ASSERT_TRUE(s.ok()) << s.message();
        }
        ASSERT_TRUE(gpus[i]->output("train_micro_step", "loss", loss[i]).ok());
      }
      EXPECT_EQ(loss[0], loss[1]) << "run " << run;
    }
    HostState kept(programs[0]), offloaded(programs[1]);
    ASSERT_TRUE(gpus[0]->download(kept).ok());
    ASSERT_TRUE(gpus[1]->download(offloaded).ok());
    for (const ParamDesc &p : programs[0].params) {
      TensorView x = kept.param(p.name), y = offloaded.param(p.name);
      ASSERT_TRUE(y.data) << p.name;
      EXPECT_EQ(std::memcmp(x.data, y.data, x.bytes()), 0) << p.name;
    }
    std::string micro = gpus[1]->graphStatus("train_micro_step");
    if (std::string(experts) == "grouped") {
      EXPECT_EQ(micro, "graph");
    }
    std::printf("  offloading step, %-7s train_micro_step runs as %s\n", experts, micro.c_str());
  }
}

INSTANTIATE_TEST_SUITE_P(
    TinySteps, CudaStep,
    ::testing::Values("gemma3_full_fp32", "g3moe_topk_full_fp32", "g3moe_grouped_full_fp32",
                      "g3moe_lora_fp32", "g3moe_lora_fp32_recompute",
                      "g3moe_lora_fp32_keep_attention", "g3moe_lora_fp32_tiled_layers",
                      "gemma3_full", "g3moe_full", "g3moe_lora", "g3moe_lora_tiled",
                      "g3moe_lora_r16", "g3moe_lora_r16_masked", "g3moe_lora_r16_fp8",
                      "g3moe_lora_offload", "g3moe_lora_fp32_offload_layers"));
INSTANTIATE_TEST_SUITE_P(TinySteps, CudaStepCudnn,
                         ::testing::Values("gemma3_full", "g3moe_full", "g3moe_lora",
                                           "g3moe_lora_r16"));

TEST(CudaExecutor, RefusesAStepLargerThanTheDevice) {
  // A plan no card has: refused before anything is allocated, naming the
  // sizes.
  StepProgram huge;
  huge.arenaBytes = uint64_t(1) << 50;
  std::unique_ptr<cuda::CudaExecutor> ex;
  Status s = cuda::CudaExecutor::create(huge, 0, ex);
  ASSERT_FALSE(s.ok());
  EXPECT_FALSE(ex);
  EXPECT_NE(s.message().find("the step needs 1048576.2 GiB of device memory (arena 1048576.0 GiB"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("free of"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("memory_budget_gb"), std::string::npos) << s.message();
}

} // namespace
