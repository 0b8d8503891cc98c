//===- lowrank_products.cu - products with one side of LoRA rank ----------===//
//
// Tensor-core (WMMA, bf16 in, fp32 accumulate) kernels for products whose
// narrow side is a LoRA rank. They are bound by reading or writing the wide
// operand, so each block takes a tile of rows of one expert, stages both
// operands through shared memory in 16-byte vectors, and writes its rows
// once. Blocks find their expert from the offsets on the device: the grid is
// sized for the worst split of rows into experts and the spare blocks exit.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/lowrank_products.h"

#include "runtime/cuda/cuda_context.h"
#include "runtime/cuda/row_groups.cuh"

#include <mma.h>

#include <algorithm>
#include <cmath>

namespace g3rt::cuda {
namespace {

using namespace nvcuda;
using bf16 = __nv_bfloat16;

constexpr int kThreads = 128; // four warps
constexpr int kRowTile = 64;  // rows per block of the row-tiled products

__device__ __forceinline__ uint4 load16(const bf16 *p, bool valid) {
  return valid ? *reinterpret_cast<const uint4 *>(p) : make_uint4(0, 0, 0, 0);
}
__device__ __forceinline__ void store16(bf16 *p, uint4 v) { *reinterpret_cast<uint4 *>(p) = v; }

/// The mask word of flat index `at`.
__device__ __forceinline__ uint32_t maskWord(const DropMask &m, int64_t at) {
  return m.bits[at >> 5];
}

/// The eight bf16 elements `v` at flat index `at` (a multiple of 8) of a
/// masked tensor, dropped as keyed_dropout drops them: x·scale rounded once.
/// `word` is maskWord(m, at), loaded by the caller as early as it can.
__device__ __forceinline__ uint4 dropEight(const DropMask &m, uint4 v, int64_t at, uint32_t word) {
  const uint32_t keep = word >> (at & 31);
  bf16 *e = reinterpret_cast<bf16 *>(&v);
  for (int j = 0; j < 8; ++j)
    e[j] = __float2bfloat16(keep >> j & 1u ? __fmul_rn(__bfloat162float(e[j]), m.scale) : 0.0f);
  return v;
}

/// Fills rows [tile.begin, tile.end), columns [c0, c1) of y [*, ld] with
/// the addend (or 0) for rows of no expert, NaN for poisoned tiles.
__device__ void fillTile(const Tile &tile, int64_t c0, int64_t c1, int64_t ld, const void *addend,
                         void *y, DType yt) {
  int64_t cols = c1 - c0, n = (tile.end - tile.begin) * cols;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    int64_t at = (tile.begin + i / cols) * ld + c0 + i % cols;
    float v = tile.kind == TileKind::Poison ? NAN : addend ? loadFloat(addend, yt, at) : 0.0f;
    storeFloat(y, yt, at, v);
  }
}

//===----------------------------------------------------------------------===//
// y = x·Wᵀ with N (the rank) narrow
//===----------------------------------------------------------------------===//

// A block takes 64 rows of one expert and walks K in chunks of 128: the next
// chunk's operands are loaded into registers while the tensor cores work on
// the current one in shared memory, so that each SM keeps enough loads in
// flight for the memory bandwidth (there are only rows/64 blocks).
template <int NF, bool WeightNK>
__global__ void __launch_bounds__(kThreads)
    narrowOutputDevice(RowGroups groups, const bf16 *x, int64_t K, const bf16 *w, int64_t N,
                       const void *addend, void *y, DType yt, DropMask mask) {
  constexpr int BM = kRowTile, BK = 128, NP = 16 * NF;
  constexpr int XV = BM * BK / 8 / kThreads, WV = NP * BK / 8 / kThreads; // vectors per thread
  __shared__ __align__(32) bf16 xs[BM][BK + 8];
  __shared__ __align__(32) bf16 ws[WeightNK ? NP : BK][WeightNK ? BK + 8 : NP + 8];
  __shared__ __align__(32) float cs[BM][NP + 4];
  Tile tile;
  if (!findTile(groups, BM, blockIdx.x, true, tile))
    return;
  if (tile.kind != TileKind::Compute)
    return fillTile(tile, 0, N, N, addend, y, yt);
  const int warp = threadIdx.x >> 5;
  const int64_t rows = tile.end - tile.begin;
  const bf16 *xt = x + tile.begin * K, *we = w + tile.expert * N * K;

  // Vector v of a chunk: x row v / (BK/8), columns (v % (BK/8))·8; for W
  // [N, K] row n = v / (BK/8) likewise, for W [K, N] row k = v / (NP/8).
  // The mask words are loaded with x. Read at staging, they waited behind
  // x's loads, and the masked product of a [16384, 10240] input took 2.5x
  // the time of the unmasked one.
  uint4 xr[XV], wr[WV];
  uint32_t mr[XV] = {};
  auto load = [&](int64_t k0) {
    for (int i = 0; i < XV; ++i) {
      int v = threadIdx.x + i * kThreads, r = v / (BK / 8), c = v % (BK / 8) * 8;
      const bool valid = r < rows && k0 + c < K;
      xr[i] = load16(xt + r * K + k0 + c, valid);
      if (mask.bits && valid)
        mr[i] = maskWord(mask, (tile.begin + r) * K + k0 + c);
    }
    for (int i = 0; i < WV; ++i) {
      int v = threadIdx.x + i * kThreads;
      if (WeightNK) {
        int n = v / (BK / 8), c = v % (BK / 8) * 8;
        wr[i] = load16(we + n * K + k0 + c, n < N && k0 + c < K);
      } else {
        int k = v / (NP / 8), c = v % (NP / 8) * 8;
        wr[i] = load16(we + (k0 + k) * N + c, k0 + k < K && c < N);
      }
    }
  };
  // The mask applies as the chunk is staged, once its loads have landed.
  auto stage = [&](int64_t k0) {
    for (int i = 0; i < XV; ++i) {
      int v = threadIdx.x + i * kThreads, r = v / (BK / 8), c = v % (BK / 8) * 8;
      if (mask.bits && r < rows && k0 + c < K)
        xr[i] = dropEight(mask, xr[i], (tile.begin + r) * K + k0 + c, mr[i]);
      store16(&xs[r][c], xr[i]);
    }
    for (int i = 0; i < WV; ++i) {
      int v = threadIdx.x + i * kThreads;
      if (WeightNK)
        store16(&ws[v / (BK / 8)][v % (BK / 8) * 8], wr[i]);
      else
        store16(&ws[v / (NP / 8)][v % (NP / 8) * 8], wr[i]);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NF];
  for (int f = 0; f < NF; ++f)
    wmma::fill_fragment(acc[f], 0.0f);
  load(0);
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    stage(k0);
    __syncthreads();
    if (k0 + BK < K)
      load(k0 + BK);
    for (int s = 0; s < BK / 16; ++s) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
      wmma::load_matrix_sync(a, &xs[warp * 16][s * 16], BK + 8);
      for (int f = 0; f < NF; ++f) {
        if constexpr (WeightNK) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
          wmma::load_matrix_sync(b, &ws[f * 16][s * 16], BK + 8);
          wmma::mma_sync(acc[f], a, b, acc[f]);
        } else {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
          wmma::load_matrix_sync(b, &ws[s * 16][f * 16], NP + 8);
          wmma::mma_sync(acc[f], a, b, acc[f]);
        }
      }
    }
    __syncthreads();
  }
  for (int f = 0; f < NF; ++f)
    wmma::store_matrix_sync(&cs[warp * 16][f * 16], acc[f], NP + 4, wmma::mem_row_major);
  __syncthreads();
  for (int64_t i = threadIdx.x; i < rows * N; i += kThreads) {
    int64_t at = (tile.begin + i / N) * N + i % N;
    float v = cs[i / N][i % N];
    storeFloat(y, yt, at, addend ? __fadd_rn(v, loadFloat(addend, yt, at)) : v);
  }
}

//===----------------------------------------------------------------------===//
// y = u·Wᵀ with R (the rank, the inner dimension) narrow
//===----------------------------------------------------------------------===//

template <int RF, bool WeightNR>
__global__ void __launch_bounds__(kThreads)
    narrowInnerDevice(RowGroups groups, const bf16 *u, int64_t R, const bf16 *w, int64_t N,
                      const void *addend, void *y, DType yt, DropMask mask) {
  constexpr int BM = kRowTile, BN = 128, RP = 16 * RF;
  __shared__ __align__(32) bf16 us[BM][RP + 8];
  __shared__ __align__(32) bf16 ws[WeightNR ? BN : RP][WeightNR ? RP + 8 : BN + 8];
  __shared__ __align__(32) float cs[4][16][BN + 4];
  Tile tile;
  if (!findTile(groups, BM, blockIdx.x, true, tile))
    return;
  const int64_t n0 = int64_t(blockIdx.y) * BN, n1 = min(N, n0 + BN);
  if (tile.kind != TileKind::Compute)
    return fillTile(tile, n0, n1, N, addend, y, yt);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t rows = tile.end - tile.begin;
  const bf16 *ut = u + tile.begin * R, *we = w + tile.expert * N * R;

  for (int v = threadIdx.x; v < BM * RP / 8; v += kThreads) {
    int r = v / (RP / 8), c = v % (RP / 8) * 8;
    store16(&us[r][c], load16(ut + r * R + c, r < rows && c < R));
  }
  if (WeightNR) {
    for (int v = threadIdx.x; v < BN * RP / 8; v += kThreads) {
      int n = v / (RP / 8), c = v % (RP / 8) * 8;
      store16(&ws[n][c], load16(we + (n0 + n) * R + c, n0 + n < N && c < R));
    }
  } else {
    for (int v = threadIdx.x; v < RP * BN / 8; v += kThreads) {
      int j = v / (BN / 8), c = v % (BN / 8) * 8;
      store16(&ws[j][c], load16(we + j * N + n0 + c, j < R && n0 + c < N));
    }
  }
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a[RF];
  for (int s = 0; s < RF; ++s)
    wmma::load_matrix_sync(a[s], &us[warp * 16][s * 16], RP + 8);
  for (int f = 0; f < BN / 16; ++f) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int s = 0; s < RF; ++s) {
      if constexpr (WeightNR) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
        wmma::load_matrix_sync(b, &ws[f * 16][s * 16], RP + 8);
        wmma::mma_sync(acc, a[s], b, acc);
      } else {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
        wmma::load_matrix_sync(b, &ws[s * 16][f * 16], BN + 8);
        wmma::mma_sync(acc, a[s], b, acc);
      }
    }
    wmma::store_matrix_sync(&cs[warp][0][f * 16], acc, BN + 4, wmma::mem_row_major);
  }
  __syncwarp();
  // Each lane writes four adjacent columns of the warp's rows (N is a
  // multiple of 8, so a group of four is inside or outside as a whole).
  const int64_t col = n0 + 4 * lane;
  if (col >= n1)
    return;
  // The warp's mask words, loaded before any row is written and kept in
  // registers (both loops unrolled, no early exit), so that the sixteen
  // loads can be in flight together. Loaded row by row, or into a local
  // array, the masked write of a [16384, 10240] result took twice the
  // unmasked one's time.
  uint32_t words[16];
#pragma unroll
  for (int i = 0; i < 16; ++i)
    words[i] = mask.bits && warp * 16 + i < rows
                   ? mask.bits[((tile.begin + warp * 16 + i) * N + col) / 32]
                   : 0u;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    int64_t r = warp * 16 + i;
    if (r >= rows)
      continue;
    const float *c = &cs[warp][i][4 * lane];
    const int64_t at = ((tile.begin + r) * N + col) / 4;
    float4 v = make_float4(c[0], c[1], c[2], c[3]);
    if (mask.bits) {
      // The rounded product dropped: elements 4·at .. 4·at + 3 (N is a
      // multiple of 8, so the four share a mask word).
      const uint32_t keep = words[i] >> (4 * at & 31);
      auto drop = [&](float x, int j) {
        return keep >> j & 1u ? roundFloat(yt, __fmul_rn(roundFloat(yt, x), mask.scale)) : 0.0f;
      };
      v = make_float4(drop(v.x, 0), drop(v.y, 1), drop(v.z, 2), drop(v.w, 3));
    }
    if (addend) {
      float4 a = loadFloat4(addend, yt, at);
      v = make_float4(__fadd_rn(v.x, a.x), __fadd_rn(v.y, a.y), __fadd_rn(v.z, a.z),
                      __fadd_rn(v.w, a.w));
    }
    storeFloat4(y, yt, at, v);
  }
}

//===----------------------------------------------------------------------===//
// dW = dyᵀ·x with O or I (the rank) narrow
//===----------------------------------------------------------------------===//

constexpr int kGradRows = 32; // rows staged per step
constexpr int kGradCols = 128;

/// Partial sums over the rows of one chunk (a findTile tile of `chunkRows`
/// rows of one expert): part[chunk][p][q] = Σ_m narrow[m, p]·wide[m, q] for
/// a [P, Q] result, P the rank padded to PP = 16·PF, Q padded to Qp.
template <int PF>
__global__ void __launch_bounds__(kThreads)
    narrowGradPartialDevice(RowGroups groups, int64_t chunkRows, const bf16 *narrow, int64_t P,
                            const bf16 *wide, int64_t Q, int64_t Qp, float *part, DropMask mask) {
  constexpr int BK = kGradRows, BQ = kGradCols, PP = 16 * PF;
  __shared__ __align__(32) bf16 as[BK][PP + 8];
  __shared__ __align__(32) bf16 bs[BK][BQ + 8];
  Tile tile;
  if (!findTile(groups, chunkRows, blockIdx.x, false, tile) || tile.kind != TileKind::Compute)
    return;
  const int warp = threadIdx.x >> 5;
  const int64_t q0 = int64_t(blockIdx.y) * BQ;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[PF][2];
  for (int f = 0; f < PF; ++f)
    for (int h = 0; h < 2; ++h)
      wmma::fill_fragment(acc[f][h], 0.0f);
  for (int64_t r0 = tile.begin; r0 < tile.end; r0 += BK) {
    for (int v = threadIdx.x; v < BK * PP / 8; v += kThreads) {
      int r = v / (PP / 8), c = v % (PP / 8) * 8;
      store16(&as[r][c], load16(narrow + (r0 + r) * P + c, r0 + r < tile.end && c < P));
    }
    for (int v = threadIdx.x; v < BK * BQ / 8; v += kThreads) {
      int r = v / (BQ / 8), c = v % (BQ / 8) * 8;
      const bool valid = r0 + r < tile.end && q0 + c < Q;
      const int64_t at = (r0 + r) * Q + q0 + c;
      const uint32_t word = mask.bits && valid ? maskWord(mask, at) : 0u;
      uint4 x = load16(wide + at, valid);
      if (mask.bits && valid)
        x = dropEight(mask, x, at, word);
      store16(&bs[r][c], x);
    }
    __syncthreads();
    for (int s = 0; s < BK / 16; ++s) {
      for (int f = 0; f < PF; ++f) {
        // A = narrowᵀ: element (p, m) at as[m][p], i.e. column-major.
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> a;
        wmma::load_matrix_sync(a, &as[s * 16][f * 16], PP + 8);
        for (int h = 0; h < 2; ++h) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
          wmma::load_matrix_sync(b, &bs[s * 16][warp * 32 + h * 16], BQ + 8);
          wmma::mma_sync(acc[f][h], a, b, acc[f][h]);
        }
      }
    }
    __syncthreads();
  }
  float *out = part + int64_t(blockIdx.x) * PP * Qp;
  for (int f = 0; f < PF; ++f)
    for (int h = 0; h < 2; ++h)
      wmma::store_matrix_sync(out + int64_t(f * 16) * Qp + q0 + warp * 32 + h * 16, acc[f][h],
                              unsigned(Qp), wmma::mem_row_major);
}

/// dW_e from the partial sums of expert e's chunks, added in chunk order.
/// Element (p, q) of the [P, Q] result is dW_e[p, q] when the rank is O
/// (`narrowIsOut`), else dW_e[q, p].
__global__ void narrowGradReduceDevice(RowGroups groups, int64_t chunkRows, const float *part,
                                       int64_t P, int64_t PP, int64_t Q, int64_t Qp,
                                       bool narrowIsOut, void *dw, DType dwt) {
  const bool valid = offsetsValid(groups);
  const int64_t n = groups.experts * P * Q;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t e = i / (P * Q), p = i % (P * Q) / Q, q = i % Q;
    float s = NAN;
    if (valid) {
      int64_t first = 0;
      for (int64_t k = 0; k < e; ++k)
        first += (offsetAt(groups, k + 1) - offsetAt(groups, k) + chunkRows - 1) / chunkRows;
      int64_t count = (offsetAt(groups, e + 1) - offsetAt(groups, e) + chunkRows - 1) / chunkRows;
      s = 0.0f;
      for (int64_t c = first; c < first + count; ++c)
        s += part[(c * PP + p) * Qp + q];
    }
    storeFloat(dw, dwt, e * P * Q + (narrowIsOut ? p * Q + q : q * P + p), s);
  }
}

/// How lowRankWeightGrad computes a [O, I] gradient: the narrow side P (O or
/// I, the rank, padded to PP) and the wide side Q (padded to Qp); partial
/// sums over chunks of `chunkRows` rows, [chunks, PP, Qp] fp32. 512 rows keep
/// a few hundred blocks busy at LoRA sizes; longer chunks where the partial
/// sums would not fit the scratch space. `fits` is false when even one chunk
/// per expert does not fit.
struct GradPlan {
  bool narrowIsOut, fits;
  int64_t P, Q, PP, Qp, chunkRows, chunks;
};

GradPlan planGrad(const RowGroups &groups, int64_t O, int64_t I, size_t scratchBytes) {
  GradPlan g{};
  g.narrowIsOut = O <= kMaxLowRank;
  g.P = g.narrowIsOut ? O : I;
  g.Q = g.narrowIsOut ? I : O;
  g.PP = g.P <= 16 ? 16 : 32;
  g.Qp = (g.Q + kGradCols - 1) / kGradCols * kGradCols;
  for (g.chunkRows = 512;; g.chunkRows *= 2) {
    g.chunks = maxTiles(groups.rows, groups.experts, g.chunkRows);
    if (size_t(g.chunks) * size_t(g.PP) * size_t(g.Qp) * sizeof(float) <= scratchBytes) {
      g.fits = true;
      return g;
    }
    if (g.chunkRows > groups.rows)
      return g;
  }
}

} // namespace

bool lowRankFits(DType a, DType b, int64_t rank, int64_t wide) {
  return a == DType::BF16 && b == DType::BF16 && rank > 0 && rank <= kMaxLowRank && rank % 8 == 0 &&
         wide > 0 && wide % 8 == 0;
}

bool lowRankWeightGradFits(const RowGroups &groups, int64_t O, int64_t I, size_t scratchBytes) {
  return planGrad(groups, O, I, scratchBytes).fits;
}

cudaError_t lowRankNarrowOutput(cudaStream_t stream, const RowGroups &groups, const void *x,
                                int64_t K, const void *w, bool weightNK, int64_t N,
                                const void *addend, void *y, DType yType, const DropMask &mask) {
  const int64_t tiles = maxTiles(groups.rows, groups.experts, kRowTile);
  if (tiles > INT32_MAX)
    return cudaErrorInvalidConfiguration;
  auto launch = [&](auto kernel) {
    kernel<<<unsigned(tiles), kThreads, 0, stream>>>(groups, static_cast<const bf16 *>(x), K,
                                                     static_cast<const bf16 *>(w), N, addend, y,
                                                     yType, mask);
  };
  if (N <= 16)
    weightNK ? launch(narrowOutputDevice<1, true>) : launch(narrowOutputDevice<1, false>);
  else
    weightNK ? launch(narrowOutputDevice<2, true>) : launch(narrowOutputDevice<2, false>);
  return cudaGetLastError();
}

cudaError_t lowRankNarrowInner(cudaStream_t stream, const RowGroups &groups, const void *u,
                               int64_t R, const void *w, bool weightNR, int64_t N,
                               const void *addend, void *y, DType yType, const DropMask &mask) {
  const int64_t tiles = maxTiles(groups.rows, groups.experts, kRowTile);
  const int64_t colTiles = (N + 127) / 128;
  if (tiles > INT32_MAX || colTiles > 65535)
    return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(colTiles));
  auto launch = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, stream>>>(groups, static_cast<const bf16 *>(u), R,
                                          static_cast<const bf16 *>(w), N, addend, y, yType, mask);
  };
  if (R <= 16)
    weightNR ? launch(narrowInnerDevice<1, true>) : launch(narrowInnerDevice<1, false>);
  else
    weightNR ? launch(narrowInnerDevice<2, true>) : launch(narrowInnerDevice<2, false>);
  return cudaGetLastError();
}

cudaError_t lowRankWeightGrad(cudaStream_t stream, const RowGroups &groups, const void *dy,
                              int64_t O, const void *x, int64_t I, void *dw, DType dwType,
                              void *scratch, size_t scratchBytes, const DropMask &mask) {
  const GradPlan g = planGrad(groups, O, I, scratchBytes);
  if (!g.fits)
    return cudaErrorMemoryAllocation;
  // The mask applies to x, which is the wide operand only when O is the rank.
  if (mask.bits && !g.narrowIsOut)
    return cudaErrorInvalidValue;
  const bool narrowIsOut = g.narrowIsOut;
  const int64_t P = g.P, Q = g.Q, PP = g.PP, Qp = g.Qp, chunkRows = g.chunkRows;
  const bf16 *narrow = static_cast<const bf16 *>(narrowIsOut ? dy : x);
  const bf16 *wide = static_cast<const bf16 *>(narrowIsOut ? x : dy);
  if (g.chunks > INT32_MAX || Qp / kGradCols > 65535)
    return cudaErrorInvalidConfiguration;
  float *part = static_cast<float *>(scratch);
  const dim3 grid(static_cast<unsigned>(g.chunks), static_cast<unsigned>(Qp / kGradCols));
  if (PP == 16)
    narrowGradPartialDevice<1>
        <<<grid, kThreads, 0, stream>>>(groups, chunkRows, narrow, P, wide, Q, Qp, part, mask);
  else
    narrowGradPartialDevice<2>
        <<<grid, kThreads, 0, stream>>>(groups, chunkRows, narrow, P, wide, Q, Qp, part, mask);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return e;
  narrowGradReduceDevice<<<cappedGrid(groups.experts * P * Q), 256, 0, stream>>>(
      groups, chunkRows, part, P, PP, Q, Qp, narrowIsOut, dw, dwType);
  return cudaGetLastError();
}

} // namespace g3rt::cuda
