//===- dense_ops.h - fp32 operands and products of the CPU ------*- C++ -*-===//
//
// What the CPU's dense kernel files (kernels_dense, kernels_norms,
// kernels_lm_head) share. Every matrix product is brought to one form,
// C = A·Bᵀ with A and B row-major so that each output is a contiguous dot
// product (gemmNT, dense_ops.cpp); the operands are widened to fp32 once and
// transposed where the product needs it. Outputs are split across threads by
// whole elements (or whole rows), and every reduction runs in an order fixed
// by the shapes alone, so results do not depend on the thread count.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CPU_DENSE_OPS_H
#define G3MOE_RUNTIME_CPU_DENSE_OPS_H

#include "runtime/base/parallel.h"
#include "runtime/kernels/dense_checks.h"
#include "runtime/kernels/kernel.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace g3rt::cpu {

/// Multiply-adds below which a product runs on the calling thread: parallelFor
/// starts fresh threads per call, costing tens of microseconds.
constexpr int64_t kMinParallelFlops = int64_t(1) << 20;
/// Elements below which widening and narrowing run inline.
constexpr int64_t kElementGrain = int64_t(1) << 15;

/// Widens elements [begin, end) of a float tensor into out[begin, end).
inline void loadRange(const TensorView &t, int64_t begin, int64_t end, float *out) {
  switch (t.dtype) {
  case DType::F32:
    std::memcpy(out + begin, t.f32() + begin, size_t(end - begin) * sizeof(float));
    return;
  case DType::BF16: {
    const uint16_t *p = static_cast<const uint16_t *>(t.data);
    for (int64_t i = begin; i < end; ++i)
      out[i] = bf16ToFloat(p[i]);
    return;
  }
  default:
    for (int64_t i = begin; i < end; ++i)
      out[i] = t.load(i);
    return;
  }
}

/// `t` seen from its element `from` on (the shape unchanged): where
/// loadElements and storeElements start.
inline TensorView elementsFrom(const TensorView &t, int64_t from) {
  TensorView part = t;
  part.data = static_cast<uint8_t *>(t.data) + size_t(from) * dtypeSize(t.dtype);
  return part;
}

/// Widens elements [begin, begin + n) of a float tensor into out[0, n).
inline void loadElements(const TensorView &t, int64_t begin, int64_t n, float *out) {
  loadRange(elementsFrom(t, begin), 0, n, out);
}

/// Rounds in[begin, end) into elements [begin, end) of a float tensor.
inline void storeRange(const TensorView &t, int64_t begin, int64_t end, const float *in) {
  switch (t.dtype) {
  case DType::F32:
    std::memcpy(t.f32() + begin, in + begin, size_t(end - begin) * sizeof(float));
    return;
  case DType::BF16: {
    uint16_t *p = static_cast<uint16_t *>(t.data);
    for (int64_t i = begin; i < end; ++i)
      p[i] = floatToBF16(in[i]);
    return;
  }
  default:
    for (int64_t i = begin; i < end; ++i)
      t.store(i, in[i]);
    return;
  }
}

/// Rounds in[0, n) into elements [begin, begin + n) of a float tensor.
inline void storeElements(const TensorView &t, int64_t begin, int64_t n, const float *in) {
  storeRange(elementsFrom(t, begin), 0, n, in);
}

/// tables are large).
inline std::vector<float> widen(const TensorView &t) {
  std::vector<float> out(size_t(t.numel()));
  parallelFor(
      t.numel(), [&](int64_t b, int64_t e) { loadRange(t, b, e, out.data()); }, kElementGrain);
  return out;
}

/// scratch buffer rounded into it by commit().
class FloatOutput {
public:
  explicit FloatOutput(const TensorView &t) : view_(t) {
    if (t.dtype == DType::F32) {
      ptr_ = t.f32();
    } else {
      scratch_.assign(size_t(t.numel()), 0.0f);
      ptr_ = scratch_.data();
    }
  }
  float *data() const { return ptr_; }
  void zero() const { std::fill(ptr_, ptr_ + view_.numel(), 0.0f); }
  void commit() const {
    if (view_.dtype == DType::F32)
      return;
    parallelFor(
        view_.numel(), [&](int64_t b, int64_t e) { storeRange(view_, b, e, ptr_); }, kElementGrain);
  }

private:
  TensorView view_;
  std::vector<float> scratch_;
  float *ptr_ = nullptr;
};

/// A product's addend (null: none) in fp32, read before the product is
/// written (the two may share a buffer); empty when there is none.
inline std::vector<float> readAddend(const TensorView *addend) {
  return addend ? widen(*addend) : std::vector<float>();
}

/// Adds the addend to the fp32 result, which is then rounded once.
inline void addAddend(const std::vector<float> &a, const FloatOutput &y) {
  float *p = y.data();
  for (size_t i = 0; i < a.size(); ++i)
    p[i] += a[i];
}

inline int64_t loadIndex(const TensorView &t, int64_t i) {
  return t.dtype == DType::I64 ? t.i64()[i] : int64_t(t.i32()[i]);
}

/// C[i·ldc + j] = Σ_k A[i·lda + k]·B[j·ldb + k] for i < M, j < N, on the
/// worker threads; the same values for any thread count.
void gemmNT(const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
            int64_t M, int64_t N, int64_t K);

/// Reads expert offsets [E + 1] and checks that they partition a prefix of
/// the M rows: start at 0, never decrease, end at most at M.
Status readExpertOffsets(const KernelArgs &args, const TensorView &t, int64_t experts, int64_t rows,
                         std::vector<int64_t> &offsets);

/// The [cols, rows] transpose of a row-major [rows, cols] matrix whose rows
/// are `ld` apart.
std::vector<float> transpose(const float *src, int64_t rows, int64_t cols, int64_t ld);

/// A product's keep-mask (dense_checks.h's ProductDropout) as keyed_dropout
/// applies it: element `at` holding `v` (of a tensor of `type`) is kept as
/// v times the dropout scale, rounded to the type, or dropped to 0.
struct KeepMask {
  explicit KeepMask(const checks::ProductDropout &drop)
      : bits(reinterpret_cast<const uint32_t *>(drop.mask->i32())),
        scale(checks::dropoutScale(drop.p)) {}
  float operator()(int64_t at, float v, DType type) const {
    return bits[at >> 5] >> (at & 31) & 1u ? roundedAs(type, v * scale) : 0.0f;
  }
  const uint32_t *bits;
  float scale;
};

/// Adds an expert product's low-rank term to the fp32 result [M, cols]
/// before the addend: rows of expert e get h·L_eᵀ, L_e the [cols, r] slice
/// of the lowrank weight (`rankLast`) or the transpose of its [r, cols] one.
/// With a `drop` mask, the term is rounded to `type` and dropped as
/// keyed_dropout drops a tensor of that type first.
void addLowRank(const checks::MatmulShape &s, const std::vector<int64_t> &offsets, bool rankLast,
                const FloatOutput &y, int64_t cols, const checks::ProductDropout &drop = {},
                DType type = DType::F32);

} // namespace g3rt::cpu

#endif // G3MOE_RUNTIME_CPU_DENSE_OPS_H
