//===- GpuTesting.h - helpers for CUDA-vs-CPU tests -------------*- C++ -*-===//
//
// The tolerance test every GPU comparison uses, a runner that gives one
// kernel the same inputs on the CPU reference and on the CUDA backend, and
// the random host tensors and environment settings the tests share.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_TEST_GPU_GPUTESTING_H
#define G3MOE_TEST_GPU_GPUTESTING_H

#include "runtime/base/random.h"
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/cuda/cuda_executor.h"
#include "runtime/kernels/kernel.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <vector>

namespace g3moe_test {

using namespace g3rt;

/// Largest error of `got` against `want` in units of the tolerance; > 1 fails.
/// With `sizes`, an element's relative tolerance is of the larger of |want|
/// and its size: for results that round a part larger than the whole (a
/// product rounded before a term that cancels it joins).
inline double errorRatio(const TensorView &want, const std::vector<uint8_t> &gotBytes,
                         const std::vector<double> &sizes = {}) {
  TensorView got = want;
  got.data = const_cast<uint8_t *>(gotBytes.data());
  bool exact = !isFloat(want.dtype);
  double rtol = want.dtype == DType::F32 ? 2e-3 : 2e-2;
  double atol = want.dtype == DType::F32 ? 2e-4 : 2e-2;
  double worst = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    double a = want.load(i), b = got.load(i);
    if (exact) {
      if (a != b)
        return 1e9;
      continue;
    }
    if (std::isnan(a) != std::isnan(b))
      return 1e9;
    double size = sizes.empty() ? std::fabs(a) : std::max(std::fabs(a), sizes[size_t(i)]);
    worst = std::max(worst, std::fabs(a - b) / (atol + rtol * size));
  }
  return worst;
}

/// A host tensor of zeros whose bytes live in `bytes`.
inline TensorView hostTensor(DType t, std::vector<int64_t> shape, std::vector<uint8_t> &bytes) {
  TensorView v;
  v.dtype = t;
  v.shape = std::move(shape);
  bytes.assign(v.bytes(), 0);
  v.data = bytes.data();
  return v;
}

/// Sets an environment variable for its lifetime (read when executors are
/// created), also when an assertion leaves the test early.
struct ScopedEnv {
  const char *name;
  ScopedEnv(const char *n, const char *value) : name(n) { setenv(n, value, 1); }
  ~ScopedEnv() { unsetenv(name); }
};

/// Host tensors of uniform values in [-1, 1), each from its own stream.
struct RandomTensors {
  uint64_t stream;
  explicit RandomTensors(uint64_t first) : stream(first) {}
  TensorView operator()(DType t, std::vector<int64_t> shape, std::vector<uint8_t> &bytes) {
    TensorView v = hostTensor(t, std::move(shape), bytes);
    ++stream;
    for (int64_t i = 0; i < v.numel(); ++i)
      v.store(i, 2 * uniformAt(9, 0, stream, uint64_t(i)) - 1);
    return v;
  }
};

/// Runs CUDA kernel `name` (with G3MOE_CUDA_ATTENTION=`attention` when
/// given) on device copies of `in` and copies its outputs into `out`.
inline Status runOnGpu(const char *name, const KernelAttrs &attrs,
                       const std::vector<TensorView> &in, const std::vector<TensorView> &out,
                       const char *attention = nullptr) {
  if (attention)
    setenv("G3MOE_CUDA_ATTENTION", attention, 1);
  static const StepProgram empty;
  std::unique_ptr<cuda::CudaExecutor> ex;
  Status st = cuda::CudaExecutor::create(empty, 0, ex);
  if (attention)
    unsetenv("G3MOE_CUDA_ATTENTION");
  if (!st.ok())
    return st;
  std::vector<void *> allocations;
  auto toGpu = [&](const TensorView &h, bool copy) {
    TensorView d = h;
    cudaMalloc(&d.data, std::max<size_t>(h.bytes(), 4));
    allocations.push_back(d.data);
    if (copy)
      cudaMemcpy(d.data, h.data, h.bytes(), cudaMemcpyHostToDevice);
    return d;
  };
  std::vector<TensorView> din, dout;
  for (const TensorView &t : in)
    din.push_back(toGpu(t, true));
  for (const TensorView &t : out)
    dout.push_back(toGpu(t, false));
  st = ex->runKernel(name, attrs, din, dout);
  for (size_t i = 0; st.ok() && i < out.size(); ++i)
    cudaMemcpy(out[i].data, dout[i].data, out[i].bytes(), cudaMemcpyDeviceToHost);
  for (void *p : allocations)
    cudaFree(p);
  return st;
}

/// Runs CPU kernel `name` on `in` into `out`.
inline Status runOnCpu(const char *name, const KernelAttrs &attrs,
                       const std::vector<TensorView> &in, const std::vector<TensorView> &out) {
  KernelArgs args;
  args.name = name;
  args.attrs = &attrs;
  args.inputs = in;
  args.outputs = out;
  return cpu::findCpuKernel(name)(args);
}

/// Runs CPU kernel `name` into `out`, then the CUDA kernel (runOnGpu) and
/// returns, per output, errorRatio of the GPU's result against the CPU's.
/// `gpu` receives the CUDA kernel's status; the ratios are empty when either
/// side failed.
inline std::vector<double> gpuErrorsAgainstCpu(const char *name, const KernelAttrs &attrs,
                                               const std::vector<TensorView> &in,
                                               const std::vector<TensorView> &out, Status &gpu,
                                               const char *attention = nullptr) {
  gpu = runOnCpu(name, attrs, in, out);
  if (!gpu.ok())
    return {};
  std::vector<std::vector<uint8_t>> bytes(out.size());
  std::vector<TensorView> got;
  for (size_t i = 0; i < out.size(); ++i)
    got.push_back(hostTensor(out[i].dtype, out[i].shape, bytes[i]));
  gpu = runOnGpu(name, attrs, in, got, attention);
  std::vector<double> ratios;
  for (size_t i = 0; gpu.ok() && i < out.size(); ++i)
    ratios.push_back(errorRatio(out[i], bytes[i]));
  return ratios;
}

} // namespace g3moe_test

#endif // G3MOE_TEST_GPU_GPUTESTING_H
