//===- lowrank_products.h - products with one side of LoRA rank -*- C++ -*-===//
//
// Matrix products of the linear and expert layers where one dimension is a
// LoRA rank (at most 32): x·Aᵀ, u·Bᵀ and their gradients. cuBLAS runs these
// far below the memory bandwidth they are bound by, and the expert versions
// would need the expert offsets on the host; these kernels find each row's
// expert on the device, so they never wait. Used by kernels_dense.cu when
// lowRankFits() accepts the call; everything else goes to cuBLAS.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_LOWRANK_PRODUCTS_H
#define G3MOE_RUNTIME_CUDA_LOWRANK_PRODUCTS_H

#include "runtime/base/dtype.h"

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace g3rt::cuda {

/// The rows of a [rows, ...] operand grouped by expert: expert e owns rows
/// [offsets[e], offsets[e + 1]), and rows from offsets[experts] on belong to
/// no expert (their results are zero). Null `offsets` is one group of all
/// rows. Offsets that are not a valid split (offsets[0] = 0, non-decreasing,
/// at most `rows`) make every result NaN: the kernels never read or write out
/// of bounds for them and do not wait for the device to report them.
struct RowGroups {
  const void *offsets = nullptr;
  DType offsetType = DType::I32;
  int64_t experts = 1;
  int64_t rows = 0;
};

/// The largest rank the kernels take.
constexpr int64_t kMaxLowRank = 32;

/// Whether the low-rank kernels take a product with bf16 operands `a` and
/// `b`, whose narrow dimension is `rank` and whose wide one is `wide`: a
/// rank of 8, 16, 24 or 32 and a wide size that is a multiple of 8 (16-byte
/// rows of bf16).
bool lowRankFits(DType a, DType b, int64_t rank, int64_t wide);

/// Whether lowRankWeightGrad's partial sums fit `scratchBytes` for a
/// [O, I] gradient over these groups (many experts and a wide side may not).
bool lowRankWeightGradFits(const RowGroups &groups, int64_t O, int64_t I, size_t scratchBytes);

/// A LoRA dropout applied inside a low-rank product (--g3moe-fuse-dropout):
/// element i of the masked tensor (seen flat) is kept, times `scale` and
/// rounded to the tensor's type, when bit i % 32 of bits[i / 32] is set
/// (a dropout_mask), else 0. Null `bits` is no mask.
struct DropMask {
  const uint32_t *bits = nullptr;
  float scale = 1;
};

/// y[m, :N] = x[m, :K]·W_eᵀ for the rows m of each expert e, N = rank. W_e
/// is [N, K] (`weightNK`, a forward x·Aᵀ) or [K, N] (a backward dy·B). A
/// non-null `addend` (typed like y; it may be y itself) is added to the fp32
/// product before rounding, and is what rows of no expert get. `mask` drops
/// elements of x [rows, K] as they are read.
cudaError_t lowRankNarrowOutput(cudaStream_t stream, const RowGroups &groups, const void *x,
                                int64_t K, const void *w, bool weightNK, int64_t N,
                                const void *addend, void *y, DType yType,
                                const DropMask &mask = {});

/// y[m, :N] = u[m, :R]·W_eᵀ for the rows m of each expert e, R = rank. W_e
/// is [N, R] (`weightNR`, a forward u·Bᵀ) or [R, N] (a backward du·A). The
/// addend as for lowRankNarrowOutput. `mask` drops elements of the product
/// [rows, N] as keyed_dropout drops a tensor of y's type (rounded, scaled,
/// rounded again) before the addend joins them.
cudaError_t lowRankNarrowInner(cudaStream_t stream, const RowGroups &groups, const void *u,
                               int64_t R, const void *w, bool weightNR, int64_t N,
                               const void *addend, void *y, DType yType, const DropMask &mask = {});

/// dW_e[O, I] = Σ over the rows m of expert e of dy[m, :O]ᵀ·x[m, :I], where O
/// or I is the rank; experts without rows get zeros. Partial sums over
/// blocks of rows go to `scratch` and are added in a fixed order, so the
/// result does not depend on scheduling. Fails with cudaErrorMemoryAllocation
/// when lowRankWeightGradFits does not hold. `mask` drops elements of x
/// [rows, I] as they are read; it needs O to be the rank (else
/// cudaErrorInvalidValue).
cudaError_t lowRankWeightGrad(cudaStream_t stream, const RowGroups &groups, const void *dy,
                              int64_t O, const void *x, int64_t I, void *dw, DType dwType,
                              void *scratch, size_t scratchBytes, const DropMask &mask = {});

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_LOWRANK_PRODUCTS_H
