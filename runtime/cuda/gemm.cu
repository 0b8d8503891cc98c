//===- gemm.cu - matrix products of the CUDA kernels ----------------------===//
//
// gemm.h's products: cuBLASLt where it has an algorithm, cublasGemmEx where
// it has not, and staged copies in a common type (or through the soft cap)
// where cuBLAS cannot take the operands as they are.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/gemm.h"
#include "runtime/cuda/lt_matmul.h"
#include "runtime/cuda/softcap.cuh"

#include <algorithm>
#include <climits>
#include <string>

namespace g3rt::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void copy2DDevice(const void *src, DType st, int64_t sld, void *dst, DType dt,
                             int64_t dld, int64_t rows, int64_t cols, float softcap) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x)
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float v = loadFloat(src, st, r * sld + c);
      if (softcap > 0)
        v = capValue(v, softcap);
      storeFloat(dst, dt, r * dld + c, v);
    }
}

cudaDataType cudaTypeOf(DType t) {
  switch (t) {
  case DType::BF16:
    return CUDA_R_16BF;
  case DType::F16:
    return CUDA_R_16F;
  default:
    return CUDA_R_32F;
  }
}

bool fitsInt(int64_t v) { return v >= 0 && v <= INT_MAX; }

/// C[M, N] = A'[M, K]·B'[K, N] + beta·(C.addend or C), row-major, for
/// operands cuBLAS takes as they are: on cuBLASLt (lt_matmul.h), or on
/// cublasGemmEx for a problem cuBLASLt has no algorithm for.
Status cublasGemm(const KernelArgs &args, CudaContext &ctx, int64_t M, int64_t N, int64_t K,
                  const Operand &A, const Operand &B, const Output &C, float beta) {
  if (!fitsInt(M) || !fitsInt(N) || !fitsInt(K) || !fitsInt(A.ld) || !fitsInt(B.ld) ||
      !fitsInt(C.ld))
    return args.fail("matrix product of " + std::to_string(M) + "x" + std::to_string(N) + "x" +
                     std::to_string(K) + " exceeds cuBLAS's 32-bit sizes");
  LtProduct p{M,
              N,
              K,
              {A.data, cudaTypeOf(A.dtype), A.ld, A.trans},
              {B.data, cudaTypeOf(B.dtype), B.ld, B.trans},
              C.addend ? C.addend : C.data,
              C.data,
              cudaTypeOf(C.dtype),
              C.ld,
              beta};
  bool supported = false;
  cublasStatus_t st = ctx.matmuls->run(p, ctx.stream, supported);
  if (st != CUBLAS_STATUS_SUCCESS)
    return cublasFailure(args, st, "cublasLtMatmul");
  if (supported)
    return Status();

  if (beta != 0 && C.addend && C.addend != C.data)
    G3RT_RETURN_IF_ERROR(copy2D(args, C.addend, C.dtype, C.ld, C.data, C.dtype, C.ld, M, N));
  // The handle is shared with the other kernel files: state every call
  // relies on is set here. Reductions (split-K) stay in fp32 even when the
  // output is bf16, so that a result is rounded once, as on the CPU.
  st = cublasSetPointerMode(ctx.cublas, CUBLAS_POINTER_MODE_HOST);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasSetMathMode(
        ctx.cublas,
        cublasMath_t(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
  if (st != CUBLAS_STATUS_SUCCESS)
    return cublasFailure(args, st, "configuring cuBLAS");
  const float alpha = 1.0f;
  st =
      cublasGemmEx(ctx.cublas, B.trans ? CUBLAS_OP_T : CUBLAS_OP_N,
                   A.trans ? CUBLAS_OP_T : CUBLAS_OP_N, int(N), int(M), int(K), &alpha, B.data,
                   cudaTypeOf(B.dtype), int(B.ld), A.data, cudaTypeOf(A.dtype), int(A.ld), &beta,
                   C.data, cudaTypeOf(C.dtype), int(C.ld), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS)
    return cublasFailure(args, st, "cublasGemmEx");
  return Status();
}

/// The block of C, Mc rows by Nc columns, whose staged copies (A's rows when
/// stageA, B's columns when stageB, elements of ts bytes; an fp32 block of C
/// when stageC) fit in `bytes`: the larger side halved until they do, then
/// cut to a multiple of 128 where it splits.
Status planStaging(const KernelArgs &args, int64_t M, int64_t N, int64_t K, size_t ts, bool stageA,
                   bool stageB, bool stageC, size_t bytes, int64_t &Mc, int64_t &Nc) {
  auto bytesFor = [&](int64_t mc, int64_t nc) {
    size_t b = 0;
    if (stageA)
      b += alignUp(size_t(mc) * size_t(K) * ts);
    if (stageB)
      b += alignUp(size_t(K) * size_t(nc) * ts);
    if (stageC)
      b += alignUp(size_t(mc) * size_t(nc) * sizeof(float));
    return b;
  };
  Mc = M;
  Nc = N;
  while (bytesFor(Mc, Nc) > bytes) {
    bool canM = Mc > 1 && (stageA || stageC), canN = Nc > 1 && (stageB || stageC);
    if (!canM && !canN)
      return args.fail("the workspace (" + std::to_string(bytes) +
                       " bytes free) is too small to stage a " + std::to_string(M) + "x" +
                       std::to_string(N) + "x" + std::to_string(K) + " product");
    if (canM && (!canN || Mc >= Nc))
      Mc = (Mc + 1) / 2;
    else
      Nc = (Nc + 1) / 2;
  }
  if (Mc < M && Mc > 128)
    Mc = Mc / 128 * 128;
  if (Nc < N && Nc > 128)
    Nc = Nc / 128 * 128;
  return Status();
}

} // namespace

bool nativeCombination(DType in, DType out) {
  switch (in) {
  case DType::F32:
    return out == DType::F32;
  case DType::BF16:
    return out == DType::BF16 || out == DType::F32;
  case DType::F16:
    return out == DType::F16 || out == DType::F32;
  default:
    return false;
  }
}

Status copy2D(const KernelArgs &args, const void *src, DType st, int64_t sld, void *dst, DType dt,
              int64_t dld, int64_t rows, int64_t cols, float softcap) {
  if (rows <= 0 || cols <= 0)
    return Status();
  int threads = int(std::clamp<int64_t>((cols + 31) / 32 * 32, 32, kThreads));
  unsigned blocks = unsigned(std::min<int64_t>(rows, int64_t(1) << 20));
  copy2DDevice<<<blocks, threads, 0, contextOf(args).stream>>>(src, st, sld, dst, dt, dld, rows,
                                                               cols, softcap);
  G3RT_CUDA_CHECK_LAUNCH(args, "staging a matrix");
  return Status();
}

Status gemm(const KernelArgs &args, CudaContext &ctx, Scratch scratch, int64_t M, int64_t N,
            int64_t K, const Operand &A, const Operand &B, const Output &C, float beta,
            float softcap) {
  if (M <= 0 || N <= 0)
    return Status();
  if (K <= 0) {
    if (beta != 0)
      return C.addend && C.addend != C.data
                 ? copy2D(args, C.addend, C.dtype, C.ld, C.data, C.dtype, C.ld, M, N)
                 : Status();
    size_t es = dtypeSize(C.dtype);
    cudaError_t e = C.ld == N ? cudaMemsetAsync(C.data, 0, size_t(M * N) * es, ctx.stream)
                              : cudaMemset2DAsync(C.data, size_t(C.ld) * es, 0, size_t(N) * es,
                                                  size_t(M), ctx.stream);
    return e == cudaSuccess ? Status() : cudaFailure(args, e, "zeroing an empty product");
  }
  const bool sameInputs = A.dtype == B.dtype;
  if (sameInputs && nativeCombination(A.dtype, C.dtype) &&
      (softcap <= 0 || C.dtype == DType::F32)) {
    G3RT_RETURN_IF_ERROR(cublasGemm(args, ctx, M, N, K, A, B, C, beta));
    if (softcap > 0)
      G3RT_RETURN_IF_ERROR(
          copy2D(args, C.data, C.dtype, C.ld, C.data, C.dtype, C.ld, M, N, softcap));
    return Status();
  }

  const DType T = sameInputs ? A.dtype : DType::F32;
  const size_t ts = dtypeSize(T);
  const bool stageA = A.dtype != T, stageB = B.dtype != T;
  const bool stageC = !nativeCombination(T, C.dtype) || (softcap > 0 && C.dtype != DType::F32);
  int64_t Mc, Nc;
  G3RT_RETURN_IF_ERROR(
      planStaging(args, M, N, K, ts, stageA, stageB, stageC, scratch.bytes, Mc, Nc));
  void *aBuf = stageA ? scratch.take(size_t(Mc) * size_t(K) * ts) : nullptr;
  void *bBuf = stageB ? scratch.take(size_t(K) * size_t(Nc) * ts) : nullptr;
  float *cBuf = stageC ? static_cast<float *>(scratch.take(size_t(Mc) * size_t(Nc) * 4)) : nullptr;

  for (int64_t m0 = 0; m0 < M; m0 += Mc) {
    const int64_t mc = std::min(Mc, M - m0);
    // Rows m0.. of A' are rows of A, or columns of A when A' = Aᵀ.
    Operand a = A.trans ? Operand{offsetBytes(A.data, A.dtype, m0), A.dtype, A.ld, true}
                        : Operand{offsetBytes(A.data, A.dtype, m0 * A.ld), A.dtype, A.ld, false};
    if (stageA) {
      if (!A.trans) {
        G3RT_RETURN_IF_ERROR(copy2D(args, a.data, A.dtype, A.ld, aBuf, T, K, mc, K));
        a = {aBuf, T, K, false};
      } else {
        G3RT_RETURN_IF_ERROR(copy2D(args, a.data, A.dtype, A.ld, aBuf, T, mc, K, mc));
        a = {aBuf, T, mc, true};
      }
    }
    for (int64_t n0 = 0; n0 < N; n0 += Nc) {
      const int64_t nc = std::min(Nc, N - n0);
      // Columns n0.. of B' are columns of B, or rows of B when B' = Bᵀ.
      Operand b = B.trans ? Operand{offsetBytes(B.data, B.dtype, n0 * B.ld), B.dtype, B.ld, true}
                          : Operand{offsetBytes(B.data, B.dtype, n0), B.dtype, B.ld, false};
      if (stageB) {
        if (!B.trans) {
          G3RT_RETURN_IF_ERROR(copy2D(args, b.data, B.dtype, B.ld, bBuf, T, nc, K, nc));
          b = {bBuf, T, nc, false};
        } else {
          G3RT_RETURN_IF_ERROR(copy2D(args, b.data, B.dtype, B.ld, bBuf, T, K, nc, K));
          b = {bBuf, T, K, true};
        }
      }
      Output c{offsetBytes(C.data, C.dtype, m0 * C.ld + n0), C.dtype, C.ld,
               C.addend ? offsetBytes(C.addend, C.dtype, m0 * C.ld + n0) : nullptr};
      if (stageC) {
        Output staged{cBuf, DType::F32, nc};
        if (beta != 0)
          G3RT_RETURN_IF_ERROR(copy2D(args, c.addend ? c.addend : c.data, c.dtype, c.ld, cBuf,
                                      DType::F32, nc, mc, nc));
        G3RT_RETURN_IF_ERROR(cublasGemm(args, ctx, mc, nc, K, a, b, staged, beta));
        G3RT_RETURN_IF_ERROR(
            copy2D(args, cBuf, DType::F32, nc, c.data, c.dtype, c.ld, mc, nc, softcap));
      } else {
        G3RT_RETURN_IF_ERROR(cublasGemm(args, ctx, mc, nc, K, a, b, c, beta));
        if (softcap > 0)
          G3RT_RETURN_IF_ERROR(
              copy2D(args, c.data, c.dtype, c.ld, c.data, c.dtype, c.ld, mc, nc, softcap));
      }
    }
  }
  return Status();
}

} // namespace g3rt::cuda
