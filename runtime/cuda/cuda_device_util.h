//===- cuda_device_util.h - device-side element access ----------*- C++ -*-===//
//
// Included by cuda_context.h: the inline device functions every CUDA kernel
// uses to read and write buffers of any element type with the same rounding as
// the CPU reference (runtime/base/dtype.h).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_CUDA_DEVICE_UTIL_H
#define G3MOE_RUNTIME_CUDA_CUDA_DEVICE_UTIL_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

namespace g3rt::cuda {

__device__ __forceinline__ float loadFloat(const void *p, DType t, int64_t i) {
  switch (t) {
  case DType::F32:
    return static_cast<const float *>(p)[i];
  case DType::BF16:
    return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
  case DType::F16:
    return __half2float(static_cast<const __half *>(p)[i]);
  case DType::I32:
    return float(static_cast<const int32_t *>(p)[i]);
  case DType::I64:
    return float(static_cast<const int64_t *>(p)[i]);
  case DType::F8E4M3:
    return float(static_cast<const __nv_fp8_e4m3 *>(p)[i]);
  }
  return 0.f;
}

__device__ __forceinline__ void storeFloat(void *p, DType t, int64_t i, float v) {
  switch (t) {
  case DType::F32:
    static_cast<float *>(p)[i] = v;
    return;
  case DType::BF16:
    // __float2bfloat16 rounds to nearest even, as floatToBF16 does.
    static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16(v);
    return;
  case DType::F16:
    static_cast<__half *>(p)[i] = __float2half(v);
    return;
  case DType::I32:
    static_cast<int32_t *>(p)[i] = int32_t(v);
    return;
  case DType::I64:
    static_cast<int64_t *>(p)[i] = int64_t(v);
    return;
  case DType::F8E4M3:
    // Round to nearest even, saturating to ±448, as floatToE4M3 does.
    static_cast<__nv_fp8_storage_t *>(p)[i] = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
    return;
  }
}

/// Elements 4j .. 4j+3 in one access for f32 and bf16 (the buffer must be
/// 16-byte aligned), element by element for other types.
__device__ __forceinline__ float4 loadFloat4(const void *p, DType t, int64_t j) {
  if (t == DType::F32)
    return static_cast<const float4 *>(p)[j];
  if (t == DType::BF16) {
    uint2 raw = static_cast<const uint2 *>(p)[j];
    float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.x));
    float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.y));
    return {lo.x, lo.y, hi.x, hi.y};
  }
  return {loadFloat(p, t, 4 * j), loadFloat(p, t, 4 * j + 1), loadFloat(p, t, 4 * j + 2),
          loadFloat(p, t, 4 * j + 3)};
}

/// Stores elements 4j .. 4j+3, rounding as storeFloat does.
__device__ __forceinline__ void storeFloat4(void *p, DType t, int64_t j, float4 v) {
  if (t == DType::F32) {
    static_cast<float4 *>(p)[j] = v;
  } else if (t == DType::BF16) {
    __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    uint2 raw;
    raw.x = *reinterpret_cast<const unsigned *>(&lo);
    raw.y = *reinterpret_cast<const unsigned *>(&hi);
    static_cast<uint2 *>(p)[j] = raw;
  } else {
    storeFloat(p, t, 4 * j, v.x);
    storeFloat(p, t, 4 * j + 1, v.y);
    storeFloat(p, t, 4 * j + 2, v.z);
    storeFloat(p, t, 4 * j + 3, v.w);
  }
}

/// v rounded to float type t and back, as storing and loading it would.
__device__ __forceinline__ float roundFloat(DType t, float v) {
  if (t == DType::BF16)
    return __bfloat162float(__float2bfloat16(v));
  return t == DType::F16 ? __half2float(__float2half(v)) : v;
}

__device__ __forceinline__ int64_t loadIndex(const void *p, DType t, int64_t i) {
  return t == DType::I64 ? static_cast<const int64_t *>(p)[i]
                         : int64_t(static_cast<const int32_t *>(p)[i]);
}

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_CUDA_DEVICE_UTIL_H
