//===- kernels_attention.cpp - RoPE and attention CPU kernels -------------===//
//
// The fp32 reference of rope, attention and attention_grad (docs/kernels.md,
// "Attention and RoPE"). Inputs of any float type are widened to fp32 once;
// scores, softmax and every reduction run in fp32 and each output element is
// rounded once when stored.
//
// Attention never materialises the T x T score matrix: each query row walks
// only the keys its causal (and sliding-window) mask can admit, so a sliding
// layer costs O(T * W) rather than O(T^2). The backward pass is split in two
// so that every output element has exactly one writer: pass 1 runs over query
// rows (softmax statistics and dq), pass 2 over key rows (dk and dv, summed
// over the query heads of the kv group in a fixed order). Results therefore
// do not depend on the thread count.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/parallel.h"
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/kernels/kernel_checks.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace g3rt::cpu {

using namespace checks;

namespace {

// Segment ids and positions are i32 by contract; i64 is accepted too so that
// a caller holding 64-bit indices does not need a conversion pass.
int64_t indexAt(const TensorView &t, int64_t i) {
  return t.dtype == DType::I64 ? t.i64()[i] : int64_t(t.i32()[i]);
}

} // namespace

//===----------------------------------------------------------------------===//
// rope
//===----------------------------------------------------------------------===//

Status ropeKernel(const KernelArgs &args) {
  RopeShape r;
  G3RT_RETURN_IF_ERROR(checkRope(args, r));
  const int64_t B = r.B, T = r.T, n = r.n, d = r.d;
  const double theta = r.theta, factor = r.factor;
  const bool transpose = r.transpose;
  const TensorView &x = args.inputs[0], &pos = args.inputs[1], &y = args.outputs[0];

  // inv_freq exactly as HF builds it in fp32: 1 / theta^(float(2i) / d), then
  // divided by the linear scaling factor. Large positions times a slightly
  // different inv_freq drift visibly, so the fp32 steps matter.
  int64_t half = d / 2;
  std::vector<float> invFreq(static_cast<size_t>(half));
  const float thetaF = float(theta), factorF = float(factor);
  for (int64_t i = 0; i < half; ++i) {
    float exponent = float(2 * i) / float(d);
    invFreq[size_t(i)] = (1.0f / std::pow(thetaF, exponent)) / factorF;
  }

  std::vector<float> xs = toFloat(x);
  const float sign = transpose ? -1.0f : 1.0f;
  parallelFor(B * T, [&](int64_t begin, int64_t end) {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
    for (int64_t row = begin; row < end; ++row) {
      // One angle table per token, shared by its heads.
      float p = float(indexAt(pos, row));
      for (int64_t i = 0; i < half; ++i) {
        float phi = p * invFreq[size_t(i)];
        cs[size_t(i)] = std::cos(phi);
        sn[size_t(i)] = sign * std::sin(phi);
      }
      for (int64_t h = 0; h < n; ++h) {
        int64_t base = (row * n + h) * d;
        for (int64_t i = 0; i < half; ++i) {
          float a = xs[size_t(base + i)], b = xs[size_t(base + i + half)];
          float c = cs[size_t(i)], s = sn[size_t(i)];
          y.store(base + i, a * c - b * s);
          y.store(base + i + half, b * c + a * s);
        }
      }
    }
  });
  return Status();
}

//===----------------------------------------------------------------------===//
// attention, attention_grad
//===----------------------------------------------------------------------===//

namespace {

// Queries (forward, backward pass 1) and keys (backward pass 2) are handed to
// threads in blocks of this many rows: large enough to amortise the task, small
// enough that B * heads * blocks keeps every thread busy.
constexpr int64_t kRowBlock = 16;

struct AttnProblem : AttentionShape {
  TensorView seg;

  int64_t qIndex(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * nh + h) * d; }
  int64_t kIndex(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * nkv + h) * d; }
  // The first key query i can see before segment checks; everything earlier
  // is outside the window and never touched.
  int64_t firstKey(int64_t i) const {
    return window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
  }
  // The last query key j can be seen by (causal + window).
  int64_t lastQuery(int64_t j) const {
    return window > 0 ? std::min(T - 1, j + window - 1) : T - 1;
  }
  // Segment part of the mask; the position part is enforced by loop bounds.
  bool sameDoc(int64_t b, int64_t i, int64_t j) const {
    int64_t sj = indexAt(seg, b * T + j);
    return sj != 0 && sj == indexAt(seg, b * T + i);
  }
  // The (capped) score. Forward and both backward passes call this one
  // function so that they recompute bit-identical scores.
  float score(const float *q, const float *k) const {
    float s = 0;
    for (int64_t c = 0; c < d; ++c)
      s += q[c] * k[c];
    s *= scale;
    if (capped)
      s = cap * std::tanh(s / cap);
    return s;
  }
  // d(capped score)/d(raw score) from the capped score itself:
  // c·tanh(x/c) has derivative 1 - tanh², and tanh = s / c.
  float capSlope(float s) const {
    if (!capped)
      return 1.0f;
    float t = s / cap;
    return 1.0f - t * t;
  }
};

Status readProblem(const KernelArgs &args, bool grad, AttnProblem &p) {
  G3RT_RETURN_IF_ERROR(checkAttention(args, grad, p));
  p.seg = args.inputs[3];
  return Status();
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Scores of query row i against its candidate keys [lo, i]; masked keys get
// -inf. Returns the row maximum (-inf when nothing is visible).
float rowScores(const AttnProblem &p, const float *Q, const float *K, int64_t b, int64_t h,
                int64_t i, float *s) {
  const float *qi = Q + p.qIndex(b, i, h);
  int64_t kh = h / p.group, lo = p.firstKey(i);
  float mx = kNegInf;
  for (int64_t j = lo; j <= i; ++j) {
    float sj = kNegInf;
    if (p.sameDoc(b, i, j)) {
      sj = p.score(qi, K + p.kIndex(b, j, kh));
      mx = std::max(mx, sj);
    }
    s[j - lo] = sj;
  }
  return mx;
}

} // namespace

Status attentionKernel(const KernelArgs &args) {
  AttnProblem p;
  G3RT_RETURN_IF_ERROR(readProblem(args, /*grad=*/false, p));
  std::vector<float> Q = toFloat(args.inputs[0]), K = toFloat(args.inputs[1]),
                     V = toFloat(args.inputs[2]);
  const TensorView &o = args.outputs[0];
  float *lse = p.withLse ? args.outputs[1].f32() : nullptr;
  const int64_t blocks = (p.T + kRowBlock - 1) / kRowBlock;

  parallelFor(p.B * p.nh * blocks, [&](int64_t begin, int64_t end) {
    std::vector<float> s(size_t(p.T)), acc(size_t(p.d));
    for (int64_t task = begin; task < end; ++task) {
      int64_t blk = task % blocks, bh = task / blocks, h = bh % p.nh, b = bh / p.nh;
      int64_t kh = h / p.group;
      for (int64_t i = blk * kRowBlock; i < std::min(p.T, (blk + 1) * kRowBlock); ++i) {
        int64_t lo = p.firstKey(i), out = p.qIndex(b, i, h);
        float mx = rowScores(p, Q.data(), K.data(), b, h, i, s.data());
        float *rowLse = lse ? lse + (b * p.nh + h) * p.T + i : nullptr;
        if (mx == kNegInf) {
          for (int64_t c = 0; c < p.d; ++c)
            o.store(out + c, 0.0f);
          if (rowLse)
            *rowLse = 0.0f;
          continue;
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        float sum = 0;
        for (int64_t j = lo; j <= i; ++j) {
          float sj = s[size_t(j - lo)];
          if (sj == kNegInf)
            continue;
          float e = std::exp(sj - mx);
          sum += e;
          const float *vj = V.data() + p.kIndex(b, j, kh);
          for (int64_t c = 0; c < p.d; ++c)
            acc[size_t(c)] += e * vj[c];
        }
        float inv = 1.0f / sum;
        for (int64_t c = 0; c < p.d; ++c)
          o.store(out + c, acc[size_t(c)] * inv);
        if (rowLse)
          *rowLse = mx + std::log(sum);
      }
    }
  });
  return Status();
}

namespace {

// What the two backward passes share: the widened operands, and per
// (b, h, i) the softmax max and denominator and D = sum_j P_ij dP_ij
// (= rowsum(dO ⊙ O) with O in fp32, without materialising O). Pass 1 writes
// the statistics; pass 2 needs them to rebuild P and dS column by column.
// sum == 0 marks an empty row.
struct AttnGrad {
  const AttnProblem &p;
  std::vector<float> Q, K, V, dO;
  std::vector<float> rowMax, rowSum, rowD;

  AttnGrad(const KernelArgs &args, const AttnProblem &p)
      : p(p), Q(toFloat(args.inputs[0])), K(toFloat(args.inputs[1])), V(toFloat(args.inputs[2])),
        dO(toFloat(args.inputs[4])), rowMax(size_t(p.B * p.nh * p.T)), rowSum(rowMax.size()),
        rowD(rowMax.size()) {}

  size_t rowId(int64_t b, int64_t h, int64_t i) const { return size_t((b * p.nh + h) * p.T + i); }

  // Pass 1 on query row i of head h: its statistics, and its dq row times
  // the scale into `dq`. s, prob, dp (T each) and acc (d) are scratch.
  void queryRow(int64_t b, int64_t h, int64_t i, std::vector<float> &s, std::vector<float> &prob,
                std::vector<float> &dp, std::vector<float> &acc, const TensorView &dq) {
    int64_t kh = h / p.group, lo = p.firstKey(i), qi = p.qIndex(b, i, h);
    size_t r = rowId(b, h, i);
    float mx = rowScores(p, Q.data(), K.data(), b, h, i, s.data());
    if (mx == kNegInf) {
      rowMax[r] = 0;
      rowSum[r] = 0;
      rowD[r] = 0;
      for (int64_t c = 0; c < p.d; ++c)
        dq.store(qi + c, 0.0f);
      return;
    }
    float sum = 0;
    for (int64_t j = lo; j <= i; ++j)
      if (s[size_t(j - lo)] != kNegInf)
        sum += std::exp(s[size_t(j - lo)] - mx);
    const float *doi = dO.data() + qi;
    float D = 0;
    for (int64_t j = lo; j <= i; ++j) {
      float sj = s[size_t(j - lo)];
      if (sj == kNegInf)
        continue;
      const float *vj = V.data() + p.kIndex(b, j, kh);
      float dpj = 0;
      for (int64_t c = 0; c < p.d; ++c)
        dpj += doi[c] * vj[c];
      float P = std::exp(sj - mx) / sum;
      prob[size_t(j - lo)] = P;
      dp[size_t(j - lo)] = dpj;
      D += P * dpj;
    }
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t j = lo; j <= i; ++j) {
      float sj = s[size_t(j - lo)];
      if (sj == kNegInf)
        continue;
      // Same expression (and order) as pass 2 uses for dk.
      float ds = prob[size_t(j - lo)] * (dp[size_t(j - lo)] - D) * p.capSlope(sj);
      const float *kj = K.data() + p.kIndex(b, j, kh);
      for (int64_t c = 0; c < p.d; ++c)
        acc[size_t(c)] += ds * kj[c];
    }
    rowMax[r] = mx;
    rowSum[r] = sum;
    rowD[r] = D;
    for (int64_t c = 0; c < p.d; ++c)
      dq.store(qi + c, acc[size_t(c)] * p.scale);
  }

  // Pass 2 on key row j of kv head kh: its dk (times the scale) and dv rows,
  // summed over the group's query heads, then over their queries in order.
  // ak and av (d each) are scratch.
  void keyRow(int64_t b, int64_t kh, int64_t j, std::vector<float> &ak, std::vector<float> &av,
              const TensorView &dk, const TensorView &dv) const {
    int64_t kj = p.kIndex(b, j, kh);
    const float *kp = K.data() + kj, *vp = V.data() + kj;
    std::fill(ak.begin(), ak.end(), 0.0f);
    std::fill(av.begin(), av.end(), 0.0f);
    for (int64_t g = 0; g < p.group; ++g) {
      int64_t h = kh * p.group + g;
      for (int64_t i = j, hi = p.lastQuery(j); i <= hi; ++i) {
        if (!p.sameDoc(b, i, j))
          continue;
        size_t r = rowId(b, h, i);
        int64_t qi = p.qIndex(b, i, h);
        const float *qp = Q.data() + qi, *doi = dO.data() + qi;
        float sij = p.score(qp, kp);
        float P = std::exp(sij - rowMax[r]) / rowSum[r];
        float dpj = 0;
        for (int64_t c = 0; c < p.d; ++c)
          dpj += doi[c] * vp[c];
        float ds = P * (dpj - rowD[r]) * p.capSlope(sij);
        for (int64_t c = 0; c < p.d; ++c) {
          ak[size_t(c)] += ds * qp[c];
          av[size_t(c)] += P * doi[c];
        }
      }
    }
    for (int64_t c = 0; c < p.d; ++c) {
      dk.store(kj + c, ak[size_t(c)] * p.scale);
      dv.store(kj + c, av[size_t(c)]);
    }
  }
};

} // namespace

// The saved forward output and lse, when given, are checked and left unread:
// pass 1 rebuilds the statistics with dq in the same sweep, which keeps the
// reference independent of the forward it is compared with.
Status attentionGradKernel(const KernelArgs &args) {
  AttnProblem p;
  G3RT_RETURN_IF_ERROR(readProblem(args, /*grad=*/true, p));
  AttnGrad grad(args, p);
  const TensorView &dq = args.outputs[0], &dk = args.outputs[1], &dv = args.outputs[2];
  const int64_t blocks = (p.T + kRowBlock - 1) / kRowBlock;

  // Pass 1: over query rows. Writes the statistics and dq.
  parallelFor(p.B * p.nh * blocks, [&](int64_t begin, int64_t end) {
    std::vector<float> s(size_t(p.T)), prob(size_t(p.T)), dp(size_t(p.T)), acc(size_t(p.d));
    for (int64_t task = begin; task < end; ++task) {
      int64_t blk = task % blocks, bh = task / blocks, h = bh % p.nh, b = bh / p.nh;
      for (int64_t i = blk * kRowBlock; i < std::min(p.T, (blk + 1) * kRowBlock); ++i)
        grad.queryRow(b, h, i, s, prob, dp, acc, dq);
    }
  });

  // Pass 2: over key rows of each kv head, one thread per key.
  parallelFor(p.B * p.nkv * blocks, [&](int64_t begin, int64_t end) {
    std::vector<float> ak(size_t(p.d)), av(size_t(p.d));
    for (int64_t task = begin; task < end; ++task) {
      int64_t blk = task % blocks, bk = task / blocks, kh = bk % p.nkv, b = bk / p.nkv;
      for (int64_t j = blk * kRowBlock; j < std::min(p.T, (blk + 1) * kRowBlock); ++j)
        grad.keyRow(b, kh, j, ak, av, dk, dv);
    }
  });
  return Status();
}

} // namespace g3rt::cpu
