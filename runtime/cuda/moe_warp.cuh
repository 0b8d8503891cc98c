//===- moe_warp.cuh - a warp per row for the MoE kernels -------*- CUDA -*-===//
//
// Routers and per-row losses work one warp per token, lanes striding over
// the experts, in double like the CPU. Arg-max and top-k reduce (value,
// index) pairs with the CPU's order (larger value first, lower index on
// ties), which is associative, so the chosen experts are the CPU's whatever
// the reduction tree.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_MOE_WARP_CUH
#define G3MOE_RUNTIME_CUDA_MOE_WARP_CUH

#include "runtime/cuda/cuda_context.h"

namespace g3rt::cuda {

constexpr int kWarpsPerBlock = 4; // routers and per-row losses: a warp per row
constexpr unsigned kFull = 0xffffffffu;

/// Blocks of `perBlock` items for `items` items.
inline unsigned blocksFor(int64_t items, int64_t perBlock) {
  return unsigned((items + perBlock - 1) / perBlock);
}

__device__ __forceinline__ double loadD(const void *p, DType t, int64_t i) {
  return double(loadFloat(p, t, i));
}

/// The sum over the warp, in every lane (an xor butterfly).
__device__ __forceinline__ double butterflySum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    v += __shfl_xor_sync(kFull, v, off);
  return v;
}

/// The maximum over the warp, in every lane.
__device__ __forceinline__ double butterflyMax(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    v = fmax(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

// Merges a candidate into (v, i) with the CPU's order: any index beats none,
// then the larger value, then the lower index.
__device__ __forceinline__ void mergeBest(double &v, int &i, double ov, int oi) {
  if (oi < 0)
    return;
  if (i < 0 || ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

// Every lane ends with the same winner (xor butterfly over a commutative,
// associative merge).
__device__ __forceinline__ void warpBest(double &v, int &i) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    double ov = __shfl_xor_sync(kFull, v, off);
    int oi = __shfl_xor_sync(kFull, i, off);
    mergeBest(v, i, ov, oi);
  }
}

// Whether (v, e) comes after (pv, pe) in the top-k order, i.e. is still
// available once (pv, pe) has been picked.
__device__ __forceinline__ bool after(double v, int e, double pv, int pe) {
  return v < pv || (v == pv && e > pe);
}

// A numerically stable softmax's pieces for one row: max and denominator.
struct RowSoftmax {
  double m, z;
};

__device__ __forceinline__ RowSoftmax rowSoftmax(const void *logits, DType t, int64_t row, int E,
                                                 int lane) {
  const int64_t base = row * E;
  double m = -INFINITY;
  for (int e = lane; e < E; e += 32)
    m = fmax(m, loadD(logits, t, base + e));
  m = butterflyMax(m);
  double z = 0;
  for (int e = lane; e < E; e += 32)
    z += exp(loadD(logits, t, base + e) - m);
  return RowSoftmax{m, butterflySum(z)};
}

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_MOE_WARP_CUH
