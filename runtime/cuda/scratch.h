//===- scratch.h - kernel scratch space of the CUDA kernels -----*- C++ -*-===//
//
// How CUDA kernels use the context's workspace during one call (it holds
// nothing between calls), and the pointer arithmetic around it. The dense
// kernel files (kernels_dense, kernels_norms, kernels_lm_head, gemm) take
// bump-allocated byte ranges from the upper half (Scratch: the lower half is
// cuBLAS's), the MoE kernel files typed arrays from all of it
// (ScratchArrays: they run no cuBLAS products).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_SCRATCH_H
#define G3MOE_RUNTIME_CUDA_SCRATCH_H

#include "runtime/cuda/cuda_context.h"

#include <algorithm>
#include <string>

namespace g3rt::cuda {

/// A grid of one block per row, capped (kernels stride over the rest).
inline unsigned rowBlocks(int64_t rows) {
  return unsigned(std::clamp<int64_t>(rows, 1, int64_t(1) << 30));
}

constexpr size_t kAlign = 256;
inline size_t alignUp(size_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }

/// A bump allocator over device scratch memory.
struct Scratch {
  char *ptr = nullptr;
  size_t bytes = 0;

  /// `n` bytes, 256-byte aligned, or null when they do not fit.
  void *take(size_t n) {
    size_t a = alignUp(n);
    if (a > bytes)
      return nullptr;
    void *r = ptr;
    ptr += a;
    bytes -= a;
    return r;
  }
};

/// The part of the workspace kernels may use: the executor gives the lower
/// half to cuBLAS as its workspace (cublasSetWorkspace), and cuBLAS may write
/// it during any GEMM, so staging buffers live in the upper half.
inline Scratch scratchOf(const CudaContext &ctx) {
  size_t half = (ctx.workspaceBytes / 2) & ~(kAlign - 1);
  return {static_cast<char *>(ctx.workspace) + half, ctx.workspaceBytes - half};
}

inline const void *offsetBytes(const void *p, DType t, int64_t elements) {
  return static_cast<const char *>(p) + elements * int64_t(dtypeSize(t));
}
inline void *offsetBytes(void *p, DType t, int64_t elements) {
  return static_cast<char *>(p) + elements * int64_t(dtypeSize(t));
}

inline Status memsetZero(const KernelArgs &args, void *p, size_t bytes) {
  if (bytes == 0)
    return Status();
  cudaError_t e = cudaMemsetAsync(p, 0, bytes, contextOf(args).stream);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "zeroing");
}

/// Carves the context's workspace into typed arrays for one call.
class ScratchArrays {
public:
  explicit ScratchArrays(CudaContext &ctx)
      : base_(static_cast<char *>(ctx.workspace)), size_(ctx.workspaceBytes) {}
  template <typename T> T *take(int64_t count) {
    size_t bytes = (size_t(std::max<int64_t>(count, 1)) * sizeof(T) + 255) & ~size_t(255);
    if (used_ + bytes > size_) {
      overflow_ = true;
      return nullptr;
    }
    T *p = reinterpret_cast<T *>(base_ + used_);
    used_ += bytes;
    return p;
  }
  Status check(const KernelArgs &args) const {
    if (overflow_)
      return args.fail("the workspace (" + std::to_string(size_) + " bytes) is too small");
    return Status();
  }

private:
  char *base_;
  size_t size_, used_ = 0;
  bool overflow_ = false;
};

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_SCRATCH_H
