//===- softcap.cuh - Gemma's logit soft cap on the device ------*- CUDA -*-===//
//
// The soft cap c·tanh(l/c) of the LM head (gemm.cu applies it while staging
// a product, kernels_lm_head.cu in its own kernels) and the bf16 pairs that
// carry fp32 logit gradients into tensor-core products.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_SOFTCAP_CUH
#define G3MOE_RUNTIME_CUDA_SOFTCAP_CUH

#include <cuda_bf16.h>

namespace g3rt::cuda {

// The LM head's soft cap c·tanh(l/c) and its derivative, with the CPU's fp32
// operations (explicit roundings, so that no FMA contraction differs). The
// tanh is shared: the capped value is c·t, the derivative 1 - t².
__device__ __forceinline__ float capTanh(float l, float c) { return tanhf(__fdiv_rn(l, c)); }
__device__ __forceinline__ float capValue(float l, float c) { return __fmul_rn(c, capTanh(l, c)); }
/// g·(1 - t²) for t = capTanh(l, c): the gradient through the cap.
__device__ __forceinline__ float capGrad(float g, float t) {
  return __fmul_rn(g, __fsub_rn(1.0f, __fmul_rn(t, t)));
}

/// g as the bf16 pair hi + lo, hi = bf16(g) and lo = bf16(g - hi): about 16
/// significant bits, so that bf16 tensor-core products of the pair with bf16
/// operands come within ~2^-17 of fp32 ones.
__device__ __forceinline__ void splitBf16(float g, __nv_bfloat16 &hi, __nv_bfloat16 &lo) {
  hi = __float2bfloat16(g);
  lo = __float2bfloat16(__fsub_rn(g, __bfloat162float(hi)));
}

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_SOFTCAP_CUH
