//===- attention_fp32.cu - attention on CUDA cores in fp32 ----------------===//
//
// The own attention kernels for any float type: fp32 on CUDA cores, the
// reference's arithmetic (flash_attention.cuh describes the tiling).
//
// The backward pass mirrors the CPU's two passes, so every output element has
// one writer and the results are deterministic (no atomics):
//   pass A, over query tiles: a first sweep over the keys gives the softmax
//     statistics of each row (max, denominator and D = sum_j P_ij dP_ij, all
//     online); a second sweep rebuilds P and dS and accumulates dq. The
//     statistics go to the workspace.
//   pass B, over key tiles of each kv head: walks the query tiles of every
//     query head of the group, rebuilds P and dS from the statistics, and
//     accumulates dk and dv.
//
// A block is a 16 x 16 grid of threads: `ty` picks a group of rows of the
// tile (query rows, or key rows in pass B), `tx` a set of columns. Score
// tiles give thread (ty, tx) rows ty*R .. ty*R+R-1 and columns tx + 16 c;
// output tiles give it the same rows and the float4 columns 4 tx + 64 c. Row
// reductions therefore stay inside the 16 lanes of a half-warp.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/flash_attention.cuh"

namespace g3rt::cuda {

using namespace checks;

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float halfWarpMax(float v) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

__device__ __forceinline__ float halfWarpSum(float v) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Rows r0 .. r0+R-1 of head h of a [B, T, heads, d] tensor into an R x (D+4)
// fp32 tile; rows past T and columns past d read as 0, so that padded rows and
// columns contribute nothing. The 4 extra floats per row shift consecutive
// rows by 4 banks, which makes the float4 reads of dotTile conflict-free.
template <int R, int D>
__device__ __forceinline__ void loadTile(float *dst, const void *src, DType t, int b, int r0, int h,
                                         int heads, const AttnArgs &p) {
  constexpr int LD = D + 4;
  for (int e = threadIdx.x; e < R * D; e += kThreads) {
    const int r = e / D, c = e % D, i = r0 + r;
    float v = 0.0f;
    if (i < p.T && c < p.d)
      v = loadFloat(src, t, ((int64_t(b) * p.T + i) * heads + h) * int64_t(p.d) + c);
    dst[r * LD + c] = v;
  }
}

template <int R>
__device__ __forceinline__ void loadSegments(long long *dst, const AttnArgs &p, int b, int r0) {
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    const int i = r0 + r;
    dst[r] = i < p.T ? (long long)loadIndex(p.seg, p.segt, int64_t(b) * p.T + i) : 0;
  }
}

// acc[a][c] = <A row (ty*RA + a), B row (tx + 16 c)> over the first dp columns,
// summed in column order like the CPU's dot product.
template <int RA, int RB, int LD>
__device__ __forceinline__ void dotTile(const float *A, const float *Bm, int dp, int ty, int tx,
                                        float (&acc)[RA][RB]) {
#pragma unroll
  for (int a = 0; a < RA; ++a)
#pragma unroll
    for (int c = 0; c < RB; ++c)
      acc[a][c] = 0.0f;
  const float *ap = A + ty * RA * LD, *bp = Bm + tx * LD;
#pragma unroll 2
  for (int col = 0; col < dp; col += 4) {
    float4 av[RA], bv[RB];
#pragma unroll
    for (int a = 0; a < RA; ++a)
      av[a] = *reinterpret_cast<const float4 *>(ap + a * LD + col);
#pragma unroll
    for (int c = 0; c < RB; ++c)
      bv[c] = *reinterpret_cast<const float4 *>(bp + 16 * c * LD + col);
#pragma unroll
    for (int a = 0; a < RA; ++a)
#pragma unroll
      for (int c = 0; c < RB; ++c) {
        acc[a][c] += av[a].x * bv[c].x;
        acc[a][c] += av[a].y * bv[c].y;
        acc[a][c] += av[a].z * bv[c].z;
        acc[a][c] += av[a].w * bv[c].w;
      }
  }
}

__device__ __forceinline__ float component(const float4 &v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// acc[a][c4] += sum_j P[ty*RA + a][j] * V[j][4 tx + 64 c4 .. +3] for j < NJ,
// in j order.
template <int RA, int NJ, int LDP, int D>
__device__ __forceinline__ void accumulateTile(const float *P, const float *V, int ty, int tx,
                                               float4 (&acc)[RA][D / 64]) {
  constexpr int LD = D + 4, C4 = D / 64;
#pragma unroll 1
  for (int j = 0; j < NJ; j += 4) {
    float4 pv[RA];
#pragma unroll
    for (int a = 0; a < RA; ++a)
      pv[a] = *reinterpret_cast<const float4 *>(P + (ty * RA + a) * LDP + j);
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      float4 vv[C4];
#pragma unroll
      for (int c = 0; c < C4; ++c)
        vv[c] = *reinterpret_cast<const float4 *>(V + (j + jj) * LD + 4 * tx + 64 * c);
#pragma unroll
      for (int a = 0; a < RA; ++a) {
        const float w = component(pv[a], jj);
#pragma unroll
        for (int c = 0; c < C4; ++c) {
          acc[a][c].x += w * vv[c].x;
          acc[a][c].y += w * vv[c].y;
          acc[a][c].z += w * vv[c].z;
          acc[a][c].w += w * vv[c].w;
        }
      }
    }
  }
}

// Stores rows (ty*RA + a) of an output tile times `mul[a]`, columns < d.
template <int RA, int D>
__device__ __forceinline__ void storeTile(void *dst, DType t, const AttnArgs &p, int b, int r0,
                                          int h, int heads, int ty, int tx,
                                          const float4 (&acc)[RA][D / 64], const float (&mul)[RA]) {
#pragma unroll
  for (int a = 0; a < RA; ++a) {
    const int i = r0 + ty * RA + a;
    if (i >= p.T)
      continue;
    const int64_t base = ((int64_t(b) * p.T + i) * heads + h) * int64_t(p.d);
#pragma unroll
    for (int c = 0; c < D / 64; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 4 * tx + 64 * c + e;
        if (col < p.d)
          storeFloat(dst, t, base + col, component(acc[a][c], e) * mul[a]);
      }
  }
}

// Key tile k0 of the forward and pass A, whose query tile q0 has its segment
// ids in sSegQ: the tile's segment ids into sSegK, this thread's visibility
// mask (bit a * RK + c for query row ty*RQ + a and key tx + 16 c) into
// `vis`, and its K and V tiles, unless no pair of the block is visible: then
// false, and the caller skips the tile. Starts and ends with a barrier.
template <int RQ, int RK, int BK, int D>
__device__ __forceinline__ bool loadKeyTile(const AttnArgs &p, int b, int q0, int k0, int kh,
                                            int ty, int tx, const long long *sSegQ,
                                            long long *sSegK, float *sK, float *sV, unsigned &vis) {
  __syncthreads(); // the previous tile's readers are done
  loadSegments<BK>(sSegK, p, b, k0);
  __syncthreads();
  vis = 0;
#pragma unroll
  for (int a = 0; a < RQ; ++a)
#pragma unroll
    for (int c = 0; c < RK; ++c)
      if (visible(p, q0 + ty * RQ + a, k0 + tx + 16 * c, sSegQ[ty * RQ + a], sSegK[tx + 16 * c]))
        vis |= 1u << (a * RK + c);
  if (!__syncthreads_or(vis != 0))
    return false;
  loadTile<BK, D>(sK, p.k, p.kt, b, k0, kh, p.nkv, p);
  loadTile<BK, D>(sV, p.v, p.vt, b, k0, kh, p.nkv, p);
  __syncthreads();
  return true;
}

// Finishes one row's scores of a key tile in place (bit c of `vis`: key c
// is visible; the others become -inf) and returns the row's new running
// maximum: that of `m` and the tile's row, over the half-warp.
template <int RK>
__device__ __forceinline__ float finishRow(const AttnArgs &p, unsigned vis, float (&s)[RK],
                                           float m) {
  float tmax = kNegInf;
#pragma unroll
  for (int c = 0; c < RK; ++c) {
    s[c] = (vis >> c) & 1u ? finishScore(p, s[c]) : kNegInf;
    tmax = fmaxf(tmax, s[c]);
  }
  tmax = halfWarpMax(tmax);
  return fmaxf(m, tmax);
}

// Tile shapes per head-dimension bucket (D = 64, 128, 256). BQ x BK for the
// forward and pass A; BKB (keys) x BQB (queries) for pass B. Shared memory is
// what bounds them at D = 256 (about 210 KB for the backward passes).
template <int D> struct Tiles {
  static constexpr int BQ = 64, BK = D >= 256 ? 32 : 64;
  static constexpr int BKB = D >= 256 ? 32 : 64, BQB = 64;
  static constexpr int LD = D + 4;
  static constexpr size_t fwdSmem =
      sizeof(float) * (size_t(BQ) * LD + 2 * size_t(BK) * LD + size_t(BQ) * (BK + 4)) +
      sizeof(long long) * (BQ + BK);
  static constexpr size_t passASmem = fwdSmem + sizeof(float) * size_t(BQ) * LD;
  static constexpr size_t passBSmem =
      sizeof(float) * (2 * size_t(BKB) * LD + 2 * size_t(BQB) * LD + 2 * size_t(BKB) * (BQB + 4) +
                       3 * size_t(BQB)) +
      sizeof(long long) * (BQB + BKB);
};

// Forward: one block per (query tile, head, batch). Query tiles are handed
// out last-first because the causal mask makes late tiles the longest.
template <int D> __global__ void __launch_bounds__(kThreads, 1) attentionForward(AttnArgs p) {
  using Cfg = Tiles<D>;
  constexpr int BQ = Cfg::BQ, BK = Cfg::BK, LD = Cfg::LD, LDP = BK + 4;
  constexpr int RQ = BQ / 16, RK = BK / 16, C4 = D / 64;
  extern __shared__ float4 smem4[];
  float *sQ = reinterpret_cast<float *>(smem4);
  float *sK = sQ + BQ * LD, *sV = sK + BK * LD, *sP = sV + BK * LD;
  long long *sSegQ = reinterpret_cast<long long *>(sP + BQ * LDP), *sSegK = sSegQ + BQ;

  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ;
  const int h = blockIdx.y, b = blockIdx.z, kh = h / p.group;
  const int dp = (p.d + 3) & ~3;

  loadTile<BQ, D>(sQ, p.q, p.qt, b, q0, h, p.nh, p);
  loadSegments<BQ>(sSegQ, p, b, q0);

  float m[RQ], l[RQ];
  float4 acc[RQ][C4];
#pragma unroll
  for (int a = 0; a < RQ; ++a) {
    m[a] = kNegInf;
    l[a] = 0.0f;
#pragma unroll
    for (int c = 0; c < C4; ++c)
      acc[a][c] = make_float4(0.f, 0.f, 0.f, 0.f);
  }

  const int qLast = min(p.T, q0 + BQ) - 1;
  const int kFirst = p.window > 0 ? max(0, q0 - p.window + 1) : 0;
  for (int k0 = kFirst / BK * BK; k0 <= qLast; k0 += BK) {
    unsigned vis;
    if (!loadKeyTile<RQ, RK, BK, D>(p, b, q0, k0, kh, ty, tx, sSegQ, sSegK, sK, sV, vis))
      continue;

    float s[RQ][RK];
    dotTile<RQ, RK, LD>(sQ, sK, dp, ty, tx, s);
#pragma unroll
    for (int a = 0; a < RQ; ++a) {
      const float mNew = finishRow<RK>(p, vis >> (a * RK), s[a], m[a]);
      float alpha = 1.0f, rowSum = 0.0f;
      if (mNew == kNegInf) {
#pragma unroll
        for (int c = 0; c < RK; ++c)
          s[a][c] = 0.0f;
      } else {
        alpha = expf(m[a] - mNew); // 0 while the row had seen nothing
#pragma unroll
        for (int c = 0; c < RK; ++c) {
          const float e = (vis >> (a * RK + c)) & 1u ? expf(s[a][c] - mNew) : 0.0f;
          s[a][c] = e;
          rowSum += e;
        }
      }
      rowSum = halfWarpSum(rowSum);
      l[a] = l[a] * alpha + rowSum;
      m[a] = mNew;
#pragma unroll
      for (int c = 0; c < C4; ++c) {
        acc[a][c].x *= alpha;
        acc[a][c].y *= alpha;
        acc[a][c].z *= alpha;
        acc[a][c].w *= alpha;
      }
#pragma unroll
      for (int c = 0; c < RK; ++c)
        sP[(ty * RQ + a) * LDP + tx + 16 * c] = s[a][c];
    }
    __syncthreads();
    accumulateTile<RQ, BK, LDP, D>(sP, sV, ty, tx, acc);
  }

  // A row that saw no key has l = 0 and an all-zero accumulator: output 0
  // (and logsumexp 0).
  float inv[RQ];
#pragma unroll
  for (int a = 0; a < RQ; ++a) {
    inv[a] = l[a] > 0.0f ? 1.0f / l[a] : 0.0f;
    const int i = q0 + ty * RQ + a;
    if (p.lse && tx == 0 && i < p.T)
      p.lse[(int64_t(b) * p.nh + h) * p.T + i] = l[a] > 0.0f ? m[a] + logf(l[a]) : 0.0f;
  }
  storeTile<RQ, D>(p.o, p.ot, p, b, q0, h, p.nh, ty, tx, acc, inv);
}

// Sweep 1 of pass A on one key tile (scores s, dP = dO·V^T): finishes the
// scores in place and merges the tile into each row's online max m,
// denominator l and Dsum = sum_j e_j dP_j, rescaled like the denominator so
// that Dsum / l = sum_j P_j dP_j.
template <int RQ, int RK>
__device__ __forceinline__ void mergeRowStats(const AttnArgs &p, unsigned vis, float (&s)[RQ][RK],
                                              const float (&dP)[RQ][RK], float (&m)[RQ],
                                              float (&l)[RQ], float (&Dsum)[RQ]) {
#pragma unroll
  for (int a = 0; a < RQ; ++a) {
    const float mNew = finishRow<RK>(p, vis >> (a * RK), s[a], m[a]);
    float alpha = 1.0f, rowSum = 0.0f, rowD = 0.0f;
    if (mNew != kNegInf) {
      alpha = expf(m[a] - mNew);
#pragma unroll
      for (int c = 0; c < RK; ++c)
        if ((vis >> (a * RK + c)) & 1u) {
          const float e = expf(s[a][c] - mNew);
          rowSum += e;
          rowD += e * dP[a][c];
        }
    }
    rowSum = halfWarpSum(rowSum);
    rowD = halfWarpSum(rowD);
    l[a] = l[a] * alpha + rowSum;
    Dsum[a] = Dsum[a] * alpha + rowD;
    m[a] = mNew;
  }
}

// The end of sweep 1: D = Dsum / l of each of this thread's rows (0 for a
// row that saw no key) into Drow, and the row statistics (max, denominator,
// D) that pass B reads into p.stats.
template <int RQ>
__device__ __forceinline__ void storeRowStats(const AttnArgs &p, int b, int h, int q0, int ty,
                                              int tx, const float (&m)[RQ], const float (&l)[RQ],
                                              const float (&Dsum)[RQ], float (&Drow)[RQ]) {
#pragma unroll
  for (int a = 0; a < RQ; ++a) {
    Drow[a] = l[a] > 0.0f ? Dsum[a] / l[a] : 0.0f;
    const int i = q0 + ty * RQ + a;
    if (tx == 0 && i < p.T) {
      float *st = p.stats + ((int64_t(b) * p.nh + h) * p.T + i) * 3;
      st[0] = l[a] > 0.0f ? m[a] : 0.0f;
      st[1] = l[a];
      st[2] = Drow[a];
    }
  }
}

// Sweep 2 of pass A on one key tile: dS = P (dP - D) times the cap's slope
// from the raw scores s and the rows' statistics, into the shared tile sP
// (0 where masked).
template <int RQ, int RK, int LDP>
__device__ __forceinline__ void scoreGradTile(const AttnArgs &p, unsigned vis,
                                              const float (&s)[RQ][RK], const float (&dP)[RQ][RK],
                                              const float (&m)[RQ], const float (&l)[RQ],
                                              const float (&Drow)[RQ], int ty, int tx, float *sP) {
#pragma unroll
  for (int a = 0; a < RQ; ++a)
#pragma unroll
    for (int c = 0; c < RK; ++c) {
      float ds = 0.0f;
      if ((vis >> (a * RK + c)) & 1u) {
        const float sc = finishScore(p, s[a][c]);
        const float P = expf(sc - m[a]) / l[a];
        ds = P * (dP[a][c] - Drow[a]) * capSlope(p, sc);
      }
      sP[(ty * RQ + a) * LDP + tx + 16 * c] = ds;
    }
}

// Backward pass A: one block per (query tile, head, batch). Writes the row
// statistics and dq.
template <int D> __global__ void __launch_bounds__(kThreads, 1) attentionBackwardQ(AttnArgs p) {
  using Cfg = Tiles<D>;
  constexpr int BQ = Cfg::BQ, BK = Cfg::BK, LD = Cfg::LD, LDP = BK + 4;
  constexpr int RQ = BQ / 16, RK = BK / 16, C4 = D / 64;
  extern __shared__ float4 smem4[];
  float *sQ = reinterpret_cast<float *>(smem4);
  float *sDO = sQ + BQ * LD, *sK = sDO + BQ * LD, *sV = sK + BK * LD, *sP = sV + BK * LD;
  long long *sSegQ = reinterpret_cast<long long *>(sP + BQ * LDP), *sSegK = sSegQ + BQ;

  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ;
  const int h = blockIdx.y, b = blockIdx.z, kh = h / p.group;
  const int dp = (p.d + 3) & ~3;

  loadTile<BQ, D>(sQ, p.q, p.qt, b, q0, h, p.nh, p);
  loadTile<BQ, D>(sDO, p.dout, p.dt, b, q0, h, p.nh, p);
  loadSegments<BQ>(sSegQ, p, b, q0);

  const int qLast = min(p.T, q0 + BQ) - 1;
  const int kFirst = p.window > 0 ? max(0, q0 - p.window + 1) : 0;
  const int kStart = kFirst / BK * BK;

  // Sweep 1: online max, denominator and D.
  float m[RQ], l[RQ], Dsum[RQ];
#pragma unroll
  for (int a = 0; a < RQ; ++a) {
    m[a] = kNegInf;
    l[a] = 0.0f;
    Dsum[a] = 0.0f;
  }
  for (int k0 = kStart; k0 <= qLast; k0 += BK) {
    unsigned vis;
    if (!loadKeyTile<RQ, RK, BK, D>(p, b, q0, k0, kh, ty, tx, sSegQ, sSegK, sK, sV, vis))
      continue;
    float s[RQ][RK], dP[RQ][RK];
    dotTile<RQ, RK, LD>(sQ, sK, dp, ty, tx, s);
    dotTile<RQ, RK, LD>(sDO, sV, dp, ty, tx, dP);
    mergeRowStats<RQ, RK>(p, vis, s, dP, m, l, Dsum);
  }
  float Drow[RQ];
  storeRowStats<RQ>(p, b, h, q0, ty, tx, m, l, Dsum, Drow);

  // Sweep 2: dS = P (dP - D) slope, dq = sum_j dS_j k_j.
  float4 acc[RQ][C4];
#pragma unroll
  for (int a = 0; a < RQ; ++a)
#pragma unroll
    for (int c = 0; c < C4; ++c)
      acc[a][c] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int k0 = kStart; k0 <= qLast; k0 += BK) {
    unsigned vis;
    if (!loadKeyTile<RQ, RK, BK, D>(p, b, q0, k0, kh, ty, tx, sSegQ, sSegK, sK, sV, vis))
      continue;
    float s[RQ][RK], dP[RQ][RK];
    dotTile<RQ, RK, LD>(sQ, sK, dp, ty, tx, s);
    dotTile<RQ, RK, LD>(sDO, sV, dp, ty, tx, dP);
    scoreGradTile<RQ, RK, LDP>(p, vis, s, dP, m, l, Drow, ty, tx, sP);
    __syncthreads();
    accumulateTile<RQ, BK, LDP, D>(sP, sK, ty, tx, acc);
  }
  float mul[RQ];
#pragma unroll
  for (int a = 0; a < RQ; ++a)
    mul[a] = p.scale;
  storeTile<RQ, D>(p.dq, p.dqt, p, b, q0, h, p.nh, ty, tx, acc, mul);
}

// Backward pass B: one block per (key tile, kv head, batch). Sums dk and dv
// over the group's query heads, then their query tiles, in a fixed order.
template <int D> __global__ void __launch_bounds__(kThreads, 1) attentionBackwardKV(AttnArgs p) {
  using Cfg = Tiles<D>;
  constexpr int BKB = Cfg::BKB, BQB = Cfg::BQB, LD = Cfg::LD, LDP = BQB + 4;
  constexpr int RK = BKB / 16, RQ = BQB / 16, C4 = D / 64;
  extern __shared__ float4 smem4[];
  float *sK = reinterpret_cast<float *>(smem4);
  float *sV = sK + BKB * LD, *sQ = sV + BKB * LD, *sDO = sQ + BQB * LD;
  float *sP = sDO + BQB * LD, *sDS = sP + BKB * LDP;
  float *sM = sDS + BKB * LDP, *sL = sM + BQB, *sD = sL + BQB;
  long long *sSegQ = reinterpret_cast<long long *>(sD + BQB), *sSegK = sSegQ + BQB;

  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int k0 = blockIdx.x * BKB, kh = blockIdx.y, b = blockIdx.z;
  const int dp = (p.d + 3) & ~3;

  loadTile<BKB, D>(sK, p.k, p.kt, b, k0, kh, p.nkv, p);
  loadTile<BKB, D>(sV, p.v, p.vt, b, k0, kh, p.nkv, p);
  loadSegments<BKB>(sSegK, p, b, k0);

  float4 dk[RK][C4], dv[RK][C4];
#pragma unroll
  for (int a = 0; a < RK; ++a)
#pragma unroll
    for (int c = 0; c < C4; ++c) {
      dk[a][c] = make_float4(0.f, 0.f, 0.f, 0.f);
      dv[a][c] = make_float4(0.f, 0.f, 0.f, 0.f);
    }

  const int kLast = min(p.T, k0 + BKB) - 1;
  const int qEnd = p.window > 0 ? min(p.T - 1, kLast + p.window - 1) : p.T - 1;
  for (int g = 0; g < p.group; ++g) {
    const int h = kh * p.group + g;
    for (int q0 = k0 / BQB * BQB; q0 <= qEnd; q0 += BQB) {
      __syncthreads();
      loadSegments<BQB>(sSegQ, p, b, q0);
      for (int r = threadIdx.x; r < BQB; r += kThreads) {
        const int i = q0 + r;
        float mm = 0.0f, ll = 0.0f, dd = 0.0f;
        if (i < p.T) {
          const float *st = p.stats + ((int64_t(b) * p.nh + h) * p.T + i) * 3;
          mm = st[0];
          ll = st[1];
          dd = st[2];
        }
        sM[r] = mm;
        sL[r] = ll;
        sD[r] = dd;
      }
      __syncthreads();
      unsigned vis = 0;
#pragma unroll
      for (int a = 0; a < RK; ++a)
#pragma unroll
        for (int c = 0; c < RQ; ++c)
          if (visible(p, q0 + tx + 16 * c, k0 + ty * RK + a, sSegQ[tx + 16 * c],
                      sSegK[ty * RK + a]))
            vis |= 1u << (a * RQ + c);
      if (!__syncthreads_or(vis != 0))
        continue;
      loadTile<BQB, D>(sQ, p.q, p.qt, b, q0, h, p.nh, p);
      loadTile<BQB, D>(sDO, p.dout, p.dt, b, q0, h, p.nh, p);
      __syncthreads();
      float s[RK][RQ], dP[RK][RQ];
      dotTile<RK, RQ, LD>(sK, sQ, dp, ty, tx, s);
      dotTile<RK, RQ, LD>(sV, sDO, dp, ty, tx, dP);
#pragma unroll
      for (int a = 0; a < RK; ++a)
#pragma unroll
        for (int c = 0; c < RQ; ++c) {
          float P = 0.0f, ds = 0.0f;
          if ((vis >> (a * RQ + c)) & 1u) {
            const int r = tx + 16 * c;
            const float sc = finishScore(p, s[a][c]);
            P = expf(sc - sM[r]) / sL[r];
            ds = P * (dP[a][c] - sD[r]) * capSlope(p, sc);
          }
          sP[(ty * RK + a) * LDP + tx + 16 * c] = P;
          sDS[(ty * RK + a) * LDP + tx + 16 * c] = ds;
        }
      __syncthreads();
      accumulateTile<RK, BQB, LDP, D>(sP, sDO, ty, tx, dv);
      accumulateTile<RK, BQB, LDP, D>(sDS, sQ, ty, tx, dk);
    }
  }
  float one[RK], scale[RK];
#pragma unroll
  for (int a = 0; a < RK; ++a) {
    one[a] = 1.0f;
    scale[a] = p.scale;
  }
  storeTile<RK, D>(p.dk, p.dkt, p, b, k0, kh, p.nkv, ty, tx, dk, scale);
  storeTile<RK, D>(p.dv, p.dvt, p, b, k0, kh, p.nkv, ty, tx, dv, one);
}

template <int D>
Status launchForward(const KernelArgs &args, const AttentionShape &prob, const AttnArgs &a) {
  using Cfg = Tiles<D>;
  G3RT_RETURN_IF_ERROR(allowSmem(args, attentionForward<D>, Cfg::fwdSmem));
  dim3 grid(unsigned(ceilDiv(prob.T, Cfg::BQ)), unsigned(prob.nh), unsigned(prob.B));
  attentionForward<D><<<grid, kThreads, Cfg::fwdSmem, contextOf(args).stream>>>(a);
  G3RT_CUDA_CHECK_LAUNCH(args, "attention forward");
  return Status();
}

template <int D>
Status launchBackward(const KernelArgs &args, const AttentionShape &prob, const AttnArgs &a) {
  using Cfg = Tiles<D>;
  cudaStream_t stream = contextOf(args).stream;
  G3RT_RETURN_IF_ERROR(allowSmem(args, attentionBackwardQ<D>, Cfg::passASmem));
  G3RT_RETURN_IF_ERROR(allowSmem(args, attentionBackwardKV<D>, Cfg::passBSmem));
  dim3 gridA(unsigned(ceilDiv(prob.T, Cfg::BQ)), unsigned(prob.nh), unsigned(prob.B));
  attentionBackwardQ<D><<<gridA, kThreads, Cfg::passASmem, stream>>>(a);
  G3RT_CUDA_CHECK_LAUNCH(args, "attention backward (dq)");
  dim3 gridB(unsigned(ceilDiv(prob.T, Cfg::BKB)), unsigned(prob.nkv), unsigned(prob.B));
  attentionBackwardKV<D><<<gridB, kThreads, Cfg::passBSmem, stream>>>(a);
  G3RT_CUDA_CHECK_LAUNCH(args, "attention backward (dk, dv)");
  return Status();
}

} // namespace

Status launchAttentionFp32(const KernelArgs &args, const AttentionShape &prob, const AttnArgs &a) {
  if (prob.d <= 64)
    return launchForward<64>(args, prob, a);
  if (prob.d <= 128)
    return launchForward<128>(args, prob, a);
  return launchForward<256>(args, prob, a);
}

Status launchAttentionGradFp32(const KernelArgs &args, const AttentionShape &prob,
                               const AttnArgs &a) {
  if (prob.d <= 64)
    return launchBackward<64>(args, prob, a);
  if (prob.d <= 128)
    return launchBackward<128>(args, prob, a);
  return launchBackward<256>(args, prob, a);
}

} // namespace g3rt::cuda
