//===- gemm.h - matrix products of the CUDA kernels -------------*- C++ -*-===//
//
// Matrix products go through cuBLAS with fp32 accumulation
// (CUBLAS_COMPUTE_32F, never TF32): bf16 or f16 operands use the tensor
// cores, fp32 operands the fp32 path, so products agree with the CPU's fp32
// dot products up to summation order. cuBLAS multiplies only operands of one
// type; the few mixed calls stage converted copies in the scratch space (see
// gemm()). Dense products run on cuBLASLt (lt_matmul.h), with cublasGemmEx
// as the fallback for problems cuBLASLt has no algorithm for.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_GEMM_H
#define G3MOE_RUNTIME_CUDA_GEMM_H

#include "runtime/cuda/scratch.h"

namespace g3rt::cuda {

/// A row-major matrix operand: element (i, j) at data[i·ld + j] of `dtype`;
/// with `trans`, the product uses its transpose.
struct Operand {
  const void *data;
  DType dtype;
  int64_t ld;
  bool trans;
};

/// A row-major output matrix; a product with beta ≠ 0 adds `addend` (of the
/// output's type and leading dimension) when it is set, else the output's
/// own contents.
struct Output {
  void *data;
  DType dtype;
  int64_t ld;
  const void *addend = nullptr;
};

/// `t` as a row-major operand or output whose rows are `ld` elements apart.
inline Operand operand(const TensorView &t, int64_t ld, bool trans) {
  return {t.data, t.dtype, ld, trans};
}
inline Output output(const TensorView &t, int64_t ld, const TensorView *addend = nullptr) {
  return {t.data, t.dtype, ld, addend ? addend->data : nullptr};
}

/// Whether cuBLAS(Lt) with CUBLAS_COMPUTE_32F takes inputs of type `in` with
/// an output of type `out`.
bool nativeCombination(DType in, DType out);

/// dst[r, c] = src[r, c] for a rows × cols window of two row-major matrices,
/// converted between element types, optionally through the soft cap
/// c·tanh(v/c). Blocks take whole rows so that no thread divides by cols.
/// src may equal dst (each element is read, then written, by one thread).
Status copy2D(const KernelArgs &args, const void *src, DType st, int64_t sld, void *dst, DType dt,
              int64_t dld, int64_t rows, int64_t cols, float softcap = 0);

/// C[M, N] = A'·B' + beta·(C.addend or C) (beta 0 or 1), then c·tanh(C/c) when softcap > 0
/// (only with beta = 0), for float operands and output of any types.
///
/// Operands of one type with an output cuBLAS supports go to cuBLAS as they
/// are. Otherwise the product runs in a common type (the operands' when they
/// agree, else fp32, to which bf16 and f16 convert exactly): copies of the
/// operands that are not of that type, and an fp32 copy of C when cuBLAS
/// cannot write C's type or the soft cap must see the fp32 product, are
/// staged in `scratch`, a block of C's rows and columns at a time, so that
/// any size fits.
Status gemm(const KernelArgs &args, CudaContext &ctx, Scratch scratch, int64_t M, int64_t N,
            int64_t K, const Operand &A, const Operand &B, const Output &C, float beta,
            float softcap = 0);

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_GEMM_H
