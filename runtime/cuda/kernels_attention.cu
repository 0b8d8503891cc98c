//===- kernels_attention.cu - RoPE and attention CUDA kernels -------------===//
//
// The CUDA versions of rope, attention and attention_grad. They implement the
// math of docs/kernels.md ("Attention and RoPE") and mirror the CPU reference
// (runtime/cpu/kernels_attention.cpp): the same argument checks, the same
// fp32 formulas in the same order where that is cheap, one rounding on store.
// Calls that cuDNN's fused attention serves go there instead
// (cudnn_attention.h); the kernels below take the rest.
//
// Attention is flash-attention style: a block owns a tile of query rows of
// one head, streams K/V tiles through shared memory and keeps an online
// softmax in fp32, so no T x T matrix exists and a sliding layer only visits
// the key tiles its window can reach. Tiles whose every (query, key) pair is
// masked (other documents, padding) are skipped before their K/V are loaded.
// Two implementations share that structure:
//   * bf16 q, k, v (and do): tensor cores (mma.sync m16n8k16, fp32
//     accumulate). The probabilities and dS that feed the second product of
//     each pair are split into two bf16 terms, which keeps them to about 16
//     bits, so results stay within rounding of the fp32 reference.
//   * any other float type: fp32 on CUDA cores, the reference's arithmetic.
//
// The backward pass mirrors the CPU's two passes, so every output element has
// one writer and the results are deterministic (no atomics):
//   pass A, over query tiles: a first sweep over the keys gives the softmax
//     statistics of each row (max, denominator and D = sum_j P_ij dP_ij, all
//     online); a second sweep rebuilds P and dS and accumulates dq. The
//     statistics go to the workspace.
//   pass B, over key tiles of each kv head: walks the query tiles of every
//     query head of the group, rebuilds P and dS from the statistics, and
//     accumulates dk and dv (in two launches on the tensor-core path, where
//     one 16 x 256 fp32 accumulator per warp is all the registers allow).
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_context.h"
#include "runtime/cuda/rope_tables.h"
#include "runtime/kernels/kernel_checks.h"

#if G3MOE_HAVE_CUDNN
#include "runtime/cuda/cudnn_attention.h"
#endif

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace g3rt::cuda {
namespace {

using namespace checks;

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

//===----------------------------------------------------------------------===//
// rope
//===----------------------------------------------------------------------===//

// One block per token: the angle table is built once in shared memory and
// shared by the token's heads.
__global__ void ropeKernel(const void *x, DType xt, const void *pos, DType pt, void *y, DType yt,
                           int n, int d, float sign, RopeFreqs freqs) {
  extern __shared__ float ropeTable[];
  const int half = d / 2;
  float *cs = ropeTable, *sn = ropeTable + half;
  const int64_t row = blockIdx.x;
  const float p = float(loadIndex(pos, pt, row));
  for (int i = threadIdx.x; i < half; i += blockDim.x)
    ropeAngle(freqs, p, i, sign, cs[i], sn[i]);
  __syncthreads();
  for (int t = threadIdx.x; t < n * half; t += blockDim.x) {
    const int h = t / half, i = t - h * half;
    const int64_t base = (row * n + h) * int64_t(d);
    const float a = loadFloat(x, xt, base + i), b = loadFloat(x, xt, base + i + half);
    const float c = cs[i], s = sn[i];
    // Explicit roundings: no fused multiply-add, as the CPU computes it.
    storeFloat(y, yt, base + i, __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
    storeFloat(y, yt, base + i + half, __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
  }
}

Status ropeOp(const KernelArgs &args) {
  RopeShape r;
  G3RT_RETURN_IF_ERROR(checkRope(args, r));
  const int64_t B = r.B, T = r.T, n = r.n, d = r.d;
  const double theta = r.theta, factor = r.factor;
  const bool transpose = r.transpose;
  const TensorView &x = args.inputs[0], &pos = args.inputs[1], &y = args.outputs[0];
  if (B * T == 0 || n == 0 || d == 0)
    return Status();
  if (d > 8192)
    return args.fail("head dimension " + std::to_string(d) + " is too large (at most 8192)");

  CudaContext &ctx = contextOf(args);
  const int threads = 256;
  ropeKernel<<<unsigned(B * T), threads, size_t(d) * sizeof(float), ctx.stream>>>(
      x.data, x.dtype, pos.data, pos.dtype, y.data, y.dtype, int(n), int(d),
      transpose ? -1.0f : 1.0f, makeRopeFreqs(d, theta, factor));
  G3RT_CUDA_CHECK_LAUNCH(args, "rope");
  return Status();
}

//===----------------------------------------------------------------------===//
// attention: problem description and checks (as the CPU kernel)
//===----------------------------------------------------------------------===//

//===----------------------------------------------------------------------===//
// attention: device side
//===----------------------------------------------------------------------===//

// A block is a 16 x 16 grid of threads: `ty` picks a group of rows of the
// tile (query rows, or key rows in pass B), `tx` a set of columns. Score
// tiles give thread (ty, tx) rows ty*R .. ty*R+R-1 and columns tx + 16 c;
// output tiles give it the same rows and the float4 columns 4 tx + 64 c. Row
// reductions therefore stay inside the 16 lanes of a half-warp.
constexpr int kThreads = 256;
constexpr float kNegInf = -INFINITY;

struct AttnArgs {
  const void *q, *k, *v, *dout, *seg;
  DType qt, kt, vt, dt, segt;
  void *o, *dq, *dk, *dv;
  DType ot, dqt, dkt, dvt;
  float *stats; // per (b, h, i): row max, denominator, D (pass A -> pass B)
  float *lse;   // the forward's optional [B, nh, T] logsumexp output, or null
  int T, nh, nkv, d, group;
  int window; // 0: none (also when it cannot bind: window >= T)
  float scale, cap;
  bool capped;
  bool vec8; // tensor-core path: rows can be read as 16-byte vectors
};

// The score exactly as the CPU's AttnProblem::score finishes it.
__device__ __forceinline__ float finishScore(const AttnArgs &p, float dot) {
  float s = dot * p.scale;
  if (p.capped)
    s = p.cap * tanhf(s / p.cap);
  return s;
}

// d(capped score)/d(raw score) from the capped score: 1 - tanh^2.
__device__ __forceinline__ float capSlope(const AttnArgs &p, float s) {
  if (!p.capped)
    return 1.0f;
  float t = s / p.cap;
  return 1.0f - t * t;
}

__device__ __forceinline__ bool visible(const AttnArgs &p, int i, int j, long long segI,
                                        long long segJ) {
  return i < p.T && j <= i && (p.window == 0 || i - j < p.window) && segJ != 0 &&
         segJ == segI;
}

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
__device__ __forceinline__ void loadTile(float *dst, const void *src, DType t, int b, int r0,
                                         int h, int heads, const AttnArgs &p) {
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
      sizeof(float) * (2 * size_t(BKB) * LD + 2 * size_t(BQB) * LD +
                       2 * size_t(BKB) * (BQB + 4) + 3 * size_t(BQB)) +
      sizeof(long long) * (BQB + BKB);
};

// Forward: one block per (query tile, head, batch). Query tiles are handed
// out last-first because the causal mask makes late tiles the longest.
template <int D>
__global__ void __launch_bounds__(kThreads, 1) attentionForward(AttnArgs p) {
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
    __syncthreads(); // the previous tile's readers are done
    loadSegments<BK>(sSegK, p, b, k0);
    __syncthreads();
    unsigned vis = 0;
#pragma unroll
    for (int a = 0; a < RQ; ++a)
#pragma unroll
      for (int c = 0; c < RK; ++c)
        if (visible(p, q0 + ty * RQ + a, k0 + tx + 16 * c, sSegQ[ty * RQ + a], sSegK[tx + 16 * c]))
          vis |= 1u << (a * RK + c);
    if (!__syncthreads_or(vis != 0))
      continue;
    loadTile<BK, D>(sK, p.k, p.kt, b, k0, kh, p.nkv, p);
    loadTile<BK, D>(sV, p.v, p.vt, b, k0, kh, p.nkv, p);
    __syncthreads();

    float s[RQ][RK];
    dotTile<RQ, RK, LD>(sQ, sK, dp, ty, tx, s);
#pragma unroll
    for (int a = 0; a < RQ; ++a) {
      float tmax = kNegInf;
#pragma unroll
      for (int c = 0; c < RK; ++c) {
        s[a][c] = (vis >> (a * RK + c)) & 1u ? finishScore(p, s[a][c]) : kNegInf;
        tmax = fmaxf(tmax, s[a][c]);
      }
      tmax = halfWarpMax(tmax);
      const float mNew = fmaxf(m[a], tmax);
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

// Backward pass A: one block per (query tile, head, batch). Writes the row
// statistics and dq.
template <int D>
__global__ void __launch_bounds__(kThreads, 1) attentionBackwardQ(AttnArgs p) {
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

  // Sweep 1: online max, denominator and D = sum_j e_j dP_j (rescaled like
  // the denominator), so that D / l = sum_j P_j dP_j.
  float m[RQ], l[RQ], Dsum[RQ];
#pragma unroll
  for (int a = 0; a < RQ; ++a) {
    m[a] = kNegInf;
    l[a] = 0.0f;
    Dsum[a] = 0.0f;
  }
  for (int k0 = kStart; k0 <= qLast; k0 += BK) {
    __syncthreads();
    loadSegments<BK>(sSegK, p, b, k0);
    __syncthreads();
    unsigned vis = 0;
#pragma unroll
    for (int a = 0; a < RQ; ++a)
#pragma unroll
      for (int c = 0; c < RK; ++c)
        if (visible(p, q0 + ty * RQ + a, k0 + tx + 16 * c, sSegQ[ty * RQ + a], sSegK[tx + 16 * c]))
          vis |= 1u << (a * RK + c);
    if (!__syncthreads_or(vis != 0))
      continue;
    loadTile<BK, D>(sK, p.k, p.kt, b, k0, kh, p.nkv, p);
    loadTile<BK, D>(sV, p.v, p.vt, b, k0, kh, p.nkv, p);
    __syncthreads();
    float s[RQ][RK], dP[RQ][RK];
    dotTile<RQ, RK, LD>(sQ, sK, dp, ty, tx, s);
    dotTile<RQ, RK, LD>(sDO, sV, dp, ty, tx, dP);
#pragma unroll
    for (int a = 0; a < RQ; ++a) {
      float tmax = kNegInf;
#pragma unroll
      for (int c = 0; c < RK; ++c) {
        s[a][c] = (vis >> (a * RK + c)) & 1u ? finishScore(p, s[a][c]) : kNegInf;
        tmax = fmaxf(tmax, s[a][c]);
      }
      tmax = halfWarpMax(tmax);
      const float mNew = fmaxf(m[a], tmax);
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
  float Drow[RQ];
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

  // Sweep 2: dS = P (dP - D) slope, dq = sum_j dS_j k_j.
  float4 acc[RQ][C4];
#pragma unroll
  for (int a = 0; a < RQ; ++a)
#pragma unroll
    for (int c = 0; c < C4; ++c)
      acc[a][c] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int k0 = kStart; k0 <= qLast; k0 += BK) {
    __syncthreads();
    loadSegments<BK>(sSegK, p, b, k0);
    __syncthreads();
    unsigned vis = 0;
#pragma unroll
    for (int a = 0; a < RQ; ++a)
#pragma unroll
      for (int c = 0; c < RK; ++c)
        if (visible(p, q0 + ty * RQ + a, k0 + tx + 16 * c, sSegQ[ty * RQ + a], sSegK[tx + 16 * c]))
          vis |= 1u << (a * RK + c);
    if (!__syncthreads_or(vis != 0))
      continue;
    loadTile<BK, D>(sK, p.k, p.kt, b, k0, kh, p.nkv, p);
    loadTile<BK, D>(sV, p.v, p.vt, b, k0, kh, p.nkv, p);
    __syncthreads();
    float s[RQ][RK], dP[RQ][RK];
    dotTile<RQ, RK, LD>(sQ, sK, dp, ty, tx, s);
    dotTile<RQ, RK, LD>(sDO, sV, dp, ty, tx, dP);
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
template <int D>
__global__ void __launch_bounds__(kThreads, 1) attentionBackwardKV(AttnArgs p) {
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
          if (visible(p, q0 + tx + 16 * c, k0 + ty * RK + a, sSegQ[tx + 16 * c], sSegK[ty * RK + a]))
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

//===----------------------------------------------------------------------===//
// attention: tensor-core kernels (q, k, v and do all bf16)
//===----------------------------------------------------------------------===//

// Four warps per block, each owning 16 rows of the tile; mma.sync m16n8k16
// (bf16 in, fp32 accumulate) for every product. The first product of each
// pair (scores Q·K^T, dP = dO·V^T) multiplies bf16 inputs exactly. The second
// multiplies a fp32 matrix (P or dS) by bf16 inputs: it is split into a bf16
// head and a bf16 tail (x = hi + lo, |lo| <= 2^-9 |x|) and both are
// multiplied, which keeps about 16 bits of P and dS instead of 8 and so stays
// within rounding of the fp32 reference. Accumulators, softmax statistics and
// masks are fp32 in registers; no T x T matrix is formed.
//
// Tiles live in shared memory as bf16 rows padded by 8 elements (16 bytes),
// which puts the 8 rows of every ldmatrix phase in distinct banks.
using bf16 = __nv_bfloat16;
constexpr int kTCThreads = 128;

__device__ __forceinline__ uint32_t smemAddress(const void *p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const bf16 *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smemAddress(p)));
}

__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], const bf16 *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smemAddress(p)));
}

// c += a * b for one 16 x 8 x 16 step.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
               "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Lane addresses of ldmatrix.x4. For an A operand (a 16 x 16 block at (r0, c0)
// of a row-major [rows][k] tile) and for a transposed B operand (keys or
// queries k0..k0+15 by columns n0..n0+15 of a row-major [k][n] tile) the four
// matrices are (rows +0, cols +0), (+8, +0), (+0, +8), (+8, +8).
__device__ __forceinline__ const bf16 *fragRowsFirst(const bf16 *base, int ld, int r0, int c0,
                                                     int lane) {
  const int mi = lane >> 3, rr = lane & 7;
  return base + (r0 + rr + ((mi & 1) << 3)) * ld + c0 + ((mi >> 1) << 3);
}
// For a B operand read from a row-major [n][k] tile (n-blocks n0 and n0+8,
// k0..k0+15): (+0, +0), (+0, +8), (+8, +0), (+8, +8), so that registers 0-1
// serve n-block n0 and 2-3 n-block n0+8.
__device__ __forceinline__ const bf16 *fragColsFirst(const bf16 *base, int ld, int n0, int k0,
                                                     int lane) {
  const int mi = lane >> 3, rr = lane & 7;
  return base + (n0 + rr + ((mi >> 1) << 3)) * ld + k0 + ((mi & 1) << 3);
}

__device__ __forceinline__ uint32_t packBF16(bf16 lo, bf16 hi) {
  return uint32_t(__bfloat16_as_ushort(lo)) | (uint32_t(__bfloat16_as_ushort(hi)) << 16);
}

// The A fragments (head and tail) of a 16 x 16 chunk whose column halves are
// the accumulator fragments c0 (columns 0-7) and c1 (columns 8-15): an
// accumulator holds (row g, cols 2t, 2t+1) and (row g+8, same cols), which is
// exactly what the A fragment wants there.
__device__ __forceinline__ void splitPair(float x, float y, uint32_t &hi, uint32_t &lo) {
  const bf16 xh = __float2bfloat16_rn(x), yh = __float2bfloat16_rn(y);
  hi = packBF16(xh, yh);
  lo = packBF16(__float2bfloat16_rn(x - __bfloat162float(xh)),
                __float2bfloat16_rn(y - __bfloat162float(yh)));
}

__device__ __forceinline__ void splitToA(const float (&c0)[4], const float (&c1)[4],
                                         uint32_t (&hi)[4], uint32_t (&lo)[4]) {
  splitPair(c0[0], c0[1], hi[0], lo[0]);
  splitPair(c0[2], c0[3], hi[1], lo[1]);
  splitPair(c1[0], c1[1], hi[2], lo[2]);
  splitPair(c1[2], c1[3], hi[3], lo[3]);
}

// 16-byte asynchronous copies (cp.async): a whole tile's loads are in flight
// at once and, issued one tile ahead, overlap the current tile's math. A copy
// with no source bytes writes zeros.
__device__ __forceinline__ void cpAsync16(void *dst, const void *src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smemAddress(dst)),
               "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }

__device__ __forceinline__ void cpAsyncWaitAll() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// Rows r0 .. r0+R-1 of head h of a bf16 [B, T, heads, d] tensor into an
// R x (D+8) bf16 tile; rows past T and columns past d are 0. Asynchronous
// when rows are 16-byte aligned (p.vec8): the caller commits and waits.
template <int R, int D>
__device__ __forceinline__ void loadTileBF16(bf16 *dst, const void *srcv, int b, int r0, int h,
                                             int heads, const AttnArgs &p) {
  constexpr int LDS = D + 8, CH = D / 8;
  const bf16 *src = static_cast<const bf16 *>(srcv);
  for (int c = threadIdx.x; c < R * CH; c += kTCThreads) {
    const int r = c / CH, col = (c % CH) * 8, i = r0 + r;
    const bool valid = i < p.T && col < p.d;
    const bf16 *s = valid ? src + ((int64_t(b) * p.T + i) * heads + h) * int64_t(p.d) + col : src;
    if (p.vec8) {
      cpAsync16(dst + r * LDS + col, s, valid);
      continue;
    }
    uint4 v = make_uint4(0, 0, 0, 0);
    if (valid) {
      unsigned short e[8];
#pragma unroll
      for (int k = 0; k < 8; ++k)
        e[k] = col + k < p.d ? __bfloat16_as_ushort(s[k]) : 0;
      v = make_uint4(e[0] | (uint32_t(e[1]) << 16), e[2] | (uint32_t(e[3]) << 16),
                     e[4] | (uint32_t(e[5]) << 16), e[6] | (uint32_t(e[7]) << 16));
    }
    *reinterpret_cast<uint4 *>(dst + r * LDS + col) = v;
  }
}

// The segment id of row i of batch b (0 past T).
__device__ __forceinline__ long long segmentAt(const AttnArgs &p, int b, int i) {
  return i < p.T ? (long long)loadIndex(p.seg, p.segt, int64_t(b) * p.T + i) : 0;
}

// s[nb] += A-tile rows (16 at ar0) x B-tile rows (8 per n-block) over the
// first kSteps x 16 columns: the score-like products.
template <int NB, int LDS>
__device__ __forceinline__ void scoreTiles(const bf16 *A, int ar0, const bf16 *Bm, int kSteps,
                                           int lane, float (&s)[NB][4]) {
#pragma unroll
  for (int nb = 0; nb < NB; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      s[nb][e] = 0.0f;
  for (int kk = 0; kk < kSteps; ++kk) {
    uint32_t a[4];
    ldsm4(a, fragRowsFirst(A, LDS, ar0, kk * 16, lane));
#pragma unroll
    for (int np = 0; np < NB / 2; ++np) {
      uint32_t bb[4];
      ldsm4(bb, fragColsFirst(Bm, LDS, np * 16, kk * 16, lane));
      mma16816(s[2 * np], a, bb[0], bb[1]);
      mma16816(s[2 * np + 1], a, bb[2], bb[3]);
    }
  }
}

// acc += X (16 x NB*8, fp32 fragments, split in head and tail) x Y, Y the
// row-major [NB*8][D] bf16 tile, for the first dPairs x 16 columns.
template <int NB, int D>
__device__ __forceinline__ void accumulateTiles(const float (&x)[NB][4], const bf16 *Y,
                                                int dPairs, int lane, float (&acc)[D / 8][4]) {
  constexpr int LDS = D + 8;
#pragma unroll
  for (int kc = 0; kc < NB / 2; ++kc) {
    uint32_t hi[4], lo[4];
    splitToA(x[2 * kc], x[2 * kc + 1], hi, lo);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      if (dp >= dPairs)
        break;
      uint32_t bb[4];
      ldsm4t(bb, fragRowsFirst(Y, LDS, kc * 16, dp * 16, lane));
      mma16816(acc[2 * dp], hi, bb[0], bb[1]);
      mma16816(acc[2 * dp], lo, bb[0], bb[1]);
      mma16816(acc[2 * dp + 1], hi, bb[2], bb[3]);
      mma16816(acc[2 * dp + 1], lo, bb[2], bb[3]);
    }
  }
}

// Stores the 16 x D accumulator of a warp (rows r0 + g and r0 + g + 8) times
// mul[0] / mul[1].
template <int D>
__device__ __forceinline__ void storeFragments(void *dst, DType t, const AttnArgs &p, int b,
                                               int r0, int h, int heads, int lane,
                                               const float (&acc)[D / 8][4],
                                               const float (&mul)[2]) {
  const int g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = r0 + g + 8 * r;
    if (i >= p.T)
      continue;
    const int64_t base = ((int64_t(b) * p.T + i) * heads + h) * int64_t(p.d);
#pragma unroll
    for (int db = 0; db < D / 8; ++db)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = db * 8 + 2 * tq + e;
        if (col < p.d)
          storeFloat(dst, t, base + col, acc[db][2 * r + e] * mul[r]);
      }
  }
}

__device__ __forceinline__ float quadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Visibility of a warp's 16 x NB*8 fragment elements as a bit mask (bit
// nb * 4 + e). `rowsAreQueries` tells which side the fragment rows index.
template <int NB>
__device__ __forceinline__ uint32_t fragmentMask(const AttnArgs &p, bool rowsAreQueries,
                                                 int rowBase, int r0, int colBase,
                                                 const long long *rowSeg,
                                                 const long long *colSeg, int lane) {
  const int g = lane >> 2, tq = lane & 3;
  uint32_t vis = 0;
#pragma unroll
  for (int nb = 0; nb < NB; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = r0 + g + (e >> 1) * 8, c = nb * 8 + 2 * tq + (e & 1);
      const bool v = rowsAreQueries
                         ? visible(p, rowBase + r, colBase + c, rowSeg[r], colSeg[c])
                         : visible(p, colBase + c, rowBase + r, colSeg[c], rowSeg[r]);
      if (v)
        vis |= 1u << (nb * 4 + e);
    }
  return vis;
}

// Tile shapes. K/V (pass B: Q/dO) tiles are double-buffered, and every
// kernel stays near 100 KB of shared memory at D = 256 so that two blocks
// (eight warps) share a multiprocessor.
template <int D> struct TCTiles {
  static constexpr int LDS = D + 8;
  static constexpr int BQ = 64, BK = 32;    // forward
  static constexpr int BQA = 64, BKA = 16;  // backward pass A
  static constexpr int BKB = 64, BQB = 16;  // backward pass B
  static constexpr size_t fwdSmem =
      sizeof(bf16) * size_t(BQ + 4 * BK) * LDS + sizeof(long long) * (BQ + 2 * BK);
  static constexpr size_t passASmem =
      sizeof(bf16) * size_t(2 * BQA + 4 * BKA) * LDS + sizeof(long long) * (BQA + 2 * BKA);
  static constexpr size_t passBSmem = sizeof(bf16) * size_t(2 * BKB + 4 * BQB) * LDS +
                                      sizeof(float) * 6 * BQB +
                                      sizeof(long long) * (2 * BQB + BKB);
};

// Whether every (query, key) pair of a query tile [q0, q0+nq) and a key tile
// [k0, k0+nk) is visible, given that all their segment ids are one nonzero
// value: then the per-element mask can be skipped.
__device__ __forceinline__ bool tileFullyVisible(const AttnArgs &p, int q0, int nq, int k0,
                                                 int nk) {
  return q0 + nq <= p.T && k0 + nk - 1 <= q0 && (p.window == 0 || q0 + nq - 1 - k0 < p.window);
}

// The forward and pass A walk the key tiles of a query tile with this
// pipeline: at the top of an iteration the tile's K/V copies are awaited and a
// barrier publishes them (and its segment ids, which each thread stored from a
// register); the next tile's copies and segment ids are then issued, to land
// while this tile is computed.
template <int D>
__global__ void __launch_bounds__(kTCThreads) attentionForwardTC(AttnArgs p) {
  using Cfg = TCTiles<D>;
  constexpr int BQ = Cfg::BQ, BK = Cfg::BK, LDS = Cfg::LDS, NB = BK / 8, DB = D / 8;
  constexpr uint32_t kAll = NB * 4 == 32 ? 0xffffffffu : (1u << (NB * 4)) - 1u;
  extern __shared__ uint4 smemTC[];
  bf16 *sQ = reinterpret_cast<bf16 *>(smemTC), *sK = sQ + BQ * LDS, *sV = sK + 2 * BK * LDS;
  long long *sSegQ = reinterpret_cast<long long *>(sV + 2 * BK * LDS), *sSegK = sSegQ + BQ;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ;
  const int h = blockIdx.y, b = blockIdx.z, kh = h / p.group;
  const int kSteps = (p.d + 15) / 16;
  const int qLast = min(p.T, q0 + BQ) - 1;
  const int kFirst = p.window > 0 ? max(0, q0 - p.window + 1) : 0;
  const int kStart = kFirst / BK * BK;

  loadTileBF16<BQ, D>(sQ, p.q, b, q0, h, p.nh, p);
  loadTileBF16<BK, D>(sK, p.k, b, kStart, kh, p.nkv, p);
  loadTileBF16<BK, D>(sV, p.v, b, kStart, kh, p.nkv, p);
  cpAsyncCommit();
  const long long seg0 = segmentAt(p, b, q0);
  bool mine = true;
  if (tid < BQ) {
    const long long s = segmentAt(p, b, q0 + tid);
    sSegQ[tid] = s;
    mine = s == seg0 && s != 0;
  }
  const bool qUniform = __syncthreads_and(mine);
  long long kseg = 0;
  if (tid < BK) {
    kseg = segmentAt(p, b, kStart + tid);
    sSegK[tid] = kseg;
  }
  bool keyMine = tid >= BK || kseg == seg0;

  float o[DB][4], m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};
#pragma unroll
  for (int db = 0; db < DB; ++db)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      o[db][e] = 0.0f;

  int cur = 0;
  for (int k0 = kStart; k0 <= qLast; k0 += BK, cur ^= 1) {
    cpAsyncWaitAll();
    const bool keysUniform = __syncthreads_and(keyMine);
    const int kn = k0 + BK;
    long long nseg = 0;
    if (kn <= qLast) {
      loadTileBF16<BK, D>(sK + (cur ^ 1) * BK * LDS, p.k, b, kn, kh, p.nkv, p);
      loadTileBF16<BK, D>(sV + (cur ^ 1) * BK * LDS, p.v, b, kn, kh, p.nkv, p);
      cpAsyncCommit();
      if (tid < BK)
        nseg = segmentAt(p, b, kn + tid);
    }
    const bf16 *K = sK + cur * BK * LDS, *V = sV + cur * BK * LDS;
    const long long *segK = sSegK + cur * BK;
    uint32_t vis = kAll;
    bool any = true;
    if (!(qUniform && keysUniform && tileFullyVisible(p, q0, BQ, k0, BK))) {
      vis = fragmentMask<NB>(p, true, q0, warp * 16, k0, sSegQ, segK, lane);
      any = __syncthreads_or(vis != 0);
    }
    if (any) {
      float s[NB][4];
      scoreTiles<NB, LDS>(sQ, warp * 16, K, kSteps, lane, s);
      float mx[2] = {kNegInf, kNegInf};
#pragma unroll
      for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nb][e] = (vis >> (nb * 4 + e)) & 1u ? finishScore(p, s[nb][e]) : kNegInf;
          mx[e >> 1] = fmaxf(mx[e >> 1], s[nb][e]);
        }
      float alpha[2], mNew[2], rowSum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mNew[r] = fmaxf(m[r], quadMax(mx[r]));
        alpha[r] = mNew[r] == kNegInf ? 1.0f : expf(m[r] - mNew[r]);
      }
#pragma unroll
      for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pr = (vis >> (nb * 4 + e)) & 1u ? expf(s[nb][e] - mNew[e >> 1]) : 0.0f;
          s[nb][e] = pr;
          rowSum[e >> 1] += pr;
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        l[r] = l[r] * alpha[r] + quadSum(rowSum[r]);
        m[r] = mNew[r];
      }
#pragma unroll
      for (int db = 0; db < DB; ++db) {
        o[db][0] *= alpha[0];
        o[db][1] *= alpha[0];
        o[db][2] *= alpha[1];
        o[db][3] *= alpha[1];
      }
      accumulateTiles<NB, D>(s, V, kSteps, lane, o);
    }
    if (tid < BK)
      sSegK[(cur ^ 1) * BK + tid] = nseg;
    keyMine = tid >= BK || nseg == seg0;
  }
  const float inv[2] = {l[0] > 0.0f ? 1.0f / l[0] : 0.0f, l[1] > 0.0f ? 1.0f / l[1] : 0.0f};
  storeFragments<D>(p.o, p.ot, p, b, q0 + warp * 16, h, p.nh, lane, o, inv);
  if (p.lse && (lane & 3) == 0)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = q0 + warp * 16 + (lane >> 2) + 8 * r;
      if (i < p.T)
        p.lse[(int64_t(b) * p.nh + h) * p.T + i] = l[r] > 0.0f ? m[r] + logf(l[r]) : 0.0f;
    }
}

template <int D>
__global__ void __launch_bounds__(kTCThreads) attentionBackwardQTC(AttnArgs p) {
  using Cfg = TCTiles<D>;
  constexpr int BQ = Cfg::BQA, BK = Cfg::BKA, LDS = Cfg::LDS, NB = BK / 8, DB = D / 8;
  constexpr uint32_t kAll = (1u << (NB * 4)) - 1u;
  extern __shared__ uint4 smemTC[];
  bf16 *sQ = reinterpret_cast<bf16 *>(smemTC), *sDO = sQ + BQ * LDS, *sK = sDO + BQ * LDS,
       *sV = sK + 2 * BK * LDS;
  long long *sSegQ = reinterpret_cast<long long *>(sV + 2 * BK * LDS), *sSegK = sSegQ + BQ;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ;
  const int h = blockIdx.y, b = blockIdx.z, kh = h / p.group;
  const int kSteps = (p.d + 15) / 16;
  const int qLast = min(p.T, q0 + BQ) - 1;
  const int kFirst = p.window > 0 ? max(0, q0 - p.window + 1) : 0;
  const int kStart = kFirst / BK * BK;

  loadTileBF16<BQ, D>(sQ, p.q, b, q0, h, p.nh, p);
  loadTileBF16<BQ, D>(sDO, p.dout, b, q0, h, p.nh, p);
  cpAsyncCommit();
  const long long seg0 = segmentAt(p, b, q0);
  bool mine = true;
  if (tid < BQ) {
    const long long s = segmentAt(p, b, q0 + tid);
    sSegQ[tid] = s;
    mine = s == seg0 && s != 0;
  }
  const bool qUniform = __syncthreads_and(mine);

  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f}, Dsum[2] = {0.0f, 0.0f};
  float dq[DB][4];
#pragma unroll
  for (int db = 0; db < DB; ++db)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      dq[db][e] = 0.0f;
  float Drow[2] = {0.0f, 0.0f};

  // Sweep 0: online max, denominator and D (rescaled like the denominator).
  // Sweep 1: dS = P (dP - D) slope, dq += dS K.
  for (int sweep = 0; sweep < 2; ++sweep) {
    __syncthreads(); // sweep 0's last tile is no longer read
    loadTileBF16<BK, D>(sK, p.k, b, kStart, kh, p.nkv, p);
    loadTileBF16<BK, D>(sV, p.v, b, kStart, kh, p.nkv, p);
    cpAsyncCommit();
    long long kseg = 0;
    if (tid < BK) {
      kseg = segmentAt(p, b, kStart + tid);
      sSegK[tid] = kseg;
    }
    bool keyMine = tid >= BK || kseg == seg0;
    int cur = 0;
    for (int k0 = kStart; k0 <= qLast; k0 += BK, cur ^= 1) {
      cpAsyncWaitAll();
      const bool keysUniform = __syncthreads_and(keyMine);
      const int kn = k0 + BK;
      long long nseg = 0;
      if (kn <= qLast) {
        loadTileBF16<BK, D>(sK + (cur ^ 1) * BK * LDS, p.k, b, kn, kh, p.nkv, p);
        loadTileBF16<BK, D>(sV + (cur ^ 1) * BK * LDS, p.v, b, kn, kh, p.nkv, p);
        cpAsyncCommit();
        if (tid < BK)
          nseg = segmentAt(p, b, kn + tid);
      }
      const bf16 *K = sK + cur * BK * LDS, *V = sV + cur * BK * LDS;
      uint32_t vis = kAll;
      bool any = true;
      if (!(qUniform && keysUniform && tileFullyVisible(p, q0, BQ, k0, BK))) {
        vis = fragmentMask<NB>(p, true, q0, warp * 16, k0, sSegQ, sSegK + cur * BK, lane);
        any = __syncthreads_or(vis != 0);
      }
      if (any) {
        float s[NB][4], dP[NB][4];
        scoreTiles<NB, LDS>(sQ, warp * 16, K, kSteps, lane, s);
        scoreTiles<NB, LDS>(sDO, warp * 16, V, kSteps, lane, dP);
        if (sweep == 0) {
          float mx[2] = {kNegInf, kNegInf};
#pragma unroll
          for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              s[nb][e] = (vis >> (nb * 4 + e)) & 1u ? finishScore(p, s[nb][e]) : kNegInf;
              mx[e >> 1] = fmaxf(mx[e >> 1], s[nb][e]);
            }
          float alpha[2], mNew[2], rowSum[2] = {0.0f, 0.0f}, rowD[2] = {0.0f, 0.0f};
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            mNew[r] = fmaxf(m[r], quadMax(mx[r]));
            alpha[r] = mNew[r] == kNegInf ? 1.0f : expf(m[r] - mNew[r]);
          }
#pragma unroll
          for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              if ((vis >> (nb * 4 + e)) & 1u) {
                const float ex = expf(s[nb][e] - mNew[e >> 1]);
                rowSum[e >> 1] += ex;
                rowD[e >> 1] += ex * dP[nb][e];
              }
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            l[r] = l[r] * alpha[r] + quadSum(rowSum[r]);
            Dsum[r] = Dsum[r] * alpha[r] + quadSum(rowD[r]);
            m[r] = mNew[r];
          }
        } else {
#pragma unroll
          for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              float ds = 0.0f;
              if ((vis >> (nb * 4 + e)) & 1u) {
                const int r = e >> 1;
                const float sc = finishScore(p, s[nb][e]);
                const float P = expf(sc - m[r]) / l[r];
                ds = P * (dP[nb][e] - Drow[r]) * capSlope(p, sc);
              }
              s[nb][e] = ds;
            }
          accumulateTiles<NB, D>(s, K, kSteps, lane, dq);
        }
      }
      if (tid < BK)
        sSegK[(cur ^ 1) * BK + tid] = nseg;
      keyMine = tid >= BK || nseg == seg0;
    }
    if (sweep == 0) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        Drow[r] = l[r] > 0.0f ? Dsum[r] / l[r] : 0.0f;
        const int i = q0 + warp * 16 + g + 8 * r;
        if ((lane & 3) == 0 && i < p.T) {
          float *st = p.stats + ((int64_t(b) * p.nh + h) * p.T + i) * 3;
          st[0] = l[r] > 0.0f ? m[r] : 0.0f;
          st[1] = l[r];
          st[2] = Drow[r];
        }
      }
    }
  }
  const float mul[2] = {p.scale, p.scale};
  storeFragments<D>(p.dq, p.dqt, p, b, q0 + warp * 16, h, p.nh, lane, dq, mul);
}

// Backward pass B on tensor cores, one gradient per launch (dK or dV): with
// 16 key rows per warp, a 16 x 256 fp32 accumulator is 128 registers a
// thread, and two would not fit. The (query head, query tile) steps are
// pipelined like the key tiles above, the step's segment ids and row
// statistics travelling through registers.
template <int D, bool DK>
__global__ void __launch_bounds__(kTCThreads) attentionBackwardKVTC(AttnArgs p) {
  using Cfg = TCTiles<D>;
  constexpr int BKB = Cfg::BKB, BQB = Cfg::BQB, LDS = Cfg::LDS, NB = BQB / 8, DB = D / 8;
  constexpr uint32_t kAll = (1u << (NB * 4)) - 1u;
  extern __shared__ uint4 smemTC[];
  bf16 *sK = reinterpret_cast<bf16 *>(smemTC), *sV = sK + BKB * LDS, *sQ = sV + BKB * LDS,
       *sDO = sQ + 2 * BQB * LDS;
  float *sStats = reinterpret_cast<float *>(sDO + 2 * BQB * LDS); // [2][3][BQB]
  long long *sSegQ = reinterpret_cast<long long *>(sStats + 6 * BQB), *sSegK = sSegQ + 2 * BQB;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, tq = lane & 3;
  const int k0 = blockIdx.x * BKB, kh = blockIdx.y, b = blockIdx.z;
  const int kSteps = (p.d + 15) / 16;
  const int kLast = min(p.T, k0 + BKB) - 1;
  const int qEnd = p.window > 0 ? min(p.T - 1, kLast + p.window - 1) : p.T - 1;
  const int qStart = k0 / BQB * BQB;

  loadTileBF16<BKB, D>(sK, p.k, b, k0, kh, p.nkv, p);
  if (DK)
    loadTileBF16<BKB, D>(sV, p.v, b, k0, kh, p.nkv, p);
  const long long seg0 = segmentAt(p, b, k0);
  bool mine = true;
  if (tid < BKB) {
    const long long s = segmentAt(p, b, k0 + tid);
    sSegK[tid] = s;
    mine = s == seg0 && s != 0;
  }

  // Step (gi, q0) -> its query tile's loads: Q and dO asynchronously, the
  // segment id and statistics of row tid into registers.
  struct Row {
    long long seg;
    float m, l, drow;
  };
  auto issue = [&](int gi, int qt, int buf, Row &row) {
    const int h = kh * p.group + gi;
    loadTileBF16<BQB, D>(sQ + buf * BQB * LDS, p.q, b, qt, h, p.nh, p);
    loadTileBF16<BQB, D>(sDO + buf * BQB * LDS, p.dout, b, qt, h, p.nh, p);
    cpAsyncCommit();
    row = Row{0, 0.0f, 0.0f, 0.0f};
    if (tid < BQB && qt + tid < p.T) {
      row.seg = segmentAt(p, b, qt + tid);
      const float *st = p.stats + ((int64_t(b) * p.nh + h) * p.T + qt + tid) * 3;
      row.m = st[0];
      row.l = st[1];
      row.drow = st[2];
    }
  };
  auto publish = [&](int buf, const Row &row) {
    if (tid < BQB) {
      sSegQ[buf * BQB + tid] = row.seg;
      sStats[(buf * 3 + 0) * BQB + tid] = row.m;
      sStats[(buf * 3 + 1) * BQB + tid] = row.l;
      sStats[(buf * 3 + 2) * BQB + tid] = row.drow;
    }
  };

  Row row;
  issue(0, qStart, 0, row);
  publish(0, row);
  bool queryMine = tid >= BQB || row.seg == seg0;
  const bool kUniform = __syncthreads_and(mine) && k0 + BKB <= p.T;

  float acc[DB][4];
#pragma unroll
  for (int db = 0; db < DB; ++db)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      acc[db][e] = 0.0f;

  int cur = 0, gi = 0, q0 = qStart;
  while (gi < p.group) {
    cpAsyncWaitAll();
    const bool queriesUniform = __syncthreads_and(queryMine);
    int gn = gi, qn = q0 + BQB;
    if (qn > qEnd) {
      ++gn;
      qn = qStart;
    }
    Row next{0, 0.0f, 0.0f, 0.0f};
    if (gn < p.group)
      issue(gn, qn, cur ^ 1, next);
    const bf16 *Q = sQ + cur * BQB * LDS, *DO = sDO + cur * BQB * LDS;
    const float *sM = sStats + (cur * 3) * BQB, *sL = sM + BQB, *sD = sL + BQB;
    uint32_t vis = kAll;
    bool any = true;
    if (!(kUniform && queriesUniform && tileFullyVisible(p, q0, BQB, k0, BKB))) {
      vis = fragmentMask<NB>(p, false, k0, warp * 16, q0, sSegK, sSegQ + cur * BQB, lane);
      any = __syncthreads_or(vis != 0);
    }
    if (any) {
      // Transposed scores: rows are this warp's keys, columns the queries.
      float s[NB][4], dP[NB][4];
      scoreTiles<NB, LDS>(sK, warp * 16, Q, kSteps, lane, s);
      if (DK)
        scoreTiles<NB, LDS>(sV, warp * 16, DO, kSteps, lane, dP);
#pragma unroll
      for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = 0.0f;
          if ((vis >> (nb * 4 + e)) & 1u) {
            const int c = nb * 8 + 2 * tq + (e & 1);
            const float sc = finishScore(p, s[nb][e]);
            const float P = expf(sc - sM[c]) / sL[c];
            x = DK ? P * (dP[nb][e] - sD[c]) * capSlope(p, sc) : P;
          }
          s[nb][e] = x;
        }
      accumulateTiles<NB, D>(s, DK ? Q : DO, kSteps, lane, acc);
    }
    publish(cur ^ 1, next);
    queryMine = tid >= BQB || next.seg == seg0;
    cur ^= 1;
    gi = gn;
    q0 = qn;
  }
  const float mul[2] = {DK ? p.scale : 1.0f, DK ? p.scale : 1.0f};
  storeFragments<D>(DK ? p.dk : p.dv, DK ? p.dkt : p.dvt, p, b, k0 + warp * 16, kh, p.nkv, lane,
                    acc, mul);
}

//===----------------------------------------------------------------------===//
// attention: host side
//===----------------------------------------------------------------------===//

constexpr int64_t kMaxHeadDim = 256;

Status makeArgs(const KernelArgs &args, const AttentionShape &prob, AttnArgs &a) {
  if (prob.d > kMaxHeadDim)
    return args.fail("head dimension " + std::to_string(prob.d) +
                     " is not supported by the CUDA kernel (at most " +
                     std::to_string(kMaxHeadDim) + ")");
  if (prob.T > (int64_t(1) << 30) || prob.nh > 65535 || prob.B > 65535)
    return args.fail("sequence, head or batch count too large for the CUDA kernel");
  const TensorView &q = args.inputs[0], &k = args.inputs[1], &v = args.inputs[2],
                   &seg = args.inputs[3];
  a = AttnArgs{};
  a.q = q.data;
  a.qt = q.dtype;
  a.k = k.data;
  a.kt = k.dtype;
  a.v = v.data;
  a.vt = v.dtype;
  a.seg = seg.data;
  a.segt = seg.dtype;
  a.T = int(prob.T);
  a.nh = int(prob.nh);
  a.nkv = int(prob.nkv);
  a.d = int(prob.d);
  a.group = int(prob.group);
  a.window = prob.window > 0 && prob.window < prob.T ? int(prob.window) : 0;
  a.scale = prob.scale;
  a.capped = prob.capped;
  a.cap = prob.cap;
  return Status();
}

// Kernels above 48 KB of dynamic shared memory must ask for it.
template <typename Kernel>
Status allowSmem(const KernelArgs &args, Kernel kernel, size_t bytes) {
  cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (e != cudaSuccess)
    return cudaFailure(args, e, "reserving shared memory for attention");
  return Status();
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

template <int D>
Status launchForwardTC(const KernelArgs &args, const AttentionShape &prob, const AttnArgs &a) {
  using Cfg = TCTiles<D>;
  G3RT_RETURN_IF_ERROR(allowSmem(args, attentionForwardTC<D>, Cfg::fwdSmem));
  dim3 grid(unsigned(ceilDiv(prob.T, Cfg::BQ)), unsigned(prob.nh), unsigned(prob.B));
  attentionForwardTC<D><<<grid, kTCThreads, Cfg::fwdSmem, contextOf(args).stream>>>(a);
  G3RT_CUDA_CHECK_LAUNCH(args, "attention forward");
  return Status();
}

template <int D>
Status launchBackwardTC(const KernelArgs &args, const AttentionShape &prob, const AttnArgs &a) {
  using Cfg = TCTiles<D>;
  cudaStream_t stream = contextOf(args).stream;
  G3RT_RETURN_IF_ERROR(allowSmem(args, attentionBackwardQTC<D>, Cfg::passASmem));
  G3RT_RETURN_IF_ERROR(allowSmem(args, attentionBackwardKVTC<D, true>, Cfg::passBSmem));
  G3RT_RETURN_IF_ERROR(allowSmem(args, attentionBackwardKVTC<D, false>, Cfg::passBSmem));
  dim3 gridA(unsigned(ceilDiv(prob.T, Cfg::BQA)), unsigned(prob.nh), unsigned(prob.B));
  attentionBackwardQTC<D><<<gridA, kTCThreads, Cfg::passASmem, stream>>>(a);
  G3RT_CUDA_CHECK_LAUNCH(args, "attention backward (dq)");
  dim3 gridB(unsigned(ceilDiv(prob.T, Cfg::BKB)), unsigned(prob.nkv), unsigned(prob.B));
  attentionBackwardKVTC<D, true><<<gridB, kTCThreads, Cfg::passBSmem, stream>>>(a);
  G3RT_CUDA_CHECK_LAUNCH(args, "attention backward (dk)");
  attentionBackwardKVTC<D, false><<<gridB, kTCThreads, Cfg::passBSmem, stream>>>(a);
  G3RT_CUDA_CHECK_LAUNCH(args, "attention backward (dv)");
  return Status();
}

// The tensor-core kernels take bf16 operands only; other float types use the
// fp32 CUDA-core kernels.
bool tensorCoreOperands(const KernelArgs &args, size_t count, const AttentionShape &prob,
                        AttnArgs &a) {
  bool aligned = prob.d % 8 == 0;
  for (size_t i = 0; i < count; ++i) {
    if (i == 3)
      continue; // segment_ids
    const TensorView &t = args.inputs[i];
    if (t.dtype != DType::BF16)
      return false;
    aligned = aligned && aligned16(t);
  }
  a.vec8 = aligned;
  return true;
}

// cuDNN's fused attention where the context allows it and it serves the call
// (cudnn_attention.h); `served` false: the own kernels run.
Status cudnnIfServed(const KernelArgs &args, const AttentionShape &prob, bool grad,
                     bool &served) {
#if G3MOE_HAVE_CUDNN
  return cudnnAttention(args, prob, grad, served);
#else
  served = false;
  if (contextOf(args).attention == AttentionImpl::Cudnn)
    return args.fail("G3MOE_CUDA_ATTENTION=cudnn, but this build has no cuDNN");
  (void)prob;
  (void)grad;
  return Status();
#endif
}

Status attentionOp(const KernelArgs &args) {
  AttentionShape prob;
  G3RT_RETURN_IF_ERROR(checkAttention(args, /*grad=*/false, prob));
  if (prob.B * prob.T * prob.nh * prob.d == 0)
    return Status();
  bool served = false;
  G3RT_RETURN_IF_ERROR(cudnnIfServed(args, prob, /*grad=*/false, served));
  if (served)
    return Status();
  AttnArgs a;
  G3RT_RETURN_IF_ERROR(makeArgs(args, prob, a));
  a.o = args.outputs[0].data;
  a.ot = args.outputs[0].dtype;
  a.lse = prob.withLse ? args.outputs[1].f32() : nullptr;
  if (tensorCoreOperands(args, 3, prob, a)) {
    if (prob.d <= 64)
      return launchForwardTC<64>(args, prob, a);
    if (prob.d <= 128)
      return launchForwardTC<128>(args, prob, a);
    return launchForwardTC<256>(args, prob, a);
  }
  if (prob.d <= 64)
    return launchForward<64>(args, prob, a);
  if (prob.d <= 128)
    return launchForward<128>(args, prob, a);
  return launchForward<256>(args, prob, a);
}

Status attentionGradOp(const KernelArgs &args) {
  AttentionShape prob;
  G3RT_RETURN_IF_ERROR(checkAttention(args, /*grad=*/true, prob));
  if (prob.B * prob.T * prob.nh * prob.d == 0)
    return Status();
  bool served = false;
  G3RT_RETURN_IF_ERROR(cudnnIfServed(args, prob, /*grad=*/true, served));
  if (served)
    return Status();
  AttnArgs a;
  G3RT_RETURN_IF_ERROR(makeArgs(args, prob, a));
  a.dout = args.inputs[4].data;
  a.dt = args.inputs[4].dtype;
  a.dq = args.outputs[0].data;
  a.dqt = args.outputs[0].dtype;
  a.dk = args.outputs[1].data;
  a.dkt = args.outputs[1].dtype;
  a.dv = args.outputs[2].data;
  a.dvt = args.outputs[2].dtype;
  CudaContext &ctx = contextOf(args);
  const size_t statsBytes = size_t(prob.B * prob.nh * prob.T) * 3 * sizeof(float);
  if (statsBytes > ctx.workspaceBytes)
    return args.fail("the softmax statistics need " + std::to_string(statsBytes) +
                     " bytes of workspace, only " + std::to_string(ctx.workspaceBytes) +
                     " are available");
  a.stats = static_cast<float *>(ctx.workspace);
  if (tensorCoreOperands(args, 5, prob, a)) {
    if (prob.d <= 64)
      return launchBackwardTC<64>(args, prob, a);
    if (prob.d <= 128)
      return launchBackwardTC<128>(args, prob, a);
    return launchBackwardTC<256>(args, prob, a);
  }
  if (prob.d <= 64)
    return launchBackward<64>(args, prob, a);
  if (prob.d <= 128)
    return launchBackward<128>(args, prob, a);
  return launchBackward<256>(args, prob, a);
}

} // namespace

void registerCudaAttentionKernels(KernelTable &table) {
  table.emplace_back("rope", ropeOp);
  table.emplace_back("attention", attentionOp);
  table.emplace_back("attention_grad", attentionGradOp);
}

} // namespace g3rt::cuda
