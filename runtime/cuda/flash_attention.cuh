//===- flash_attention.cuh - own attention kernels' parts ------*- CUDA -*-===//
//
// What the two implementations of the own flash-attention kernels share: the
// launch arguments, the mask and the score as the CPU reference
// (runtime/cpu/kernels_attention.cpp) computes them, and their entry points
// for kernels_attention.cu. Both tile the problem the same way: a block owns
// a tile of query rows of one head (in the backward's pass B, a tile of keys
// of one kv head), streams the other side's tiles through shared memory and
// keeps an online softmax in fp32; tiles whose every (query, key) pair is
// masked are skipped before they are loaded.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_FLASH_ATTENTION_CUH
#define G3MOE_RUNTIME_CUDA_FLASH_ATTENTION_CUH

#include "runtime/cuda/cuda_context.h"
#include "runtime/kernels/kernel_checks.h"

#include <cmath>
#include <string>

namespace g3rt::cuda {

inline int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr float kNegInf = -INFINITY;

/// The launch arguments of every attention kernel.
struct AttnArgs {
  const void *q, *k, *v, *dout, *seg;
  DType qt, kt, vt, dt, segt;
  void *o, *dq, *dk, *dv;
  DType ot, dqt, dkt, dvt;
  float *stats; // per (b, h, i): row max, denominator, D (pass A -> pass B)
  float *lse;   // the forward's optional [B, nh, T] logsumexp output, or null
  int T, nh, nkv, d, group;
  int window; // 0: none (also when it cannot bind: window >= T)
  float scale, cap;
  bool capped;
  bool vec8; // tensor-core path: rows can be read as 16-byte vectors
};

// The score exactly as the CPU's AttnProblem::score finishes it.
__device__ __forceinline__ float finishScore(const AttnArgs &p, float dot) {
  float s = dot * p.scale;
  if (p.capped)
    s = p.cap * tanhf(s / p.cap);
  return s;
}

// d(capped score)/d(raw score) from the capped score: 1 - tanh^2.
__device__ __forceinline__ float capSlope(const AttnArgs &p, float s) {
  if (!p.capped)
    return 1.0f;
  float t = s / p.cap;
  return 1.0f - t * t;
}

__device__ __forceinline__ bool visible(const AttnArgs &p, int i, int j, long long segI,
                                        long long segJ) {
  return i < p.T && j <= i && (p.window == 0 || i - j < p.window) && segJ != 0 && segJ == segI;
}

/// Kernels above 48 KB of dynamic shared memory must ask for it.
template <typename Kernel> Status allowSmem(const KernelArgs &args, Kernel kernel, size_t bytes) {
  cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (e != cudaSuccess)
    return cudaFailure(args, e, "reserving shared memory for attention");
  return Status();
}

/// attention on CUDA cores in fp32, for any float type (attention_fp32.cu).
Status launchAttentionFp32(const KernelArgs &args, const checks::AttentionShape &prob,
                           const AttnArgs &a);
/// attention_grad on CUDA cores in fp32 (attention_fp32.cu).
Status launchAttentionGradFp32(const KernelArgs &args, const checks::AttentionShape &prob,
                               const AttnArgs &a);
/// attention on tensor cores, for bf16 q, k and v (attention_mma.cu).
Status launchAttentionMma(const KernelArgs &args, const checks::AttentionShape &prob,
                          const AttnArgs &a);
/// attention_grad on tensor cores, for bf16 q, k, v and do (attention_mma.cu).
Status launchAttentionGradMma(const KernelArgs &args, const checks::AttentionShape &prob,
                              const AttnArgs &a);

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_FLASH_ATTENTION_CUH
