//===- lt_matmul.h - row-major matrix products on cuBLASLt ------*- C++ -*-===//
//
// The CUDA backend's dense products (gemm.h) run on cublasLtMatmul:
// bf16/f16/fp32 operands, fp32 accumulation, an optional addend C that may be
// a different buffer than the result D (so a fused `plus %a` costs no copy);
// the e4m3 products of fp8_base (kernels_fp8.cu) add per-row and per-column
// fp32 scales.
// Each distinct problem (row counts rounded up to a multiple of 256, types,
// leading dimensions, pointer alignments) gets its descriptors and
// cuBLASLt's first heuristic algorithm once; later calls of the problem reuse
// them, so a product of given sizes runs the same algorithm, and gives the
// same bits, every time, and expert products, whose row counts follow the
// routing, query the heuristic at most once per 256 rows.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_LT_MATMUL_H
#define G3MOE_RUNTIME_CUDA_LT_MATMUL_H

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>

namespace g3rt::cuda {

/// A row-major matrix: element (i, j) at data[i·ld + j]; with `trans`, the
/// product uses its transpose.
struct LtMatrix {
  const void *data;
  cudaDataType type;
  int64_t ld;
  bool trans;
};

/// D[M, N] = A'[M, K]·B'[K, N] + beta·C, row-major. C has D's type and
/// leading dimension; it is read only when beta ≠ 0 and may equal D. With
/// `rowScales` and `colScales` (e4m3 operands, both K-major: A untransposed,
/// B transposed) the product's element (i, j) is scaled by rowScales[i]
/// and colScales[j], fp32 vectors of M and N, before C is added.
struct LtProduct {
  int64_t M, N, K;
  LtMatrix a, b;
  const void *c;
  void *d;
  cudaDataType dType;
  int64_t ldd;
  float beta;
  const float *rowScales = nullptr, *colScales = nullptr;
};

/// The descriptors and algorithms of the products one executor has run.
class LtMatmuls {
public:
  /// `workspace` (device memory of `workspaceBytes`) is lent to cuBLASLt for
  /// every product, stream-ordered on the stream each product runs on.
  LtMatmuls(cublasLtHandle_t handle, void *workspace, size_t workspaceBytes);
  ~LtMatmuls();
  LtMatmuls(const LtMatmuls &) = delete;
  LtMatmuls &operator=(const LtMatmuls &) = delete;

  /// Enqueues the product on `stream`. Sets `supported` false, and enqueues
  /// nothing, when cuBLASLt has no algorithm for it (the caller falls back).
  /// Sizes and leading dimensions must fit in 32 bits.
  cublasStatus_t run(const LtProduct &p, cudaStream_t stream, bool &supported);

private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool supported = false;
    void destroy();
  };
  /// M, N, K (row counts bucketed), the types of A, B and D, their leading
  /// dimensions, A's and B's transposition, beta ≠ 0, the alignments of A, B
  /// and C/D, and whether the product is scaled.
  using Key = std::array<int64_t, 16>;
  cublasStatus_t plan(const LtProduct &p, const Key &key, Plan &out);

  cublasLtHandle_t handle_;
  void *workspace_;
  size_t workspaceBytes_;
  std::map<Key, Plan> plans_;
};

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_LT_MATMUL_H
