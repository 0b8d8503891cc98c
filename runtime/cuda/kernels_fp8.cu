//===- kernels_fp8.cu - e4m3 weights and products on CUDA -----------------===//
//
// The CUDA versions of quantize_fp8, scaled_linear and scaled_expert_linear
// (docs/kernels.md, "e4m3 products"), with the math of
// runtime/cpu/kernels_fp8.cpp: the quantization is the CPU's element for
// element (the same fp32 divisions and products, and cvt.satfinite's round
// to nearest even); the products run on cuBLASLt's e4m3 kernels with one
// fp32 scale per row and per column, so only their summation order differs.
//
// A product quantizes its input's rows into the workspace, a block of rows
// at a time, then multiplies them. Expert products run on the grouped
// tensor-core kernel where the bf16 ones do (grouped_gemm.h): all experts in
// one launch per block of rows, the offsets read on the device, so that the
// micro-step stays a CUDA graph. Otherwise (G3MOE_EXPERT_GEMM=cublas, shapes
// the kernel does not take) they read the offsets on the host and run one
// cuBLASLt product per expert, as the per-expert bf16 products do.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_context.h"
#include "runtime/cuda/cuda_device_util.h"
#include "runtime/cuda/cuda_kernels.h"
#include "runtime/cuda/expert_rows.h"
#include "runtime/cuda/grouped_gemm.h"
#include "runtime/cuda/lt_matmul.h"
#include "runtime/cuda/reduce.cuh"
#include "runtime/cuda/row_groups.cuh"
#include "runtime/cuda/scratch.h"
#include "runtime/kernels/fp8_checks.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace g3rt::cuda {

using namespace checks;

namespace {

constexpr int kRowThreads = 256;
constexpr int kTile = 32;

__device__ __forceinline__ uint8_t toE4M3(float v) {
  return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

/// The multiplier a row's values are quantized with, and its scale.
__device__ __forceinline__ float inverseOf(float amax) {
  return amax == 0.0f ? 1.0f : __fdiv_rn(kE4M3Max, amax);
}
__device__ __forceinline__ float scaleOf(float amax) {
  return amax == 0.0f ? 1.0f : __fdiv_rn(amax, kE4M3Max);
}

// One block per row of `n` elements (rows `ld` apart): the row's maximum
// magnitude, then its e4m3 values into q [rows, n] and its scale.
__global__ void quantizeRowsDevice(const void *x, DType xt, int64_t rows, int64_t n, int64_t ld,
                                   uint8_t *q, float *scale) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t base = r * ld;
    float amax = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      amax = fmaxf(amax, fabsf(loadFloat(x, xt, base + i)));
    amax = blockMax(amax);
    const float inv = inverseOf(amax);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      q[r * n + i] = toE4M3(__fmul_rn(loadFloat(x, xt, base + i), inv));
    if (threadIdx.x == 0)
      scale[r] = scaleOf(amax);
  }
}

// quantizeRowsDevice for bf16 rows of a multiple of 8 elements, 16-byte
// aligned: 8 values per load and per store.
__global__ void quantizeBf16RowsDevice(const uint4 *x, int64_t rows, int64_t n8, int64_t ld8,
                                       uint2 *q, float *scale) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const uint4 *row = x + r * ld8;
    float amax = 0.0f;
    for (int64_t i = threadIdx.x; i < n8; i += blockDim.x) {
      uint4 raw = row[i];
      const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&raw);
      for (int j = 0; j < 4; ++j) {
        float2 f = __bfloat1622float2(h[j]);
        amax = fmaxf(amax, fmaxf(fabsf(f.x), fabsf(f.y)));
      }
    }
    amax = blockMax(amax);
    const float inv = inverseOf(amax);
    for (int64_t i = threadIdx.x; i < n8; i += blockDim.x) {
      uint4 raw = row[i];
      const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&raw);
      uint8_t out[8];
      for (int j = 0; j < 4; ++j) {
        float2 f = __bfloat1622float2(h[j]);
        out[2 * j] = toE4M3(__fmul_rn(f.x, inv));
        out[2 * j + 1] = toE4M3(__fmul_rn(f.y, inv));
      }
      q[r * n8 + i] = *reinterpret_cast<uint2 *>(out);
    }
    if (threadIdx.x == 0)
      scale[r] = scaleOf(amax);
  }
}

// The maximum magnitude of each column of `batches` [N, K] matrices into
// amax [batches, K] (zeroed before): blocks of 32 columns by a share of the
// rows, combined with atomicMax on the bits (order-free for values >= 0).
__global__ void columnMaxDevice(const void *w, DType wt, int64_t N, int64_t K, float *amax) {
  const int64_t b = blockIdx.z, k = int64_t(blockIdx.x) * kTile + threadIdx.x;
  float m = 0.0f;
  if (k < K)
    for (int64_t n = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; n < N;
         n += int64_t(gridDim.y) * blockDim.y)
      m = fmaxf(m, fabsf(loadFloat(w, wt, (b * N + n) * K + k)));
  __shared__ float part[8][kTile];
  part[threadIdx.y][threadIdx.x] = m;
  __syncthreads();
  if (threadIdx.y == 0 && k < K) {
    for (int j = 1; j < blockDim.y; ++j)
      m = fmaxf(m, part[j][threadIdx.x]);
    atomicMax(reinterpret_cast<int *>(amax + b * K + k), __float_as_int(m));
  }
}

// The e4m3 transpose [batches, K, N] of `batches` [N, K] matrices, each
// column k multiplied by 448 / amax[k], through 32 x 32 tiles so that both
// the reads and the writes are coalesced.
__global__ void quantizeTransposeDevice(const void *w, DType wt, int64_t N, int64_t K,
                                        const float *amax, uint8_t *q) {
  __shared__ float tile[kTile][kTile + 1];
  const int64_t b = blockIdx.z, n0 = int64_t(blockIdx.y) * kTile, k0 = int64_t(blockIdx.x) * kTile;
  for (int i = threadIdx.y; i < kTile; i += blockDim.y) {
    const int64_t n = n0 + i, k = k0 + threadIdx.x;
    if (n < N && k < K)
      tile[i][threadIdx.x] =
          __fmul_rn(loadFloat(w, wt, (b * N + n) * K + k), inverseOf(amax[b * K + k]));
  }
  __syncthreads();
  for (int i = threadIdx.y; i < kTile; i += blockDim.y) {
    const int64_t k = k0 + i, n = n0 + threadIdx.x;
    if (n < N && k < K)
      q[(b * K + k) * N + n] = toE4M3(tile[threadIdx.x][i]);
  }
}

// amax -> scale, in place.
__global__ void scalesFromMaxDevice(float *s, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    s[i] = scaleOf(s[i]);
}

// y += a, elementwise, for a product whose addend cuBLASLt could not take.
__global__ void addIntoDevice(void *y, DType yt, const void *a, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    storeFloat(y, yt, i, __fadd_rn(loadFloat(y, yt, i), loadFloat(a, yt, i)));
}

Status ltFailure(const KernelArgs &args, cublasStatus_t st) {
  return args.fail("cuBLASLt's e4m3 product failed (status " + std::to_string(int(st)) + ")");
}

int gridFor(int64_t n, int64_t perBlock) {
  return int(std::clamp<int64_t>((n + perBlock - 1) / perBlock, 1, 65535));
}

Status launched(const KernelArgs &args, const char *what) {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? Status() : cudaFailure(args, e, what);
}

/// Quantizes `rows` rows of `n` elements of x (rows `ld` elements apart)
/// into q [rows, n] and scale [rows].
Status quantizeRows(const KernelArgs &args, const void *x, DType xt, int64_t rows, int64_t n,
                    int64_t ld, uint8_t *q, float *scale) {
  cudaStream_t stream = contextOf(args).stream;
  const int grid = gridFor(rows, 1);
  if (xt == DType::BF16 && n % 8 == 0 && ld % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0)
    quantizeBf16RowsDevice<<<grid, kRowThreads, 0, stream>>>(
        static_cast<const uint4 *>(x), rows, n / 8, ld / 8, reinterpret_cast<uint2 *>(q), scale);
  else
    quantizeRowsDevice<<<grid, kRowThreads, 0, stream>>>(x, xt, rows, n, ld, q, scale);
  return launched(args, "quantizing rows to e4m3");
}

cudaDataType ltTypeOf(DType t) {
  return t == DType::BF16 ? CUDA_R_16BF : t == DType::F16 ? CUDA_R_16F : CUDA_R_32F;
}

// y = acc · sx[row] · ws[col] (+ a), the scaling of an e4m3 product that
// cuBLASLt ran unscaled into fp32 `acc` [rows, N].
__global__ void scaleProductDevice(const float *acc, const float *sx, const float *ws, void *y,
                                   DType yt, const void *a, int64_t rows, int64_t N) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * N;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = __fmul_rn(__fmul_rn(acc[i], sx[i / N]), ws[i % N]);
    storeFloat(y, yt, i, a ? __fadd_rn(v, loadFloat(a, yt, i)) : v);
  }
}

/// Whether cuBLASLt takes outer-vector scales for e4m3 products here; set
/// false by the first product it refuses, after which every product runs
/// unscaled into fp32 and is scaled by scaleProductDevice (as always with
/// G3MOE_FP8_SCALES=after, which the GPU tests use to cover that path).
std::atomic<bool> outerScales{true};

bool useOuterScales() {
  const char *env = std::getenv("G3MOE_FP8_SCALES");
  return outerScales.load() && !(env && std::string(env) == "after");
}

/// One block of `n` quantized rows (q, sx) times the e4m3 weight (wq, ws)
/// into y (+ the addend) with cuBLASLt's scales; `done` false when cuBLASLt
/// has no such product (nothing was written then).
Status outerScaledBlock(const KernelArgs &args, CudaContext &ctx, int64_t n, int64_t N, int64_t K,
                        const uint8_t *q, const float *sx, const void *wq, const float *ws, void *y,
                        DType yt, const void *a, bool &done) {
  LtProduct p{n,
              N,
              K,
              LtMatrix{q, CUDA_R_8F_E4M3, K, false},
              LtMatrix{wq, CUDA_R_8F_E4M3, K, true},
              a,
              y,
              ltTypeOf(yt),
              N,
              a ? 1.0f : 0.0f,
              sx,
              ws};
  cublasStatus_t st = ctx.matmuls->run(p, ctx.stream, done);
  if (st == CUBLAS_STATUS_SUCCESS && !done && a) {
    // Without the addend, which is added after.
    p.beta = 0.0f;
    p.c = nullptr;
    st = ctx.matmuls->run(p, ctx.stream, done);
    if (st == CUBLAS_STATUS_SUCCESS && done) {
      addIntoDevice<<<gridFor(n * N, kRowThreads), kRowThreads, 0, ctx.stream>>>(y, yt, a, n * N);
      return launched(args, "adding the addend");
    }
  }
  // An invalid value here is a combination this cuBLASLt does not take.
  if (st == CUBLAS_STATUS_INVALID_VALUE || st == CUBLAS_STATUS_NOT_SUPPORTED) {
    done = false;
    return Status();
  }
  if (st != CUBLAS_STATUS_SUCCESS)
    return ltFailure(args, st);
  return Status();
}

/// outerScaledBlock's product without cuBLASLt's scales: unscaled into the
/// fp32 `acc` [n, N], then scaled (and the addend added) by a kernel.
Status unscaledBlock(const KernelArgs &args, CudaContext &ctx, int64_t n, int64_t N, int64_t K,
                     const uint8_t *q, const float *sx, const void *wq, const float *ws, void *y,
                     DType yt, const void *a, float *acc) {
  LtProduct p{n,
              N,
              K,
              LtMatrix{q, CUDA_R_8F_E4M3, K, false},
              LtMatrix{wq, CUDA_R_8F_E4M3, K, true},
              acc,
              acc,
              CUDA_R_32F,
              N,
              0.0f};
  bool supported = false;
  cublasStatus_t st = ctx.matmuls->run(p, ctx.stream, supported);
  if (st != CUBLAS_STATUS_SUCCESS)
    return ltFailure(args, st);
  if (!supported)
    return args.fail("cuBLASLt has no e4m3 product for " + std::to_string(n) + " x " +
                     std::to_string(N) + " x " + std::to_string(K));
  scaleProductDevice<<<gridFor(n * N, kRowThreads), kRowThreads, 0, ctx.stream>>>(acc, sx, ws, y,
                                                                                  yt, a, n, N);
  return launched(args, "scaling the e4m3 product");
}

/// y [rows, N] = q(x)·wqᵀ · s_x · ws (+ addend), x [rows, K] (of type xt)
/// quantized into the workspace a block of rows at a time; y and the
/// addend of type yt.
Status scaledRows(const KernelArgs &args, const void *x, DType xt, int64_t rows, int64_t K,
                  const void *wq, const float *ws, int64_t N, void *y, DType yt,
                  const void *addend) {
  CudaContext &ctx = contextOf(args);
  const bool outer = useOuterScales();
  Scratch scratch = scratchOf(ctx);
  // Each row needs K bytes of e4m3 values and its scale, and without
  // cuBLASLt's scales its fp32 product (three takes, each rounded up to
  // kAlign); blocks of a multiple of 256 rows.
  const int64_t perRow = K + 4 + (outer ? 0 : 4 * N);
  const int64_t fit = (int64_t(scratch.bytes) - 3 * int64_t(kAlign)) / perRow / 256 * 256;
  if (fit == 0)
    return args.fail("the workspace (" + std::to_string(scratch.bytes) +
                     " bytes) holds no block of quantized rows of " + std::to_string(K));
  const int64_t block = std::min<int64_t>(rows, fit);
  auto *q = static_cast<uint8_t *>(scratch.take(size_t(block * K)));
  auto *sx = static_cast<float *>(scratch.take(size_t(block) * sizeof(float)));
  auto *acc = outer ? nullptr : static_cast<float *>(scratch.take(size_t(block * N) * 4));
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t n = std::min(block, rows - r0);
    G3RT_RETURN_IF_ERROR(quantizeRows(args, offsetBytes(x, xt, r0 * K), xt, n, K, K, q, sx));
    void *yr = offsetBytes(y, yt, r0 * N);
    const void *ar = addend ? offsetBytes(addend, yt, r0 * N) : nullptr;
    if (!outer) {
      G3RT_RETURN_IF_ERROR(unscaledBlock(args, ctx, n, N, K, q, sx, wq, ws, yr, yt, ar, acc));
      continue;
    }
    bool done = false;
    G3RT_RETURN_IF_ERROR(outerScaledBlock(args, ctx, n, N, K, q, sx, wq, ws, yr, yt, ar, done));
    if (!done) {
      // Nothing of this block was written; the earlier blocks stand.
      std::fprintf(stderr,
                   "g3moe: cuBLASLt takes no per-row e4m3 scales here (%s, %lld x %lld x "
                   "%lld); e4m3 products are scaled after them from now on\n",
                   std::string(args.name).c_str(), (long long)n, (long long)N, (long long)K);
      outerScales.store(false);
      return scaledRows(args, offsetBytes(x, xt, r0 * K), xt, rows - r0, K, wq, ws, N, yr, yt, ar);
    }
  }
  return Status();
}

// The offsets of rows [r0, r1) of `g` as groups of their own, into out
// [experts + 1]: each clamped to the window, less r0. Offsets that are not a
// valid split give an invalid one (out[0] = 1), so the window is poisoned
// as the whole product would be.
__global__ void windowOffsetsDevice(RowGroups g, int64_t r0, int64_t r1, int64_t *out) {
  const bool valid = offsetsValid(g);
  for (int64_t e = threadIdx.x; e <= g.experts; e += blockDim.x)
    out[e] = valid ? min(max(offsetAt(g, e), r0), r1) - r0 : 1;
}

/// scaled_expert_linear on the grouped e4m3 kernel: the input's rows are
/// quantized into the workspace and multiplied by all experts in one launch,
/// a window of rows at a time when they do not fit it at once, with the
/// low-rank term `low` in the accumulation when it has one; `done` false
/// (nothing written) when the kernel does not take the call.
Status groupedScaledRows(const KernelArgs &args, const ScaledShape &s, const TensorView &x,
                         const TensorView &off, const TensorView &wq, const float *ws,
                         const TensorView &y, const LowRankTerm &low, bool &done) {
  CudaContext &ctx = contextOf(args);
  const TensorView *add = s.addend;
  done = ctx.groupedExperts && groupedE4M3Fits(y.dtype, s.K, s.N) && aligned16(wq) &&
         aligned16(y) && (!add || aligned16(*add));
  if (!done)
    return Status();
  Scratch scratch = scratchOf(ctx);
  auto *offsets = static_cast<int64_t *>(scratch.take(size_t(s.E + 1) * sizeof(int64_t)));
  // Each row needs K bytes of e4m3 values and its scale; windows of whole
  // 128-row tiles.
  const int64_t room = int64_t(scratch.bytes) - 2 * int64_t(kAlign);
  int64_t window = std::min(s.M, room / (s.K + 4) / 128 * 128);
  // G3MOE_E4M3_WINDOW_ROWS caps the window (the GPU tests cover the windows
  // with it on small products).
  if (const char *cap = std::getenv("G3MOE_E4M3_WINDOW_ROWS"); cap && std::atoll(cap) > 0)
    window = std::min(window, std::max<int64_t>(128, std::atoll(cap) / 128 * 128));
  if (window <= 0 || !offsets)
    return args.fail("the workspace (" + std::to_string(scratch.bytes) +
                     " bytes) holds no tile of quantized rows of " + std::to_string(s.K));
  auto *q = static_cast<uint8_t *>(scratch.take(size_t(window * s.K)));
  auto *sx = static_cast<float *>(scratch.take(size_t(window) * sizeof(float)));
  const RowGroups all{off.data, off.dtype, s.E, s.M};
  for (int64_t r0 = 0; r0 < s.M; r0 += window) {
    const int64_t rows = std::min(window, s.M - r0);
    RowGroups groups = all;
    LowRankTerm term = low;
    if (rows < s.M) {
      windowOffsetsDevice<<<1, 32, 0, ctx.stream>>>(all, r0, r0 + rows, offsets);
      G3RT_RETURN_IF_ERROR(launched(args, "the window's expert offsets"));
      groups = {offsets, DType::I64, s.E, rows};
      if (term.h)
        term.h = offsetBytes(term.h, DType::BF16, r0 * term.rank);
      // r0 is a multiple of 128, so the window starts on a mask word.
      if (term.mask.bits)
        term.mask.bits += r0 * s.N / 32;
    }
    G3RT_RETURN_IF_ERROR(
        quantizeRows(args, offsetBytes(x.data, x.dtype, r0 * s.K), x.dtype, rows, s.K, s.K, q, sx));
    cudaError_t e =
        groupedE4M3Product(ctx.stream, groups, E4M3Operands{q, sx, wq.data, ws}, s.K, s.N,
                           add ? offsetBytes(add->data, y.dtype, r0 * s.N) : nullptr,
                           offsetBytes(y.data, y.dtype, r0 * s.N), y.dtype, term, !s.lowTransposed);
    if (e != cudaSuccess)
      return cudaFailure(args, e, "the grouped e4m3 product");
  }
  return Status();
}

/// The low-rank term of `s`, dropped by `mask`, when the grouped e4m3
/// kernel adds it in its accumulation (a null term otherwise).
LowRankTerm fusedTerm(const ScaledShape &s, const TensorView &y, const DropMask &mask) {
  const TensorView *h = s.extras.lowInput, *l = s.extras.lowWeight;
  if (!h ||
      !groupedE4M3LowRankFits(y.dtype, s.K, s.N, h->dtype, l->dtype, s.extras.rank,
                              mask.bits != nullptr) ||
      !aligned16(*h) || !aligned16(*l))
    return {};
  return {h->data, l->data, s.extras.rank, mask};
}

} // namespace

Status quantizeFp8Kernel(const KernelArgs &args) {
  QuantizeShape s;
  G3RT_RETURN_IF_ERROR(checkQuantizeFp8(args, s));
  const TensorView &w = args.inputs[0], &q = args.outputs[0], &scale = args.outputs[1];
  auto *qb = static_cast<uint8_t *>(q.data);
  auto *sf = static_cast<float *>(scale.data);
  if (!s.transpose)
    return quantizeRows(args, w.data, w.dtype, s.batches * s.rows, s.cols, s.cols, qb, sf);
  cudaStream_t stream = contextOf(args).stream;
  const int64_t N = s.rows, K = s.cols;
  G3RT_RETURN_IF_ERROR(memsetZero(args, sf, size_t(s.batches * K) * sizeof(float)));
  const dim3 tiles(unsigned((K + kTile - 1) / kTile), 1, unsigned(s.batches));
  columnMaxDevice<<<dim3(tiles.x, unsigned(gridFor(N, 256)), tiles.z), dim3(kTile, 8), 0, stream>>>(
      w.data, w.dtype, N, K, sf);
  G3RT_RETURN_IF_ERROR(launched(args, "the column maxima"));
  quantizeTransposeDevice<<<dim3(tiles.x, unsigned((N + kTile - 1) / kTile), tiles.z),
                            dim3(kTile, 8), 0, stream>>>(w.data, w.dtype, N, K, sf, qb);
  G3RT_RETURN_IF_ERROR(launched(args, "the e4m3 transpose"));
  scalesFromMaxDevice<<<gridFor(s.batches * K, kRowThreads), kRowThreads, 0, stream>>>(
      sf, s.batches * K);
  return launched(args, "the column scales");
}

Status scaledLinearKernel(const KernelArgs &args) {
  ScaledShape s;
  G3RT_RETURN_IF_ERROR(checkScaledLinear(args, s));
  const TensorView &x = args.inputs[0], &y = args.outputs[0];
  return scaledRows(args, x.data, x.dtype, s.M, s.K, args.inputs[1].data,
                    static_cast<const float *>(args.inputs[2].data), s.N, y.data, y.dtype,
                    s.addend ? s.addend->data : nullptr);
}

Status scaledExpertLinearKernel(const KernelArgs &call) {
  SplitProduct split;
  G3RT_RETURN_IF_ERROR(splitProductDropout(call, split));
  const KernelArgs &args = split.args(call);
  ScaledShape s;
  G3RT_RETURN_IF_ERROR(checkScaledExpertLinear(args, s));
  G3RT_RETURN_IF_ERROR(checkScaledTermDropout(args, split.drop, s));
  const TensorView &x = args.inputs[0], &off = args.inputs[1], &y = args.outputs[0];
  const auto *ws = static_cast<const float *>(args.inputs[3].data);
  DropMask mask;
  G3RT_RETURN_IF_ERROR(dropMaskOf(args, split.drop, s.M * s.N, mask));
  const LowRankTerm low = fusedTerm(s, y, mask);
  bool done = false;
  G3RT_RETURN_IF_ERROR(groupedScaledRows(args, s, x, off, args.inputs[2], ws, y, low, done));
  if (!done) {
    std::vector<int64_t> offsets;
    G3RT_RETURN_IF_ERROR(readExpertOffsets(args, off, s.E, s.M, offsets));
    for (int64_t e = 0; e < s.E; ++e) {
      const int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
      if (rows == 0)
        continue;
      G3RT_RETURN_IF_ERROR(
          scaledRows(args, offsetBytes(x.data, x.dtype, r0 * s.K), x.dtype, rows, s.K,
                     offsetBytes(args.inputs[2].data, DType::F8E4M3, e * s.N * s.K), ws + e * s.N,
                     s.N, offsetBytes(y.data, y.dtype, r0 * s.N), y.dtype,
                     s.addend ? offsetBytes(s.addend->data, y.dtype, r0 * s.N) : nullptr));
    }
    G3RT_RETURN_IF_ERROR(fillTailRows(args, y, offsets[size_t(s.E)], s.N, s.addend));
  }
  if (!s.extras.lowInput || (done && low.h))
    return Status();
  return addExpertLowRankTerm(args, off, s.E, *s.extras.lowInput, *s.extras.lowWeight,
                              !s.lowTransposed, s.N, y, mask);
}

} // namespace g3rt::cuda
