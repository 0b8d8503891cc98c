//===- expert_rows.h - expert row ranges read on the host -------*- C++ -*-===//
//
// What the CUDA expert products share: the offsets read back where they
// are issued per expert from the host (the one place those kernels wait for
// the device), the rows past the last expert, fused dropouts and low-rank
// terms added as products of their own.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_EXPERT_ROWS_H
#define G3MOE_RUNTIME_CUDA_EXPERT_ROWS_H

#include "runtime/cuda/lowrank_products.h"
#include "runtime/kernels/dense_checks.h"
#include "runtime/kernels/kernel.h"

#include <cstdint>
#include <vector>

namespace g3rt::cuda {

/// Copies the expert offsets [E + 1] to the host, waiting for the stream,
/// and checks them as the CPU does: they start at 0, never decrease and end
/// at most at `rows`.
Status readExpertOffsets(const KernelArgs &args, const TensorView &t, int64_t experts, int64_t rows,
                         std::vector<int64_t> &offsets);

/// Sets rows [from, M) of a row-major [M, cols] tensor to those of the
/// addend (of its type and shape), or to zeros without one.
Status fillTailRows(const KernelArgs &args, const TensorView &t, int64_t from, int64_t cols,
                    const TensorView *addend);

/// The device form of a product's fused dropout (null bits without one),
/// after checking that its mask covers `elements`.
Status dropMaskOf(const KernelArgs &args, const checks::ProductDropout &d, int64_t elements,
                  DropMask &mask);

/// y += h·L_eᵀ over the rows of each expert e (h [M, r]; L [E, cols, r]
/// with `rankLast`, else [E, r, cols]), `termMask` dropping the term as
/// expert_linear_grad_input drops its low-rank term: the second product of
/// an expert product whose kernel did not take its term.
Status addExpertLowRankTerm(const KernelArgs &args, const TensorView &off, int64_t experts,
                            const TensorView &h, const TensorView &l, bool rankLast, int64_t cols,
                            const TensorView &y, const DropMask &termMask);

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_EXPERT_ROWS_H
