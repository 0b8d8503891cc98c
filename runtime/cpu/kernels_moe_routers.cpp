//===- kernels_moe_routers.cpp - MoE router CPU kernels -------------------===//
//
// The fp32 reference of the routers of a MoE layer and their gradients
// (docs/kernels.md, "Routers"): SparseMixer-v2, softmax top-k and the grouped
// sigmoid router of DeepSeek-V3.
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
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/cpu/moe_rows.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace g3rt::cpu {

using namespace checks;

//===----------------------------------------------------------------------===//
// SparseMixer-v2
//===----------------------------------------------------------------------===//

namespace {

constexpr double kCoinThreshold = 0.75;
constexpr double kCoinDown = 0.3333;

/// One SparseMixer stage over scores `s` (entries equal to -inf are out of
/// the stage): the survivor mask, the survivor softmax P (0 for excluded
/// experts) and the index of the stage's argmax (lowest on ties), which is
/// also the argmax of P. The relative-gap test reads the original logits
/// `orig`, as upstream does in stage 2. The mask is kept apart from P because
/// a survivor's probability may underflow to 0 and must still be drawable.
int64_t sparseMixerStage(const double *s, const double *orig, int64_t E, double epsilon,
                         double clamp, unsigned char *survives, double *P) {
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

} // namespace

Status sparseMixerRouterKernel(const KernelArgs &args) {
  double epsilon;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSparseMixerRouter(args, epsilon, shape));
  const int64_t E = shape.E, N = shape.N;
  const bool training = args.inputs.size() == 2;
  const TensorView &logits = args.inputs[0], &weights = args.outputs[0], &indices = args.outputs[1];

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

Status sparseMixerRouterGradKernel(const KernelArgs &args) {
  double epsilon;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSparseMixerRouterGrad(args, epsilon, shape));
  const int64_t E = shape.E, N = shape.N;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1], &dweights = args.inputs[2],
                   &dlogits = args.outputs[0];
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
                             stage == 0 ? kStage1Clamp : kStage2Clamp, survives.data(), P.data());
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

namespace {

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

} // namespace

Status softmaxTopKRouterKernel(const KernelArgs &args) {
  bool norm;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSoftmaxTopKRouter(args, norm, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &weights = args.outputs[0], &indices = args.outputs[1];

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

Status softmaxTopKRouterGradKernel(const KernelArgs &args) {
  bool norm;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSoftmaxTopKRouterGrad(args, norm, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1], &dweights = args.inputs[2],
                   &dlogits = args.outputs[0];
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

namespace {

double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

/// The un-scaled renormalisation guard of DeepSeek-V3's router.
constexpr double kSigmoidNormEps = 1e-20;

} // namespace

Status sigmoidGroupedRouterKernel(const KernelArgs &args) {
  SigmoidGroups groups;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSigmoidGroupedRouter(args, groups, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k, nGroup = groups.nGroup,
                topkGroup = groups.topkGroup, groupSize = groups.groupSize;
  const double scaling = groups.scaling;
  const bool norm = groups.norm;
  const TensorView &logits = args.inputs[0], &bias = args.inputs[1], &weights = args.outputs[0],
                   &indices = args.outputs[1];
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
            std::fill(allowed.begin() + g * groupSize, allowed.begin() + (g + 1) * groupSize, 1);
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

Status sigmoidGroupedRouterGradKernel(const KernelArgs &args) {
  double scaling;
  bool norm;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSigmoidGroupedRouterGrad(args, scaling, norm, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1], &dweights = args.inputs[2],
                   &dlogits = args.outputs[0];
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
              ds[idx[j]] += scaling * (double(dweights.load(n * k + j)) / D - gs / (D * D));
          }
          for (int64_t e = 0; e < E; ++e)
            dlogits.store(n * E + e, float(ds[e] * s[e] * (1 - s[e])));
        }
      },
      kTokenGrain);
  return Status();
}

} // namespace g3rt::cpu
