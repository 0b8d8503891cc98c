//===- expert_rows.h - expert row ranges read on the host -------*- C++ -*-===//
//
// What the CUDA expert products that are issued per expert from the host
// share: the offsets read back (the one place those kernels wait for the
// device) and the rows past the last expert.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_EXPERT_ROWS_H
#define G3MOE_RUNTIME_CUDA_EXPERT_ROWS_H

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

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_EXPERT_ROWS_H
