//===- kernels_moe_losses.cpp - MoE auxiliary loss CPU kernels ------------===//
//
// The fp32 reference of the auxiliary losses of the routers (docs/kernels.md,
// "Auxiliary losses"): load balancing and router z-loss with their
// gradients, the weighted loss sum, and the routing statistic expert_load.
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
// Auxiliary losses
//===----------------------------------------------------------------------===//

namespace {

/// The segment ids of a loss: which of the N rows every layer shares are real.
Status realRows(const KernelArgs &args, const TensorView &seg, int64_t N,
                std::vector<unsigned char> &real, int64_t &count) {
  G3RT_RETURN_IF_ERROR(checkSegments(args, seg, N));
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
template <typename RowTerm> double orderedRowSum(int64_t N, int64_t width, const RowTerm &rowTerm) {
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

/// Common part of load_balancing_loss and its gradient: checks, real rows,
/// R, and the routed fractions f_e (pooled over all layers).
struct BalanceSetup {
  int64_t L = 0, N = 0, E = 0, R = 0;
  std::vector<unsigned char> real;
  std::vector<double> f;
};

Status balanceSetup(const KernelArgs &args, int64_t trailing, BalanceSetup &b) {
  G3RT_RETURN_IF_ERROR(checkBalanceLayers(args, trailing, b.L, b.E, b.N));
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

} // namespace

Status loadBalancingLossKernel(const KernelArgs &args) {
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

Status loadBalancingLossGradKernel(const KernelArgs &args) {
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

Status routerZLossKernel(const KernelArgs &args) {
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

Status routerZLossGradKernel(const KernelArgs &args) {
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
    G3RT_RETURN_IF_ERROR(checkMatrix(args, args.outputs[l], "result", N, args.inputs[l].dim(-1)));
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

Status lossSumKernel(const KernelArgs &args) {
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

/// Routing slots per expert over the real tokens: the MoE load statistic.
Status expertLoadKernel(const KernelArgs &args) {
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
        return args.fail("expert index " + str(e) + " at token " + str(n) + " is outside [0, " +
                         str(experts) + ")");
      counts[size_t(e)] += 1;
    }
  }
  fromFloat(out, counts);
  return Status();
}

} // namespace g3rt::cpu
