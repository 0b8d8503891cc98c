//===- kernels_dense.cu - embedding, norm, linear and loss CUDA kernels ---===//
//
// The CUDA versions of the dense layers of a step (embedding, Gemma's
// RMSNorm, the linear layers, the tied LM head, the grouped expert layers,
// the token cross-entropy, and the LM head fused with the cross-entropy),
// with the math and checks of runtime/cpu/kernels_dense.cpp.
//
// Matrix products go through cuBLAS with fp32 accumulation
// (CUBLAS_COMPUTE_32F, never TF32): bf16 or f16 operands use the tensor
// cores, fp32 operands the fp32 path, so products agree with the CPU's fp32
// dot products up to summation order. cuBLAS multiplies only operands of one
// type; the few mixed calls stage converted copies in the workspace (see
// gemm()). Row reductions (norm statistics, logsumexp) run one block per row
// (one warp per row for norms of at most 512 elements) with the sums in
// double where the CPU sums in double; every reduction has a fixed
// shape-determined order, so results are reproducible run to run.
//
// Data-dependent errors (an id or target out of range) cannot be reported
// without a host round trip; these kernels never read or write out of bounds
// for them and poison the affected values with NaN instead, so that a bad
// input still shows. Only the expert layers wait on the device: their
// per-expert GEMMs need the row offsets on the host. Products with a LoRA
// rank on one side run on the kernels of lowrank_products.cu instead, which
// read the offsets on the device.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_context.h"
#include "runtime/cuda/grouped_gemm.h"
#include "runtime/cuda/lowrank_products.h"
#include "runtime/cuda/lt_matmul.h"
#include "runtime/cuda/rope_tables.h"
#include "runtime/kernels/dense_checks.h"

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace g3rt::cuda {
namespace {

using namespace checks;

constexpr int kThreads = 256;
/// Threads of the blocks that reduce one vocabulary row (up to 262K logits).
constexpr int kRowThreads = 512;

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
// Pointers and zeroing
//===----------------------------------------------------------------------===//

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
// Soft cap and bf16 pairs
//===----------------------------------------------------------------------===//

// The LM head's soft cap c·tanh(l/c) and its derivative, with the CPU's fp32
// operations (explicit roundings, so that no FMA contraction differs). The
// tanh is shared: the capped value is c·t, the derivative 1 - t².
__device__ __forceinline__ float capTanh(float l, float c) { return tanhf(__fdiv_rn(l, c)); }
__device__ __forceinline__ float capValue(float l, float c) {
  return __fmul_rn(c, capTanh(l, c));
}
/// g·(1 - t²) for t = capTanh(l, c): the gradient through the cap.
__device__ __forceinline__ float capGrad(float g, float t) {
  return __fmul_rn(g, __fsub_rn(1.0f, __fmul_rn(t, t)));
}

/// g as the bf16 pair hi + lo, hi = bf16(g) and lo = bf16(g - hi): about 16
/// significant bits, so that bf16 tensor-core products of the pair with bf16
/// operands come within ~2^-17 of fp32 ones.
__device__ __forceinline__ void splitBf16(float g, __nv_bfloat16 &hi, __nv_bfloat16 &lo) {
  hi = __float2bfloat16(g);
  lo = __float2bfloat16(__fsub_rn(g, __bfloat162float(hi)));
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
        v = capValue(v, softcap);
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

/// A row-major output matrix; a product with beta ≠ 0 adds `addend` (of the
/// output's type and leading dimension) when it is set, else the output's
/// own contents.
struct Output {
  void *data;
  DType dtype;
  int64_t ld;
  const void *addend = nullptr;
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

/// Whether cuBLAS(Lt) with CUBLAS_COMPUTE_32F takes inputs of type `in` with
/// an output of type `out`.
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
            float softcap = 0) {
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
  double scale;
  EmbeddingShape shape;
  G3RT_RETURN_IF_ERROR(checkEmbedding(args, scale, shape));
  const int64_t V = shape.V, H = shape.H, N = shape.N;
  const TensorView &ids = args.inputs[0], &table = args.inputs[1], &y = args.outputs[0];
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
  double scale;
  int64_t paddingIdx;
  EmbeddingShape shape;
  G3RT_RETURN_IF_ERROR(checkEmbeddingGrad(args, scale, paddingIdx, shape));
  const int64_t V = shape.V, H = shape.H, N = shape.N;
  const TensorView &dy = args.inputs[0], &ids = args.inputs[1], &dtable = args.outputs[0];
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

  embeddingKeysDevice<<<cappedGrid(N), kThreads, 0, ctx.stream>>>(ids.data, ids.dtype, N, V,
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

// Rows of at most this many elements (QK-norm's head_dim) take one warp each:
// a block per row would spend its time in block-wide barriers.
constexpr int64_t kWarpRowMax = 512;

/// The sum over the warp, in every lane.
__device__ __forceinline__ double warpSumAll(double v) {
  return __shfl_sync(0xffffffffu, warpSum(v), 0);
}

/// 1/rms of row `base` for the calling warp (as inverseRms, per warp).
__device__ float warpInverseRms(const void *x, DType xt, int64_t base, int64_t D, double eps) {
  double ss = 0;
  for (int64_t d = threadIdx.x & 31; d < D; d += 32) {
    double v = loadFloat(x, xt, base + d);
    ss += v * v;
  }
  return float(1.0 / sqrt(warpSumAll(ss) / double(D) + eps));
}

__global__ void rmsNormWarpDevice(const void *x, DType xt, const void *w, DType wt, void *y,
                                  DType yt, int64_t rows, int64_t D, double eps) {
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows;
       r += warps) {
    int64_t base = r * D;
    float inv = warpInverseRms(x, xt, base, D, eps);
    for (int64_t d = threadIdx.x & 31; d < D; d += 32) {
      float gain = __fadd_rn(loadFloat(w, wt, d), 1.0f);
      storeFloat(y, yt, base + d, __fmul_rn(__fmul_rn(loadFloat(x, xt, base + d), inv), gain));
    }
  }
}

/// 8 bf16 elements from element i (a multiple of 8) in one 16-byte load.
__device__ __forceinline__ void loadBF16x8(const void *p, int64_t i, float (&v)[8]) {
  uint4 raw = *reinterpret_cast<const uint4 *>(static_cast<const __nv_bfloat16 *>(p) + i);
  const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&raw);
  for (int k = 0; k < 4; ++k) {
    float2 f = __bfloat1622float2(h[k]);
    v[2 * k] = f.x;
    v[2 * k + 1] = f.y;
  }
}

/// Rounds 8 floats to bf16 and stores them at element i (a multiple of 8).
__device__ __forceinline__ void storeBF16x8(void *p, int64_t i, const float (&v)[8]) {
  uint4 raw;
  __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&raw);
  for (int k = 0; k < 4; ++k)
    h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
  *reinterpret_cast<uint4 *>(static_cast<__nv_bfloat16 *>(p) + i) = raw;
}

// rms_norm for bf16 rows a multiple of 8 wide: a team (the block, or a warp
// for rows of at most 256, QK-norm's) per row, each thread with the same 8
// columns of every row in registers (one 16-byte load and store each). With
// WithAdd (add_rms_norm) the row is first the sum x + b, rounded to bf16 and
// stored as `sum`, as the add kernel gives it.
template <bool WarpTeams, bool WithAdd = false>
__global__ void rmsNormBF16Device(const void *x, const void *w, DType wt, void *y, int64_t rows,
                                  int64_t D, double eps, const void *b = nullptr,
                                  void *sum = nullptr) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t c0 = int64_t(WarpTeams ? lane : threadIdx.x) * 8;
  const bool owns = c0 < D;
  float gain[8];
  for (int k = 0; k < 8; ++k)
    gain[k] = owns ? __fadd_rn(loadFloat(w, wt, c0 + k), 1.0f) : 0.0f;
  const int64_t first = WarpTeams ? int64_t(blockIdx.x) * (blockDim.x >> 5) + warp : blockIdx.x;
  const int64_t step = WarpTeams ? int64_t(gridDim.x) * (blockDim.x >> 5) : gridDim.x;
  for (int64_t r = first; r < rows; r += step) {
    float xv[8] = {};
    if (owns) {
      loadBF16x8(x, r * D + c0, xv);
      if constexpr (WithAdd) {
        float bv[8];
        loadBF16x8(b, r * D + c0, bv);
        for (int k = 0; k < 8; ++k)
          xv[k] = __fadd_rn(xv[k], bv[k]);
        storeBF16x8(sum, r * D + c0, xv);
        for (int k = 0; k < 8; ++k)
          xv[k] = __bfloat162float(__float2bfloat16(xv[k]));
      }
    }
    double ss = 0;
    for (int k = 0; k < 8; ++k)
      ss += double(xv[k]) * double(xv[k]);
    ss = WarpTeams ? warpSumAll(ss) : blockSum(ss);
    float inv = float(1.0 / sqrt(ss / double(D) + eps));
    if (owns) {
      float out[8];
      for (int k = 0; k < 8; ++k)
        out[k] = __fmul_rn(__fmul_rn(xv[k], inv), gain[k]);
      storeBF16x8(y, r * D + c0, out);
    }
  }
}

/// The bf16 register kernels take rows a multiple of 8 wide, up to 256 (a
/// warp per row) or from 513 to 8192 (a block per row).
bool bf16NormRows(int64_t D) {
  return D % 8 == 0 && (D <= 256 || (D > kWarpRowMax && D <= 8192));
}

Status rmsNormKernel(const KernelArgs &args) {
  double eps;
  NormShape shape;
  G3RT_RETURN_IF_ERROR(checkRmsNorm(args, eps, shape));
  const int64_t D = shape.D, rows = shape.rows;
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &y = args.outputs[0];
  if (rows == 0)
    return Status();
  cudaStream_t stream = contextOf(args).stream;
  if (x.dtype == DType::BF16 && y.dtype == DType::BF16 && bf16NormRows(D) && aligned16(x) &&
      aligned16(y)) {
    if (D <= 256)
      rmsNormBF16Device<true><<<cappedGrid(rows, kThreads / 32), kThreads, 0, stream>>>(
          x.data, w.data, w.dtype, y.data, rows, D, eps);
    else
      rmsNormBF16Device<false><<<rowBlocks(rows), unsigned((D / 8 + 31) / 32 * 32), 0, stream>>>(
          x.data, w.data, w.dtype, y.data, rows, D, eps);
    G3RT_CUDA_CHECK_LAUNCH(args, "rms_norm");
    return Status();
  }
  if (D <= kWarpRowMax)
    rmsNormWarpDevice<<<cappedGrid(rows, kThreads / 32), kThreads, 0, contextOf(args).stream>>>(
        x.data, x.dtype, w.data, w.dtype, y.data, y.dtype, rows, D, eps);
  else
    rmsNormDevice<<<rowBlocks(rows), kThreads, 0, contextOf(args).stream>>>(
        x.data, x.dtype, w.data, w.dtype, y.data, y.dtype, rows, D, eps);
  G3RT_CUDA_CHECK_LAUNCH(args, "rms_norm");
  return Status();
}

/// The input gradient's optional addend (rms_norm_grad `plus`).
struct Addend {
  const void *data;
  DType dtype;
};

// One row of rms_norm_grad: dx (plus the addend, when there is one), and the
// row's dw terms added into dwPart, by the threads first, first + stride, ...
// of a team (a block or a warp) whose sum over its members `teamSum` returns
// to each of them. Each element of dy and the addend is read by the thread
// that writes it, before it does: dx may share their buffers.
template <typename TeamSum>
__device__ __forceinline__ void rmsNormGradRow(const void *x, DType xt, const void *w, DType wt,
                                               const void *dy, DType gt, void *dx, DType dxt,
                                               Addend add, int64_t D, int64_t base, float inv,
                                               int64_t first, int64_t stride, double *dwPart,
                                               TeamSum teamSum) {
  double dot = 0;
  for (int64_t d = first; d < D; d += stride) {
    float xhat = __fmul_rn(loadFloat(x, xt, base + d), inv);
    float g = loadFloat(dy, gt, base + d);
    float gain = __fadd_rn(loadFloat(w, wt, d), 1.0f);
    dot += double(__fmul_rn(g, gain)) * double(xhat);
    dwPart[d] += double(g) * double(xhat);
  }
  float mean = float(teamSum(dot) / double(D));
  for (int64_t d = first; d < D; d += stride) {
    float xhat = __fmul_rn(loadFloat(x, xt, base + d), inv);
    float g = loadFloat(dy, gt, base + d);
    float gain = __fadd_rn(loadFloat(w, wt, d), 1.0f);
    float v = __fmul_rn(__fsub_rn(__fmul_rn(g, gain), __fmul_rn(xhat, mean)), inv);
    if (add.data)
      v = __fadd_rn(loadFloat(add.data, add.dtype, base + d), v);
    storeFloat(dx, dxt, base + d, v);
  }
}

// Block b takes rows [b·R, (b+1)·R): per row the statistics, dx, and the
// row's terms of dw added into the block's own double partial sums (in
// shared memory; each column belongs to one thread). A second kernel adds
// the blocks' partials in block order, so dw does not depend on scheduling.
__global__ void rmsNormGradDevice(const void *x, DType xt, const void *w, DType wt, const void *dy,
                                  DType gt, void *dx, DType dxt, Addend add, int64_t rows,
                                  int64_t D, int64_t rowsPerBlock, double eps, double *partials) {
  extern __shared__ double dwPart[];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    dwPart[d] = 0;
  int64_t r0 = int64_t(blockIdx.x) * rowsPerBlock, r1 = min(rows, r0 + rowsPerBlock);
  for (int64_t r = r0; r < r1; ++r) {
    int64_t base = r * D;
    float inv = inverseRms(x, xt, base, D, eps);
    rmsNormGradRow(x, xt, w, wt, dy, gt, dx, dxt, add, D, base, inv, threadIdx.x, blockDim.x,
                   dwPart, [](double v) { return blockSum(v); });
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    partials[int64_t(blockIdx.x) * D + d] = dwPart[d];
}

/// Adds the block's per-warp dw sums (shared `warpParts`, warps * D doubles)
/// in warp order into out[0, D), after every warp has written its own.
__device__ __forceinline__ void sumWarpPartials(const double *warpParts, int64_t D, double *out) {
  const int warps = blockDim.x >> 5;
  __syncthreads();
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    double sum = 0;
    for (int k = 0; k < warps; ++k)
      sum += warpParts[k * D + d];
    out[d] = sum;
  }
}

// The same for rows of at most kWarpRowMax: a warp per row, each warp with
// its own dw partial sums, added in warp order at the end of the block.
__global__ void rmsNormGradWarpDevice(const void *x, DType xt, const void *w, DType wt,
                                      const void *dy, DType gt, void *dx, DType dxt, Addend add,
                                      int64_t rows, int64_t D, int64_t rowsPerBlock, double eps,
                                      double *partials) {
  extern __shared__ double warpParts[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  double *dwPart = warpParts + warp * D;
  for (int64_t d = lane; d < D; d += 32)
    dwPart[d] = 0;
  int64_t r0 = int64_t(blockIdx.x) * rowsPerBlock, r1 = min(rows, r0 + rowsPerBlock);
  for (int64_t r = r0 + warp; r < r1; r += warps) {
    int64_t base = r * D;
    float inv = warpInverseRms(x, xt, base, D, eps);
    rmsNormGradRow(x, xt, w, wt, dy, gt, dx, dxt, add, D, base, inv, lane, 32, dwPart,
                   [](double v) { return warpSumAll(v); });
  }
  sumWarpPartials(warpParts, D, partials + int64_t(blockIdx.x) * D);
}

/// A block's dw partial sums from its warps' register sums (each lane's 8
/// columns from c0), added in warp order through shared memory `warpParts`
/// (warps * D doubles) into out[0, D).
__device__ __forceinline__ void writeWarpPartials(const double (&dwAcc)[8], bool owns, int64_t c0,
                                                  int64_t D, double *warpParts, double *out) {
  const int warp = threadIdx.x >> 5;
  if (owns)
    for (int k = 0; k < 8; ++k)
      warpParts[warp * D + c0 + k] = dwAcc[k];
  sumWarpPartials(warpParts, D, out);
}

/// One row of the bf16 register kernels' rms_norm_grad: a lane's (or
/// thread's) 8 columns of x and of the incoming gradient g give its 8 dx
/// values in `out` and add its dw terms into dwAcc; `teamSum` sums over the
/// row's team and returns the sum to every member.
template <typename TeamSum>
__device__ __forceinline__ void bf16NormGradRow(const float (&xv)[8], const float (&g)[8],
                                                const float (&gain)[8], int64_t D, double eps,
                                                TeamSum teamSum, double (&dwAcc)[8],
                                                float (&out)[8]) {
  double ss = 0;
  for (int k = 0; k < 8; ++k)
    ss += double(xv[k]) * double(xv[k]);
  float inv = float(1.0 / sqrt(teamSum(ss) / double(D) + eps));
  double dot = 0;
  float xhat[8];
  for (int k = 0; k < 8; ++k) {
    xhat[k] = __fmul_rn(xv[k], inv);
    dot += double(__fmul_rn(g[k], gain[k])) * double(xhat[k]);
    dwAcc[k] += double(g[k]) * double(xhat[k]);
  }
  float mean = float(teamSum(dot) / double(D));
  for (int k = 0; k < 8; ++k)
    out[k] = __fmul_rn(__fsub_rn(__fmul_rn(g[k], gain[k]), __fmul_rn(xhat[k], mean)), inv);
}

// The same for bf16 activations whose rows are a multiple of 8 wide: each
// thread of a team keeps the same 8 columns of every row in registers (one
// 16-byte load each of x and dy, one store of dx) and sums its columns' dw
// terms in registers. A team is the block (rows up to 8192 wide) or, for rows
// of at most 256 (QK-norm), a warp; the partial sums are then added in warp
// order.
template <bool WarpTeams>
__global__ void rmsNormGradBF16Device(const void *x, const void *w, DType wt, const void *dy,
                                      void *dx, const void *addend, int64_t rows, int64_t D,
                                      int64_t rowsPerBlock, double eps, double *partials) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int member = WarpTeams ? lane : threadIdx.x;
  const int64_t c0 = int64_t(member) * 8;
  const bool owns = c0 < D;
  float gain[8];
  double dwAcc[8];
  for (int k = 0; k < 8; ++k) {
    gain[k] = owns ? __fadd_rn(loadFloat(w, wt, c0 + k), 1.0f) : 0.0f;
    dwAcc[k] = 0;
  }
  auto teamSum = [](double v) { return WarpTeams ? warpSumAll(v) : blockSum(v); };
  int64_t r0 = int64_t(blockIdx.x) * rowsPerBlock, r1 = min(rows, r0 + rowsPerBlock);
  for (int64_t r = r0 + (WarpTeams ? warp : 0); r < r1; r += WarpTeams ? warps : 1) {
    float xv[8] = {}, g[8] = {}, dxv[8];
    if (owns) {
      loadBF16x8(x, r * D + c0, xv);
      loadBF16x8(dy, r * D + c0, g);
    }
    bf16NormGradRow(xv, g, gain, D, eps, teamSum, dwAcc, dxv);
    if (owns) {
      if (addend) {
        float a[8];
        loadBF16x8(addend, r * D + c0, a);
        for (int k = 0; k < 8; ++k)
          dxv[k] = __fadd_rn(a[k], dxv[k]);
      }
      storeBF16x8(dx, r * D + c0, dxv);
    }
  }
  double *out = partials + int64_t(blockIdx.x) * D;
  if (!WarpTeams) {
    if (owns)
      for (int k = 0; k < 8; ++k)
        out[c0 + k] = dwAcc[k];
    return;
  }
  extern __shared__ double warpParts[];
  writeWarpPartials(dwAcc, owns, c0, D, warpParts, out);
}

// dw from the blocks' partial sums: a block per 32 columns, whose warps take
// every 8th partial row each (so that ~1000 partials are read by many loads
// in flight, not one chain per column), then warp 0 adds the 8 sums in warp
// order. The order depends on the shapes alone.
constexpr int kDwWarps = 8;
__global__ void rmsNormGradWeightDevice(const double *partials, int64_t blocks, int64_t D,
                                        void *dw, DType dwt) {
  __shared__ double sums[kDwWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t d = int64_t(blockIdx.x) * 32 + lane;
  double s = 0;
  if (d < D)
    for (int64_t b = warp; b < blocks; b += kDwWarps)
      s += partials[b * D + d];
  sums[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && d < D) {
    double t = 0;
    for (int k = 0; k < kDwWarps; ++k)
      t += sums[k][lane];
    storeFloat(dw, dwt, d, float(t));
  }
}

/// The split of a norm backward's rows into blocks, each adding its rows' dw
/// terms into its own row of D double partial sums (in the scratch space),
/// and the sum of those rows in block order into dw. About a thousand blocks
/// of at least `minRows` rows keep every SM busy while the partial sums stay
/// small; more rows per block only where they would not fit the scratch
/// space. The split depends on the shapes alone, so dw is reproducible.
struct NormPartials {
  int64_t rowsPerBlock = 0, blocks = 0;
  double *partials = nullptr;

  NormPartials(const CudaContext &ctx, int64_t rows, int64_t D, int64_t minRows) {
    Scratch scratch = scratchOf(ctx);
    rowsPerBlock = std::max<int64_t>(minRows, (rows + 1023) / 1024);
    auto blocksOf = [&](int64_t r) { return (rows + r - 1) / r; };
    while (size_t(blocksOf(rowsPerBlock)) * size_t(D) * sizeof(double) > scratch.bytes ||
           blocksOf(rowsPerBlock) > (int64_t(1) << 30))
      rowsPerBlock *= 2;
    blocks = blocksOf(rowsPerBlock);
    partials = static_cast<double *>(scratch.take(size_t(blocks) * size_t(D) * 8));
  }

  Status sumInto(const KernelArgs &args, const TensorView &dw, int64_t D) const {
    rmsNormGradWeightDevice<<<unsigned((D + 31) / 32), 32 * kDwWarps, 0,
                              contextOf(args).stream>>>(partials, blocks, D, dw.data, dw.dtype);
    G3RT_CUDA_CHECK_LAUNCH(args, "weight gradient");
    return Status();
  }
};

Status rmsNormGradKernel(const KernelArgs &args) {
  double eps;
  NormShape shape;
  G3RT_RETURN_IF_ERROR(checkRmsNormGrad(args, eps, shape));
  const int64_t D = shape.D, rows = shape.rows;
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &dy = args.inputs[2];
  const TensorView &dx = args.outputs[0], &dw = args.outputs[1];
  CudaContext &ctx = contextOf(args);
  if (rows == 0)
    return memsetZero(args, dw.data, dw.bytes());

  const bool warpRows = D <= kWarpRowMax;
  // The register-resident bf16 kernels where the rows allow them.
  const Addend add{shape.addend ? shape.addend->data : nullptr,
                   shape.addend ? shape.addend->dtype : DType::F32};
  bool bf16Rows = bf16NormRows(D);
  for (const TensorView *t : {&x, &dy, &dx, shape.addend})
    bf16Rows = bf16Rows && (!t || (t->dtype == DType::BF16 && aligned16(*t)));
  const int threads = bf16Rows && !warpRows ? int((D / 8 + 31) / 32 * 32) : kThreads;
  size_t shared = warpRows ? size_t(D) * sizeof(double) * (kThreads / 32)
                           : (bf16Rows ? 0 : size_t(D) * sizeof(double));
  int device = 0, maxShared = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&maxShared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "querying shared memory");
  if (shared > size_t(maxShared))
    return args.fail("normalised size " + std::to_string(D) + " is too large");
  // Only the generic block-per-row kernel's partial sums (D doubles, D above
  // 6144) can pass the default 48 KB: the warp kernels' rows are at most 512
  // wide and the bf16 block kernel keeps its sums in registers.
  if (shared > 48 * 1024) {
    e = cudaFuncSetAttribute(rmsNormGradDevice, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(shared));
    if (e != cudaSuccess)
      return cudaFailure(args, e, "enabling large shared memory");
  }
  const NormPartials p(ctx, rows, D, /*minRows=*/8);
  if (bf16Rows)
    (warpRows ? rmsNormGradBF16Device<true> : rmsNormGradBF16Device<false>)<<<
        unsigned(p.blocks), threads, shared, ctx.stream>>>(x.data, w.data, w.dtype, dy.data,
                                                           dx.data, add.data, rows, D,
                                                           p.rowsPerBlock, eps, p.partials);
  else
    (warpRows ? rmsNormGradWarpDevice : rmsNormGradDevice)<<<unsigned(p.blocks), kThreads, shared,
                                                             ctx.stream>>>(
        x.data, x.dtype, w.data, w.dtype, dy.data, dy.dtype, dx.data, dx.dtype, add, rows, D,
        p.rowsPerBlock, eps, p.partials);
  G3RT_CUDA_CHECK_LAUNCH(args, "rms_norm_grad");
  return p.sumInto(args, dw, D);
}

//===----------------------------------------------------------------------===//
// Fused norms: add_rms_norm, rms_norm_rope, rms_norm_rope_grad
//===----------------------------------------------------------------------===//

// The fused kernels run the kernels they fuse, one after the other, on the
// shapes their register kernels do not take.

Status addRmsNormKernel(const KernelArgs &args) {
  double eps;
  NormShape shape;
  G3RT_RETURN_IF_ERROR(checkAddRmsNorm(args, eps, shape));
  const int64_t D = shape.D, rows = shape.rows;
  const TensorView &a = args.inputs[0], &b = args.inputs[1], &w = args.inputs[2];
  const TensorView &sum = args.outputs[0], &y = args.outputs[1];
  bool bf16 = true;
  for (const TensorView *t : {&a, &b, &sum, &y})
    bf16 = bf16 && t->dtype == DType::BF16 && aligned16(*t);
  if (!bf16 || !bf16NormRows(D)) {
    G3RT_RETURN_IF_ERROR(runAsPart(args, findCudaKernel("add"), "add", {a, b}, {sum}, nullptr));
    return runAsPart(args, findCudaKernel("rms_norm"), "rms_norm", {sum, w}, {y}, args.attrs);
  }
  if (rows == 0)
    return Status();
  cudaStream_t stream = contextOf(args).stream;
  if (D <= 256)
    rmsNormBF16Device<true, true><<<cappedGrid(rows, kThreads / 32), kThreads, 0, stream>>>(
        a.data, w.data, w.dtype, y.data, rows, D, eps, b.data, sum.data);
  else
    rmsNormBF16Device<false, true><<<rowBlocks(rows), unsigned((D / 8 + 31) / 32 * 32), 0,
                                     stream>>>(a.data, w.data, w.dtype, y.data, rows, D, eps,
                                               b.data, sum.data);
  G3RT_CUDA_CHECK_LAUNCH(args, "add_rms_norm");
  return Status();
}

/// The register kernels of QK-norm + RoPE take bf16 heads of at most 256
/// elements, a multiple of 16 (each lane's 8 columns on one side of d/2).
bool bf16RopeHeads(int64_t d) { return d % 16 == 0 && d <= 256; }

/// Rotates a lane's 8 columns c0.. of a head of D by the token's angle table:
/// the partner of column c < D/2 is c + D/2, in lane + D/16, and back. Every
/// lane of the warp takes part in the exchange; lanes past the head (D < 256)
/// leave `out` as it is.
__device__ __forceinline__ void rotateLane(const float (&v)[8], int c0, int half, bool owns,
                                           int partnerLane, const float *cs, const float *sn,
                                           float (&out)[8]) {
  float pv[8];
  for (int k = 0; k < 8; ++k)
    pv[k] = __shfl_sync(0xffffffffu, v[k], partnerLane);
  if (!owns)
    return;
  for (int k = 0; k < 8; ++k) {
    const int c = c0 + k;
    // The rope kernel's roundings: no fused multiply-add.
    if (c < half)
      out[k] = __fsub_rn(__fmul_rn(v[k], cs[c]), __fmul_rn(pv[k], sn[c]));
    else
      out[k] = __fadd_rn(__fmul_rn(v[k], cs[c - half]), __fmul_rn(pv[k], sn[c - half]));
  }
}

__device__ __forceinline__ float roundBF16(float v) {
  return __bfloat162float(__float2bfloat16(v));
}

// rms_norm_rope: a block per token, whose angle table is built once in
// shared memory, and a warp per head with its 8 columns per lane in
// registers; the normalised value is rounded to bf16 before it is rotated,
// exactly as rms_norm then rope give it.
__global__ void rmsNormRopeBF16Device(const void *x, const void *w, DType wt, const void *pos,
                                      DType pt, void *y, int64_t tokens, int heads, int D,
                                      double eps, RopeFreqs freqs) {
  extern __shared__ float ropeTable[];
  const int half = D / 2, lane = threadIdx.x & 31, warp = threadIdx.x >> 5,
            warps = blockDim.x >> 5;
  float *cs = ropeTable, *sn = ropeTable + half;
  const int c0 = lane * 8;
  const bool owns = c0 < D;
  const int partner = owns ? (c0 < half ? lane + half / 8 : lane - half / 8) : lane;
  float gain[8];
  for (int k = 0; k < 8; ++k)
    gain[k] = owns ? __fadd_rn(loadFloat(w, wt, c0 + k), 1.0f) : 0.0f;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const float p = float(loadIndex(pos, pt, t));
    for (int i = threadIdx.x; i < half; i += blockDim.x)
      ropeAngle(freqs, p, i, 1.0f, cs[i], sn[i]);
    __syncthreads();
    for (int h = warp; h < heads; h += warps) {
      const int64_t base = (t * heads + h) * int64_t(D);
      float xv[8] = {};
      if (owns)
        loadBF16x8(x, base + c0, xv);
      double ss = 0;
      for (int k = 0; k < 8; ++k)
        ss += double(xv[k]) * double(xv[k]);
      const float inv = float(1.0 / sqrt(warpSumAll(ss) / double(D) + eps));
      float normed[8], out[8];
      for (int k = 0; k < 8; ++k)
        normed[k] = roundBF16(__fmul_rn(__fmul_rn(xv[k], inv), gain[k]));
      rotateLane(normed, c0, half, owns, partner, cs, sn, out);
      if (owns)
        storeBF16x8(y, base + c0, out);
    }
    __syncthreads();
  }
}

// rms_norm_rope_grad: as rms_norm_rope's kernel, the incoming gradient rotated
// back (and rounded to bf16, as the rope kernel would store it), then the
// register kernel's rms_norm_grad of each head. Block b takes a fixed run of
// tokens; its warps' dw terms are added in warp order into the block's
// partial sums, which rmsNormGradWeightDevice adds in block order.
__global__ void rmsNormRopeGradBF16Device(const void *x, const void *w, DType wt, const void *pos,
                                          DType pt, const void *dy, void *dx, int64_t tokens,
                                          int heads, int D, int64_t tokensPerBlock, double eps,
                                          RopeFreqs freqs, double *partials) {
  extern __shared__ double gradShared[];
  const int half = D / 2, lane = threadIdx.x & 31, warp = threadIdx.x >> 5,
            warps = blockDim.x >> 5;
  double *warpParts = gradShared;
  float *cs = reinterpret_cast<float *>(gradShared + warps * D), *sn = cs + half;
  const int c0 = lane * 8;
  const bool owns = c0 < D;
  const int partner = owns ? (c0 < half ? lane + half / 8 : lane - half / 8) : lane;
  float gain[8];
  double dwAcc[8];
  for (int k = 0; k < 8; ++k) {
    gain[k] = owns ? __fadd_rn(loadFloat(w, wt, c0 + k), 1.0f) : 0.0f;
    dwAcc[k] = 0;
  }
  const int64_t t0 = int64_t(blockIdx.x) * tokensPerBlock, t1 = min(tokens, t0 + tokensPerBlock);
  for (int64_t t = t0; t < t1; ++t) {
    const float p = float(loadIndex(pos, pt, t));
    for (int i = threadIdx.x; i < half; i += blockDim.x)
      ropeAngle(freqs, p, i, -1.0f, cs[i], sn[i]);
    __syncthreads();
    for (int h = warp; h < heads; h += warps) {
      const int64_t base = (t * heads + h) * int64_t(D);
      float xv[8] = {}, gv[8] = {}, g[8] = {};
      if (owns) {
        loadBF16x8(x, base + c0, xv);
        loadBF16x8(dy, base + c0, gv);
      }
      rotateLane(gv, c0, half, owns, partner, cs, sn, g);
      float out[8];
      for (int k = 0; k < 8; ++k)
        g[k] = roundBF16(g[k]);
      bf16NormGradRow(xv, g, gain, D, eps, [](double v) { return warpSumAll(v); }, dwAcc, out);
      if (owns)
        storeBF16x8(dx, base + c0, out);
    }
    __syncthreads();
  }
  writeWarpPartials(dwAcc, owns, c0, D, warpParts, partials + int64_t(blockIdx.x) * D);
}

/// Whether the register kernels take this fused QK-norm call: aligned bf16
/// x (and grad, for the backward) and first output, and heads bf16RopeHeads
/// takes.
bool bf16RopeCall(const KernelArgs &args, const RopeShape &r) {
  auto bf16 = [](const TensorView &t) { return t.dtype == DType::BF16 && aligned16(t); };
  const bool allBf16 = bf16(args.inputs[0]) && bf16(args.outputs[0]) &&
                       (args.inputs.size() < 4 || bf16(args.inputs[3]));
  return allBf16 && bf16RopeHeads(r.d) && r.n > 0;
}

Status rmsNormRopeKernel(const KernelArgs &args) {
  double eps;
  RopeShape r;
  G3RT_RETURN_IF_ERROR(checkRmsNormRope(args, eps, r));
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &pos = args.inputs[2],
                   &y = args.outputs[0];
  if (!bf16RopeCall(args, r)) {
    // The rope kernel reads each pair before writing it: it may rotate in place.
    G3RT_RETURN_IF_ERROR(
        runAsPart(args, findCudaKernel("rms_norm"), "rms_norm", {x, w}, {y}, args.attrs));
    return runAsPart(args, findCudaKernel("rope"), "rope", {y, pos}, {y}, args.attrs);
  }
  const int64_t tokens = r.B * r.T;
  if (tokens == 0)
    return Status();
  const int threads = 32 * int(std::min<int64_t>(r.n, 8));
  rmsNormRopeBF16Device<<<rowBlocks(tokens), threads, size_t(r.d) * sizeof(float),
                          contextOf(args).stream>>>(x.data, w.data, w.dtype, pos.data, pos.dtype,
                                                    y.data, tokens, int(r.n), int(r.d), eps,
                                                    makeRopeFreqs(r.d, r.theta, r.factor));
  G3RT_CUDA_CHECK_LAUNCH(args, "rms_norm_rope");
  return Status();
}

Status rmsNormRopeGradKernel(const KernelArgs &args) {
  double eps;
  RopeShape r;
  G3RT_RETURN_IF_ERROR(checkRmsNormRopeGrad(args, eps, r));
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &pos = args.inputs[2],
                   &dy = args.inputs[3], &dx = args.outputs[0], &dw = args.outputs[1];
  if (!bf16RopeCall(args, r)) {
    // Rotated back into dx, which rms_norm_grad then reads and overwrites
    // element by element (each by the thread that reads it).
    if (dx.dtype != dy.dtype)
      return args.fail("input_grad " + describe(dx) + " must have the type of grad " +
                       describe(dy));
    KernelAttrs back = *args.attrs;
    back.set("transpose", AttrValue::ofBool(true));
    G3RT_RETURN_IF_ERROR(runAsPart(args, findCudaKernel("rope"), "rope", {dy, pos}, {dx}, &back));
    return runAsPart(args, findCudaKernel("rms_norm_grad"), "rms_norm_grad", {x, w, dx}, {dx, dw},
                     args.attrs);
  }
  CudaContext &ctx = contextOf(args);
  const int64_t tokens = r.B * r.T, D = r.d;
  if (tokens == 0)
    return memsetZero(args, dw.data, dw.bytes());
  // Blocks of whole tokens (each a row of every head).
  const NormPartials p(ctx, tokens, D, /*minRows=*/1);
  const int warps = int(std::min<int64_t>(r.n, 8));
  const size_t shared = size_t(warps) * size_t(D) * sizeof(double) + size_t(D) * sizeof(float);
  rmsNormRopeGradBF16Device<<<unsigned(p.blocks), 32 * warps, shared, ctx.stream>>>(
      x.data, w.data, w.dtype, pos.data, pos.dtype, dy.data, dx.data, tokens, int(r.n), int(D),
      p.rowsPerBlock, eps, makeRopeFreqs(D, r.theta, r.factor), p.partials);
  G3RT_CUDA_CHECK_LAUNCH(args, "rms_norm_rope_grad");
  return p.sumInto(args, dw, D);
}

//===----------------------------------------------------------------------===//
// Linear layers
//===----------------------------------------------------------------------===//

Operand operand(const TensorView &t, int64_t ld, bool trans) {
  return {t.data, t.dtype, ld, trans};
}
Output output(const TensorView &t, int64_t ld, const TensorView *addend = nullptr) {
  return {t.data, t.dtype, ld, addend ? addend->data : nullptr};
}

// Products with a LoRA rank on one side go to the low-rank kernels
// (lowrank_products.h) when they take the operands; each helper sets `done`.

/// The products of the linear layers' forward and input gradient per row
/// group: y[M, yCols] = x[M, xCols]·W_eᵀ with W_e [yCols, xCols]
/// (`transposed`, the forward) or x·W_e with W_e [xCols, yCols] (the input
/// gradient), plus s.addend.
Status lowRankProduct(const KernelArgs &args, const RowGroups &g, const TensorView &x,
                      int64_t xCols, const TensorView &w, bool transposed, int64_t yCols,
                      const TensorView &y, const MatmulShape &s, bool &done) {
  cudaStream_t stream = contextOf(args).stream;
  const void *a = s.addend ? s.addend->data : nullptr;
  cudaError_t e = cudaSuccess;
  if ((done = lowRankFits(x.dtype, w.dtype, yCols, xCols)))
    e = lowRankNarrowOutput(stream, g, x.data, xCols, w.data, transposed, yCols, a, y.data,
                            y.dtype);
  else if ((done = lowRankFits(x.dtype, w.dtype, xCols, yCols)))
    e = lowRankNarrowInner(stream, g, x.data, xCols, w.data, transposed, yCols, a, y.data,
                           y.dtype);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "low-rank product");
}

/// dW_e[out, in] = dy[rows of e, out]ᵀ·x[rows of e, in].
Status lowRankLinearGradWeight(const KernelArgs &args, const RowGroups &g, const TensorView &dy,
                               const TensorView &x, const TensorView &dw, int64_t in,
                               int64_t out, bool &done) {
  Scratch scratch = scratchOf(contextOf(args));
  done = lowRankFits(dy.dtype, x.dtype, std::min(in, out), std::max(in, out)) &&
         lowRankWeightGradFits(g, out, in, scratch.bytes);
  if (!done)
    return Status();
  cudaError_t e = lowRankWeightGrad(contextOf(args).stream, g, dy.data, out, x.data, in, dw.data,
                                    dw.dtype, scratch.ptr, scratch.bytes);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "low-rank weight gradient");
}

RowGroups expertGroups(const TensorView &offsets, int64_t experts, int64_t rows) {
  return {offsets.data, offsets.dtype, experts, rows};
}

Status linearKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearProduct(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out;
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &y = args.outputs[0];
  bool done = false;
  G3RT_RETURN_IF_ERROR(
      lowRankProduct(args, {nullptr, DType::I32, 1, M}, x, in, w, true, out, y, shape, done));
  if (done)
    return Status();
  CudaContext &ctx = contextOf(args);
  // y[M, out] = x[M, in]·W[out, in]ᵀ (+ addend)
  return gemm(args, ctx, scratchOf(ctx), M, out, in, operand(x, in, false), operand(w, in, true),
              output(y, out, shape.addend), shape.addend ? 1.0f : 0.0f);
}

Status linearGradInputKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearGradInput(args, shape));
  const int64_t out = shape.out, in = shape.in, M = shape.M;
  const TensorView &dy = args.inputs[0], &w = args.inputs[1], &dx = args.outputs[0];
  bool done = false;
  G3RT_RETURN_IF_ERROR(
      lowRankProduct(args, {nullptr, DType::I32, 1, M}, dy, out, w, false, in, dx, shape, done));
  if (done)
    return Status();
  CudaContext &ctx = contextOf(args);
  // dx[M, in] = dy[M, out]·W[out, in] (+ addend)
  return gemm(args, ctx, scratchOf(ctx), M, in, out, operand(dy, out, false),
              operand(w, in, false), output(dx, in, shape.addend), shape.addend ? 1.0f : 0.0f);
}

Status linearGradWeightKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearGradWeight(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out;
  const TensorView &dy = args.inputs[0], &x = args.inputs[1], &dw = args.outputs[0];
  bool done = false;
  G3RT_RETURN_IF_ERROR(
      lowRankLinearGradWeight(args, {nullptr, DType::I32, 1, M}, dy, x, dw, in, out, done));
  if (done)
    return Status();
  CudaContext &ctx = contextOf(args);
  // dW[out, in] = dy[M, out]ᵀ·x[M, in]
  return gemm(args, ctx, scratchOf(ctx), out, in, M, operand(dy, out, true),
              operand(x, in, false), output(dw, in), 0.0f);
}

//===----------------------------------------------------------------------===//
// LM head
//===----------------------------------------------------------------------===//

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
// or as a bf16 pair hi + lo (see splitBf16).
__global__ void lmHeadGradPrepDevice(const void *G, DType gt, int64_t V, int64_t m0, int64_t v0,
                                     int64_t mb, int64_t vc, const float *logits, float softcap,
                                     float *out, __nv_bfloat16 *hi, __nv_bfloat16 *lo) {
  for (int64_t r = blockIdx.x; r < mb; r += gridDim.x)
    for (int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
      int64_t i = r * vc + c;
      float g = loadFloat(G, gt, (m0 + r) * V + v0 + c);
      if (logits)
        g = capGrad(g, capTanh(logits[i], softcap));
      if (hi) {
        splitBf16(g, hi[i], lo[i]);
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
  std::optional<float> softcap;
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLmHeadGrad(args, softcap, shape));
  const int64_t M = shape.M, H = shape.in, V = shape.out;
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &dl = args.inputs[2];
  const TensorView &dx = args.outputs[0], &dtable = args.outputs[1];
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

/// Copies the expert offsets [E + 1] to the host (the one place these
/// kernels wait for the device: the per-expert GEMMs are issued from the
/// host) and checks them as the CPU does.
Status readOffsets(const KernelArgs &args, const TensorView &t, int64_t experts, int64_t rows,
                   std::vector<int64_t> &offsets) {
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

/// Sets rows [from, M) of a row-major [M, cols] tensor to those of the
/// addend (of its type and shape), or to zeros without one.
Status fillTailRows(const KernelArgs &args, const TensorView &t, int64_t from, int64_t cols,
                    const TensorView *addend) {
  int64_t M = t.dim(0);
  if (from >= M)
    return Status();
  void *dst = offsetBytes(t.data, t.dtype, from * cols);
  size_t bytes = size_t((M - from) * cols) * dtypeSize(t.dtype);
  if (!addend)
    return memsetZero(args, dst, bytes);
  if (addend->data == t.data)
    return Status();
  cudaError_t e = cudaMemcpyAsync(dst, offsetBytes(addend->data, t.dtype, from * cols), bytes,
                                  cudaMemcpyDeviceToDevice, contextOf(args).stream);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "copying the addend's tail rows");
}

/// The product of one call as a grouped kernel (grouped_gemm.h), when the
/// context asks for it and the operands suit it; `done` says whether it ran.
Status groupedProduct(const KernelArgs &args, const RowGroups &groups, const TensorView &x,
                      int64_t K, const TensorView &w, bool weightNK, int64_t N,
                      const TensorView &y, const TensorView *addend, bool &done) {
  CudaContext &ctx = contextOf(args);
  done = ctx.groupedExperts && groupedProductFits(x.dtype, w.dtype, y.dtype, groups.rows, K, N) &&
         aligned16(x) && aligned16(w) && aligned16(y) && (!addend || aligned16(*addend));
  if (!done)
    return Status();
  cudaError_t e = groupedExpertProduct(ctx.stream, groups, x.data, x.dtype, K, w.data, w.dtype,
                                       weightNK, N, addend ? addend->data : nullptr, y.data,
                                       y.dtype);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "the grouped expert product");
}

Status expertLinearKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinear(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out, E = shape.E;
  const TensorView &x = args.inputs[0], &off = args.inputs[1], &w = args.inputs[2];
  const TensorView &y = args.outputs[0];
  bool done = false;
  G3RT_RETURN_IF_ERROR(lowRankProduct(args, expertGroups(off, E, M), x, shape.in, w, true,
                                      shape.out, y, shape, done));
  if (!done)
    G3RT_RETURN_IF_ERROR(groupedProduct(args, expertGroups(off, E, M), x, in, w, true, out, y,
                                        shape.addend, done));
  if (done)
    return Status();
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readOffsets(args, off, E, M, offsets));
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  const TensorView *add = shape.addend;
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    // y[r0.., out] = x[r0.., in]·W[e]ᵀ (+ addend[r0..])
    G3RT_RETURN_IF_ERROR(gemm(
        args, ctx, scratch, rows, out, in,
        Operand{offsetBytes(x.data, x.dtype, r0 * in), x.dtype, in, false},
        Operand{offsetBytes(w.data, w.dtype, e * out * in), w.dtype, in, true},
        Output{offsetBytes(y.data, y.dtype, r0 * out), y.dtype, out,
               add ? offsetBytes(add->data, y.dtype, r0 * out) : nullptr},
        add ? 1.0f : 0.0f));
  }
  // Rows past the last expert: the addend, or zeros.
  return fillTailRows(args, y, offsets[size_t(E)], out, add);
}

Status expertLinearGradInputKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinearGradInput(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out, E = shape.E;
  const TensorView &dy = args.inputs[0], &off = args.inputs[1], &w = args.inputs[2];
  const TensorView &dx = args.outputs[0];
  bool done = false;
  G3RT_RETURN_IF_ERROR(lowRankProduct(args, expertGroups(off, E, M), dy, shape.out, w, false,
                                      shape.in, dx, shape, done));
  if (!done)
    G3RT_RETURN_IF_ERROR(groupedProduct(args, expertGroups(off, E, M), dy, out, w, false, in, dx,
                                        shape.addend, done));
  if (done)
    return Status();
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readOffsets(args, off, E, M, offsets));
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  const TensorView *add = shape.addend;
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    // dx[r0.., in] = dy[r0.., out]·W[e] (+ addend[r0..])
    G3RT_RETURN_IF_ERROR(
        gemm(args, ctx, scratch, rows, in, out,
             Operand{offsetBytes(dy.data, dy.dtype, r0 * out), dy.dtype, out, false},
             Operand{offsetBytes(w.data, w.dtype, e * out * in), w.dtype, in, false},
             Output{offsetBytes(dx.data, dx.dtype, r0 * in), dx.dtype, in,
                    add ? offsetBytes(add->data, dx.dtype, r0 * in) : nullptr},
             add ? 1.0f : 0.0f));
  }
  return fillTailRows(args, dx, offsets[size_t(E)], in, add);
}

Status expertLinearGradWeightKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinearGradWeight(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out, E = shape.E;
  const TensorView &dy = args.inputs[0], &off = args.inputs[1], &x = args.inputs[2];
  const TensorView &dw = args.outputs[0];
  bool done = false;
  G3RT_RETURN_IF_ERROR(lowRankLinearGradWeight(args, expertGroups(off, E, M), dy, x, dw, in, out, done));
  if (done)
    return Status();
  CudaContext &ctx = contextOf(args);
  if (ctx.groupedExperts && groupedWeightGradFits(dy.dtype, x.dtype, dw.dtype, M, out, in)) {
    cudaError_t e = groupedWeightGrad(ctx.stream, expertGroups(off, E, M), dy.data, dy.dtype, out,
                                      x.data, x.dtype, in, dw.data, dw.dtype);
    return e == cudaSuccess ? Status() : cudaFailure(args, e, "the grouped weight gradient");
  }
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readOffsets(args, off, E, M, offsets));
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
  G3RT_RETURN_IF_ERROR(checkScalar(args, n, "num_items"));
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
  G3RT_RETURN_IF_ERROR(checkScalar(args, loss, "result"));
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
  G3RT_RETURN_IF_ERROR(checkScalar(args, dloss, "grad"));
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

//===----------------------------------------------------------------------===//
// Fused LM head + cross-entropy
//===----------------------------------------------------------------------===//
//
// lm_head_cross_entropy(_grad) never hold the [M, V] logits: they are made a
// tile at a time in the workspace, M in row blocks of up to Mb rows, each
// swept over the vocabulary in chunks of up to Vc columns. The CPU takes
// chunks of whole rows; a whole row of a 262K vocabulary is 1 MB of fp32,
// which would leave ~100 rows to the 128 MB of scratch, and GEMMs that thin
// are memory-bound: every chunk rereads the 1.3 GB table for the logits and
// for dx, and rewrites the 2.7 GB fp32 table_grad (at M = 16K, ~0.6 s). Tiles
// of ~1024 rows keep every product on the tensor cores (the table is read
// M/Mb times), at the price of a logsumexp carried across the chunks of a
// row (an online logsumexp, merged in a fixed order, in double).
//
// Forward, per tile: logits = x·tableᵀ (cuBLAS, fp32 out), then one kernel
// per row caps them, takes the chunk's max and Σexp in one read and merges
// them into the row's running (max, sum); the last chunk writes the row's
// loss term, and the terms are summed in row order at the end.
//
// Backward, per row block: that sweep again for the rows' logsumexp (unless
// the forward's lse output is given), then a second sweep that recomputes each tile's logits (except the last chunk's,
// still in the buffer from the first sweep, which is why it goes backwards),
// turns them into the logit gradient in one kernel per row (cap, softmax,
// onehot, scale, cap derivative, bf16 split), and multiplies it back:
// dx[rows] += g'·table[chunk] (fp32, across the chunks) and table_grad[chunk]
// += g'ᵀ·x[rows] (beta = 1 after the first row block). Without the forward's
// lse, the first sweep is one more logit GEMM per row block than the CPU's
// scheme.
//
// With bf16 x and table (the model's case), g' goes into the products as the
// bf16 pair hi + lo (splitBf16), as in lm_head_grad, except that a bf16 dx
// takes hi alone (one product instead of two; what lo adds is of the order
// of dx's own bf16 rounding). For table_grad the pair
// is stacked along the contraction: [hi; lo]ᵀ·[x; x] is one GEMM with K =
// 2·rows, which reads and writes the fp32 table_grad chunk once instead of
// twice. Other types keep g' in fp32 (in place of the logits) and go through
// gemm()'s staging.
//
// Ignored rows cost their share of the GEMMs but no other work; bad targets
// and num_items <= 0 (errors on the CPU) give NaN, as in the unfused kernels.

/// Rows of a row block, at most: large enough for the tensor cores in every
/// product (table_grad's contracts over 2·rows), small enough to leave a wide
/// vocabulary chunk.
constexpr int64_t kHeadRowBlock = 1024;
/// Vocabulary columns below which the row block shrinks instead.
constexpr int64_t kHeadMinChunk = 1024;

/// A chunk size of at most maxChunk splitting n into as few, nearly equal
/// parts (a multiple of `granule` where it splits), so that the last part is
/// not a thin remainder (V = 262208 is 2^18 + 64).
int64_t balancedChunk(int64_t n, int64_t maxChunk, int64_t granule) {
  maxChunk = std::max<int64_t>(maxChunk, 1);
  if (n <= maxChunk)
    return std::max<int64_t>(n, 1);
  int64_t parts = (n + maxChunk - 1) / maxChunk;
  int64_t c = (n + parts - 1) / parts;
  c = (c + granule - 1) / granule * granule;
  return std::min(c, maxChunk);
}

/// The tiling of the [M, V] logits: Mb rows × Vc columns at most per tile,
/// with `perElem` scratch bytes per tile element and `perRow` per row of a
/// block, out of `bytes`.
Status planHeadTiles(const KernelArgs &args, int64_t M, int64_t V, size_t bytes, size_t perElem,
                     size_t perRow, int64_t &Mb, int64_t &Vc) {
  // Slack for the 256-byte alignment of each buffer taken.
  const size_t slack = 8 * kAlign;
  int64_t rows = std::clamp<int64_t>(M, 1, kHeadRowBlock);
  for (;;) {
    size_t fixed = size_t(rows) * perRow + slack;
    size_t left = bytes > fixed ? bytes - fixed : 0;
    int64_t cols = int64_t(std::min<size_t>(size_t(std::max<int64_t>(V, 1)),
                                            left / (size_t(rows) * perElem)));
    if (cols >= std::min<int64_t>(V, kHeadMinChunk) || (rows == 1 && cols >= 1)) {
      Mb = balancedChunk(M, rows, 64);
      Vc = balancedChunk(V, cols, 128);
      return Status();
    }
    if (rows == 1)
      return args.fail("the workspace (" + std::to_string(bytes) +
                       " bytes free) is too small for a vocabulary of " + std::to_string(V));
    rows = (rows + 1) / 2;
  }
}

// One block per row of an [mb, vc] tile of pre-cap logits (rows m0.. and
// vocabulary v0.. of the whole): caps them and merges the chunk's max (fp32)
// and Σexp(l - max) (double) into the row's running pair, the state of an
// online logsumexp over the chunks; the CPU's two passes over the row (fp32
// max, then the double sum) give the same value up to double rounding. Takes
// the target's logit when it lies in the chunk (targetLogit given). After the
// last chunk: lse[r] and, with rowLoss, the row's term and whether it counts
// (as crossEntropyRowsDevice); with lseOut, the op's lse output (0 on ignored
// rows, NaN on bad targets, as on the CPU).
__global__ void headLossStatsDevice(const float *logits, int64_t mb, int64_t vc, int64_t v0,
                                    int64_t V, const void *targets, DType tt, int64_t m0,
                                    int64_t ignoreIndex, float softcap, bool first, bool last,
                                    float *runMax, double *runSum, float *targetLogit,
                                    double *lse, double *rowLoss, int *counted,
                                    float *lseOut) {
  for (int64_t r = blockIdx.x; r < mb; r += gridDim.x) {
    int64_t t = loadIndex(targets, tt, m0 + r);
    bool ignored = t == ignoreIndex;
    if (ignored || t < 0 || t >= V) {
      if (last && rowLoss && threadIdx.x == 0) {
        rowLoss[m0 + r] = ignored ? 0.0 : double(NAN);
        counted[m0 + r] = ignored ? 0 : 1;
      }
      if (last && lseOut && threadIdx.x == 0)
        lseOut[m0 + r] = ignored ? 0.0f : NAN;
      continue;
    }
    const float *row = logits + r * vc;
    // One read per logit: each thread keeps its own running (max, sum).
    // -inf logits add exp(-inf) = 0 on the CPU, and nothing here (their
    // difference to a -inf running max would be NaN); NaN propagates.
    float m = -INFINITY;
    double s = 0;
    for (int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
      float l = row[c];
      if (softcap > 0)
        l = capValue(l, softcap);
      if (l > m) {
        s = s * exp(double(m) - double(l)) + 1.0;
        m = l;
      } else if (l != -INFINITY) {
        s += exp(double(l) - double(m));
      }
    }
    float bm = blockMax(m);
    s = blockSum(s == 0 ? 0.0 : s * exp(double(m) - double(bm)));
    if (threadIdx.x == 0) {
      float M = bm;
      double S = s;
      if (!first) {
        float pm = runMax[r];
        double ps = runSum[r];
        M = fmaxf(pm, bm);
        S = (ps == 0 ? 0.0 : ps * exp(double(pm) - double(M))) +
            (s == 0 ? 0.0 : s * exp(double(bm) - double(M)));
      }
      if (targetLogit && t >= v0 && t < v0 + vc) {
        float l = row[t - v0];
        targetLogit[r] = softcap > 0 ? capValue(l, softcap) : l;
      }
      if (!last) {
        runMax[r] = M;
        runSum[r] = S;
      } else {
        double rowLse = double(M) + log(S);
        if (lse)
          lse[r] = rowLse;
        if (lseOut)
          lseOut[m0 + r] = float(rowLse);
        if (rowLoss) {
          rowLoss[m0 + r] = rowLse - double(targetLogit[r]);
          counted[m0 + r] = 1;
        }
      }
    }
  }
}

// One block per row of an [mb, vc] tile of pre-cap logits: the logit
// gradient (softmax - onehot)·dloss/num_items of a counted row, from the
// row's lse (the math of crossEntropyGradDevice on the capped logits), times
// the cap's derivative (that of lmHeadGradPrepDevice) when capped; 0 on
// ignored rows, NaN on rows with a bad target or when num_items <= 0. Written
// as fp32 `out` (which may be `logits`: every element is read, then written,
// by one thread) or as the bf16 pair hi + lo.
__global__ void headLossGradDevice(const float *logits, int64_t mb, int64_t vc, int64_t v0,
                                   int64_t V, const void *targets, DType tt, int64_t m0,
                                   int64_t ignoreIndex, float softcap, const double *lse,
                                   const void *numItems, DType nt, const void *dloss, DType dt,
                                   float *out, __nv_bfloat16 *hi, __nv_bfloat16 *lo) {
  double n = loadFloat(numItems, nt, 0);
  double coef = double(loadFloat(dloss, dt, 0)) / n;
  for (int64_t r = blockIdx.x; r < mb; r += gridDim.x) {
    int64_t base = r * vc;
    int64_t t = loadIndex(targets, tt, m0 + r);
    if (t == ignoreIndex || t < 0 || t >= V || !(n > 0)) {
      float fill = t == ignoreIndex ? 0.0f : NAN;
      for (int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
        if (hi)
          splitBf16(fill, hi[base + c], lo[base + c]);
        else
          out[base + c] = fill;
      }
      continue;
    }
    double rowLse = lse[r];
    int64_t tc = t - v0; // the target's column in this chunk, if there
    for (int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
      float l = logits[base + c], th = 0;
      if (softcap > 0) {
        th = capTanh(l, softcap);
        l = __fmul_rn(softcap, th);
      }
      double p = exp(double(l) - rowLse);
      float g = float((p - (c == tc ? 1.0 : 0.0)) * coef);
      if (softcap > 0)
        g = capGrad(g, th);
      if (hi)
        splitBf16(g, hi[base + c], lo[base + c]);
      else
        out[base + c] = g;
    }
  }
}

/// The operands of the fused kernels, checked as the CPU's lm_head and
/// cross_entropy check them.
struct HeadLossShape {
  int64_t M, H, V, ignoreIndex;
  float softcap; // 0 when absent
};

Status prepareHeadLoss(const KernelArgs &args, HeadLossShape &s) {
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &tv = args.inputs[2];
  G3RT_RETURN_IF_ERROR(checkFloat(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, table, "table"));
  s.V = table.dim(0);
  s.H = table.dim(1);
  s.M = leadingRows(x);
  if (x.dim(-1) != s.H)
    return args.fail("input " + shapeString(x.shape) + " does not contract with table " +
                     shapeString(table.shape));
  G3RT_RETURN_IF_ERROR(checkIndex(args, tv, "targets"));
  if (tv.numel() != s.M)
    return args.fail("targets must have one entry per row of the input (" +
                     std::to_string(s.M) + "), got " + describe(tv));
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.inputs[3], "num_items"));
  G3RT_RETURN_IF_ERROR(args.requireInt("ignore_index", s.ignoreIndex));
  std::optional<float> softcap;
  G3RT_RETURN_IF_ERROR(readSoftcap(args, softcap));
  s.softcap = softcap.value_or(0.0f);
  return Status();
}

/// Whether cuBLAS multiplies x and table as they are into fp32 logits, so
/// that gemm() stages nothing for them.
bool nativeLogits(const TensorView &x, const TensorView &table) {
  return x.dtype == table.dtype && nativeCombination(x.dtype, DType::F32);
}

Status lmHeadCrossEntropyKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkHeadLossCounts(args, /*backward=*/false));
  HeadLossShape s;
  G3RT_RETURN_IF_ERROR(prepareHeadLoss(args, s));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &targets = args.inputs[2];
  const TensorView &n = args.inputs[3], &loss = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkScalar(args, loss, "result"));
  float *lseOut = nullptr;
  if (args.outputs.size() == 2) {
    G3RT_RETURN_IF_ERROR(checkHeadLse(args, args.outputs[1], s.M));
    lseOut = static_cast<float *>(args.outputs[1].data);
  }
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  // Every row's term, summed in row order at the end.
  double *rowLoss = static_cast<double *>(scratch.take(size_t(s.M) * 8 + 8));
  int *counted = static_cast<int *>(scratch.take(size_t(s.M) * 4 + 4));
  if (!rowLoss || !counted)
    return args.fail("the workspace is too small for " + std::to_string(s.M) + " rows");

  // Types cuBLAS cannot take as they are leave half of the rest to gemm()
  // for staging.
  const size_t own = nativeLogits(x, table) ? scratch.bytes : scratch.bytes / 2;
  int64_t Mb, Vc;
  G3RT_RETURN_IF_ERROR(planHeadTiles(args, s.M, s.V, own, 4, 4 + 8 + 4, Mb, Vc));
  float *runMax = static_cast<float *>(scratch.take(size_t(Mb) * 4));
  double *runSum = static_cast<double *>(scratch.take(size_t(Mb) * 8));
  float *targetLogit = static_cast<float *>(scratch.take(size_t(Mb) * 4));
  float *logits = static_cast<float *>(scratch.take(size_t(Mb) * size_t(Vc) * 4));
  if (!runMax || !runSum || !targetLogit || !logits)
    return args.fail("the workspace is too small for the logits of " + std::to_string(Mb) +
                     " rows");
  Scratch inner = scratch; // what gemm() may stage in

  // At least one chunk, so that a row's term is written even when V = 0.
  const int64_t chunks = std::max<int64_t>(1, (s.V + Vc - 1) / Vc);
  for (int64_t m0 = 0; m0 < s.M; m0 += Mb) {
    const int64_t mb = std::min(Mb, s.M - m0);
    const Operand xRows{offsetBytes(x.data, x.dtype, m0 * s.H), x.dtype, s.H, false};
    for (int64_t j = 0; j < chunks; ++j) {
      const int64_t v0 = j * Vc, vc = std::min(Vc, s.V - v0);
      // logits[mb, vc] = x[m0.., H]·table[v0.., H]ᵀ, capped by the kernel below.
      G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, mb, vc, s.H, xRows,
                                Operand{offsetBytes(table.data, table.dtype, v0 * s.H),
                                        table.dtype, s.H, true},
                                Output{logits, DType::F32, vc}, 0.0f));
      headLossStatsDevice<<<rowBlocks(mb), kRowThreads, 0, ctx.stream>>>(
          logits, mb, vc, v0, s.V, targets.data, targets.dtype, m0, s.ignoreIndex, s.softcap,
          j == 0, j == chunks - 1, runMax, runSum, targetLogit, nullptr, rowLoss, counted,
          lseOut);
      G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy rows");
    }
  }
  crossEntropyFinishDevice<<<1, 1024, 0, ctx.stream>>>(rowLoss, counted, s.M, n.data, n.dtype,
                                                       loss.data, loss.dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy");
  return Status();
}

__global__ void widenDevice(const float *in, int64_t n, double *out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = in[i];
}

Status lmHeadCrossEntropyGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkHeadLossCounts(args, /*backward=*/true));
  HeadLossShape s;
  G3RT_RETURN_IF_ERROR(prepareHeadLoss(args, s));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &targets = args.inputs[2];
  const TensorView &n = args.inputs[3], &dloss = args.inputs[4], &dx = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkScalar(args, dloss, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dx, "input_grad"));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dx, "input_grad", s.M, s.H));
  // The forward's per-row logsumexp, when given, replaces sweep 1 below.
  const float *lseIn = nullptr;
  if (args.inputs.size() == 6) {
    G3RT_RETURN_IF_ERROR(checkHeadLse(args, args.inputs[5], s.M));
    lseIn = static_cast<const float *>(args.inputs[5].data);
  }
  const bool wantTable = args.outputs.size() == 2;
  const TensorView *dtable = wantTable ? &args.outputs[1] : nullptr;
  if (wantTable) {
    G3RT_RETURN_IF_ERROR(checkShape(args, *dtable, "table_grad", {s.V, s.H}));
    // Accumulated across row blocks by cuBLAS (beta = 1), which must not
    // round between blocks; the op's table_grad is f32.
    if (dtable->dtype != DType::F32)
      return args.fail("table_grad must be f32, got " + describe(*dtable));
  }
  CudaContext &ctx = contextOf(args);
  if (s.M == 0 || s.V == 0 || s.H == 0) {
    // Nothing to contract: zero gradients. (With V = 0 a counted target is
    // an error on the CPU; it goes unnoticed here.)
    G3RT_RETURN_IF_ERROR(memsetZero(args, dx.data, dx.bytes()));
    return wantTable ? memsetZero(args, dtable->data, dtable->bytes()) : Status();
  }

  const bool split = x.dtype == DType::BF16 && table.dtype == DType::BF16;
  const bool dxDirect = dx.dtype == DType::F32;
  const bool stackX = split && wantTable;
  // Per tile element: the fp32 logits, plus the bf16 pair when split (the
  // fp32 g' otherwise replaces the logits in place). Per row: the running
  // (max, sum), the lse, an fp32 dx accumulator unless dx is fp32, and the
  // stacked [x; x] for table_grad.
  const size_t perElem = split ? 8 : 4;
  const size_t perRow = 4 + 8 + 8 + (dxDirect ? 0 : size_t(s.H) * 4) +
                        (stackX ? 2 * size_t(s.H) * 2 : 0);
  Scratch scratch = scratchOf(ctx);
  const bool native = split || (x.dtype == DType::F32 && table.dtype == DType::F32);
  const size_t own = native ? scratch.bytes : scratch.bytes / 2;
  int64_t Mb, Vc;
  G3RT_RETURN_IF_ERROR(planHeadTiles(args, s.M, s.V, own, perElem, perRow, Mb, Vc));
  float *runMax = static_cast<float *>(scratch.take(size_t(Mb) * 4));
  double *runSum = static_cast<double *>(scratch.take(size_t(Mb) * 8));
  double *lse = static_cast<double *>(scratch.take(size_t(Mb) * 8));
  float *dxAcc =
      dxDirect ? nullptr : static_cast<float *>(scratch.take(size_t(Mb) * size_t(s.H) * 4));
  __nv_bfloat16 *xStack =
      stackX ? static_cast<__nv_bfloat16 *>(scratch.take(2 * size_t(Mb) * size_t(s.H) * 2))
             : nullptr;
  float *logits = static_cast<float *>(scratch.take(size_t(Mb) * size_t(Vc) * 4));
  __nv_bfloat16 *pair =
      split ? static_cast<__nv_bfloat16 *>(scratch.take(2 * size_t(Mb) * size_t(Vc) * 2))
            : nullptr;
  if (!runMax || !runSum || !lse || (!dxDirect && !dxAcc) || (stackX && !xStack) || !logits ||
      (split && !pair))
    return args.fail("the workspace is too small for the logits of " + std::to_string(Mb) +
                     " rows");
  Scratch inner = scratch; // what gemm() may stage in

  const int64_t chunks = (s.V + Vc - 1) / Vc;
  for (int64_t m0 = 0; m0 < s.M; m0 += Mb) {
    const int64_t mb = std::min(Mb, s.M - m0);
    const Operand xRows{offsetBytes(x.data, x.dtype, m0 * s.H), x.dtype, s.H, false};
    auto tableRows = [&](int64_t v0, bool trans) {
      return Operand{offsetBytes(table.data, table.dtype, v0 * s.H), table.dtype, s.H, trans};
    };
    auto computeLogits = [&](int64_t v0, int64_t vc) {
      return gemm(args, ctx, inner, mb, vc, s.H, xRows, tableRows(v0, true),
                  Output{logits, DType::F32, vc}, 0.0f);
    };

    // Sweep 1: the rows' logsumexp, unless the forward gave it.
    if (lseIn) {
      widenDevice<<<cappedGrid(mb), kThreads, 0, ctx.stream>>>(lseIn + m0, mb, lse);
      G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy_grad logsumexp");
    }
    for (int64_t j = 0; !lseIn && j < chunks; ++j) {
      const int64_t v0 = j * Vc, vc = std::min(Vc, s.V - v0);
      G3RT_RETURN_IF_ERROR(computeLogits(v0, vc));
      headLossStatsDevice<<<rowBlocks(mb), kRowThreads, 0, ctx.stream>>>(
          logits, mb, vc, v0, s.V, targets.data, targets.dtype, m0, s.ignoreIndex, s.softcap,
          j == 0, j == chunks - 1, runMax, runSum, nullptr, lse, nullptr, nullptr, nullptr);
      G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy_grad logsumexp");
    }

    if (stackX) {
      // [x; x] for the stacked table_grad product (see above).
      size_t rowBytes = size_t(mb) * size_t(s.H) * 2;
      const void *src = offsetBytes(x.data, x.dtype, m0 * s.H);
      cudaError_t e = cudaMemcpyAsync(xStack, src, rowBytes, cudaMemcpyDeviceToDevice, ctx.stream);
      if (e == cudaSuccess)
        e = cudaMemcpyAsync(reinterpret_cast<char *>(xStack) + rowBytes, src, rowBytes,
                            cudaMemcpyDeviceToDevice, ctx.stream);
      if (e != cudaSuccess)
        return cudaFailure(args, e, "stacking the input rows");
    }
    const Output dxOut =
        dxDirect ? Output{offsetBytes(dx.data, dx.dtype, m0 * s.H), DType::F32, s.H}
                 : Output{dxAcc, DType::F32, s.H};

    // Sweep 2, last chunk first: after sweep 1 its logits are still in the
    // buffer.
    for (int64_t j = chunks - 1; j >= 0; --j) {
      const int64_t v0 = j * Vc, vc = std::min(Vc, s.V - v0);
      const bool dxFirst = j == chunks - 1; // dx accumulates from this chunk on
      if (!dxFirst || lseIn)
        G3RT_RETURN_IF_ERROR(computeLogits(v0, vc));
      __nv_bfloat16 *hi = pair, *lo = split ? pair + mb * vc : nullptr;
      headLossGradDevice<<<rowBlocks(mb), kRowThreads, 0, ctx.stream>>>(
          logits, mb, vc, v0, s.V, targets.data, targets.dtype, m0, s.ignoreIndex, s.softcap,
          lse, n.data, n.dtype, dloss.data, dloss.dtype, split ? nullptr : logits, hi, lo);
      G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy_grad logit gradient");
      const float tableBeta = m0 == 0 ? 0.0f : 1.0f;
      const Output tableOut{wantTable ? offsetBytes(dtable->data, DType::F32, v0 * s.H) : nullptr,
                            DType::F32, s.H};
      if (split) {
        // table_grad[v0.., H] (+)= [hi; lo][2mb, vc]ᵀ·[x; x][2mb, H]
        if (wantTable)
          G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, vc, s.H, 2 * mb,
                                    Operand{pair, DType::BF16, vc, true},
                                    Operand{xStack, DType::BF16, s.H, false}, tableOut,
                                    tableBeta));
        // dx[m0.., H] (+)= hi·table[v0.., H] + lo·table[v0.., H]
        G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, mb, s.H, vc,
                                  Operand{hi, DType::BF16, vc, false}, tableRows(v0, false),
                                  dxOut, dxFirst ? 0.0f : 1.0f));
        // lo carries the part of g' below bf16's 8 bits: about as much as a
        // bf16 dx rounds away itself, so the product is left out there.
        if (dx.dtype != DType::BF16)
          G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, mb, s.H, vc,
                                    Operand{lo, DType::BF16, vc, false}, tableRows(v0, false),
                                    dxOut, 1.0f));
      } else {
        // The fp32 g' replaced the logits.
        if (wantTable)
          G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, vc, s.H, mb,
                                    Operand{logits, DType::F32, vc, true}, xRows, tableOut,
                                    tableBeta));
        G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, mb, s.H, vc,
                                  Operand{logits, DType::F32, vc, false}, tableRows(v0, false),
                                  dxOut, dxFirst ? 0.0f : 1.0f));
      }
    }
    if (!dxDirect)
      G3RT_RETURN_IF_ERROR(copy2D(args, dxAcc, DType::F32, s.H,
                                  offsetBytes(dx.data, dx.dtype, m0 * s.H), dx.dtype, s.H, mb,
                                  s.H));
  }
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
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.outputs[0], "correct"));
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.outputs[1], "total"));
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
  table.emplace_back("add_rms_norm", addRmsNormKernel);
  table.emplace_back("rms_norm_rope", rmsNormRopeKernel);
  table.emplace_back("rms_norm_rope_grad", rmsNormRopeGradKernel);
  table.emplace_back("linear", linearKernel);
  table.emplace_back("linear_grad_input", linearGradInputKernel);
  table.emplace_back("linear_grad_weight", linearGradWeightKernel);
  table.emplace_back("lm_head", lmHeadKernel);
  table.emplace_back("lm_head_grad", lmHeadGradKernel);
  table.emplace_back("cross_entropy", crossEntropyKernel);
  table.emplace_back("cross_entropy_grad", crossEntropyGradKernel);
  table.emplace_back("lm_head_cross_entropy", lmHeadCrossEntropyKernel);
  table.emplace_back("lm_head_cross_entropy_grad", lmHeadCrossEntropyGradKernel);
  table.emplace_back("expert_linear", expertLinearKernel);
  table.emplace_back("expert_linear_grad_input", expertLinearGradInputKernel);
  table.emplace_back("expert_linear_grad_weight", expertLinearGradWeightKernel);
}

} // namespace g3rt::cuda
