//===- moe_rows.h - row access of the CPU MoE kernels -----------*- C++ -*-===//
//
// What the CPU's MoE kernel files (kernels_moe_routers, kernels_moe_dispatch,
// kernels_moe_losses) share: index range checks (whose messages the CUDA
// backend's device checks repeat), rows widened to fp32 or double, and a
// row softmax in double.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CPU_MOE_ROWS_H
#define G3MOE_RUNTIME_CPU_MOE_ROWS_H

#include "runtime/kernels/moe_checks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace g3rt::cpu {

constexpr double kInf = std::numeric_limits<double>::infinity();
/// Tokens per parallel chunk: routers do O(E) work per token, so small chunks
/// would cost more in scheduling than they save.
constexpr int64_t kTokenGrain = 32;

/// Every entry of the [rows, k] index tensor `idx` lies in [0, limit).
inline Status checkIndexRange(const KernelArgs &args, const TensorView &idx, int64_t rows,
                              int64_t k, int64_t limit, const char *what) {
  const int32_t *p = idx.i32();
  for (int64_t n = 0; n < rows; ++n)
    for (int64_t j = 0; j < k; ++j) {
      int32_t v = p[n * k + j];
      if (v < 0 || v >= limit)
        return args.fail(std::string(what) + " " + std::to_string(v) + " at row " + checks::str(n) +
                         ", position " + checks::str(j) + " is outside [0, " + checks::str(limit) +
                         ")");
    }
  return Status();
}

/// Rows of a float tensor widened to fp32 without copying f32 tensors whole.
inline void loadRow(const TensorView &t, int64_t row, int64_t width, float *dst) {
  if (t.dtype == DType::F32) {
    std::memcpy(dst, t.f32() + row * width, size_t(width) * 4);
    return;
  }
  for (int64_t h = 0; h < width; ++h)
    dst[h] = t.load(row * width + h);
}

inline void storeRow(const TensorView &t, int64_t row, int64_t width, const float *src) {
  if (t.dtype == DType::F32) {
    std::memcpy(t.f32() + row * width, src, size_t(width) * 4);
    return;
  }
  for (int64_t h = 0; h < width; ++h)
    t.store(row * width + h, src[h]);
}

inline void loadRowD(const TensorView &t, int64_t row, int64_t width, double *dst) {
  for (int64_t h = 0; h < width; ++h)
    dst[h] = double(t.load(row * width + h));
}

/// Softmax of `s[0..E)` in double, written to `p`; returns logsumexp.
inline double softmaxRow(const double *s, int64_t E, double *p) {
  double m = -kInf;
  for (int64_t e = 0; e < E; ++e)
    m = std::max(m, s[e]);
  double z = 0;
  for (int64_t e = 0; e < E; ++e)
    z += (p[e] = std::exp(s[e] - m));
  for (int64_t e = 0; e < E; ++e)
    p[e] /= z;
  return m + std::log(z);
}

} // namespace g3rt::cpu

#endif // G3MOE_RUNTIME_CPU_MOE_ROWS_H
