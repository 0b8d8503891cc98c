//===- kernels_dense.cu - embedding, norm, linear and loss CUDA kernels ---===//
//
// The CUDA versions of the dense layers of a step (embedding, Gemma's
// RMSNorm, the linear layers, the tied LM head, the grouped expert layers and
// the token cross-entropy), with the math and checks of
// runtime/cpu/kernels_dense.cpp.
//
// Matrix products go through cuBLAS with fp32 accumulation
// (CUBLAS_COMPUTE_32F, never TF32): bf16 or f16 operands use the tensor
// cores, fp32 operands the fp32 path, so products agree with the CPU's fp32
// dot products up to summation order. cuBLAS multiplies only operands of one
// type; the few mixed calls stage converted copies in the workspace (see
// gemm()). Row reductions (norm statistics, logsumexp) run one block per row
// with the sums in double where the CPU sums in double; every reduction has a
// fixed shape-determined order, so results are reproducible run to run.
//
// Data-dependent errors (an id or target out of range) cannot be reported
// without a host round trip; these kernels never read or write out of bounds
// for them and poison the affected values with NaN instead, so that a bad
// input still shows. Only the expert layers wait on the device: their
// per-expert GEMMs need the row offsets on the host.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_context.h"

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace g3rt::cuda {
namespace {

constexpr int kThreads = 256;
/// Threads of the blocks that reduce one vocabulary row (up to 262K logits).
constexpr int kRowThreads = 512;
constexpr int64_t kMaxBlocks = 8192;

unsigned blocksFor(int64_t n, int threads = kThreads) {
  return unsigned(std::clamp<int64_t>((n + threads - 1) / threads, 1, kMaxBlocks));
}

/// A grid of one block per row, capped (kernels stride over the rest).
unsigned rowBlocks(int64_t rows) {
  return unsigned(std::clamp<int64_t>(rows, 1, int64_t(1) << 30));
}

//===----------------------------------------------------------------------===//
// Scratch space
//===----------------------------------------------------------------------===//

constexpr size_t kAlign = 256;
size_t alignUp(size_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }

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
Scratch scratchOf(const CudaContext &ctx) {
  size_t half = (ctx.workspaceBytes / 2) & ~(kAlign - 1);
  return {static_cast<char *>(ctx.workspace) + half, ctx.workspaceBytes - half};
}

//===----------------------------------------------------------------------===//
// Checks (as on the CPU)
//===----------------------------------------------------------------------===//

/// Product of all dimensions but the last.
int64_t leadingRows(const TensorView &t) {
  int64_t n = 1;
  for (size_t d = 0; d + 1 < t.shape.size(); ++d)
    n *= t.shape[d];
  return n;
}

Status checkCounts(const KernelArgs &args, size_t inputs, size_t outputs) {
  if (args.inputs.size() != inputs || args.outputs.size() != outputs)
    return args.fail("expected " + std::to_string(inputs) + " inputs and " +
                     std::to_string(outputs) + " outputs, got " +
                     std::to_string(args.inputs.size()) + " and " +
                     std::to_string(args.outputs.size()));
  return Status();
}

std::string describe(const TensorView &t) {
  return std::string(dtypeName(t.dtype)) + " " + shapeString(t.shape);
}

Status checkFloat(const KernelArgs &args, const TensorView &t, const char *what,
                  int64_t minRank = 1) {
  if (!isFloat(t.dtype))
    return args.fail(std::string(what) + " must be a float tensor, got " + describe(t));
  if (t.rank() < minRank)
    return args.fail(std::string(what) + " must have rank >= " + std::to_string(minRank) +
                     ", got " + describe(t));
  return Status();
}

Status checkIndex(const KernelArgs &args, const TensorView &t, const char *what) {
  if (t.dtype != DType::I32 && t.dtype != DType::I64)
    return args.fail(std::string(what) + " must be an integer tensor, got " + describe(t));
  return Status();
}

Status checkShape(const KernelArgs &args, const TensorView &t, const char *what,
                  const std::vector<int64_t> &want) {
  if (t.shape != want)
    return args.fail(std::string(what) + " has shape " + shapeString(t.shape) + ", expected " +
                     shapeString(want));
  return Status();
}

Status checkRowsCols(const KernelArgs &args, const TensorView &t, const char *what, int64_t rows,
                     int64_t cols) {
  if (t.rank() < 1 || t.dim(-1) != cols || leadingRows(t) != rows)
    return args.fail(std::string(what) + " has shape " + shapeString(t.shape) + ", expected " +
                     std::to_string(rows) + " rows of " + std::to_string(cols));
  return Status();
}

Status checkMatrix(const KernelArgs &args, const TensorView &t, const char *what) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, t, what, 2));
  if (t.rank() != 2)
    return args.fail(std::string(what) + " must be a matrix, got " + describe(t));
  return Status();
}

Status checkScalarFloat(const KernelArgs &args, const TensorView &t, const char *what) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, t, what, 0));
  if (t.numel() != 1)
    return args.fail(std::string(what) + " must be a scalar, got " + describe(t));
  return Status();
}

const void *offsetBytes(const void *p, DType t, int64_t elements) {
  return static_cast<const char *>(p) + elements * int64_t(dtypeSize(t));
}
void *offsetBytes(void *p, DType t, int64_t elements) {
  return static_cast<char *>(p) + elements * int64_t(dtypeSize(t));
}

Status memsetZero(const KernelArgs &args, void *p, size_t bytes) {
  if (bytes == 0)
    return Status();
  cudaError_t e = cudaMemsetAsync(p, 0, bytes, contextOf(args).stream);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "zeroing");
}

//===----------------------------------------------------------------------===//
// Block reductions
//===----------------------------------------------------------------------===//

template <typename T> __device__ __forceinline__ T warpSum(T v) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
  return v;
}

/// The block-wide sum, returned to every thread. The combination order is
/// fixed by the block size alone. blockDim.x must be a multiple of 32.
template <typename T> __device__ T blockSum(T v) {
  __shared__ T buf[33];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warpSum(v);
  if (lane == 0)
    buf[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? buf[lane] : T(0);
    w = warpSum(w);
    if (lane == 0)
      buf[32] = w;
  }
  __syncthreads();
  // A following call writes buf[0..31] only after its first barrier, which
  // every thread reaches after reading buf[32] here.
  return buf[32];
}

__device__ float blockMax(float v) {
  __shared__ float buf[33];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warpMax(v);
  if (lane == 0)
    buf[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < warps ? buf[lane] : -INFINITY;
    w = warpMax(w);
    if (lane == 0)
      buf[32] = w;
  }
  __syncthreads();
  return buf[32];
}

//===----------------------------------------------------------------------===//
// Strided copies
//===----------------------------------------------------------------------===//

// dst[r, c] = src[r, c] for a rows × cols window of two row-major matrices,
// converted between element types, optionally through the soft cap
// c·tanh(v/c). Blocks take whole rows so that no thread divides by cols.
// src may equal dst (each element is read, then written, by one thread).
__global__ void copy2DDevice(const void *src, DType st, int64_t sld, void *dst, DType dt,
                             int64_t dld, int64_t rows, int64_t cols, float softcap) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x)
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float v = loadFloat(src, st, r * sld + c);
      if (softcap > 0)
        v = __fmul_rn(softcap, tanhf(__fdiv_rn(v, softcap)));
      storeFloat(dst, dt, r * dld + c, v);
    }
}

Status copy2D(const KernelArgs &args, const void *src, DType st, int64_t sld, void *dst, DType dt,
              int64_t dld, int64_t rows, int64_t cols, float softcap = 0) {
  if (rows <= 0 || cols <= 0)
    return Status();
  int threads = int(std::clamp<int64_t>((cols + 31) / 32 * 32, 32, kThreads));
  unsigned blocks = unsigned(std::min<int64_t>(rows, int64_t(1) << 20));
  copy2DDevice<<<blocks, threads, 0, contextOf(args).stream>>>(src, st, sld, dst, dt, dld, rows,
                                                               cols, softcap);
  G3RT_CUDA_CHECK_LAUNCH(args, "staging a matrix");
  return Status();
}

//===----------------------------------------------------------------------===//
// GEMM
//===----------------------------------------------------------------------===//

/// A row-major matrix operand: element (i, j) at data[i·ld + j] of `dtype`;
/// with `trans`, the product uses its transpose.
struct Operand {
  const void *data;
  DType dtype;
  int64_t ld;
  bool trans;
};

/// A row-major output matrix.
struct Output {
  void *data;
  DType dtype;
  int64_t ld;
};

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

/// Whether cublasGemmEx with CUBLAS_COMPUTE_32F takes inputs of type `in`
/// with an output of type `out`.
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

bool fitsInt(int64_t v) { return v >= 0 && v <= INT_MAX; }

/// C[M, N] = A'[M, K]·B'[K, N] + beta·C, row-major, for operands cuBLAS
/// takes as they are. cuBLAS is column-major, where a row-major X is Xᵀ, so
/// this asks it for Cᵀ = B'ᵀ·A'ᵀ: B first, then A, with m = N and n = M.
Status cublasGemm(const KernelArgs &args, CudaContext &ctx, int64_t M, int64_t N, int64_t K,
                  const Operand &A, const Operand &B, const Output &C, float beta) {
  if (!fitsInt(M) || !fitsInt(N) || !fitsInt(K) || !fitsInt(A.ld) || !fitsInt(B.ld) ||
      !fitsInt(C.ld))
    return args.fail("matrix product of " + std::to_string(M) + "x" + std::to_string(N) + "x" +
                     std::to_string(K) + " exceeds cuBLAS's 32-bit sizes");
  // The handle is shared with the other kernel files: state every call
  // relies on is set here. Reductions (split-K) stay in fp32 even when the
  // output is bf16, so that a result is rounded once, as on the CPU.
  cublasStatus_t st = cublasSetPointerMode(ctx.cublas, CUBLAS_POINTER_MODE_HOST);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasSetMathMode(ctx.cublas, cublasMath_t(CUBLAS_DEFAULT_MATH |
                                                    CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
  if (st != CUBLAS_STATUS_SUCCESS)
    return cublasFailure(args, st, "configuring cuBLAS");
  const float alpha = 1.0f;
  st = cublasGemmEx(ctx.cublas, B.trans ? CUBLAS_OP_T : CUBLAS_OP_N,
                    A.trans ? CUBLAS_OP_T : CUBLAS_OP_N, int(N), int(M), int(K), &alpha, B.data,
                    cudaTypeOf(B.dtype), int(B.ld), A.data, cudaTypeOf(A.dtype), int(A.ld), &beta,
                    C.data, cudaTypeOf(C.dtype), int(C.ld), CUBLAS_COMPUTE_32F,
                    CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS)
    return cublasFailure(args, st, "cublasGemmEx");
  return Status();
}

/// C[M, N] = A'·B' + beta·C (beta 0 or 1), then c·tanh(C/c) when softcap > 0
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
            float softcap = 0) {
  if (M <= 0 || N <= 0)
    return Status();
  if (K <= 0) {
    if (beta != 0)
      return Status();
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
  int64_t Mc = M, Nc = N;
  while (bytesFor(Mc, Nc) > scratch.bytes) {
    bool canM = Mc > 1 && (stageA || stageC), canN = Nc > 1 && (stageB || stageC);
    if (!canM && !canN)
      return args.fail("the workspace (" + std::to_string(scratch.bytes) +
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
      Output c{offsetBytes(C.data, C.dtype, m0 * C.ld + n0), C.dtype, C.ld};
      if (stageC) {
        Output staged{cBuf, DType::F32, nc};
        if (beta != 0)
          G3RT_RETURN_IF_ERROR(copy2D(args, c.data, c.dtype, c.ld, cBuf, DType::F32, nc, mc, nc));
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

//===----------------------------------------------------------------------===//
// Embedding
//===----------------------------------------------------------------------===//

// One block per token. An id outside [0, V) (an error on the CPU) gives a
// row of NaN.
__global__ void embeddingDevice(const void *ids, DType idType, const void *table, DType tt,
                                void *y, DType yt, int64_t N, int64_t H, int64_t V, float scale) {
  for (int64_t t = blockIdx.x; t < N; t += gridDim.x) {
    int64_t id = loadIndex(ids, idType, t);
    bool valid = id >= 0 && id < V;
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
      float v = valid ? __fmul_rn(loadFloat(table, tt, id * H + h), scale) : NAN;
      storeFloat(y, yt, t * H + h, v);
    }
  }
}

Status embeddingKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &ids = args.inputs[0], &table = args.inputs[1], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIndex(args, ids, "ids"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, table, "table", 2));
  G3RT_RETURN_IF_ERROR(checkFloat(args, y, "result"));
  if (table.rank() != 2)
    return args.fail("table must be [V, H], got " + describe(table));
  double scale;
  G3RT_RETURN_IF_ERROR(args.requireFloat("scale", scale));
  int64_t V = table.dim(0), H = table.dim(1), N = ids.numel();
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, y, "result", N, H));
  if (N == 0 || H == 0)
    return Status();
  embeddingDevice<<<rowBlocks(N), kThreads, 0, contextOf(args).stream>>>(
      ids.data, ids.dtype, table.data, table.dtype, y.data, y.dtype, N, H, V, float(scale));
  G3RT_CUDA_CHECK_LAUNCH(args, "embedding");
  return Status();
}

// Sort keys: the id, or V for an id outside [0, V), whose tokens are
// dropped (an error on the CPU).
__global__ void embeddingKeysDevice(const void *ids, DType idType, int64_t N, int64_t V,
                                    uint32_t *keys, int32_t *tokens) {
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < N;
       t += int64_t(gridDim.x) * blockDim.x) {
    int64_t id = loadIndex(ids, idType, t);
    keys[t] = id >= 0 && id < V ? uint32_t(id) : uint32_t(V);
    tokens[t] = int32_t(t);
  }
}

// One block per position of the sorted tokens; the block at the first token
// of an id sums that id's rows in token order (the radix sort is stable),
// exactly as the CPU's counting sort does, so the sums are deterministic.
__global__ void embeddingGradSumDevice(const uint32_t *keys, const int32_t *tokens, int64_t N,
                                       const void *dy, DType dyType, int64_t H, int64_t V,
                                       int64_t paddingIdx, float scale, void *dtable, DType dt) {
  for (int64_t p = blockIdx.x; p < N; p += gridDim.x) {
    uint32_t key = keys[p];
    if ((p > 0 && keys[p - 1] == key) || key >= uint32_t(V) || int64_t(key) == paddingIdx)
      continue;
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
      float acc = 0.0f;
      for (int64_t q = p; q < N && keys[q] == key; ++q)
        acc = __fadd_rn(acc, __fmul_rn(loadFloat(dy, dyType, int64_t(tokens[q]) * H + h), scale));
      storeFloat(dtable, dt, int64_t(key) * H + h, acc);
    }
  }
}

Status embeddingGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &dy = args.inputs[0], &ids = args.inputs[1], &dtable = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkIndex(args, ids, "ids"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dtable, "result", 2));
  if (dtable.rank() != 2)
    return args.fail("result must be [V, H], got " + describe(dtable));
  double scale;
  int64_t paddingIdx;
  G3RT_RETURN_IF_ERROR(args.requireFloat("scale", scale));
  G3RT_RETURN_IF_ERROR(args.requireInt("padding_idx", paddingIdx));
  int64_t V = dtable.dim(0), H = dtable.dim(1), N = ids.numel();
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dy, "grad", N, H));
  if (V >= int64_t(UINT32_MAX) || N > INT_MAX)
    return args.fail("vocabulary of " + std::to_string(V) + " or " + std::to_string(N) +
                     " tokens too large");
  CudaContext &ctx = contextOf(args);
  // Rows no token touches (and the padding row) stay 0.
  G3RT_RETURN_IF_ERROR(memsetZero(args, dtable.data, dtable.bytes()));
  if (N == 0 || H == 0)
    return Status();

  Scratch scratch = scratchOf(ctx);
  uint32_t *keysIn = static_cast<uint32_t *>(scratch.take(size_t(N) * 4));
  uint32_t *keysOut = static_cast<uint32_t *>(scratch.take(size_t(N) * 4));
  int32_t *tokensIn = static_cast<int32_t *>(scratch.take(size_t(N) * 4));
  int32_t *tokensOut = static_cast<int32_t *>(scratch.take(size_t(N) * 4));
  int endBit = 1;
  while (endBit < 32 && (uint64_t(1) << endBit) <= uint64_t(V))
    ++endBit;
  size_t tempBytes = 0;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(nullptr, tempBytes, keysIn, keysOut, tokensIn,
                                                  tokensOut, int(N), 0, endBit, ctx.stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "sizing the token sort");
  void *temp = scratch.take(std::max<size_t>(tempBytes, 1));
  if (!keysIn || !keysOut || !tokensIn || !tokensOut || !temp)
    return args.fail("the workspace is too small to sort " + std::to_string(N) + " tokens");

  embeddingKeysDevice<<<blocksFor(N), kThreads, 0, ctx.stream>>>(ids.data, ids.dtype, N, V,
                                                                 keysIn, tokensIn);
  G3RT_CUDA_CHECK_LAUNCH(args, "embedding_grad keys");
  e = cub::DeviceRadixSort::SortPairs(temp, tempBytes, keysIn, keysOut, tokensIn, tokensOut,
                                      int(N), 0, endBit, ctx.stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "sorting tokens by id");
  embeddingGradSumDevice<<<rowBlocks(N), kThreads, 0, ctx.stream>>>(
      keysOut, tokensOut, N, dy.data, dy.dtype, H, V, paddingIdx, float(scale), dtable.data,
      dtable.dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "embedding_grad");
  return Status();
}

//===----------------------------------------------------------------------===//
// RMSNorm
//===----------------------------------------------------------------------===//

/// 1 / sqrt(mean(x²) + eps) of row `r`, the sum of squares in double as on
/// the CPU. Every thread of the block gets it.
__device__ float inverseRms(const void *x, DType xt, int64_t base, int64_t D, double eps) {
  double ss = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    double v = loadFloat(x, xt, base + d);
    ss += v * v;
  }
  ss = blockSum(ss);
  return float(1.0 / sqrt(ss / double(D) + eps));
}

__global__ void rmsNormDevice(const void *x, DType xt, const void *w, DType wt, void *y, DType yt,
                              int64_t rows, int64_t D, double eps) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t base = r * D;
    float inv = inverseRms(x, xt, base, D, eps);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float gain = __fadd_rn(loadFloat(w, wt, d), 1.0f);
      storeFloat(y, yt, base + d, __fmul_rn(__fmul_rn(loadFloat(x, xt, base + d), inv), gain));
    }
  }
}

Status checkNormOperands(const KernelArgs &args, const TensorView &x, const TensorView &w) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, w, "weight"));
  if (w.numel() != x.dim(-1) || x.dim(-1) == 0)
    return args.fail("weight " + shapeString(w.shape) +
                     " does not match the last dimension of input " + shapeString(x.shape));
  return Status();
}

Status rmsNormKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkNormOperands(args, x, w));
  G3RT_RETURN_IF_ERROR(checkFloat(args, y, "result"));
  double eps;
  G3RT_RETURN_IF_ERROR(args.requireFloat("eps", eps));
  int64_t D = x.dim(-1), rows = leadingRows(x);
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, y, "result", rows, D));
  if (rows == 0)
    return Status();
  rmsNormDevice<<<rowBlocks(rows), kThreads, 0, contextOf(args).stream>>>(
      x.data, x.dtype, w.data, w.dtype, y.data, y.dtype, rows, D, eps);
  G3RT_CUDA_CHECK_LAUNCH(args, "rms_norm");
  return Status();
}

// Block b takes rows [b·R, (b+1)·R): per row the statistics, dx, and the
// row's terms of dw added into the block's own double partial sums (in
// shared memory; each column belongs to one thread). A second kernel adds
// the blocks' partials in block order, so dw does not depend on scheduling.
__global__ void rmsNormGradDevice(const void *x, DType xt, const void *w, DType wt, const void *dy,
                                  DType gt, void *dx, DType dxt, int64_t rows, int64_t D,
                                  int64_t rowsPerBlock, double eps, double *partials) {
  extern __shared__ double dwPart[];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    dwPart[d] = 0;
  int64_t r0 = int64_t(blockIdx.x) * rowsPerBlock, r1 = min(rows, r0 + rowsPerBlock);
  for (int64_t r = r0; r < r1; ++r) {
    int64_t base = r * D;
    float inv = inverseRms(x, xt, base, D, eps);
    double dot = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float xhat = __fmul_rn(loadFloat(x, xt, base + d), inv);
      float g = loadFloat(dy, gt, base + d);
      float gain = __fadd_rn(loadFloat(w, wt, d), 1.0f);
      dot += double(__fmul_rn(g, gain)) * double(xhat);
      dwPart[d] += double(g) * double(xhat);
    }
    float mean = float(blockSum(dot) / double(D));
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float xhat = __fmul_rn(loadFloat(x, xt, base + d), inv);
      float g = loadFloat(dy, gt, base + d);
      float gain = __fadd_rn(loadFloat(w, wt, d), 1.0f);
      float v = __fmul_rn(__fsub_rn(__fmul_rn(g, gain), __fmul_rn(xhat, mean)), inv);
      storeFloat(dx, dxt, base + d, v);
    }
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    partials[int64_t(blockIdx.x) * D + d] = dwPart[d];
}

__global__ void rmsNormGradWeightDevice(const double *partials, int64_t blocks, int64_t D,
                                        void *dw, DType dwt) {
  for (int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; d < D;
       d += int64_t(gridDim.x) * blockDim.x) {
    double s = 0;
    for (int64_t b = 0; b < blocks; ++b)
      s += partials[b * D + d];
    storeFloat(dw, dwt, d, float(s));
  }
}

Status rmsNormGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 2));
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &dy = args.inputs[2];
  const TensorView &dx = args.outputs[0], &dw = args.outputs[1];
  G3RT_RETURN_IF_ERROR(checkNormOperands(args, x, w));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dx, "input_grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dw, "weight_grad"));
  double eps;
  G3RT_RETURN_IF_ERROR(args.requireFloat("eps", eps));
  int64_t D = x.dim(-1), rows = leadingRows(x);
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dy, "grad", rows, D));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dx, "input_grad", rows, D));
  if (dw.numel() != D)
    return args.fail("weight_grad " + shapeString(dw.shape) + " does not have " +
                     std::to_string(D) + " elements");
  CudaContext &ctx = contextOf(args);
  if (rows == 0)
    return memsetZero(args, dw.data, dw.bytes());

  size_t shared = size_t(D) * sizeof(double);
  int device = 0, maxShared = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&maxShared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "querying shared memory");
  if (shared > size_t(maxShared))
    return args.fail("normalised size " + std::to_string(D) + " is too large");
  if (shared > 48 * 1024) {
    e = cudaFuncSetAttribute(rmsNormGradDevice, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(shared));
    if (e != cudaSuccess)
      return cudaFailure(args, e, "enabling large shared memory");
  }
  // About a thousand blocks keep every SM busy while the partial sums (one
  // row of D doubles per block) stay small; more rows per block only when
  // they would not fit the scratch space. The split depends on the shapes
  // alone, so dw is reproducible.
  Scratch scratch = scratchOf(ctx);
  int64_t rowsPerBlock = std::max<int64_t>(8, (rows + 1023) / 1024);
  auto blocksOf = [&](int64_t r) { return (rows + r - 1) / r; };
  while (size_t(blocksOf(rowsPerBlock)) * size_t(D) * sizeof(double) > scratch.bytes ||
         blocksOf(rowsPerBlock) > (int64_t(1) << 30))
    rowsPerBlock *= 2;
  int64_t blocks = blocksOf(rowsPerBlock);
  double *partials = static_cast<double *>(scratch.take(size_t(blocks) * size_t(D) * 8));
  rmsNormGradDevice<<<unsigned(blocks), kThreads, shared, ctx.stream>>>(
      x.data, x.dtype, w.data, w.dtype, dy.data, dy.dtype, dx.data, dx.dtype, rows, D,
      rowsPerBlock, eps, partials);
  G3RT_CUDA_CHECK_LAUNCH(args, "rms_norm_grad");
  rmsNormGradWeightDevice<<<blocksFor(D), kThreads, 0, ctx.stream>>>(partials, blocks, D, dw.data,
                                                                     dw.dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "rms_norm_grad weight");
  return Status();
}

//===----------------------------------------------------------------------===//
// Linear layers
//===----------------------------------------------------------------------===//

Status checkLinear(const KernelArgs &args, const TensorView &x, const TensorView &w,
                   const char *wName, const TensorView &y, const char *yName, int64_t &M,
                   int64_t &in, int64_t &out) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, w, wName, 2));
  G3RT_RETURN_IF_ERROR(checkFloat(args, y, yName));
  if (w.rank() != 2)
    return args.fail(std::string(wName) + " must be a matrix, got " + describe(w));
  out = w.dim(0);
  in = w.dim(1);
  M = leadingRows(x);
  if (x.dim(-1) != in)
    return args.fail("input " + shapeString(x.shape) + " does not contract with " + wName + " " +
                     shapeString(w.shape));
  return checkRowsCols(args, y, yName, M, out);
}

Operand operand(const TensorView &t, int64_t ld, bool trans) {
  return {t.data, t.dtype, ld, trans};
}
Output output(const TensorView &t, int64_t ld) { return {t.data, t.dtype, ld}; }

Status linearKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &y = args.outputs[0];
  int64_t M, in, out;
  G3RT_RETURN_IF_ERROR(checkLinear(args, x, w, "weight", y, "result", M, in, out));
  CudaContext &ctx = contextOf(args);
  // y[M, out] = x[M, in]·W[out, in]ᵀ
  return gemm(args, ctx, scratchOf(ctx), M, out, in, operand(x, in, false), operand(w, in, true),
              output(y, out), 0.0f);
}

Status linearGradInputKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &dy = args.inputs[0], &w = args.inputs[1], &dx = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, w, "weight", 2));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dx, "result"));
  if (w.rank() != 2)
    return args.fail("weight must be [out, in], got " + describe(w));
  int64_t out = w.dim(0), in = w.dim(1), M = leadingRows(dy);
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dy, "grad", M, out));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dx, "result", M, in));
  CudaContext &ctx = contextOf(args);
  // dx[M, in] = dy[M, out]·W[out, in]
  return gemm(args, ctx, scratchOf(ctx), M, in, out, operand(dy, out, false),
              operand(w, in, false), output(dx, in), 0.0f);
}

Status linearGradWeightKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &dy = args.inputs[0], &x = args.inputs[1], &dw = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dw, "result", 2));
  int64_t M = leadingRows(x), in = x.dim(-1), out = dy.dim(-1);
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dy, "grad", M, out));
  G3RT_RETURN_IF_ERROR(checkShape(args, dw, "result", {out, in}));
  CudaContext &ctx = contextOf(args);
  // dW[out, in] = dy[M, out]ᵀ·x[M, in]
  return gemm(args, ctx, scratchOf(ctx), out, in, M, operand(dy, out, true),
              operand(x, in, false), output(dw, in), 0.0f);
}

//===----------------------------------------------------------------------===//
// LM head
//===----------------------------------------------------------------------===//

Status readSoftcap(const KernelArgs &args, std::optional<float> &softcap) {
  softcap.reset();
  if (!args.attrs || !args.attrs->find("softcap"))
    return Status();
  std::optional<double> c = args.attrs->getFloat("softcap");
  if (!c || !(*c > 0))
    return args.fail("softcap must be a positive float when present");
  softcap = float(*c);
  return Status();
}

Status lmHeadKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &y = args.outputs[0];
  int64_t M, H, V;
  G3RT_RETURN_IF_ERROR(checkLinear(args, x, table, "table", y, "result", M, H, V));
  std::optional<float> softcap;
  G3RT_RETURN_IF_ERROR(readSoftcap(args, softcap));
  CudaContext &ctx = contextOf(args);
  // logits[M, V] = x[M, H]·table[V, H]ᵀ, capped on the fp32 product.
  return gemm(args, ctx, scratchOf(ctx), M, V, H, operand(x, H, false), operand(table, H, true),
              output(y, V), 0.0f, softcap.value_or(0.0f));
}

// The logit gradient of a [mb, vc] block (rows m0.., vocabulary v0..), times
// the cap's derivative 1 - tanh²(l/c) when `logits` (the recomputed
// pre-cap block) is given. Written as fp32 (`out`, which may be `logits`),
// or as a bf16 pair hi + lo with hi = bf16(g) and lo = bf16(g - hi): the
// pair carries about 16 significant bits, so that bf16 tensor-core products
// of it with bf16 operands come within ~2^-17 of fp32 ones.
__global__ void lmHeadGradPrepDevice(const void *G, DType gt, int64_t V, int64_t m0, int64_t v0,
                                     int64_t mb, int64_t vc, const float *logits, float softcap,
                                     float *out, __nv_bfloat16 *hi, __nv_bfloat16 *lo) {
  for (int64_t r = blockIdx.x; r < mb; r += gridDim.x)
    for (int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
      int64_t i = r * vc + c;
      float g = loadFloat(G, gt, (m0 + r) * V + v0 + c);
      if (logits) {
        float t = tanhf(__fdiv_rn(logits[i], softcap));
        g = __fmul_rn(g, __fsub_rn(1.0f, __fmul_rn(t, t)));
      }
      if (hi) {
        __nv_bfloat16 h = __float2bfloat16(g);
        hi[i] = h;
        lo[i] = __float2bfloat16(__fsub_rn(g, __bfloat162float(h)));
      } else {
        out[i] = g;
      }
    }
}

// dx = g'·table and dtable = g'ᵀ·x, with g' the (capped) logit gradient.
//
// g' is [M, V] and, at Gemma's vocabulary, far larger than the workspace, so
// it is made a block at a time: M in blocks of Mb rows (so that an fp32
// accumulator for those rows of dx fits, when dx is not f32 itself), V in
// chunks of Vc within each. Per chunk: recompute the pre-cap logits (softcap
// only), form g', then dtable[chunk] += g'ᵀ·x[rows] and dx[rows] +=
// g'·table[chunk]; the accumulations run in fp32 (cuBLAS beta = 1 on fp32
// outputs), and dx is rounded once at the end of its row block.
//
// The usual operands are bf16 x and table with an fp32 g. cuBLAS cannot mix
// them, and fp32 GEMMs would run an order of magnitude slower than the bf16
// tensor cores on what is the largest product of the step; g' is therefore
// split into bf16 hi + lo (see lmHeadGradPrepDevice), two tensor-core GEMMs
// per product, which stays within fp32 tolerance of the CPU reference.
// Other type combinations keep g' in fp32 and go through gemm()'s staging.
Status lmHeadGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 2));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &dl = args.inputs[2];
  const TensorView &dx = args.outputs[0], &dtable = args.outputs[1];
  int64_t M, H, V;
  G3RT_RETURN_IF_ERROR(checkLinear(args, x, table, "table", dl, "grad", M, H, V));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dx, "input_grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dtable, "table_grad"));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dx, "input_grad", M, H));
  G3RT_RETURN_IF_ERROR(checkShape(args, dtable, "table_grad", {V, H}));
  std::optional<float> softcap;
  G3RT_RETURN_IF_ERROR(readSoftcap(args, softcap));
  CudaContext &ctx = contextOf(args);
  if (M == 0 || V == 0 || H == 0) {
    G3RT_RETURN_IF_ERROR(memsetZero(args, dx.data, dx.bytes()));
    return memsetZero(args, dtable.data, dtable.bytes());
  }

  const bool split = x.dtype == DType::BF16 && table.dtype == DType::BF16 &&
                     dtable.dtype == DType::F32;
  const bool dxDirect = dx.dtype == DType::F32;
  // Without the cap, an fp32 gradient is g' itself, used in place.
  const bool gInPlace = !split && !softcap && dl.dtype == DType::F32;
  // Scratch bytes per element of a g' block: hi + lo (+ fp32 logits), or
  // one fp32 copy.
  const size_t perElem = split ? (softcap ? 8 : 4) : (gInPlace ? 0 : 4);
  Scratch scratch = scratchOf(ctx);
  // The fp32 path leaves half of the scratch to gemm() for staging.
  const size_t own = split ? scratch.bytes : scratch.bytes / 2;
  auto accBytes = [&](int64_t mb) { return dxDirect ? 0 : alignUp(size_t(mb) * size_t(H) * 4); };
  int64_t Mb = M, Vc = V;
  while (Mb > 1 && accBytes(Mb) > own / 2)
    Mb = (Mb + 1) / 2;
  for (;;) {
    size_t acc = accBytes(Mb), slack = 4 * kAlign;
    size_t left = own > acc + slack ? own - acc - slack : 0;
    Vc = perElem == 0 ? V : int64_t(std::min<size_t>(size_t(V), left / (size_t(Mb) * perElem)));
    if (Vc >= std::min<int64_t>(V, 256) || (Mb == 1 && Vc >= 1))
      break;
    if (Mb == 1)
      return args.fail("the workspace is too small for a vocabulary of " + std::to_string(V));
    Mb = (Mb + 1) / 2;
  }
  if (Vc < V && Vc > 256)
    Vc = Vc / 256 * 256;
  if (!split && dtable.dtype != DType::F32 && Mb < M)
    return args.fail("a " + std::string(dtypeName(dtable.dtype)) +
                     " table_grad needs all rows in one block; use an F32 table_grad");

  float *logits = nullptr, *gF32 = nullptr, *dxAcc = nullptr;
  __nv_bfloat16 *hi = nullptr, *lo = nullptr;
  if (split) {
    if (softcap)
      logits = static_cast<float *>(scratch.take(size_t(Mb) * size_t(Vc) * 4));
    hi = static_cast<__nv_bfloat16 *>(scratch.take(size_t(Mb) * size_t(Vc) * 2));
    lo = static_cast<__nv_bfloat16 *>(scratch.take(size_t(Mb) * size_t(Vc) * 2));
  } else if (!gInPlace) {
    gF32 = static_cast<float *>(scratch.take(size_t(Mb) * size_t(Vc) * 4));
    if (softcap)
      logits = gF32;
  }
  if (!dxDirect)
    dxAcc = static_cast<float *>(scratch.take(size_t(Mb) * size_t(H) * 4));
  Scratch inner = scratch; // what gemm() may stage in

  for (int64_t m0 = 0; m0 < M; m0 += Mb) {
    const int64_t mb = std::min(Mb, M - m0);
    const Operand xRows{offsetBytes(x.data, x.dtype, m0 * H), x.dtype, H, false};
    const Output dxOut = dxDirect ? Output{offsetBytes(dx.data, dx.dtype, m0 * H), DType::F32, H}
                                  : Output{dxAcc, DType::F32, H};
    for (int64_t v0 = 0; v0 < V; v0 += Vc) {
      const int64_t vc = std::min(Vc, V - v0);
      const void *tableChunk = offsetBytes(table.data, table.dtype, v0 * H);
      if (softcap)
        G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, mb, vc, H, xRows,
                                  Operand{tableChunk, table.dtype, H, true},
                                  Output{logits, DType::F32, vc}, 0.0f));
      // The g' block as one or two [mb, vc] operands whose products add up.
      Operand parts[2];
      int nParts = 1;
      if (gInPlace) {
        parts[0] = {offsetBytes(dl.data, dl.dtype, m0 * V + v0), DType::F32, V, false};
      } else {
        int threads = int(std::clamp<int64_t>((vc + 31) / 32 * 32, 32, kThreads));
        lmHeadGradPrepDevice<<<unsigned(std::min<int64_t>(mb, int64_t(1) << 20)), threads, 0,
                               ctx.stream>>>(dl.data, dl.dtype, V, m0, v0, mb, vc, logits,
                                             softcap.value_or(1.0f), gF32, hi, lo);
        G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_grad logit gradient");
        if (split) {
          parts[0] = {hi, DType::BF16, vc, false};
          parts[1] = {lo, DType::BF16, vc, false};
          nParts = 2;
        } else {
          parts[0] = {gF32, DType::F32, vc, false};
        }
      }
      for (int k = 0; k < nParts; ++k) {
        Operand g = parts[k], gT = parts[k];
        gT.trans = true;
        // dtable[v0.., H] (+)= g'[mb, vc]ᵀ·x[m0.., H]
        G3RT_RETURN_IF_ERROR(gemm(
            args, ctx, inner, vc, H, mb, gT, xRows,
            Output{offsetBytes(dtable.data, dtable.dtype, v0 * H), dtable.dtype, H},
            m0 == 0 && k == 0 ? 0.0f : 1.0f));
        // dx[m0.., H] (+)= g'[mb, vc]·table[v0.., H]
        G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, mb, H, vc, g,
                                  Operand{tableChunk, table.dtype, H, false}, dxOut,
                                  v0 == 0 && k == 0 ? 0.0f : 1.0f));
      }
    }
    if (!dxDirect)
      G3RT_RETURN_IF_ERROR(copy2D(args, dxAcc, DType::F32, H,
                                  offsetBytes(dx.data, dx.dtype, m0 * H), dx.dtype, H, mb, H));
  }
  return Status();
}

//===----------------------------------------------------------------------===//
// Expert (grouped) linear layers
//===----------------------------------------------------------------------===//

Status checkExpertWeight(const KernelArgs &args, const TensorView &w, int64_t out, int64_t in,
                         const char *what) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, w, what, 3));
  if (w.rank() != 3 || w.dim(1) != out || w.dim(2) != in)
    return args.fail(std::string(what) + " has shape " + shapeString(w.shape) + ", expected [E, " +
                     std::to_string(out) + ", " + std::to_string(in) + "]");
  return Status();
}

/// Copies the expert offsets [E + 1] to the host (the one place these
/// kernels wait for the device: the per-expert GEMMs are issued from the
/// host) and checks them as the CPU does.
Status readOffsets(const KernelArgs &args, const TensorView &t, int64_t experts, int64_t rows,
                   std::vector<int64_t> &offsets) {
  G3RT_RETURN_IF_ERROR(checkIndex(args, t, "expert_offsets"));
  if (t.numel() != experts + 1)
    return args.fail("expert_offsets has " + std::to_string(t.numel()) + " elements, expected " +
                     std::to_string(experts + 1) + " (experts + 1)");
  cudaStream_t stream = contextOf(args).stream;
  std::vector<uint8_t> raw(t.bytes());
  cudaError_t e = cudaMemcpyAsync(raw.data(), t.data, t.bytes(), cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess)
    e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "reading expert_offsets");
  TensorView host = t;
  host.data = raw.data();
  offsets.resize(size_t(experts + 1));
  for (int64_t i = 0; i <= experts; ++i)
    offsets[size_t(i)] = t.dtype == DType::I64 ? host.i64()[i] : int64_t(host.i32()[i]);
  if (offsets[0] != 0)
    return args.fail("expert offset " + std::to_string(offsets[0]) + " at position 0 must be 0");
  for (int64_t i = 1; i <= experts; ++i)
    if (offsets[size_t(i)] < offsets[size_t(i - 1)])
      return args.fail("expert offset " + std::to_string(offsets[size_t(i)]) + " at position " +
                       std::to_string(i) + " is below the previous offset " +
                       std::to_string(offsets[size_t(i - 1)]));
  if (offsets[size_t(experts)] > rows)
    return args.fail("expert offset " + std::to_string(offsets[size_t(experts)]) +
                     " at position " + std::to_string(experts) + " exceeds the row count " +
                     std::to_string(rows));
  return Status();
}

/// Zeroes rows [from, M) of a row-major [M, cols] tensor.
Status zeroTailRows(const KernelArgs &args, const TensorView &t, int64_t from, int64_t cols) {
  int64_t M = t.dim(0);
  if (from >= M)
    return Status();
  return memsetZero(args, offsetBytes(t.data, t.dtype, from * cols),
                    size_t((M - from) * cols) * dtypeSize(t.dtype));
}

Status expertLinearKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  const TensorView &x = args.inputs[0], &off = args.inputs[1], &w = args.inputs[2];
  const TensorView &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkMatrix(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkMatrix(args, y, "result"));
  int64_t M = x.dim(0), in = x.dim(1), out = y.dim(1);
  G3RT_RETURN_IF_ERROR(checkExpertWeight(args, w, out, in, "weight"));
  G3RT_RETURN_IF_ERROR(checkShape(args, y, "result", {M, out}));
  int64_t E = w.dim(0);
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readOffsets(args, off, E, M, offsets));
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    // y[r0.., out] = x[r0.., in]·W[e]ᵀ
    G3RT_RETURN_IF_ERROR(gemm(args, ctx, scratch, rows, out, in,
                              Operand{offsetBytes(x.data, x.dtype, r0 * in), x.dtype, in, false},
                              Operand{offsetBytes(w.data, w.dtype, e * out * in), w.dtype, in, true},
                              Output{offsetBytes(y.data, y.dtype, r0 * out), y.dtype, out}, 0.0f));
  }
  return zeroTailRows(args, y, offsets[size_t(E)], out);
}

Status expertLinearGradInputKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  const TensorView &dy = args.inputs[0], &off = args.inputs[1], &w = args.inputs[2];
  const TensorView &dx = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkMatrix(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkMatrix(args, dx, "result"));
  int64_t M = dy.dim(0), out = dy.dim(1), in = dx.dim(1);
  G3RT_RETURN_IF_ERROR(checkExpertWeight(args, w, out, in, "weight"));
  G3RT_RETURN_IF_ERROR(checkShape(args, dx, "result", {M, in}));
  int64_t E = w.dim(0);
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readOffsets(args, off, E, M, offsets));
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    // dx[r0.., in] = dy[r0.., out]·W[e]
    G3RT_RETURN_IF_ERROR(
        gemm(args, ctx, scratch, rows, in, out,
             Operand{offsetBytes(dy.data, dy.dtype, r0 * out), dy.dtype, out, false},
             Operand{offsetBytes(w.data, w.dtype, e * out * in), w.dtype, in, false},
             Output{offsetBytes(dx.data, dx.dtype, r0 * in), dx.dtype, in}, 0.0f));
  }
  return zeroTailRows(args, dx, offsets[size_t(E)], in);
}

Status expertLinearGradWeightKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  const TensorView &dy = args.inputs[0], &off = args.inputs[1], &x = args.inputs[2];
  const TensorView &dw = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkMatrix(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkMatrix(args, x, "input"));
  int64_t M = x.dim(0), in = x.dim(1), out = dy.dim(1);
  G3RT_RETURN_IF_ERROR(checkShape(args, dy, "grad", {M, out}));
  G3RT_RETURN_IF_ERROR(checkExpertWeight(args, dw, out, in, "result"));
  int64_t E = dw.dim(0);
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readOffsets(args, off, E, M, offsets));
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    // dW[e][out, in] = dy[r0.., out]ᵀ·x[r0.., in]; an expert without rows
    // gets zeros (gemm() with K = 0).
    G3RT_RETURN_IF_ERROR(
        gemm(args, ctx, scratch, out, in, rows,
             Operand{offsetBytes(dy.data, dy.dtype, r0 * out), dy.dtype, out, true},
             Operand{offsetBytes(x.data, x.dtype, r0 * in), x.dtype, in, false},
             Output{offsetBytes(dw.data, dw.dtype, e * out * in), dw.dtype, in}, 0.0f));
  }
  return Status();
}

//===----------------------------------------------------------------------===//
// Cross-entropy and token accuracy
//===----------------------------------------------------------------------===//

/// logsumexp of a row of V logits, in double as on the CPU (the max in
/// fp32, the exponentials and their sum in double), for every thread.
__device__ double rowLogSumExp(const void *l, DType lt, int64_t base, int64_t V) {
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
    m = fmaxf(m, loadFloat(l, lt, base + v));
  m = blockMax(m);
  double s = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
    s += exp(double(loadFloat(l, lt, base + v)) - double(m));
  s = blockSum(s);
  return double(m) + log(s);
}

// Per row: the loss term (0 when ignored, NaN for a target outside [0, V))
// and whether the row counts.
__global__ void crossEntropyRowsDevice(const void *logits, DType lt, const void *targets,
                                       DType tt, int64_t rows, int64_t V, int64_t ignoreIndex,
                                       double *rowLoss, int *counted) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t t = loadIndex(targets, tt, r);
    if (t == ignoreIndex) {
      if (threadIdx.x == 0) {
        rowLoss[r] = 0;
        counted[r] = 0;
      }
      continue;
    }
    if (t < 0 || t >= V) {
      if (threadIdx.x == 0) {
        rowLoss[r] = NAN;
        counted[r] = 1;
      }
      continue;
    }
    double lse = rowLogSumExp(logits, lt, r * V, V);
    if (threadIdx.x == 0) {
      rowLoss[r] = lse - double(loadFloat(logits, lt, r * V + t));
      counted[r] = 1;
    }
  }
}

// Σ rowLoss / num_items, or 0 when no row counts; a counted batch with
// num_items <= 0 (an error on the CPU) gives NaN.
__global__ void crossEntropyFinishDevice(const double *rowLoss, const int *counted, int64_t rows,
                                         const void *numItems, DType nt, void *loss, DType lossT) {
  double s = 0;
  long long any = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    s += rowLoss[r];
    any += counted[r];
  }
  s = blockSum(s);
  any = blockSum(any);
  if (threadIdx.x == 0) {
    double n = loadFloat(numItems, nt, 0);
    float v = any == 0 ? 0.0f : (n > 0 ? float(s / n) : NAN);
    storeFloat(loss, lossT, 0, v);
  }
}

struct CrossEntropyShape {
  int64_t rows, V, ignoreIndex;
};

Status prepareCrossEntropy(const KernelArgs &args, CrossEntropyShape &shape) {
  const TensorView &logits = args.inputs[0], &tv = args.inputs[1], &n = args.inputs[2];
  G3RT_RETURN_IF_ERROR(checkFloat(args, logits, "logits"));
  G3RT_RETURN_IF_ERROR(checkIndex(args, tv, "targets"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, n, "num_items", 0));
  if (n.numel() != 1)
    return args.fail("num_items must be a scalar, got " + describe(n));
  G3RT_RETURN_IF_ERROR(args.requireInt("ignore_index", shape.ignoreIndex));
  shape.V = logits.dim(-1);
  shape.rows = leadingRows(logits);
  if (tv.numel() != shape.rows)
    return args.fail("targets " + shapeString(tv.shape) + " do not match the rows of logits " +
                     shapeString(logits.shape));
  return Status();
}

Status crossEntropyKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  CrossEntropyShape s;
  G3RT_RETURN_IF_ERROR(prepareCrossEntropy(args, s));
  const TensorView &loss = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, loss, "result", 0));
  if (loss.numel() != 1)
    return args.fail("result must be a scalar, got " + describe(loss));
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  double *rowLoss = static_cast<double *>(scratch.take(size_t(s.rows) * 8 + 8));
  int *counted = static_cast<int *>(scratch.take(size_t(s.rows) * 4 + 4));
  if (!rowLoss || !counted)
    return args.fail("the workspace is too small for " + std::to_string(s.rows) + " rows");
  const TensorView &logits = args.inputs[0], &targets = args.inputs[1], &n = args.inputs[2];
  if (s.rows > 0) {
    crossEntropyRowsDevice<<<rowBlocks(s.rows), kRowThreads, 0, ctx.stream>>>(
        logits.data, logits.dtype, targets.data, targets.dtype, s.rows, s.V, s.ignoreIndex,
        rowLoss, counted);
    G3RT_CUDA_CHECK_LAUNCH(args, "cross_entropy rows");
  }
  crossEntropyFinishDevice<<<1, 1024, 0, ctx.stream>>>(rowLoss, counted, s.rows, n.data, n.dtype,
                                                       loss.data, loss.dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "cross_entropy");
  return Status();
}

// One block per row: (softmax - onehot)·dloss/num_items on counted rows (a
// counted row means the batch counts, so the CPU's coefficient applies), 0
// on ignored rows, NaN on rows whose target is out of range or when
// num_items <= 0 (errors on the CPU).
__global__ void crossEntropyGradDevice(const void *logits, DType lt, const void *targets,
                                       DType tt, const void *numItems, DType nt,
                                       const void *dloss, DType dt, int64_t rows, int64_t V,
                                       int64_t ignoreIndex, void *out, DType ot) {
  double n = loadFloat(numItems, nt, 0);
  double coef = double(loadFloat(dloss, dt, 0)) / n;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t base = r * V;
    int64_t t = loadIndex(targets, tt, r);
    if (t == ignoreIndex || t < 0 || t >= V || !(n > 0)) {
      float fillValue = t == ignoreIndex ? 0.0f : NAN;
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
        storeFloat(out, ot, base + v, fillValue);
      continue;
    }
    double lse = rowLogSumExp(logits, lt, base, V);
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      double p = exp(double(loadFloat(logits, lt, base + v)) - lse);
      storeFloat(out, ot, base + v, float((p - (v == t ? 1.0 : 0.0)) * coef));
    }
  }
}

Status crossEntropyGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 4, 1));
  CrossEntropyShape s;
  G3RT_RETURN_IF_ERROR(prepareCrossEntropy(args, s));
  const TensorView &dloss = args.inputs[3], &dl = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, dloss, "grad", 0));
  if (dloss.numel() != 1)
    return args.fail("grad must be a scalar, got " + describe(dloss));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dl, "result"));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dl, "result", s.rows, s.V));
  if (s.rows == 0 || s.V == 0)
    return Status();
  const TensorView &logits = args.inputs[0], &targets = args.inputs[1], &n = args.inputs[2];
  crossEntropyGradDevice<<<rowBlocks(s.rows), kRowThreads, 0, contextOf(args).stream>>>(
      logits.data, logits.dtype, targets.data, targets.dtype, n.data, n.dtype, dloss.data,
      dloss.dtype, s.rows, s.V, s.ignoreIndex, dl.data, dl.dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "cross_entropy_grad");
  return Status();
}

/// The better of two (value, index) candidates: the larger value, the lower
/// index on ties (the CPU's first maximum).
__device__ __forceinline__ void argmaxCombine(float &v, int64_t &i, float ov, int64_t oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

// One block per row; the counts go to two integer counters (integer atomics
// are exact, so the totals do not depend on the order).
__global__ void tokenAccuracyDevice(const void *logits, DType lt, const void *targets, DType tt,
                                    int64_t rows, int64_t V, int64_t ignoreIndex,
                                    unsigned long long *counters) {
  __shared__ float vals[32];
  __shared__ int64_t idxs[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t t = loadIndex(targets, tt, r);
    if (t == ignoreIndex)
      continue;
    int64_t base = r * V;
    // Each thread scans its columns in increasing order, keeping the first
    // maximum; the threads' candidates then merge by (value, lower index).
    float best = -INFINITY;
    int64_t bestIdx = INT64_MAX;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      float l = loadFloat(logits, lt, base + v);
      if (bestIdx == INT64_MAX || l > best) {
        best = l;
        bestIdx = v;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_down_sync(0xffffffffu, best, o);
      int64_t oi = __shfl_down_sync(0xffffffffu, bestIdx, o);
      argmaxCombine(best, bestIdx, ov, oi);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) {
      vals[warp] = best;
      idxs[warp] = bestIdx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < warps; ++w)
        argmaxCombine(best, bestIdx, vals[w], idxs[w]);
      atomicAdd(&counters[0], bestIdx == t ? 1ull : 0ull);
      atomicAdd(&counters[1], 1ull);
    }
    __syncthreads();
  }
}

__global__ void tokenAccuracyFinishDevice(const unsigned long long *counters, void *correct,
                                          DType ct, void *total, DType tt) {
  storeFloat(correct, ct, 0, float(counters[0]));
  storeFloat(total, tt, 0, float(counters[1]));
}

/// TRL's mean token accuracy, as two counts the caller sums over batches.
Status tokenAccuracyKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 2));
  const TensorView &logits = args.inputs[0], &tv = args.inputs[1];
  int64_t ignoreIndex;
  G3RT_RETURN_IF_ERROR(args.requireInt("ignore_index", ignoreIndex));
  G3RT_RETURN_IF_ERROR(checkFloat(args, logits, "logits"));
  G3RT_RETURN_IF_ERROR(checkIndex(args, tv, "targets"));
  G3RT_RETURN_IF_ERROR(checkScalarFloat(args, args.outputs[0], "correct"));
  G3RT_RETURN_IF_ERROR(checkScalarFloat(args, args.outputs[1], "total"));
  int64_t V = logits.dim(-1), rows = leadingRows(logits);
  if (tv.numel() != rows)
    return args.fail("targets " + shapeString(tv.shape) + " do not match the rows of logits " +
                     shapeString(logits.shape));
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  auto *counters = static_cast<unsigned long long *>(scratch.take(2 * sizeof(unsigned long long)));
  G3RT_RETURN_IF_ERROR(memsetZero(args, counters, 2 * sizeof(unsigned long long)));
  if (rows > 0 && V > 0) {
    tokenAccuracyDevice<<<rowBlocks(rows), kRowThreads, 0, ctx.stream>>>(
        logits.data, logits.dtype, tv.data, tv.dtype, rows, V, ignoreIndex, counters);
    G3RT_CUDA_CHECK_LAUNCH(args, "token_accuracy");
  }
  tokenAccuracyFinishDevice<<<1, 1, 0, ctx.stream>>>(counters, args.outputs[0].data,
                                                     args.outputs[0].dtype, args.outputs[1].data,
                                                     args.outputs[1].dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "token_accuracy counts");
  return Status();
}

} // namespace

void registerCudaDenseKernels(KernelTable &table) {
  table.emplace_back("token_accuracy", tokenAccuracyKernel);
  table.emplace_back("embedding", embeddingKernel);
  table.emplace_back("embedding_grad", embeddingGradKernel);
  table.emplace_back("rms_norm", rmsNormKernel);
  table.emplace_back("rms_norm_grad", rmsNormGradKernel);
  table.emplace_back("linear", linearKernel);
  table.emplace_back("linear_grad_input", linearGradInputKernel);
  table.emplace_back("linear_grad_weight", linearGradWeightKernel);
  table.emplace_back("lm_head", lmHeadKernel);
  table.emplace_back("lm_head_grad", lmHeadGradKernel);
  table.emplace_back("cross_entropy", crossEntropyKernel);
  table.emplace_back("cross_entropy_grad", crossEntropyGradKernel);
  table.emplace_back("expert_linear", expertLinearKernel);
  table.emplace_back("expert_linear_grad_input", expertLinearGradInputKernel);
  table.emplace_back("expert_linear_grad_weight", expertLinearGradWeightKernel);
}

} // namespace g3rt::cuda
