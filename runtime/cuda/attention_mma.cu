//===- attention_mma.cu - attention on tensor cores (bf16) ----------------===//
//
// The own attention kernels for bf16 q, k, v (and do): tensor cores
// (mma.sync m16n8k16, fp32 accumulate), on the tiling of flash_attention.cuh
// and the two backward passes of attention_fp32.cu, pass B in two launches
// (dk, then dv: one 16 x 256 fp32 accumulator per warp is all the registers
// allow).
//
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
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/flash_attention.cuh"

namespace g3rt::cuda {

using namespace checks;

namespace {

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
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smemAddress(dst)), "l"(src),
               "r"(valid ? 16 : 0));
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
__device__ __forceinline__ void accumulateTiles(const float (&x)[NB][4], const bf16 *Y, int dPairs,
                                                int lane, float (&acc)[D / 8][4]) {
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
__device__ __forceinline__ void
storeFragments(void *dst, DType t, const AttnArgs &p, int b, int r0, int h, int heads, int lane,
               const float (&acc)[D / 8][4], const float (&mul)[2]) {
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
                                                 const long long *rowSeg, const long long *colSeg,
                                                 int lane) {
  const int g = lane >> 2, tq = lane & 3;
  uint32_t vis = 0;
#pragma unroll
  for (int nb = 0; nb < NB; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = r0 + g + (e >> 1) * 8, c = nb * 8 + 2 * tq + (e & 1);
      const bool v = rowsAreQueries ? visible(p, rowBase + r, colBase + c, rowSeg[r], colSeg[c])
                                    : visible(p, colBase + c, rowBase + r, colSeg[c], rowSeg[r]);
      if (v)
        vis |= 1u << (nb * 4 + e);
    }
  return vis;
}

// Clears a warp's 16 x DB*8 accumulator fragments.
template <int DB> __device__ __forceinline__ void zeroFragments(float (&acc)[DB][4]) {
#pragma unroll
  for (int db = 0; db < DB; ++db)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      acc[db][e] = 0.0f;
}

// Tile shapes. K/V (pass B: Q/dO) tiles are double-buffered, and every
// kernel stays near 100 KB of shared memory at D = 256 so that two blocks
// (eight warps) share a multiprocessor.
template <int D> struct TCTiles {
  static constexpr int LDS = D + 8;
  static constexpr int BQ = 64, BK = 32;   // forward
  static constexpr int BQA = 64, BKA = 16; // backward pass A
  static constexpr int BKB = 64, BQB = 16; // backward pass B
  static constexpr size_t fwdSmem =
      sizeof(bf16) * size_t(BQ + 4 * BK) * LDS + sizeof(long long) * (BQ + 2 * BK);
  static constexpr size_t passASmem =
      sizeof(bf16) * size_t(2 * BQA + 4 * BKA) * LDS + sizeof(long long) * (BQA + 2 * BKA);
  static constexpr size_t passBSmem = sizeof(bf16) * size_t(2 * BKB + 4 * BQB) * LDS +
                                      sizeof(float) * 6 * BQB + sizeof(long long) * (2 * BQB + BKB);
};

// Whether every (query, key) pair of a query tile [q0, q0+nq) and a key tile
// [k0, k0+nk) is visible, given that all their segment ids are one nonzero
// value: then the per-element mask can be skipped.
__device__ __forceinline__ bool tileFullyVisible(const AttnArgs &p, int q0, int nq, int k0,
                                                 int nk) {
  return q0 + nq <= p.T && k0 + nk - 1 <= q0 && (p.window == 0 || q0 + nq - 1 - k0 < p.window);
}

// Loads the segment ids of query rows q0.. (R of them) into sSeg and tells
// every thread whether they are all seg0 and nonzero. A barrier.
template <int R>
__device__ __forceinline__ bool loadQuerySegments(const AttnArgs &p, int b, int q0, long long seg0,
                                                  long long *sSeg, int tid) {
  bool mine = true;
  if (tid < R) {
    const long long s = segmentAt(p, b, q0 + tid);
    sSeg[tid] = s;
    mine = s == seg0 && s != 0;
  }
  return __syncthreads_and(mine);
}

// Issues the asynchronous copies of key tile k0 (BK keys of kv head kh)
// into buffer `buf` of the double-buffered K and V tiles, as one group.
template <int BK, int D>
__device__ __forceinline__ void issueKeyTile(const AttnArgs &p, bf16 *sK, bf16 *sV, int buf, int b,
                                             int k0, int kh) {
  constexpr int LDS = D + 8;
  loadTileBF16<BK, D>(sK + buf * BK * LDS, p.k, b, k0, kh, p.nkv, p);
  loadTileBF16<BK, D>(sV + buf * BK * LDS, p.v, b, k0, kh, p.nkv, p);
  cpAsyncCommit();
}

// Finishes a warp's 16 x NB*8 score fragments of a key tile in place (the
// invisible ones, by `vis`, become -inf) and gives the new running maximum
// of its two rows (g and g + 8) and the factor alpha that rescales what was
// accumulated under the old maximum m.
template <int NB>
__device__ __forceinline__ void finishScores(const AttnArgs &p, uint32_t vis, float (&s)[NB][4],
                                             const float (&m)[2], float (&mNew)[2],
                                             float (&alpha)[2]) {
  float mx[2] = {kNegInf, kNegInf};
#pragma unroll
  for (int nb = 0; nb < NB; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nb][e] = (vis >> (nb * 4 + e)) & 1u ? finishScore(p, s[nb][e]) : kNegInf;
      mx[e >> 1] = fmaxf(mx[e >> 1], s[nb][e]);
    }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mNew[r] = fmaxf(m[r], quadMax(mx[r]));
    alpha[r] = mNew[r] == kNegInf ? 1.0f : expf(m[r] - mNew[r]);
  }
}

// Whether any (query, key) pair of query tile q0 (segment ids sSegQ) and key
// tile k0 (segK) is visible. When the whole key tile is visible to the whole
// query tile, given that all their segment ids are one
// nonzero value (qUniform, keysUniform), `vis` is left as it is (all visible); otherwise it becomes
// the warp's fragment mask, and the answer needs a barrier.
template <int NB, int BQ, int BK>
__device__ __forceinline__ bool keyTileVisible(const AttnArgs &p, bool qUniform, bool keysUniform,
                                               int q0, int k0, int warp, const long long *sSegQ,
                                               const long long *segK, int lane, uint32_t &vis) {
  bool any = true;
  if (!(qUniform && keysUniform && tileFullyVisible(p, q0, BQ, k0, BK))) {
    vis = fragmentMask<NB>(p, true, q0, warp * 16, k0, sSegQ, segK, lane);
    any = __syncthreads_or(vis != 0);
  }
  return any;
}

// The forward and pass A walk the key tiles of a query tile with this
// pipeline: at the top of an iteration the tile's K/V copies are awaited and a
// barrier publishes them (and its segment ids, which each thread stored from a
// register); the next tile's copies and segment ids are then issued, to land
// while this tile is computed.
template <int D> __global__ void __launch_bounds__(kTCThreads) attentionForwardTC(AttnArgs p) {
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
  const bool qUniform = loadQuerySegments<BQ>(p, b, q0, seg0, sSegQ, tid);
  long long kseg = 0;
  if (tid < BK) {
    kseg = segmentAt(p, b, kStart + tid);
    sSegK[tid] = kseg;
  }
  bool keyMine = tid >= BK || kseg == seg0;

  float o[DB][4], m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};
  zeroFragments<DB>(o);

  int cur = 0;
  for (int k0 = kStart; k0 <= qLast; k0 += BK, cur ^= 1) {
    cpAsyncWaitAll();
    const bool keysUniform = __syncthreads_and(keyMine);
    const int kn = k0 + BK;
    long long nseg = 0;
    if (kn <= qLast) {
      issueKeyTile<BK, D>(p, sK, sV, cur ^ 1, b, kn, kh);
      if (tid < BK)
        nseg = segmentAt(p, b, kn + tid);
    }
    const bf16 *K = sK + cur * BK * LDS, *V = sV + cur * BK * LDS;
    uint32_t vis = kAll;
    const bool any = keyTileVisible<NB, BQ, BK>(p, qUniform, keysUniform, q0, k0, warp, sSegQ,
                                                sSegK + cur * BK, lane, vis);
    if (any) {
      float s[NB][4];
      scoreTiles<NB, LDS>(sQ, warp * 16, K, kSteps, lane, s);
      float alpha[2], mNew[2], rowSum[2] = {0.0f, 0.0f};
      finishScores<NB>(p, vis, s, m, mNew, alpha);
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

// Sweep 0 of pass A on one key tile (a warp's score fragments s and dP =
// dO·V^T): finishes the scores in place and merges the tile into the online
// max m, denominator l and Dsum = sum_j e_j dP_j of the warp's rows g and
// g + 8, Dsum rescaled like the denominator so that Dsum / l = sum_j P_j dP_j.
template <int NB>
__device__ __forceinline__ void mergeFragmentStats(const AttnArgs &p, uint32_t vis,
                                                   float (&s)[NB][4], const float (&dP)[NB][4],
                                                   float (&m)[2], float (&l)[2], float (&Dsum)[2]) {
  float alpha[2], mNew[2], rowSum[2] = {0.0f, 0.0f}, rowD[2] = {0.0f, 0.0f};
  finishScores<NB>(p, vis, s, m, mNew, alpha);
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
}

// The end of sweep 0: D = Dsum / l of the warp's rows r0 + g and r0 + g + 8
// (g = lane / 4; 0 for a row that saw no key) into Drow, and the row
// statistics (max, denominator, D) that pass B reads into p.stats, from the
// quad's first lane.
__device__ __forceinline__ void storeFragmentStats(const AttnArgs &p, int b, int h, int r0, int g,
                                                   int lane, const float (&m)[2],
                                                   const float (&l)[2], const float (&Dsum)[2],
                                                   float (&Drow)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    Drow[r] = l[r] > 0.0f ? Dsum[r] / l[r] : 0.0f;
    const int i = r0 + g + 8 * r;
    if ((lane & 3) == 0 && i < p.T) {
      float *st = p.stats + ((int64_t(b) * p.nh + h) * p.T + i) * 3;
      st[0] = l[r] > 0.0f ? m[r] : 0.0f;
      st[1] = l[r];
      st[2] = Drow[r];
    }
  }
}

// Sweep 1 of pass A on one key tile: the raw score fragments s become dS =
// P (dP - D) times the cap's slope, in place (0 where masked).
template <int NB>
__device__ __forceinline__ void
scoreGradFragments(const AttnArgs &p, uint32_t vis, const float (&m)[2], const float (&l)[2],
                   const float (&Drow)[2], const float (&dP)[NB][4], float (&s)[NB][4]) {
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
}

template <int D> __global__ void __launch_bounds__(kTCThreads) attentionBackwardQTC(AttnArgs p) {
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
  const bool qUniform = loadQuerySegments<BQ>(p, b, q0, seg0, sSegQ, tid);

  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f}, Dsum[2] = {0.0f, 0.0f};
  float dq[DB][4];
  zeroFragments<DB>(dq);
  float Drow[2] = {0.0f, 0.0f};

  // Sweep 0: online max, denominator and D (rescaled like the denominator).
  // Sweep 1: dS = P (dP - D) slope, dq += dS K.
  for (int sweep = 0; sweep < 2; ++sweep) {
    __syncthreads(); // sweep 0's last tile is no longer read
    issueKeyTile<BK, D>(p, sK, sV, 0, b, kStart, kh);
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
        issueKeyTile<BK, D>(p, sK, sV, cur ^ 1, b, kn, kh);
        if (tid < BK)
          nseg = segmentAt(p, b, kn + tid);
      }
      const bf16 *K = sK + cur * BK * LDS, *V = sV + cur * BK * LDS;
      uint32_t vis = kAll;
      const bool any = keyTileVisible<NB, BQ, BK>(p, qUniform, keysUniform, q0, k0, warp, sSegQ,
                                                  sSegK + cur * BK, lane, vis);
      if (any) {
        float s[NB][4], dP[NB][4];
        scoreTiles<NB, LDS>(sQ, warp * 16, K, kSteps, lane, s);
        scoreTiles<NB, LDS>(sDO, warp * 16, V, kSteps, lane, dP);
        if (sweep == 0) {
          mergeFragmentStats<NB>(p, vis, s, dP, m, l, Dsum);
        } else {
          scoreGradFragments<NB>(p, vis, m, l, Drow, dP, s);
          accumulateTiles<NB, D>(s, K, kSteps, lane, dq);
        }
      }
      if (tid < BK)
        sSegK[(cur ^ 1) * BK + tid] = nseg;
      keyMine = tid >= BK || nseg == seg0;
    }
    if (sweep == 0)
      storeFragmentStats(p, b, h, q0 + warp * 16, g, lane, m, l, Dsum, Drow);
  }
  const float mul[2] = {p.scale, p.scale};
  storeFragments<D>(p.dq, p.dqt, p, b, q0 + warp * 16, h, p.nh, lane, dq, mul);
}

// What thread tid < BQB of pass B carries of a (query head, query tile) step
// from issuing its loads to publishing them: query row tid's segment id and
// statistics (max, denominator, D), in registers while the previous step is
// computed.
struct QueryRow {
  long long seg;
  float m, l, drow;
};

// Stores a step's QueryRow into buffer `buf` of the segment ids sSegQ
// ([2][BQB]) and statistics sStats ([2][3][BQB]).
template <int BQB>
__device__ __forceinline__ void publishQueryRow(int buf, const QueryRow &row, int tid,
                                                long long *sSegQ, float *sStats) {
  if (tid < BQB) {
    sSegQ[buf * BQB + tid] = row.seg;
    sStats[(buf * 3 + 0) * BQB + tid] = row.m;
    sStats[(buf * 3 + 1) * BQB + tid] = row.l;
    sStats[(buf * 3 + 2) * BQB + tid] = row.drow;
  }
}

// Pass B's terms of one (key tile, query tile) step, in place of the warp's
// transposed score fragments s (rows: its keys, columns: the queries, whose
// statistics are sM, sL and sD): P for dV, or dS = P (dP - D) times the
// cap's slope for dK; 0 where masked.
template <int NB, bool DK>
__device__ __forceinline__ void keyGradFragments(const AttnArgs &p, uint32_t vis, const float *sM,
                                                 const float *sL, const float *sD, int tq,
                                                 const float (&dP)[NB][4], float (&s)[NB][4]) {
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
  auto issue = [&](int gi, int qt, int buf, QueryRow &row) {
    const int h = kh * p.group + gi;
    loadTileBF16<BQB, D>(sQ + buf * BQB * LDS, p.q, b, qt, h, p.nh, p);
    loadTileBF16<BQB, D>(sDO + buf * BQB * LDS, p.dout, b, qt, h, p.nh, p);
    cpAsyncCommit();
    row = QueryRow{0, 0.0f, 0.0f, 0.0f};
    if (tid < BQB && qt + tid < p.T) {
      row.seg = segmentAt(p, b, qt + tid);
      const float *st = p.stats + ((int64_t(b) * p.nh + h) * p.T + qt + tid) * 3;
      row.m = st[0];
      row.l = st[1];
      row.drow = st[2];
    }
  };

  QueryRow row;
  issue(0, qStart, 0, row);
  publishQueryRow<BQB>(0, row, tid, sSegQ, sStats);
  bool queryMine = tid >= BQB || row.seg == seg0;
  const bool kUniform = __syncthreads_and(mine) && k0 + BKB <= p.T;

  float acc[DB][4];
  zeroFragments<DB>(acc);

  int cur = 0, gi = 0, q0 = qStart;
  while (gi < p.group) {
    cpAsyncWaitAll();
    const bool queriesUniform = __syncthreads_and(queryMine);
    int gn = gi, qn = q0 + BQB;
    if (qn > qEnd) {
      ++gn;
      qn = qStart;
    }
    QueryRow next{0, 0.0f, 0.0f, 0.0f};
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
      keyGradFragments<NB, DK>(p, vis, sM, sL, sD, tq, dP, s);
      accumulateTiles<NB, D>(s, DK ? Q : DO, kSteps, lane, acc);
    }
    publishQueryRow<BQB>(cur ^ 1, next, tid, sSegQ, sStats);
    queryMine = tid >= BQB || next.seg == seg0;
    cur ^= 1;
    gi = gn;
    q0 = qn;
  }
  const float mul[2] = {DK ? p.scale : 1.0f, DK ? p.scale : 1.0f};
  storeFragments<D>(DK ? p.dk : p.dv, DK ? p.dkt : p.dvt, p, b, k0 + warp * 16, kh, p.nkv, lane,
                    acc, mul);
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

} // namespace

Status launchAttentionMma(const KernelArgs &args, const AttentionShape &prob, const AttnArgs &a) {
  if (prob.d <= 64)
    return launchForwardTC<64>(args, prob, a);
  if (prob.d <= 128)
    return launchForwardTC<128>(args, prob, a);
  return launchForwardTC<256>(args, prob, a);
}

Status launchAttentionGradMma(const KernelArgs &args, const AttentionShape &prob,
                              const AttnArgs &a) {
  if (prob.d <= 64)
    return launchBackwardTC<64>(args, prob, a);
  if (prob.d <= 128)
    return launchBackwardTC<128>(args, prob, a);
  return launchBackwardTC<256>(args, prob, a);
}

} // namespace g3rt::cuda
