//===- kernels_norms.cu - RMSNorm and the fused norm CUDA kernels ---------===//
//
// The CUDA versions of Gemma's RMSNorm and its gradient and of the fused
// norms of --g3moe-fuse-norms (docs/kernels.md, "Norms"), with the math and
// checks of runtime/cpu/kernels_norms.cpp. Rows take a block each, or a warp
// each for rows of at most 512 elements (QK-norm); bf16 rows a multiple of 8
// wide stay in registers. The statistics sum in double as on the CPU, and
// every reduction has a fixed shape-determined order (weight gradients
// through per-block partial sums added in block order), so results are
// reproducible run to run.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_kernels.h"
#include "runtime/cuda/reduce.cuh"
#include "runtime/cuda/rope_tables.h"
#include "runtime/cuda/scratch.h"
#include "runtime/kernels/dense_checks.h"

#include <algorithm>
#include <string>

namespace g3rt::cuda {

using namespace checks;

namespace {

constexpr int kThreads = 256;

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
bool bf16NormRows(int64_t D) { return D % 8 == 0 && (D <= 256 || (D > kWarpRowMax && D <= 8192)); }

} // namespace

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

namespace {

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
__device__ __forceinline__ void
rmsNormGradRow(const void *x, DType xt, const void *w, DType wt, const void *dy, DType gt, void *dx,
               DType dxt, Addend add, int64_t D, int64_t base, float inv, int64_t first,
               int64_t stride, double *dwPart, TeamSum teamSum) {
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
__device__ __forceinline__ void
bf16NormGradRow(const float (&xv)[8], const float (&g)[8], const float (&gain)[8], int64_t D,
                double eps, TeamSum teamSum, double (&dwAcc)[8], float (&out)[8]) {
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
__global__ void rmsNormGradWeightDevice(const double *partials, int64_t blocks, int64_t D, void *dw,
                                        DType dwt) {
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
    rmsNormGradWeightDevice<<<unsigned((D + 31) / 32), 32 * kDwWarps, 0, contextOf(args).stream>>>(
        partials, blocks, D, dw.data, dw.dtype);
    G3RT_CUDA_CHECK_LAUNCH(args, "weight gradient");
    return Status();
  }
};

} // namespace

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
    (warpRows ? rmsNormGradBF16Device<true>
              : rmsNormGradBF16Device<false>)<<<unsigned(p.blocks), threads, shared, ctx.stream>>>(
        x.data, w.data, w.dtype, dy.data, dx.data, add.data, rows, D, p.rowsPerBlock, eps,
        p.partials);
  else
    (warpRows ? rmsNormGradWarpDevice
              : rmsNormGradDevice)<<<unsigned(p.blocks), kThreads, shared, ctx.stream>>>(
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
    rmsNormBF16Device<false, true>
        <<<rowBlocks(rows), unsigned((D / 8 + 31) / 32 * 32), 0, stream>>>(
            a.data, w.data, w.dtype, y.data, rows, D, eps, b.data, sum.data);
  G3RT_CUDA_CHECK_LAUNCH(args, "add_rms_norm");
  return Status();
}

namespace {

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
  const int half = D / 2, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
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
  const int half = D / 2, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
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

} // namespace

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

} // namespace g3rt::cuda
