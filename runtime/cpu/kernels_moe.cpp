//===- kernels_moe.cpp - routers, dispatch / combine, aux losses ----------===//
//
// The routing half of a MoE layer (SparseMixer-v2, softmax top-k and grouped
// sigmoid routers with their gradients), the dispatch / combine permutations
// around the expert GEMMs, and the auxiliary loss terms (load balancing,
// router z-loss, the weighted loss sum). The math is docs/kernels.md,
// "Routers, experts, auxiliary losses".
//
// Routers and losses compute in double, dispatch / combine accumulate in
// fp32 (as the op descriptions say); either way values are rounded once on
// store. Work is split over tokens (over permuted rows for the scattering
// gradient), each parallel chunk writes only its own rows, and reductions over
// tokens sum per-row terms in row order, so results do not depend on the
// thread count.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/parallel.h"
#include "runtime/kernels/kernel.h"
#include "runtime/kernels/moe_checks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace g3rt {
namespace {

using namespace checks;

constexpr double kInf = std::numeric_limits<double>::infinity();
/// Tokens per parallel chunk: routers do O(E) work per token, so small chunks
/// would cost more in scheduling than they save.
constexpr int64_t kTokenGrain = 32;

//===----------------------------------------------------------------------===//
// Argument checking
//===----------------------------------------------------------------------===//

/// Every entry of the [rows, k] index tensor `idx` lies in [0, limit).
Status checkIndexRange(const KernelArgs &args, const TensorView &idx, int64_t rows,
                       int64_t k, int64_t limit, const char *what) {
  const int32_t *p = idx.i32();
  for (int64_t n = 0; n < rows; ++n)
    for (int64_t j = 0; j < k; ++j) {
      int32_t v = p[n * k + j];
      if (v < 0 || v >= limit)
        return args.fail(std::string(what) + " " + std::to_string(v) + " at row " +
                         str(n) + ", position " + str(j) + " is outside [0, " +
                         str(limit) + ")");
    }
  return Status();
}

/// Rows of a float tensor widened to fp32 without copying f32 tensors whole.
void loadRow(const TensorView &t, int64_t row, int64_t width, float *dst) {
  if (t.dtype == DType::F32) {
    std::memcpy(dst, t.f32() + row * width, size_t(width) * 4);
    return;
  }
  for (int64_t h = 0; h < width; ++h)
    dst[h] = t.load(row * width + h);
}

void storeRow(const TensorView &t, int64_t row, int64_t width, const float *src) {
  if (t.dtype == DType::F32) {
    std::memcpy(t.f32() + row * width, src, size_t(width) * 4);
    return;
  }
  for (int64_t h = 0; h < width; ++h)
    t.store(row * width + h, src[h]);
}

void loadRowD(const TensorView &t, int64_t row, int64_t width, double *dst) {
  for (int64_t h = 0; h < width; ++h)
    dst[h] = double(t.load(row * width + h));
}

/// Softmax of `s[0..E)` in double, written to `p`; returns logsumexp.
double softmaxRow(const double *s, int64_t E, double *p) {
  double m = -kInf;
  for (int64_t e = 0; e < E; ++e)
    m = std::max(m, s[e]);
  double z = 0;
  for (int64_t e = 0; e < E; ++e)
    z += (p[e] = std::exp(s[e] - m));
  for (int64_t e = 0; e < E; ++e)
    p[e] /= z;
  return m + std::log(z);
}

//===----------------------------------------------------------------------===//
// SparseMixer-v2
//===----------------------------------------------------------------------===//

constexpr double kCoinThreshold = 0.75;
constexpr double kCoinDown = 0.3333;

/// One SparseMixer stage over scores `s` (entries equal to -inf are out of
/// the stage): the survivor mask, the survivor softmax P (0 for excluded
/// experts) and the index of the stage's argmax (lowest on ties), which is
/// also the argmax of P. The relative-gap test reads the original logits
/// `orig`, as upstream does in stage 2. The mask is kept apart from P because
/// a survivor's probability may underflow to 0 and must still be drawable.
int64_t sparseMixerStage(const double *s, const double *orig, int64_t E,
                         double epsilon, double clamp, unsigned char *survives,
                         double *P) {
  int64_t best = -1;
  for (int64_t e = 0; e < E; ++e)
    if (s[e] != -kInf && (best < 0 || s[e] > s[best]))
      best = e;
  for (int64_t e = 0; e < E; ++e) {
    P[e] = 0;
    survives[e] = 0;
  }
  if (best < 0)
    return -1;
  const double m = s[best];
  double z = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (s[e] == -kInf)
      continue;
    double gap = (m - orig[e]) / std::max({std::fabs(orig[e]), std::fabs(m), clamp});
    // A NaN gap compares false and keeps the expert, like upstream.
    if (gap > 2 * epsilon)
      continue;
    survives[e] = 1;
    z += (P[e] = std::exp(s[e] - m));
  }
  for (int64_t e = 0; e < E; ++e)
    P[e] /= z;
  return best;
}

/// The stage clamps of the relative-gap denominators (docs/kernels.md).
constexpr double kStage1Clamp = 1e-10;
constexpr double kStage2Clamp = 1e-8;

Status sparseMixerRouter(const KernelArgs &args) {
  double epsilon;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSparseMixerRouter(args, epsilon, shape));
  const int64_t E = shape.E, N = shape.N;
  const bool training = args.inputs.size() == 2;
  const TensorView &logits = args.inputs[0], &weights = args.outputs[0],
                   &indices = args.outputs[1];

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<double> S(E), Sp(E), P(E), u(2 * (E + 1));
        std::vector<unsigned char> survives(E);
        for (int64_t n = begin; n < end; ++n) {
          loadRowD(logits, n, E, S.data());
          if (training)
            loadRowD(args.inputs[1], n, 2 * (E + 1), u.data());
          int64_t chosen[2];
          double w[2];
          for (int stage = 0; stage < 2; ++stage) {
            if (stage == 0) {
              Sp = S;
            } else {
              Sp[chosen[0]] = -kInf;
            }
            int64_t argmaxP = sparseMixerStage(Sp.data(), S.data(), E, epsilon,
                                               stage == 0 ? kStage1Clamp : kStage2Clamp,
                                               survives.data(), P.data());
            int64_t pick = argmaxP;
            double coin = 1;
            if (training) {
              // Gumbel-max over the survivors draws from their softmax.
              const double *us = u.data() + stage * (E + 1);
              int64_t g = -1;
              double gv = 0;
              for (int64_t e = 0; e < E; ++e) {
                if (!survives[e])
                  continue;
                double v = Sp[e] - std::log(-std::log(us[e]));
                if (g < 0 || v > gv) {
                  g = e;
                  gv = v;
                }
              }
              pick = g;
              if (!(pick == argmaxP || us[E] > kCoinThreshold))
                coin = kCoinDown;
            }
            if (pick < 0) // Only when every logit is -inf or NaN.
              pick = stage == 0 ? 0 : (chosen[0] == 0 ? 1 : 0);
            chosen[stage] = pick;
            w[stage] = P[pick] * coin;
          }
          for (int j = 0; j < 2; ++j) {
            weights.store(n * 2 + j, float(w[j]));
            indices.i32()[n * 2 + j] = int32_t(chosen[j]);
          }
        }
      },
      kTokenGrain);
  return Status();
}

Status sparseMixerRouterGrad(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  double epsilon;
  G3RT_RETURN_IF_ERROR(args.requireFloat("epsilon", epsilon));
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkRouterGrad(args, 2, shape));
  const int64_t E = shape.E, N = shape.N;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1],
                   &dweights = args.inputs[2], &dlogits = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIndexRange(args, indices, N, 2, E, "expert index"));

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<double> S(E), Sp(E), P(E), dS(E);
        std::vector<unsigned char> survives(E);
        for (int64_t n = begin; n < end; ++n) {
          loadRowD(logits, n, E, S.data());
          Sp = S;
          std::fill(dS.begin(), dS.end(), 0.0);
          for (int stage = 0; stage < 2; ++stage) {
            const int64_t i = indices.i32()[n * 2 + stage];
            if (stage == 1)
              Sp[indices.i32()[n * 2]] = -kInf;
            sparseMixerStage(Sp.data(), S.data(), E, epsilon,
                             stage == 0 ? kStage1Clamp : kStage2Clamp, survives.data(),
                             P.data());
            // The estimator keeps the softmax's own Jacobian row scaled by
            // the chosen probability; the coin and the draw get no gradient.
            const double a = double(dweights.load(n * 2 + stage)) * P[i];
            for (int64_t e = 0; e < E; ++e)
              dS[e] -= a * P[e];
            dS[i] += a;
          }
          for (int64_t e = 0; e < E; ++e)
            dlogits.store(n * E + e, float(dS[e]));
        }
      },
      kTokenGrain);
  return Status();
}

//===----------------------------------------------------------------------===//
// Softmax top-k and grouped sigmoid routers
//===----------------------------------------------------------------------===//

/// Picks the k largest of `v` among experts with `allowed[e]` (all when
/// null) into `out`, largest first, lower index first on ties.
void topK(const double *v, const unsigned char *allowed, int64_t E, int64_t k,
          std::vector<unsigned char> &taken, int64_t *out) {
  std::fill(taken.begin(), taken.end(), 0);
  for (int64_t j = 0; j < k; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      if (taken[e] || (allowed && !allowed[e]))
        continue;
      if (best < 0 || v[e] > v[best])
        best = e;
    }
    taken[best] = 1;
    out[j] = best;
  }
}

Status softmaxTopKRouter(const KernelArgs &args) {
  bool norm;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSoftmaxTopKRouter(args, norm, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &weights = args.outputs[0],
                   &indices = args.outputs[1];

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<double> S(E), p(E);
        std::vector<unsigned char> taken(E);
        std::vector<int64_t> idx(k);
        for (int64_t n = begin; n < end; ++n) {
          loadRowD(logits, n, E, S.data());
          softmaxRow(S.data(), E, p.data());
          // Softmax is monotone, so ranking the logits ranks p without the
          // ties that rounding in p could create.
          topK(S.data(), nullptr, E, k, taken, idx.data());
          double sum = 0;
          for (int64_t j = 0; j < k; ++j)
            sum += p[idx[j]];
          for (int64_t j = 0; j < k; ++j) {
            weights.store(n * k + j, float(norm ? p[idx[j]] / sum : p[idx[j]]));
            indices.i32()[n * k + j] = int32_t(idx[j]);
          }
        }
      },
      kTokenGrain);
  return Status();
}

Status softmaxTopKRouterGrad(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  const bool norm = flag(args, "norm_topk_prob");
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkRouterGrad(args, 0, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1],
                   &dweights = args.inputs[2], &dlogits = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIndexRange(args, indices, N, k, E, "expert index"));

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<double> S(E), p(E), dS(E), w(k);
        for (int64_t n = begin; n < end; ++n) {
          loadRowD(logits, n, E, S.data());
          softmaxRow(S.data(), E, p.data());
          std::fill(dS.begin(), dS.end(), 0.0);
          const int32_t *idx = indices.i32() + n * k;
          if (!norm) {
            // w_j = p[i_j]: the softmax Jacobian, dp_i/dS_c = p_i (δ - p_c).
            double total = 0;
            for (int64_t j = 0; j < k; ++j) {
              double a = double(dweights.load(n * k + j)) * p[idx[j]];
              dS[idx[j]] += a;
              total += a;
            }
            for (int64_t e = 0; e < E; ++e)
              dS[e] -= total * p[e];
          } else {
            // Renormalised, the weights are a softmax over the chosen logits
            // alone, so only those receive gradient.
            double sum = 0;
            for (int64_t j = 0; j < k; ++j)
              sum += p[idx[j]];
            double G = 0;
            for (int64_t j = 0; j < k; ++j) {
              w[j] = p[idx[j]] / sum;
              G += double(dweights.load(n * k + j)) * w[j];
            }
            for (int64_t j = 0; j < k; ++j)
              dS[idx[j]] += w[j] * (double(dweights.load(n * k + j)) - G);
          }
          for (int64_t e = 0; e < E; ++e)
            dlogits.store(n * E + e, float(dS[e]));
        }
      },
      kTokenGrain);
  return Status();
}

double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

/// The un-scaled renormalisation guard of DeepSeek-V3's router.
constexpr double kSigmoidNormEps = 1e-20;

Status sigmoidGroupedRouter(const KernelArgs &args) {
  SigmoidGroups groups;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSigmoidGroupedRouter(args, groups, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k, nGroup = groups.nGroup,
                topkGroup = groups.topkGroup, groupSize = groups.groupSize;
  const double scaling = groups.scaling;
  const bool norm = groups.norm;
  const TensorView &logits = args.inputs[0], &bias = args.inputs[1],
                   &weights = args.outputs[0], &indices = args.outputs[1];
  std::vector<double> b(E);
  loadRowD(bias, 0, E, b.data());

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<double> s(E), sel(E), groupScore(nGroup);
        std::vector<unsigned char> taken(std::max(E, nGroup)), allowed(E);
        std::vector<int64_t> keptGroups(topkGroup), idx(k);
        for (int64_t n = begin; n < end; ++n) {
          loadRowD(logits, n, E, s.data());
          for (int64_t e = 0; e < E; ++e) {
            s[e] = sigmoid(s[e]);
            sel[e] = s[e] + b[e];
          }
          for (int64_t g = 0; g < nGroup; ++g) {
            const double *v = sel.data() + g * groupSize;
            if (groupSize == 1) {
              groupScore[g] = v[0];
              continue;
            }
            int64_t two[2];
            topK(v, nullptr, groupSize, 2, taken, two);
            groupScore[g] = v[two[0]] + v[two[1]];
          }
          topK(groupScore.data(), nullptr, nGroup, topkGroup, taken, keptGroups.data());
          std::fill(allowed.begin(), allowed.end(), 0);
          for (int64_t g : keptGroups)
            std::fill(allowed.begin() + g * groupSize,
                      allowed.begin() + (g + 1) * groupSize, 1);
          topK(sel.data(), allowed.data(), E, k, taken, idx.data());
          double sum = 0;
          for (int64_t j = 0; j < k; ++j)
            sum += s[idx[j]];
          const double denom = norm ? sum + kSigmoidNormEps : 1.0;
          for (int64_t j = 0; j < k; ++j) {
            weights.store(n * k + j, float(s[idx[j]] / denom * scaling));
            indices.i32()[n * k + j] = int32_t(idx[j]);
          }
        }
      },
      kTokenGrain);
  return Status();
}

Status sigmoidGroupedRouterGrad(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  double scaling;
  G3RT_RETURN_IF_ERROR(args.requireFloat("routed_scaling_factor", scaling));
  const bool norm = flag(args, "norm_topk_prob");
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkRouterGrad(args, 0, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1],
                   &dweights = args.inputs[2], &dlogits = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIndexRange(args, indices, N, k, E, "expert index"));

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<double> s(E), ds(E);
        for (int64_t n = begin; n < end; ++n) {
          loadRowD(logits, n, E, s.data());
          for (int64_t e = 0; e < E; ++e)
            s[e] = sigmoid(s[e]);
          std::fill(ds.begin(), ds.end(), 0.0);
          const int32_t *idx = indices.i32() + n * k;
          if (!norm) {
            for (int64_t j = 0; j < k; ++j)
              ds[idx[j]] += scaling * double(dweights.load(n * k + j));
          } else {
            // w_j = r s_j / D with D = Σ s + eps: the quotient rule, with the
            // denominator term shared by every chosen expert.
            double D = kSigmoidNormEps, gs = 0;
            for (int64_t j = 0; j < k; ++j)
              D += s[idx[j]];
            for (int64_t j = 0; j < k; ++j)
              gs += double(dweights.load(n * k + j)) * s[idx[j]];
            for (int64_t j = 0; j < k; ++j)
              ds[idx[j]] +=
                  scaling * (double(dweights.load(n * k + j)) / D - gs / (D * D));
          }
          for (int64_t e = 0; e < E; ++e)
            dlogits.store(n * E + e, float(ds[e] * s[e] * (1 - s[e])));
        }
      },
      kTokenGrain);
  return Status();
}

//===----------------------------------------------------------------------===//
// Dispatch and combine
//===----------------------------------------------------------------------===//

/// Copies row `from` of `src` to row `to` of `dst`, converting if needed.
void copyRow(const TensorView &src, int64_t from, const TensorView &dst, int64_t to,
             int64_t H, std::vector<float> &scratch) {
  if (src.dtype == dst.dtype) {
    const size_t bytes = size_t(H) * dtypeSize(src.dtype);
    std::memcpy(static_cast<char *>(dst.data) + size_t(to) * bytes,
                static_cast<const char *>(src.data) + size_t(from) * bytes, bytes);
    return;
  }
  loadRow(src, from, H, scratch.data());
  storeRow(dst, to, H, scratch.data());
}

Status moeDispatch(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoEDispatch(args, perm));
  const int64_t E = perm.E, H = perm.H, N = perm.N, k = perm.k;
  const TensorView &x = args.inputs[0], &indices = args.inputs[1],
                   &permuted = args.outputs[0], &offsets = args.outputs[1],
                   &slots = args.outputs[2];
  G3RT_RETURN_IF_ERROR(checkIndexRange(args, indices, N, k, E, "expert index"));

  // A counting sort in (n, j) order: stable, so each expert's rows follow
  // token order and the layout is a pure function of the indices.
  const int32_t *idx = indices.i32();
  std::vector<int64_t> cursor(E + 1, 0);
  for (int64_t i = 0; i < N * k; ++i)
    ++cursor[idx[i] + 1];
  for (int64_t e = 0; e < E; ++e)
    cursor[e + 1] += cursor[e];
  for (int64_t e = 0; e <= E; ++e)
    offsets.i32()[e] = int32_t(cursor[e]);
  for (int64_t i = 0; i < N * k; ++i)
    slots.i32()[i] = int32_t(cursor[idx[i]]++);

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<float> scratch(H);
        for (int64_t n = begin; n < end; ++n)
          for (int64_t j = 0; j < k; ++j)
            copyRow(x, n, permuted, slots.i32()[n * k + j], H, scratch);
      },
      kTokenGrain);
  return Status();
}

Status moeDispatchGrad(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoEDispatchGrad(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &dp = args.inputs[0], &slots = args.inputs[1], &dx = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIndexRange(args, slots, N, k, M, "slot"));

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<float> row(H), acc(H);
        for (int64_t n = begin; n < end; ++n) {
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t j = 0; j < k; ++j) {
            loadRow(dp, slots.i32()[n * k + j], H, row.data());
            for (int64_t h = 0; h < H; ++h)
              acc[h] += row[h];
          }
          storeRow(dx, n, H, acc.data());
        }
      },
      kTokenGrain);
  return Status();
}

Status moeCombine(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoECombine(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &y = args.inputs[0], &slots = args.inputs[1],
                   &weights = args.inputs[2], &out = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIndexRange(args, slots, N, k, M, "slot"));

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<float> row(H), acc(H);
        for (int64_t n = begin; n < end; ++n) {
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t j = 0; j < k; ++j) {
            const float w = weights.load(n * k + j);
            loadRow(y, slots.i32()[n * k + j], H, row.data());
            for (int64_t h = 0; h < H; ++h)
              acc[h] += w * row[h];
          }
          storeRow(out, n, H, acc.data());
        }
      },
      kTokenGrain);
  return Status();
}

Status moeCombineGrad(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoECombineGrad(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &y = args.inputs[0], &slots = args.inputs[1],
                   &weights = args.inputs[2], &dout = args.inputs[3];
  const TensorView &dy = args.outputs[0], &dweights = args.outputs[1];
  G3RT_RETURN_IF_ERROR(checkIndexRange(args, slots, N, k, M, "slot"));

  // The inverse of `slots` as a CSR list in (n, j) order, so that dy is
  // written one row at a time (rows no slot names get 0; a row named twice
  // sums in a fixed order).
  const int32_t *sl = slots.i32();
  std::vector<int64_t> start(M + 1, 0), users(N * k);
  for (int64_t i = 0; i < N * k; ++i)
    ++start[sl[i] + 1];
  for (int64_t m = 0; m < M; ++m)
    start[m + 1] += start[m];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < N * k; ++i)
      users[fill[sl[i]]++] = i;
  }

  parallelFor(
      M,
      [&](int64_t begin, int64_t end) {
        std::vector<float> row(H), acc(H);
        for (int64_t m = begin; m < end; ++m) {
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t u = start[m]; u < start[m + 1]; ++u) {
            const int64_t i = users[u];
            const float w = weights.load(i);
            loadRow(dout, i / k, H, row.data());
            for (int64_t h = 0; h < H; ++h)
              acc[h] += w * row[h];
          }
          storeRow(dy, m, H, acc.data());
        }
      },
      kTokenGrain);

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<float> g(H), row(H);
        for (int64_t n = begin; n < end; ++n) {
          loadRow(dout, n, H, g.data());
          for (int64_t j = 0; j < k; ++j) {
            loadRow(y, sl[n * k + j], H, row.data());
            double d = 0;
            for (int64_t h = 0; h < H; ++h)
              d += double(g[h]) * row[h];
            dweights.store(n * k + j, float(d));
          }
        }
      },
      kTokenGrain);
  return Status();
}

//===----------------------------------------------------------------------===//
// Auxiliary losses
//===----------------------------------------------------------------------===//

/// The segment ids of a loss: which of the N rows every layer shares are real.
Status realRows(const KernelArgs &args, const TensorView &seg, int64_t N,
                std::vector<unsigned char> &real, int64_t &count) {
  G3RT_RETURN_IF_ERROR(checkI32(args, seg, "segment_ids"));
  if (seg.numel() != N)
    return args.fail("segment_ids has shape " + shapeString(seg.shape) + " (" +
                     str(seg.numel()) + " tokens), but the logits have " + str(N) +
                     " rows");
  real.assign(N, 0);
  count = 0;
  for (int64_t n = 0; n < N; ++n)
    if (seg.i32()[n] != 0) {
      real[n] = 1;
      ++count;
    }
  return Status();
}

/// Σ_n rowTerm(n, scratch) over n in [0, N). The per-row terms are computed
/// in parallel and summed in row order, so the sum is thread-count
/// independent. `scratch` is per-chunk storage of `width` doubles, twice.
template <typename RowTerm>
double orderedRowSum(int64_t N, int64_t width, const RowTerm &rowTerm) {
  std::vector<double> terms(size_t(N), 0.0);
  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<double> a(width), b(width);
        for (int64_t n = begin; n < end; ++n)
          terms[n] = rowTerm(n, a.data(), b.data());
      },
      kTokenGrain);
  double sum = 0;
  for (double t : terms)
    sum += t;
  return sum;
}

/// The layers' logits [N, E]: all with N rows, and E columns when E > 0.
Status checkLayerLogits(const KernelArgs &args, int64_t L, int64_t E, int64_t &N) {
  const TensorView &first = args.inputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, first, "logits"));
  if (first.rank() < 1)
    return args.fail("logits must have rank >= 1");
  N = first.rows();
  for (int64_t l = 0; l < L; ++l) {
    const TensorView &t = args.inputs[l];
    G3RT_RETURN_IF_ERROR(checkFloat(args, t, "logits"));
    if (t.rank() < 1 || t.rows() != N || (E > 0 && t.dim(-1) != E))
      return args.fail("logits of layer " + str(l) + " have shape " +
                       shapeString(t.shape) + ", expected [" + str(N) + ", " +
                       (E > 0 ? str(E) : std::string("E")) + "]");
  }
  return Status();
}

/// Common part of load_balancing_loss and its gradient: checks, real rows,
/// R, and the routed fractions f_e (pooled over all layers).
struct BalanceSetup {
  int64_t L = 0, N = 0, E = 0, R = 0;
  std::vector<unsigned char> real;
  std::vector<double> f;
};

Status balanceSetup(const KernelArgs &args, int64_t trailing, BalanceSetup &b) {
  const int64_t count = int64_t(args.inputs.size()) - trailing;
  if (count < 2 || count % 2 != 0)
    return args.fail("expected L logits, L indices and " +
                     std::string(trailing == 1 ? "segment_ids" : "segment_ids, grad") +
                     " with L >= 1, got " + std::to_string(args.inputs.size()) +
                     " inputs");
  b.L = count / 2;
  G3RT_RETURN_IF_ERROR(args.requireInt("num_experts", b.E));
  if (b.E < 1)
    return args.fail("num_experts must be positive, got " + str(b.E));
  G3RT_RETURN_IF_ERROR(checkLayerLogits(args, b.L, b.E, b.N));
  int64_t realCount;
  G3RT_RETURN_IF_ERROR(realRows(args, args.inputs[2 * b.L], b.N, b.real, realCount));
  b.R = realCount * b.L;
  std::vector<int64_t> counts(b.E, 0);
  for (int64_t l = 0; l < b.L; ++l) {
    const TensorView &idx = args.inputs[b.L + l];
    if (idx.rank() < 1)
      return args.fail("indices must have rank >= 1");
    const int64_t k = idx.dim(-1);
    G3RT_RETURN_IF_ERROR(checkIndexMatrix(args, idx, "indices", b.N, k));
    for (int64_t n = 0; n < b.N; ++n) {
      if (!b.real[n])
        continue;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = idx.i32()[n * k + j];
        if (e < 0 || e >= b.E)
          return args.fail("expert index " + std::to_string(e) + " of layer " + str(l) +
                           " at row " + str(n) + " is outside [0, " + str(b.E) + ")");
        ++counts[e];
      }
    }
  }
  b.f.assign(b.E, 0.0);
  if (b.R > 0)
    for (int64_t e = 0; e < b.E; ++e)
      b.f[e] = double(counts[e]) / double(b.R);
  return Status();
}

Status loadBalancingLoss(const KernelArgs &args) {
  if (args.outputs.size() != 1)
    return args.fail("expected 1 output, got " + std::to_string(args.outputs.size()));
  BalanceSetup b;
  G3RT_RETURN_IF_ERROR(balanceSetup(args, 1, b));
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.outputs[0], "result"));
  double loss = 0;
  if (b.R > 0) {
    // Σ_e f_e · P̄_e = (1/R) Σ_rows <f, p_row>: one scalar per row suffices.
    double sum = 0;
    for (int64_t l = 0; l < b.L; ++l) {
      const TensorView &logits = args.inputs[l];
      sum += orderedRowSum(b.N, b.E, [&](int64_t n, double *s, double *p) {
        if (!b.real[n])
          return 0.0;
        loadRowD(logits, n, b.E, s);
        softmaxRow(s, b.E, p);
        double d = 0;
        for (int64_t e = 0; e < b.E; ++e)
          d += b.f[e] * p[e];
        return d;
      });
    }
    loss = double(b.E) * sum / double(b.R);
  }
  args.outputs[0].store(0, float(loss));
  return Status();
}

Status loadBalancingLossGrad(const KernelArgs &args) {
  BalanceSetup b;
  G3RT_RETURN_IF_ERROR(balanceSetup(args, 2, b));
  if (int64_t(args.outputs.size()) != b.L)
    return args.fail("expected " + str(b.L) + " outputs (one per layer), got " +
                     std::to_string(args.outputs.size()));
  const TensorView &dloss = args.inputs[2 * b.L + 1];
  G3RT_RETURN_IF_ERROR(checkScalar(args, dloss, "grad"));
  for (int64_t l = 0; l < b.L; ++l)
    G3RT_RETURN_IF_ERROR(checkMatrix(args, args.outputs[l], "result", b.N, b.E));
  const double scale = b.R > 0 ? double(dloss.load(0)) * double(b.E) / double(b.R) : 0.0;

  for (int64_t l = 0; l < b.L; ++l) {
    const TensorView &logits = args.inputs[l], &out = args.outputs[l];
    parallelFor(
        b.N,
        [&](int64_t begin, int64_t end) {
          std::vector<double> s(b.E), p(b.E);
          for (int64_t n = begin; n < end; ++n) {
            if (!b.real[n]) {
              for (int64_t e = 0; e < b.E; ++e)
                out.store(n * b.E + e, 0.0f);
              continue;
            }
            loadRowD(logits, n, b.E, s.data());
            softmaxRow(s.data(), b.E, p.data());
            // d<f, p>/dS_c = p_c (f_c - <f, p>), f held constant.
            double fp = 0;
            for (int64_t e = 0; e < b.E; ++e)
              fp += b.f[e] * p[e];
            for (int64_t e = 0; e < b.E; ++e)
              out.store(n * b.E + e, float(scale * p[e] * (b.f[e] - fp)));
          }
        },
        kTokenGrain);
  }
  return Status();
}

Status routerZLoss(const KernelArgs &args) {
  if (args.inputs.size() < 2 || args.outputs.size() != 1)
    return args.fail("expected L >= 1 logits and segment_ids, and 1 output, got " +
                     std::to_string(args.inputs.size()) + " inputs and " +
                     std::to_string(args.outputs.size()) + " outputs");
  const int64_t L = int64_t(args.inputs.size()) - 1;
  int64_t N, realCount;
  std::vector<unsigned char> real;
  G3RT_RETURN_IF_ERROR(checkLayerLogits(args, L, 0, N));
  G3RT_RETURN_IF_ERROR(realRows(args, args.inputs[L], N, real, realCount));
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.outputs[0], "result"));
  const int64_t R = realCount * L;
  double sum = 0;
  for (int64_t l = 0; l < L && R > 0; ++l) {
    const TensorView &logits = args.inputs[l];
    const int64_t E = logits.dim(-1);
    sum += orderedRowSum(N, E, [&](int64_t n, double *s, double *p) {
      if (!real[n])
        return 0.0;
      loadRowD(logits, n, E, s);
      const double lse = softmaxRow(s, E, p);
      return lse * lse;
    });
  }
  args.outputs[0].store(0, float(R > 0 ? sum / double(R) : 0.0));
  return Status();
}

Status routerZLossGrad(const KernelArgs &args) {
  if (args.inputs.size() < 3)
    return args.fail("expected L >= 1 logits, segment_ids and grad, got " +
                     std::to_string(args.inputs.size()) + " inputs");
  const int64_t L = int64_t(args.inputs.size()) - 2;
  if (int64_t(args.outputs.size()) != L)
    return args.fail("expected " + str(L) + " outputs (one per layer), got " +
                     std::to_string(args.outputs.size()));
  int64_t N, realCount;
  std::vector<unsigned char> real;
  G3RT_RETURN_IF_ERROR(checkLayerLogits(args, L, 0, N));
  G3RT_RETURN_IF_ERROR(realRows(args, args.inputs[L], N, real, realCount));
  const TensorView &dloss = args.inputs[L + 1];
  G3RT_RETURN_IF_ERROR(checkScalar(args, dloss, "grad"));
  for (int64_t l = 0; l < L; ++l)
    G3RT_RETURN_IF_ERROR(
        checkMatrix(args, args.outputs[l], "result", N, args.inputs[l].dim(-1)));
  const int64_t R = realCount * L;
  const double scale = R > 0 ? 2.0 * double(dloss.load(0)) / double(R) : 0.0;

  for (int64_t l = 0; l < L; ++l) {
    const TensorView &logits = args.inputs[l], &out = args.outputs[l];
    const int64_t E = logits.dim(-1);
    parallelFor(
        N,
        [&](int64_t begin, int64_t end) {
          std::vector<double> s(E), p(E);
          for (int64_t n = begin; n < end; ++n) {
            if (!real[n]) {
              for (int64_t e = 0; e < E; ++e)
                out.store(n * E + e, 0.0f);
              continue;
            }
            loadRowD(logits, n, E, s.data());
            const double lse = softmaxRow(s.data(), E, p.data());
            for (int64_t e = 0; e < E; ++e)
              out.store(n * E + e, float(scale * lse * p[e]));
          }
        },
        kTokenGrain);
  }
  return Status();
}

Status lossSum(const KernelArgs &args) {
  if (args.outputs.size() != 1)
    return args.fail("expected 1 output, got " + std::to_string(args.outputs.size()));
  const std::vector<double> *coefficients =
      args.attrs ? args.attrs->getFloats("coefficients") : nullptr;
  if (!coefficients)
    return args.fail("missing float array attribute 'coefficients'");
  if (coefficients->size() != args.inputs.size())
    return args.fail(std::to_string(coefficients->size()) + " coefficients for " +
                     std::to_string(args.inputs.size()) + " terms");
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.outputs[0], "result"));
  double loss = 0;
  for (size_t i = 0; i < args.inputs.size(); ++i) {
    G3RT_RETURN_IF_ERROR(checkScalar(args, args.inputs[i], "term"));
    loss += (*coefficients)[i] * double(args.inputs[i].load(0));
  }
  args.outputs[0].store(0, float(loss));
  return Status();
}

} // namespace

/// Routing slots per expert over the real tokens: the MoE load statistic.
Status expertLoad(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &idx = args.inputs[0], &seg = args.inputs[1], &out = args.outputs[0];
  int64_t experts;
  G3RT_RETURN_IF_ERROR(args.requireInt("num_experts", experts));
  int64_t tokens = seg.numel();
  if (idx.rank() < 1 || idx.rows() != tokens)
    return args.fail("indices must have one row per token (" + str(tokens) + ")");
  G3RT_RETURN_IF_ERROR(checkFloat(args, out, "result"));
  if (out.numel() != experts)
    return args.fail("result must hold " + str(experts) + " counts");
  std::vector<float> counts(size_t(experts), 0.0f);
  int64_t k = idx.dim(-1);
  for (int64_t n = 0; n < tokens; ++n) {
    if (seg.i32()[n] == 0)
      continue;
    for (int64_t j = 0; j < k; ++j) {
      int64_t e = idx.i32()[n * k + j];
      if (e < 0 || e >= experts)
        return args.fail("expert index " + str(e) + " at token " + str(n) +
                         " is outside [0, " + str(experts) + ")");
      counts[size_t(e)] += 1;
    }
  }
  fromFloat(out, counts);
  return Status();
}

void registerMoEKernels(KernelTable &table) {
  table.emplace_back("expert_load", &expertLoad);
  table.emplace_back("sparsemixer_router", &sparseMixerRouter);
  table.emplace_back("sparsemixer_router_grad", &sparseMixerRouterGrad);
  table.emplace_back("softmax_topk_router", &softmaxTopKRouter);
  table.emplace_back("softmax_topk_router_grad", &softmaxTopKRouterGrad);
  table.emplace_back("sigmoid_grouped_router", &sigmoidGroupedRouter);
  table.emplace_back("sigmoid_grouped_router_grad", &sigmoidGroupedRouterGrad);
  table.emplace_back("moe_dispatch", &moeDispatch);
  table.emplace_back("moe_dispatch_grad", &moeDispatchGrad);
  table.emplace_back("moe_combine", &moeCombine);
  table.emplace_back("moe_combine_grad", &moeCombineGrad);
  table.emplace_back("load_balancing_loss", &loadBalancingLoss);
  table.emplace_back("load_balancing_loss_grad", &loadBalancingLossGrad);
  table.emplace_back("router_z_loss", &routerZLoss);
  table.emplace_back("router_z_loss_grad", &routerZLossGrad);
  table.emplace_back("loss_sum", &lossSum);
}

} // namespace g3rt
