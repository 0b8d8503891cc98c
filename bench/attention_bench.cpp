//===- attention_bench.cpp - attention kernel throughput on one GPU -------===//
//
// Times the CUDA backend's attention and attention_grad kernels on G3MoE-4B's
// attention shapes (8 query heads, 4 kv heads, head_dim 256, causal; global
// and 1024-token sliding layers) with the implementation G3MOE_CUDA_ATTENTION
// selects, and prints one JSON line per shape: median milliseconds and
// TFLOP/s of the forward (with its lse output) and of the backward as a step
// runs them: from the forward's saved output and statistics
// (--g3moe-save-attention-stats); `bwd_rerun_ms` is the backward without
// them, which reruns the forward first. FLOPs count the visible (query, key)
// pairs: 4 * pairs * heads * d forward, 2.5 times that backward.
//   attention-bench T [T...]
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_executor.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace g3rt;

namespace {

constexpr int64_t kHeads = 8, kKvHeads = 4, kHeadDim = 256;

double visiblePairs(int64_t T, int64_t window) {
  double pairs = 0;
  for (int64_t i = 0; i < T; ++i)
    pairs += double(window ? std::min(i + 1, window) : i + 1);
  return pairs;
}

TensorView deviceTensor(DType t, std::vector<int64_t> shape, std::vector<void *> &owned) {
  TensorView v;
  v.dtype = t;
  v.shape = std::move(shape);
  cudaMalloc(&v.data, v.bytes());
  owned.push_back(v.data);
  return v;
}

// Small values from a hash, as bf16, so softmax rows are not one-hot.
void fillRandom(const TensorView &v, uint64_t seed) {
  std::vector<__nv_bfloat16> h(size_t(v.numel()));
  for (size_t i = 0; i < h.size(); ++i) {
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    x ^= x >> 31;
    h[i] = __float2bfloat16(float(x % 2001) / 1000.0f - 1.0f);
  }
  cudaMemcpy(v.data, h.data(), v.bytes(), cudaMemcpyHostToDevice);
}

double medianMs(cuda::CudaExecutor &ex, const char *name, const KernelAttrs &attrs,
                const std::vector<TensorView> &in, const std::vector<TensorView> &out, Status &s) {
  std::vector<double> ms;
  for (int rep = 0; rep < 6 && s.ok(); ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    s = ex.runKernel(name, attrs, in, out);
    auto t1 = std::chrono::steady_clock::now();
    if (rep > 0) // the first builds cuDNN plans
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  if (ms.empty())
    return 0;
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

} // namespace

int main(int argc, char **argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: attention-bench T [T...]\n");
    return 2;
  }
  const char *impl = std::getenv("G3MOE_CUDA_ATTENTION");
  static const StepProgram empty;
  std::unique_ptr<cuda::CudaExecutor> ex;
  Status s = cuda::CudaExecutor::create(empty, 0, ex);
  if (!s.ok()) {
    std::fprintf(stderr, "attention-bench: %s\n", s.message().c_str());
    return 1;
  }
  for (int a = 1; a < argc; ++a) {
    const int64_t T = std::atoll(argv[a]);
    for (int64_t window : {int64_t(0), int64_t(1024)}) {
      std::vector<void *> owned;
      TensorView q = deviceTensor(DType::BF16, {1, T, kHeads, kHeadDim}, owned),
                 k = deviceTensor(DType::BF16, {1, T, kKvHeads, kHeadDim}, owned),
                 v = deviceTensor(DType::BF16, {1, T, kKvHeads, kHeadDim}, owned),
                 seg = deviceTensor(DType::I32, {1, T}, owned),
                 o = deviceTensor(DType::BF16, {1, T, kHeads, kHeadDim}, owned),
                 out = deviceTensor(DType::BF16, {1, T, kHeads, kHeadDim}, owned),
                 lse = deviceTensor(DType::F32, {1, kHeads, T}, owned),
                 dq = deviceTensor(DType::BF16, {1, T, kHeads, kHeadDim}, owned),
                 dk = deviceTensor(DType::BF16, {1, T, kKvHeads, kHeadDim}, owned),
                 dv = deviceTensor(DType::BF16, {1, T, kKvHeads, kHeadDim}, owned);
      fillRandom(q, 1);
      fillRandom(k, 2);
      fillRandom(v, 3);
      fillRandom(o, 4); // the incoming gradient
      std::vector<int32_t> ones(size_t(T), 1);
      cudaMemcpy(seg.data, ones.data(), ones.size() * 4, cudaMemcpyHostToDevice);
      KernelAttrs attrs;
      attrs.set("scale", AttrValue::ofFloat(1.0 / 16.0));
      if (window)
        attrs.set("sliding_window", AttrValue::ofInt(window));
      double fwd = medianMs(*ex, "attention", attrs, {q, k, v, seg}, {out, lse}, s);
      double bwd =
          medianMs(*ex, "attention_grad", attrs, {q, k, v, seg, o, out, lse}, {dq, dk, dv}, s);
      double rerun = medianMs(*ex, "attention_grad", attrs, {q, k, v, seg, o}, {dq, dk, dv}, s);
      for (void *p : owned)
        cudaFree(p);
      if (!s.ok()) {
        std::fprintf(stderr, "attention-bench: %s\n", s.message().c_str());
        return 1;
      }
      const double flops = 4 * visiblePairs(T, window) * kHeads * kHeadDim;
      std::printf("{\"impl\": \"%s\", \"seq\": %lld, \"window\": %lld, \"fwd_ms\": %.3f, "
                  "\"fwd_tflops\": %.1f, \"bwd_ms\": %.3f, \"bwd_tflops\": %.1f, "
                  "\"bwd_rerun_ms\": %.3f}\n",
                  impl ? impl : "auto", (long long)T, (long long)window, fwd, flops / fwd / 1e9,
                  bwd, 2.5 * flops / bwd / 1e9, rerun);
      std::fflush(stdout);
    }
  }
  return 0;
}
