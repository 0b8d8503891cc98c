//===- g3moe_bench.cpp - training-step throughput on one GPU --------------===//
//
// Runs a compiled step (train_micro_step + optimizer_step, one micro-batch
// per update) on the CUDA backend with random weights and random tokens, and
// prints one JSON line in the format of ../shared/bench/pytorch_stack.py:
// median step seconds, tokens/s, MFU against 989 TFLOP/s (LoRA model FLOPs =
// 4 * active params * tokens + causal attention, recomputation not counted)
// and the GPU memory the step holds, and whether each entry point ran as a
// CUDA graph. With --profile it then runs the micro step once more
// instruction by instruction and prints the time per kernel.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/parallel.h"
#include "runtime/base/random.h"
#include "runtime/cuda/cuda_executor.h"
#include "runtime/train/derived.h"

#include <cuda_runtime.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <tuple>

using namespace g3rt;

namespace {

/// Seconds spent in a kernel (or kernel call shape) and how many
/// instructions spent them.
using TimeAndCount = std::pair<double, int>;

/// Prints a failure the way every exit of the bench does; main returns
/// the result.
int fail(const Status &s) {
  std::fprintf(stderr, "g3moe-bench: %s\n", s.message().c_str());
  return 1;
}

/// Small random weights: the values do not change the work done. A cheap
/// integer hash per element, in parallel: billions of elements. LoRA B
/// starts at zero, as in training. Derived weights follow from them.
Status fillWeights(const StepProgram &program, HostState &host) {
  for (const ParamDesc &p : program.params) {
    TensorView t = host.param(p.name);
    float scale = p.name.find("lora_B") != std::string::npos ? 0.0f : 0.02f;
    parallelFor(
        t.numel(),
        [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            uint64_t h = uint64_t(i) * 0x9E3779B97F4A7C15ull;
            h ^= h >> 29;
            t.store(i, scale * (float(h & 0xffff) / 32768.0f - 1.0f));
          }
        },
        1 << 16);
  }
  return deriveParameters(host);
}

/// Random tokens, one document per row, each token's target the next one;
/// returns the tokens of a step.
int64_t fillInputs(const StepProgram &program, HostState &host) {
  TensorView ids = host.input("input_ids");
  int64_t T = ids.numel(), V = program.model.vocabSize > 0 ? program.model.vocabSize : 262208;
  for (int64_t i = 0; i < T; ++i) {
    ids.i32()[i] = int32_t(3 + uint64_t(uniformAt(2, 0, 0, uint64_t(i)) * double(V - 3)));
    host.input("positions").i32()[i] = int32_t(i % ids.shape.back());
    host.input("segment_ids").i32()[i] = 1;
  }
  for (int64_t i = 0; i < T; ++i)
    host.input("targets").i32()[i] = i + 1 < T ? ids.i32()[i + 1] : -100;
  host.input("num_items").store(0, float(T));
  if (TensorView key = host.input("rng_key"); key.data)
    key.i64()[0] = 1, key.i64()[1] = 0;
  *host.input("total_steps").i64() = 1000;
  return T;
}

/// The CUDA backend holding the host state.
Status startGpu(const StepProgram &program, const HostState &host,
                std::unique_ptr<cuda::CudaExecutor> &gpu) {
  Status s = cuda::CudaExecutor::create(program, 0, gpu);
  if (s.ok())
    s = gpu->upload(host);
  // Every row is one document, as g3moe-run tells the backend without packing.
  if (s.ok())
    gpu->setOneDocumentPerRow(true);
  return s;
}

/// The wall time of each of `steps` updates (micro step and optimizer step).
Status timeSteps(cuda::CudaExecutor &gpu, int steps, std::vector<double> &times) {
  for (int i = 0; i < steps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    Status s = gpu.run("train_micro_step");
    if (s.ok())
      s = gpu.run("optimizer_step");
    if (!s.ok())
      return s;
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return Status();
}

/// kernel(input shapes and dtypes) -> output shapes: the key that tells
/// apart the calls of one kernel on differently shaped operands.
std::string operandSignature(const FunctionDesc &fn, const InstrDesc &in) {
  std::string sig = in.kernel + "(";
  auto add = [&](const std::vector<uint32_t> &ids) {
    for (size_t j = 0; j < ids.size(); ++j) {
      const BufferDesc &b = fn.buffers[ids[j]];
      sig += (j ? " " : "") + std::string(dtypeName(b.dtype));
      for (int64_t d : b.shape)
        sig += "x" + std::to_string(d);
    }
  };
  add(in.inputs);
  sig += ") -> ";
  add(in.outputs);
  return sig;
}

/// Runs `fn` one instruction at a time, each waited for, so that its time
/// is its own and not overlapped with the next launch.
Status timeInstructions(cuda::CudaExecutor &gpu, const FunctionDesc &fn,
                        std::map<std::string, TimeAndCount> &byKernel,
                        std::map<std::string, TimeAndCount> &byShape) {
  for (size_t i = 0; i < fn.instrs.size(); ++i) {
    auto t0 = std::chrono::steady_clock::now();
    G3RT_RETURN_IF_ERROR(gpu.runInstruction(fn, i));
    auto &slot = byKernel[fn.instrs[i].kernel];
    slot.first += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    slot.second += 1;
    auto &shapeSlot = byShape[operandSignature(fn, fn.instrs[i])];
    shapeSlot.first += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    shapeSlot.second += 1;
  }
  return Status();
}

/// The costliest kernels, then the costliest kernel calls by operand shapes
/// (which calls of a kernel cost), on stderr so that stdout stays one JSON
/// line.
void printProfile(const std::map<std::string, TimeAndCount> &byKernel,
                  const std::map<std::string, TimeAndCount> &byShape, int64_t T) {
  std::vector<std::pair<double, std::string>> rows;
  double sum = 0;
  for (const auto &[name, t] : byKernel) {
    rows.push_back({t.first, name + " x" + std::to_string(t.second)});
    sum += t.first;
  }
  std::sort(rows.rbegin(), rows.rend());
  std::fprintf(stderr, "profile of train_micro_step at %lld tokens: %.1f ms in all\n", (long long)T,
               sum * 1e3);
  for (size_t i = 0; i < rows.size() && i < 40; ++i)
    std::fprintf(stderr, "  %8.1f ms  %s\n", rows[i].first * 1e3, rows[i].second.c_str());
  std::vector<std::tuple<double, int, std::string>> shapes;
  for (const auto &[sig, t] : byShape)
    shapes.push_back({t.first, t.second, sig});
  std::sort(shapes.rbegin(), shapes.rend());
  std::fprintf(stderr, "by operand shapes:\n");
  for (size_t i = 0; i < shapes.size() && i < 60; ++i)
    std::fprintf(stderr, "  %8.2f ms  x%-4d %.3f ms each  %s\n", std::get<0>(shapes[i]) * 1e3,
                 std::get<1>(shapes[i]), std::get<0>(shapes[i]) * 1e3 / std::get<1>(shapes[i]),
                 std::get<2>(shapes[i]).c_str());
}

/// The median update time, leaving out the first two updates where there
/// are more: they warm up (CUDA graph capture, lazy allocations).
double medianStep(const std::vector<double> &times) {
  std::vector<double> timed(times.begin() + std::min<size_t>(2, times.size() - 1), times.end());
  std::sort(timed.begin(), timed.end());
  return timed[timed.size() / 2];
}

/// Active parameters: everything but the (E - k) unused experts per MoE
/// layer, since MFU counts only the work a token needs.
double activeParams(const StepProgram &program) {
  const ModelConfig &model = program.model;
  int64_t H = model.hiddenSize, I = model.intermediateSize, L = model.numHiddenLayers,
          E = model.nRoutedExperts, k = model.numExpertsPerTok,
          firstDense = model.firstKDenseReplace;
  double nTotal = 0;
  for (const ParamDesc &p : program.params)
    if (p.name.find("lora_") == std::string::npos) {
      double n = 1;
      for (int64_t d : p.shape)
        n *= double(d);
      nTotal += n;
    }
  return nTotal - (E > k ? double(E - k) * 3 * H * I * double(L - firstDense) : 0);
}

/// The file comment's LoRA model FLOPs of one update of T tokens, so that
/// the MFU compares with pytorch_stack.py's: causal attention where every
/// sixth layer is global and the others see a 1024-token window.
double stepFlops(const ModelConfig &model, double nActive, int64_t T) {
  int64_t L = model.numHiddenLayers, NH = model.numAttentionHeads, D = model.headDim;
  double attn = 0;
  for (int64_t l = 0; l < L; ++l) {
    bool global = (l + 1) % 6 == 0;
    attn += 12.0 * NH * D * (global ? T / 2.0 : std::min(1024.0, T / 2.0));
  }
  attn *= double(T);
  return 4 * nActive * double(T) + attn;
}

} // namespace

int main(int argc, char **argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: g3moe-bench step.bin [steps=6] [--profile]\n");
    return 2;
  }
  int steps = argc > 2 ? std::atoi(argv[2]) : 6;
  bool profile = argc > 3 && std::string(argv[3]) == "--profile";
  StepProgram program;
  Status s = loadStep(argv[1], program);
  if (!s.ok())
    return fail(s);
  // No host arena: the GPU runs the step, and the arena is tens of gigabytes.
  HostState host(program);
  s = fillWeights(program, host);
  if (!s.ok())
    return fail(s);
  int64_t T = fillInputs(program, host);

  size_t freeBefore = 0, total = 0;
  cudaMemGetInfo(&freeBefore, &total);
  std::unique_ptr<cuda::CudaExecutor> gpu;
  s = startGpu(program, host, gpu);
  if (!s.ok())
    return fail(s);
  size_t freeAfter = 0;
  cudaMemGetInfo(&freeAfter, &total);

  std::vector<double> times;
  s = timeSteps(*gpu, steps, times);
  if (!s.ok())
    return fail(s);
  // The memory the step holds: after the runs, which allocate scratch memory
  // lazily (cuDNN attention plans).
  size_t freeAfterRuns = 0;
  cudaMemGetInfo(&freeAfterRuns, &total);
  freeAfter = std::min(freeAfter, freeAfterRuns);
  std::vector<float> loss;
  (void)gpu->output("train_micro_step", "loss", loss);
  if (profile) {
    std::map<std::string, TimeAndCount> byKernel, byShape;
    s = timeInstructions(*gpu, *program.findFunction("train_micro_step"), byKernel, byShape);
    if (!s.ok())
      return fail(s);
    printProfile(byKernel, byShape, T);
  }
  double step = medianStep(times);

  double nActive = activeParams(program);
  double flops = stepFlops(program.model, nActive, T);
  nlohmann::json row = {{"stack", "g3moe"},
                        {"seq", T},
                        {"lora_dropout", program.training.loraDropout},
                        {"step_s", step},
                        {"tok_s", double(T) / step},
                        {"mfu", flops / step / 989e12},
                        {"gpu_gib", double(freeBefore - freeAfter) / double(1 << 30)},
                        {"arena_gib", double(program.arenaBytes) / double(1 << 30)},
                        {"loss", loss.empty() ? 0.0 : loss[0]},
                        {"micro_step_runs_as", gpu->graphStatus("train_micro_step")},
                        {"optimizer_step_runs_as", gpu->graphStatus("optimizer_step")},
                        {"expert_gemm", gpu->expertProducts()},
                        {"fp8_base", !program.derived.empty()},
                        {"active_params", nActive}};
  std::printf("%s\n", row.dump().c_str());
  return 0;
}
