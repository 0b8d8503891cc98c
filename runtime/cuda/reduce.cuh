//===- reduce.cuh - warp and block sums of CUDA kernels --------*- CUDA -*-===//
//
// The sums and maxima of the dense kernel files' row reductions
// (kernels_norms, kernels_lm_head, kernels_fp8): their combination order is fixed by the block size
// alone, so the results are reproducible run to run.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_REDUCE_CUH
#define G3MOE_RUNTIME_CUDA_REDUCE_CUH

namespace g3rt::cuda {

template <typename T> __device__ __forceinline__ T warpSum(T v) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

/// The block-wide sum, returned to every thread. The combination order is
/// fixed by the block size alone. blockDim.x must be a multiple of 32.
template <typename T> __device__ T blockSum(T v) {
  __shared__ T buf[33];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warpSum(v);
  if (lane == 0)
    buf[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? buf[lane] : T(0);
    w = warpSum(w);
    if (lane == 0)
      buf[32] = w;
  }
  __syncthreads();
  // A following call writes buf[0..31] only after its first barrier, which
  // every thread reaches after reading buf[32] here.
  return buf[32];
}

/// The maximum over the warp, in lane 0.
__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
  return v;
}

/// The block-wide maximum, returned to every thread (blockSum's scheme).
/// blockDim.x must be a multiple of 32.
__device__ inline float blockMax(float v) {
  __shared__ float buf[33];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warpMax(v);
  if (lane == 0)
    buf[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < warps ? buf[lane] : -INFINITY;
    w = warpMax(w);
    if (lane == 0)
      buf[32] = w;
  }
  __syncthreads();
  return buf[32];
}

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_REDUCE_CUH
