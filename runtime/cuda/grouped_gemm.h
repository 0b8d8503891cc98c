//===- grouped_gemm.h - all experts' products in one launch -----*- C++ -*-===//
//
// The expert layers' wide products (x·W_eᵀ forward, dy·W_e for the input
// gradient) over a buffer whose rows are grouped by expert. One kernel does
// every expert: the grid is sized for the worst split of rows into tiles and
// each block reads the expert offsets on the device (row_groups.cuh), so the
// host never waits for the routing and the launch can be captured in a CUDA
// graph. bf16 operands run on the tensor cores (wgmma, fp32 accumulate;
// Hopper only), small products of other shapes on a plain fp32 kernel, and
// fp8_base's e4m3 products on the same tensor-core kernel.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_GROUPED_GEMM_H
#define G3MOE_RUNTIME_CUDA_GROUPED_GEMM_H

#include "runtime/cuda/lowrank_products.h"

namespace g3rt::cuda {

/// Whether groupedExpertProduct takes a product of M rows with operands of
/// types `x` and `w` into `y`, inner size K and N output columns: on the
/// tensor cores, bf16 operands, a bf16 or f32 result and K and N multiples
/// of 8 (16-byte rows); on the plain kernel, float types and a side of at
/// most 64 or at most 2^28 multiply-adds.
bool groupedProductFits(DType x, DType w, DType y, int64_t M, int64_t K, int64_t N);

/// A LoRA term of an expert product: h [rows, rank] and L [E, N, rank]
/// (the forward's B) or [E, rank, N] (the input gradient's A), bf16. A
/// `mask` drops the term (an input gradient through A of a dropped input):
/// each element is rounded to y's type and dropped as keyed_dropout drops
/// it before it joins the sum.
struct LowRankTerm {
  const void *h = nullptr, *l = nullptr;
  int64_t rank = 0;
  DropMask mask;
};

/// Whether groupedExpertProduct adds a low-rank term of `rank` to the
/// product in its accumulation: the product on the tensor cores, bf16 h and
/// L, and a rank of 8, 16, 24 or 32; a `masked` term also needs N to be a
/// multiple of 32 (a tile's rows then start on a mask word).
bool groupedLowRankFits(DType x, DType w, DType y, int64_t K, int64_t N, DType h, DType l,
                        int64_t rank, bool masked = false);

/// y[m, :N] = x[m, :K]·W_eᵀ (+ h[m]·L_eᵀ) for the rows m of each expert e,
/// where W is [E, N, K] (`weightNK`, the forward product) or [E, K, N]
/// (dy·W_e, the input gradient), and L likewise. A non-null `addend` (typed
/// like y; it may be y itself) is added to the fp32 product before
/// rounding, and is what rows past the last expert get (zeros without one).
/// Offsets that are not a valid split make every row NaN. On the tensor
/// cores all pointers must be 16-byte aligned; a low-rank term
/// groupedLowRankFits does not take fails with cudaErrorInvalidValue.
cudaError_t groupedExpertProduct(cudaStream_t stream, const RowGroups &groups, const void *x,
                                 DType xType, int64_t K, const void *w, DType wType, bool weightNK,
                                 int64_t N, const void *addend, void *y, DType yType,
                                 const LowRankTerm &low = {});

/// The e4m3 operands of groupedE4M3Product: q [rows, K] with one fp32 scale
/// per row (rowScale [rows]), and the weight W [E, N, K] with one per output
/// column (colScale [E, N]), as quantize_fp8 writes them.
struct E4M3Operands {
  const void *q = nullptr;
  const float *rowScale = nullptr;
  const void *w = nullptr;
  const float *colScale = nullptr;
};

/// Whether groupedE4M3Product takes a product of inner size K into N
/// columns of `y`: bf16 or f32 results, K a multiple of 16 and N of 8.
bool groupedE4M3Fits(DType y, int64_t K, int64_t N);

/// groupedE4M3Fits, and a low-rank term as groupedLowRankFits takes it.
bool groupedE4M3LowRankFits(DType y, int64_t K, int64_t N, DType h, DType l, int64_t rank,
                            bool masked = false);

/// y[m, :N] = (q[m]·W_eᵀ)·rowScale[m]·colScale[e] (+ h[m]·L_eᵀ) for the rows
/// m of each expert e, on the tensor cores' e4m3 products (fp32
/// accumulation; Hopper only): the scales multiply the fp32 product, then
/// the low-rank term (L [E, N, r] with `lowNK`, else [E, r, N]) joins it,
/// then the addend, rounded once. Rows past the last expert, invalid
/// offsets and alignment as for groupedExpertProduct.
cudaError_t groupedE4M3Product(cudaStream_t stream, const RowGroups &groups, const E4M3Operands &op,
                               int64_t K, int64_t N, const void *addend, void *y, DType yType,
                               const LowRankTerm &low = {}, bool lowNK = true);

/// Whether groupedWeightGrad takes dW [E, O, I] over M rows: float types
/// and a side of at most 64 or at most 2^28 multiply-adds (the plain
/// kernel; large weight gradients run per expert on cuBLAS).
bool groupedWeightGradFits(DType dy, DType x, DType dw, int64_t M, int64_t O, int64_t I);

/// dW_e[O, I] = Σ over the rows m of expert e of dy[m, :O]ᵀ·x[m, :I], in
/// fp32; experts without rows get zeros, offsets that are not a valid split
/// NaN everywhere.
cudaError_t groupedWeightGrad(cudaStream_t stream, const RowGroups &groups, const void *dy,
                              DType dyType, int64_t O, const void *x, DType xType, int64_t I,
                              void *dw, DType dwType);

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_GROUPED_GEMM_H
