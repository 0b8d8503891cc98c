//===- lm_head_rows.cuh - row kernels of the LM head and loss --*- CUDA -*-===//
//
// The device side of kernels_lm_head.cu, which alone includes this file: the
// kernels that work on rows of logits, one block per row, and the block
// reductions they share. The unfused cross-entropy reads whole rows; the
// fused LM head + cross-entropy reads them a tile (a vocabulary chunk of a
// row block) at a time and carries an online logsumexp across the chunks;
// kernels_lm_head.cu describes that tiling and launches everything here.
// Sums run in double where the CPU reference sums in double, in an order
// fixed by the block size, so results are reproducible run to run.
//
// Everything stays in an anonymous namespace, as it was in the .cu file:
// made externally visible, the same PTX got a different register allocation
// from ptxas for one kernel, and internal linkage keeps the machine code
// byte for byte what it was.
//
// Targets out of range and num_items <= 0 are errors on the CPU that a
// kernel cannot report; the affected values are NaN instead, and nothing is
// read or written out of bounds for them.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_LM_HEAD_ROWS_CUH
#define G3MOE_RUNTIME_CUDA_LM_HEAD_ROWS_CUH

#include "runtime/cuda/cuda_context.h"
#include "runtime/cuda/reduce.cuh"
#include "runtime/cuda/softcap.cuh"

#include <climits>
#include <cmath>
#include <cstdint>

namespace g3rt::cuda {
namespace {

//===----------------------------------------------------------------------===//
// LM head gradient
//===----------------------------------------------------------------------===//

/// The logit gradient of a [mb, vc] block (rows m0.., vocabulary v0..), times
/// the cap's derivative 1 - tanh²(l/c) when `logits` (the recomputed
/// pre-cap block) is given. Written as fp32 (`out`, which may be `logits`),
/// or as a bf16 pair hi + lo (see splitBf16).
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

//===----------------------------------------------------------------------===//
// Cross-entropy
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

/// Per row: the loss term (0 when ignored, NaN for a target outside [0, V))
/// and whether the row counts.
__global__ void crossEntropyRowsDevice(const void *logits, DType lt, const void *targets, DType tt,
                                       int64_t rows, int64_t V, int64_t ignoreIndex,
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

/// Σ rowLoss / num_items, or 0 when no row counts; a counted batch with
/// num_items <= 0 (an error on the CPU) gives NaN.
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

/// One block per row: (softmax - onehot)·dloss/num_items on counted rows (a
/// counted row means the batch counts, so the CPU's coefficient applies), 0
/// on ignored rows, NaN on rows whose target is out of range or when
/// num_items <= 0 (errors on the CPU).
__global__ void crossEntropyGradDevice(const void *logits, DType lt, const void *targets, DType tt,
                                       const void *numItems, DType nt, const void *dloss, DType dt,
                                       int64_t rows, int64_t V, int64_t ignoreIndex, void *out,
                                       DType ot) {
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

//===----------------------------------------------------------------------===//
// Fused LM head + cross-entropy (tiles of rows)
//===----------------------------------------------------------------------===//

/// One block per row of an [mb, vc] tile of pre-cap logits (rows m0.. and
/// vocabulary v0.. of the whole): caps them and merges the chunk's max (fp32)
/// and Σexp(l - max) (double) into the row's running pair, the state of an
/// online logsumexp over the chunks; the CPU's two passes over the row (fp32
/// max, then the double sum) give the same value up to double rounding. Takes
/// the target's logit when it lies in the chunk (targetLogit given). After the
/// last chunk: lse[r] and, with rowLoss, the row's term and whether it counts
/// (as crossEntropyRowsDevice); with lseOut, the op's lse output (0 on ignored
/// rows, NaN on bad targets, as on the CPU).
__global__ void headLossStatsDevice(const float *logits, int64_t mb, int64_t vc, int64_t v0,
                                    int64_t V, const void *targets, DType tt, int64_t m0,
                                    int64_t ignoreIndex, float softcap, bool first, bool last,
                                    float *runMax, double *runSum, float *targetLogit, double *lse,
                                    double *rowLoss, int *counted, float *lseOut) {
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

/// One block per row of an [mb, vc] tile of pre-cap logits: the logit
/// gradient (softmax - onehot)·dloss/num_items of a counted row, from the
/// row's lse (the math of crossEntropyGradDevice on the capped logits), times
/// the cap's derivative (that of lmHeadGradPrepDevice) when capped; 0 on
/// ignored rows, NaN on rows with a bad target or when num_items <= 0. Written
/// as fp32 `out` (which may be `logits`: every element is read, then written,
/// by one thread) or as the bf16 pair hi + lo.
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

//===----------------------------------------------------------------------===//
// Fused LM head + cross-entropy with its input gradient (one pass)
//===----------------------------------------------------------------------===//

/// One block per row of an [mb, vc] tile of pre-cap logits (rows m0..,
/// vocabulary v0..) of lm_head_cross_entropy_and_grad: the row's running
/// max grows to M over the chunk's capped logits, the running Σexp(l - M)
/// (double) takes the chunk in, and each logit becomes p = exp(l - M), times
/// the cap's derivative when capped, 0 at the target (whose term the finish
/// adds exactly), written as bf16 `pb` or as fp32 in place of the logit. The
/// row of the [mb, H] product accumulator `acc` is rescaled from the previous
/// max to M, so that after the product acc += p·table[chunk] it holds
/// Σ_{v≠t} exp(l_v - M)·cap'_v·table_v. Ignored and bad rows write p = 0.
__global__ void headOnePassTileDevice(float *logits, int64_t mb, int64_t vc, int64_t v0, int64_t V,
                                      const void *targets, DType tt, int64_t m0,
                                      int64_t ignoreIndex, float softcap, bool first, float *runMax,
                                      double *runSum, float *targetLogit, float *acc, int64_t H,
                                      __nv_bfloat16 *pb) {
  for (int64_t r = blockIdx.x; r < mb; r += gridDim.x) {
    float *row = logits + r * vc;
    __nv_bfloat16 *prow = pb ? pb + r * vc : nullptr;
    int64_t t = loadIndex(targets, tt, m0 + r);
    if (t == ignoreIndex || t < 0 || t >= V) {
      for (int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
        if (prow)
          prow[c] = __float2bfloat16(0.0f);
        else
          row[c] = 0.0f;
      }
      continue;
    }
    const float previous = first ? -INFINITY : runMax[r];
    float m = -INFINITY;
    for (int64_t c = threadIdx.x; c < vc; c += blockDim.x)
      m = fmaxf(m, softcap > 0 ? capValue(row[c], softcap) : row[c]);
    const float M = fmaxf(blockMax(m), previous);
    const int64_t tc = t - v0; // the target's column in this chunk, if there
    double s = 0;
    for (int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
      float l = row[c], th = 0;
      if (softcap > 0) {
        th = capTanh(l, softcap);
        l = __fmul_rn(softcap, th);
      }
      if (c == tc)
        targetLogit[r] = l;
      // -inf logits add nothing (as in headLossStatsDevice); NaN propagates.
      double e = l == -INFINITY ? 0.0 : exp(double(l) - double(M));
      s += e;
      float p = c == tc ? 0.0f : float(e);
      if (softcap > 0)
        p = capGrad(p, th);
      if (prow)
        prow[c] = __float2bfloat16(p);
      else
        row[c] = p;
    }
    s = blockSum(s);
    if (!first && M > previous) {
      const float factor = expf(previous - M);
      for (int64_t h = threadIdx.x; h < H; h += blockDim.x)
        acc[r * H + h] *= factor;
    }
    if (threadIdx.x == 0) {
      runSum[r] =
          first ? s : (runSum[r] == 0 ? 0.0 : runSum[r] * exp(double(previous) - double(M))) + s;
      runMax[r] = M;
    }
  }
}

/// One block per row of a row block of lm_head_cross_entropy_and_grad, after
/// its last chunk: the row's loss term and whether it counts (as
/// headLossStatsDevice), and its input gradient
/// (acc/S + (softmax_t - 1)·cap'_t·table_t)·dloss/num_items (as
/// headLossGradDevice's product: 0 on ignored rows, NaN on bad targets or
/// num_items <= 0).
__global__ void headOnePassFinishDevice(const float *acc, int64_t mb, int64_t H, int64_t V,
                                        int64_t m0, const void *targets, DType tt,
                                        int64_t ignoreIndex, float softcap, const float *runMax,
                                        const double *runSum, const float *targetLogit,
                                        const void *table, DType tableT, const void *numItems,
                                        DType nt, const void *dloss, DType dt, void *dx, DType dxT,
                                        double *rowLoss, int *counted) {
  const double n = loadFloat(numItems, nt, 0);
  const double coef = double(loadFloat(dloss, dt, 0)) / n;
  for (int64_t r = blockIdx.x; r < mb; r += gridDim.x) {
    const int64_t t = loadIndex(targets, tt, m0 + r), out = (m0 + r) * H;
    const bool ignored = t == ignoreIndex, bad = !ignored && (t < 0 || t >= V);
    if (threadIdx.x == 0) {
      counted[m0 + r] = ignored ? 0 : 1;
      rowLoss[m0 + r] = ignored ? 0.0
                        : bad   ? double(NAN)
                                : double(runMax[r]) + log(runSum[r]) - double(targetLogit[r]);
    }
    if (ignored || bad || !(n > 0)) {
      float fill = ignored ? 0.0f : NAN;
      for (int64_t h = threadIdx.x; h < H; h += blockDim.x)
        storeFloat(dx, dxT, out + h, fill);
      continue;
    }
    const double lse = double(runMax[r]) + log(runSum[r]);
    const float zt = targetLogit[r];
    // softmax_t - 1 without the cancellation of exp(zt - lse) - 1.
    float gt = float(expm1(double(zt) - lse));
    if (softcap > 0)
      gt = capGrad(gt, __fdiv_rn(zt, softcap));
    const double invS = 1.0 / runSum[r];
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
      double v = double(acc[r * H + h]) * invS + double(gt) * loadFloat(table, tableT, t * H + h);
      storeFloat(dx, dxT, out + h, float(v * coef));
    }
  }
}

/// The forward's fp32 per-row logsumexp, widened for the backward.
__global__ void widenDevice(const float *in, int64_t n, double *out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = in[i];
}

//===----------------------------------------------------------------------===//
// Token accuracy
//===----------------------------------------------------------------------===//

/// The better of two (value, index) candidates: the larger value, the lower
/// index on ties (the CPU's first maximum).
__device__ __forceinline__ void argmaxCombine(float &v, int64_t &i, float ov, int64_t oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

/// The block's best (value, index) of its threads' candidates, to thread 0
/// (merged as argmaxCombine merges).
__device__ __forceinline__ void blockArgmax(float &best, int64_t &bestIdx) {
  __shared__ float vals[32];
  __shared__ int64_t idxs[32];
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
  if (threadIdx.x == 0)
    for (int w = 1; w < warps; ++w)
      argmaxCombine(best, bestIdx, vals[w], idxs[w]);
  __syncthreads();
}

/// One block per row of an [mb, vc] tile of pre-cap logits (columns v0..):
/// the row's argmax of the capped logits so far, merged over the vocabulary
/// chunks in order (a later chunk wins only with a larger value, so the
/// lowest index wins ties, as token_accuracy's does); after the last chunk
/// the row's counts go to `counters` (correct, total) as token_accuracy
/// counts them.
__global__ void headArgmaxDevice(const float *logits, int64_t mb, int64_t vc, int64_t v0,
                                 const void *targets, DType tt, int64_t m0, int64_t ignoreIndex,
                                 float softcap, bool first, bool last, float *runBest,
                                 int64_t *runIdx, unsigned long long *counters) {
  for (int64_t r = blockIdx.x; r < mb; r += gridDim.x) {
    int64_t t = loadIndex(targets, tt, m0 + r);
    if (t == ignoreIndex)
      continue;
    const float *row = logits + r * vc;
    float best = -INFINITY;
    int64_t bestIdx = INT64_MAX;
    for (int64_t c = threadIdx.x; c < vc; c += blockDim.x) {
      float l = softcap > 0 ? capValue(row[c], softcap) : row[c];
      if (bestIdx == INT64_MAX || l > best) {
        best = l;
        bestIdx = v0 + c;
      }
    }
    blockArgmax(best, bestIdx);
    if (threadIdx.x == 0) {
      if (!first && !(best > runBest[r])) {
        best = runBest[r];
        bestIdx = runIdx[r];
      }
      if (last) {
        atomicAdd(&counters[0], bestIdx == t ? 1ull : 0ull);
        atomicAdd(&counters[1], 1ull);
      } else {
        runBest[r] = best;
        runIdx[r] = bestIdx;
      }
    }
  }
}

/// One block per row; the counts go to two integer counters (integer atomics
/// are exact, so the totals do not depend on the order).
__global__ void tokenAccuracyDevice(const void *logits, DType lt, const void *targets, DType tt,
                                    int64_t rows, int64_t V, int64_t ignoreIndex,
                                    unsigned long long *counters) {
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
    blockArgmax(best, bestIdx);
    if (threadIdx.x == 0) {
      atomicAdd(&counters[0], bestIdx == t ? 1ull : 0ull);
      atomicAdd(&counters[1], 1ull);
    }
  }
}

/// The two counts as the outputs' float types.
__global__ void tokenAccuracyFinishDevice(const unsigned long long *counters, void *correct,
                                          DType ct, void *total, DType tt) {
  storeFloat(correct, ct, 0, float(counters[0]));
  storeFloat(total, tt, 0, float(counters[1]));
}

} // namespace
} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_LM_HEAD_ROWS_CUH
