//===- lt_matmul.cpp - row-major matrix products on cuBLASLt ------------===//
//
// cuBLASLt is column-major, where a row-major X is Xᵀ: D = A'·B' is asked
// for as Dᵀ = B'ᵀ·A'ᵀ, B's storage first, then A's, with m = N and n = M.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/lt_matmul.h"

#include <algorithm>

namespace g3rt::cuda {
namespace {

/// The largest power of two up to 256 that divides the address: cuBLASLt
/// picks kernels with vector loads only for operands aligned enough.
int64_t alignmentOf(const void *p) {
  auto v = reinterpret_cast<uintptr_t>(p);
  if (v == 0)
    return 256;
  return int64_t(std::min<uintptr_t>(v & (~v + 1), 256));
}

template <typename T>
cublasStatus_t setPref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
                       T value) {
  return cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value));
}

/// The row count a plan is made for: a multiple of 256 at or above n.
/// Expert products have row counts that follow the routing; one heuristic
/// query per 256 rows keeps the host (which waits on the offsets before
/// those products) from querying for every count.
int64_t bucketOf(int64_t n) { return (n + 255) / 256 * 256; }

/// The stored shapes of A (cuBLASLt's B), B (its A) and D, row-major
/// [rows, cols]: B' = Bᵀ is stored [N, K], else [K, N]; likewise A.
struct StoredShapes {
  int64_t a[2], b[2], d[2];
};
StoredShapes storedShapes(const LtProduct &p, int64_t M, int64_t N, int64_t K) {
  StoredShapes s{};
  s.a[0] = p.a.trans ? K : M, s.a[1] = p.a.trans ? M : K;
  s.b[0] = p.b.trans ? N : K, s.b[1] = p.b.trans ? K : N;
  s.d[0] = M, s.d[1] = N;
  return s;
}

/// A stored row-major [rows, cols] matrix as cuBLASLt's column-major
/// [cols, rows] layout.
cublasStatus_t layoutOf(cublasLtMatrixLayout_t &out, cudaDataType type, const int64_t shape[2],
                        int64_t ld) {
  return cublasLtMatrixLayoutCreate(&out, type, uint64_t(shape[1]), uint64_t(shape[0]), ld);
}

cublasStatus_t resize(cublasLtMatrixLayout_t l, const int64_t shape[2]) {
  const uint64_t rows = uint64_t(shape[1]), cols = uint64_t(shape[0]);
  cublasStatus_t st =
      cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_ROWS, &rows, sizeof(rows));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof(cols));
  return st;
}

/// A scaled product's scale vectors: cuBLASLt's A is our B (its rows are
/// our columns), its B our A.
cublasStatus_t setScales(cublasLtMatmulDesc_t op, const LtProduct &p) {
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  for (auto [attr, scales] : {std::pair{CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, p.colScales},
                              std::pair{CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, p.rowScales}})
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulDescSetAttribute(op, attr, &scales, sizeof(scales));
  return st;
}

} // namespace

void LtMatmuls::Plan::destroy() {
  if (op)
    cublasLtMatmulDescDestroy(op);
  for (cublasLtMatrixLayout_t l : {a, b, d})
    if (l)
      cublasLtMatrixLayoutDestroy(l);
}

LtMatmuls::LtMatmuls(cublasLtHandle_t handle, void *workspace, size_t workspaceBytes)
    : handle_(handle), workspace_(workspace), workspaceBytes_(workspaceBytes) {}

LtMatmuls::~LtMatmuls() {
  for (auto &[key, p] : plans_)
    p.destroy();
}

cublasStatus_t LtMatmuls::plan(const LtProduct &p, const Key &key, Plan &out) {
  cublasStatus_t st = cublasLtMatmulDescCreate(&out.op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  const cublasOperation_t opA = p.b.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opB = p.a.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulDescSetAttribute(out.op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulDescSetAttribute(out.op, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(opB));
  // One fp32 scale per row of cuBLASLt's op(A) (our B' columns) and per
  // column of its op(B) (our A' rows). The heuristic wants the pointers
  // too; run() sets each product's own.
  const auto outerVectors = int32_t(CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F);
  for (auto attr : {CUBLASLT_MATMUL_DESC_A_SCALE_MODE, CUBLASLT_MATMUL_DESC_B_SCALE_MODE})
    if (st == CUBLAS_STATUS_SUCCESS && key[15])
      st = cublasLtMatmulDescSetAttribute(out.op, attr, &outerVectors, sizeof(outerVectors));
  if (st == CUBLAS_STATUS_SUCCESS && key[15])
    st = setScales(out.op, p);
  // Made for the bucket's sizes (the key's first three entries); run()
  // resizes the layouts to each product's own.
  const StoredShapes shapes = storedShapes(p, key[0], key[1], key[2]);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = layoutOf(out.a, p.b.type, shapes.b, p.b.ld);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = layoutOf(out.b, p.a.type, shapes.a, p.a.ld);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = layoutOf(out.d, p.dType, shapes.d, p.ldd);
  if (st != CUBLAS_STATUS_SUCCESS)
    return st;

  cublasLtMatmulPreference_t pref = nullptr;
  st = cublasLtMatmulPreferenceCreate(&pref);
  if (st != CUBLAS_STATUS_SUCCESS)
    return st;
  // Split-K partial sums stay in fp32 (in the workspace), so that a bf16
  // result is rounded once, as on the CPU; the in-place and output-type
  // schemes would round each partial sum to the output type.
  const auto alignCD = uint32_t(key[14]);
  for (auto [attr, value] :
       {std::pair{CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                  uint32_t(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE)},
        std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t(key[13])},
        std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, uint32_t(key[12])},
        std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignCD},
        std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignCD}})
    if (st == CUBLAS_STATUS_SUCCESS)
      st = setPref(pref, attr, value);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = setPref(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(workspaceBytes_));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(handle_, out.op, out.a, out.b, out.d, out.d, pref, 1,
                                        &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || (st == CUBLAS_STATUS_SUCCESS && found == 0))
    return CUBLAS_STATUS_SUCCESS; // out.supported stays false
  if (st != CUBLAS_STATUS_SUCCESS)
    return st;
  out.algo = result.algo;
  out.supported = true;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t LtMatmuls::run(const LtProduct &p, cudaStream_t stream, bool &supported) {
  const void *c = p.beta != 0 ? p.c : p.d;
  // Only sizes that are row counts of every row-major matrix they appear in
  // are rounded up; a column count is bounded by its leading dimension.
  const bool mIsRows = !p.a.trans, kIsRows = p.a.trans && !p.b.trans;
  const Key key{mIsRows ? bucketOf(p.M) : p.M,
                p.N,
                kIsRows ? bucketOf(p.K) : p.K,
                int64_t(p.a.type),
                int64_t(p.b.type),
                int64_t(p.dType),
                p.a.ld,
                p.b.ld,
                p.ldd,
                int64_t(p.a.trans),
                int64_t(p.b.trans),
                int64_t(p.beta != 0),
                alignmentOf(p.a.data),
                alignmentOf(p.b.data),
                std::min(alignmentOf(c), alignmentOf(p.d)),
                int64_t(p.rowScales != nullptr)};
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    Plan fresh;
    if (cublasStatus_t st = plan(p, key, fresh); st != CUBLAS_STATUS_SUCCESS) {
      fresh.destroy();
      return st;
    }
    it = plans_.emplace(key, fresh).first;
  }
  const Plan &pl = it->second;
  supported = pl.supported;
  if (!supported)
    return CUBLAS_STATUS_SUCCESS;
  const StoredShapes shapes = storedShapes(p, p.M, p.N, p.K);
  cublasStatus_t st = resize(pl.a, shapes.b);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = resize(pl.b, shapes.a);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = resize(pl.d, shapes.d);
  if (st == CUBLAS_STATUS_SUCCESS && p.rowScales)
    st = setScales(pl.op, p);
  if (st != CUBLAS_STATUS_SUCCESS)
    return st;
  const float alpha = 1.0f;
  st = cublasLtMatmul(handle_, pl.op, &alpha, p.b.data, pl.a, p.a.data, pl.b, &p.beta, c, pl.d, p.d,
                      pl.d, &pl.algo, workspace_, workspaceBytes_, stream);
  // The bucket's algorithm does not take this size: cuBLAS instead (nothing
  // was enqueued).
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
    supported = false;
    return CUBLAS_STATUS_SUCCESS;
  }
  return st;
}

} // namespace g3rt::cuda
