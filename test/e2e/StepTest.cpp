//===- StepTest.cpp - whole tiny models through step.bin ------------------===//
//
// End-to-end checks of compiled steps on the CPU backend: finite-difference
// gradients of whole fp32 models, memorisation of a small set, determinism,
// the memory plan against the executor's high-water mark, and rejection of
// damaged step.bin files.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/file.h"
#include "runtime/base/random.h"
#include "runtime/schemas/container.h"
#include "runtime/train/data.h"
#include "runtime/train/init.h"
#include "runtime/train/trainer.h"
#include "test/e2e/StepFixtures.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

using namespace g3rt;
using namespace g3moe_test;

namespace {

StepProgram load(const std::string &name) {
  StepProgram program;
  Status s = loadStep(stepPath(name), program);
  EXPECT_TRUE(s.ok()) << s.message();
  return program;
}

/// <a, b> in double.
double dot(const std::vector<float> &a, const std::vector<float> &b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i)
    s += double(a[i]) * b[i];
  return s;
}

//===----------------------------------------------------------------------===//
// Routing decisions
//===----------------------------------------------------------------------===//

/// One SparseMixer stage of one token as G3MOE_SPEC.md §3.4 decides it.
struct MixerStage {
  uint32_t candidates = 0; ///< bit e: expert e survives the relative-gap test
  int argmax = -1;         ///< the stage's largest logit (lowest index on ties)
  int pick = -1;           ///< the expert the router chose
  double coinDraw = 0;     ///< u, whose > 0.75 keeps the coin at 1
  double probability = 0;  ///< P[pick] over the candidates
  double weight = 0;       ///< the router's output weight, P[pick]·coin
};

/// The stages of every token of a sparsemixer_router that has just run
/// (`logits`, optional noise `u` [N, 2, E+1], `weights` and `indices` [N, 2]),
/// recomputed from the spec: the candidate sets, argmaxes and P[pick] come
/// from the logits, the picks and weights from the router.
std::vector<MixerStage> mixerStages(const TensorView &logits, const TensorView *u,
                                    const TensorView &weights, const TensorView &indices,
                                    double epsilon) {
  const int64_t E = logits.shape.back(), N = logits.numel() / E;
  std::vector<MixerStage> out;
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> S(static_cast<size_t>(E)), live(static_cast<size_t>(E), 1.0);
    for (int64_t e = 0; e < E; ++e)
      S[size_t(e)] = logits.load(n * E + e);
    for (int stage = 0; stage < 2; ++stage) {
      MixerStage st;
      for (int64_t e = 0; e < E; ++e)
        if (live[size_t(e)] && (st.argmax < 0 || S[size_t(e)] > S[size_t(st.argmax)]))
          st.argmax = int(e);
      double m = S[size_t(st.argmax)], z = 0;
      for (int64_t e = 0; e < E; ++e) {
        double gap = (m - S[size_t(e)]) /
                     std::max({std::fabs(S[size_t(e)]), std::fabs(m), stage ? 1e-8 : 1e-10});
        if (live[size_t(e)] && !(gap > 2 * epsilon)) {
          st.candidates |= 1u << e;
          z += std::exp(S[size_t(e)] - m);
        }
      }
      st.pick = indices.i32()[n * 2 + stage];
      st.probability = (st.candidates >> st.pick & 1) ? std::exp(S[size_t(st.pick)] - m) / z : 0;
      st.weight = weights.load(n * 2 + stage);
      st.coinDraw = u ? u->load((n * 2 + stage) * (E + 1) + E) : 1.0;
      out.push_back(st);
      live[size_t(st.pick)] = 0;
    }
  }
  return out;
}

/// What a forward run decided discretely: every router's expert indices and,
/// for SparseMixer, each stage's candidate set and argmax (which set P and
/// the coin). The loss is a smooth function of the parameters wherever these
/// stay the same.
struct Routing {
  std::vector<int32_t> decisions;
  /// Each router's expert indices [tokens, k], router by router.
  std::vector<std::vector<int32_t>> indices;
  int64_t topK = 0;
  /// The SparseMixer stages, router by router.
  std::vector<std::vector<MixerStage>> mixer;
  /// How far the nearest decision is from flipping, in logit units: the
  /// smallest gap between consecutive logits among each token's top k + 1
  /// (and for SparseMixer, between a relative gap and its 2ε threshold).
  double margin = INFINITY;
  bool operator==(const Routing &o) const { return decisions == o.decisions; }
};

/// The margin of one router's decisions over `logits` [N, E] with top-`k`.
double routingMargin(const TensorView &logits, int64_t k, double epsilon) {
  const int64_t E = logits.shape.back(), N = logits.numel() / E;
  double margin = INFINITY;
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> S;
    for (int64_t e = 0; e < E; ++e)
      S.push_back(logits.load(n * E + e));
    std::sort(S.begin(), S.end(), std::greater<double>());
    for (int64_t j = 0; j < std::min(k, E - 1); ++j)
      margin = std::min(margin, S[size_t(j)] - S[size_t(j + 1)]);
    // SparseMixer's candidate test (m - s) > 2ε max(|s|, |m|), at either stage's maximum.
    for (int64_t stage = 0; epsilon > 0 && stage < 2; ++stage)
      for (int64_t e = stage + 1; e < E; ++e) {
        double m = S[size_t(stage)], v = S[size_t(e)];
        margin = std::min(margin,
                          std::fabs((m - v) - 2 * epsilon * std::max(std::fabs(v), std::fabs(m))));
      }
  }
  return margin;
}

/// Runs entry point `function` instruction by instruction, recording its
/// routing; returns the loss.
double runRecordingRouting(CpuStep &ex, const char *function, Routing &routing) {
  const FunctionDesc *fn = ex.state.program().findFunction(function);
  routing = Routing();
  for (size_t i = 0; i < fn->instrs.size(); ++i) {
    Status s = ex.cpu->runInstruction(*fn, i);
    EXPECT_TRUE(s.ok()) << s.message();
    const InstrDesc &instr = fn->instrs[i];
    if (instr.kernel.size() < 7 || instr.kernel.compare(instr.kernel.size() - 7, 7, "_router"))
      continue;
    TensorView indices = ex.cpu->view(*fn, instr.outputs[1]);
    routing.margin = std::min(
        routing.margin, routingMargin(ex.cpu->view(*fn, instr.inputs[0]), indices.shape.back(),
                                      instr.attrs.getFloat("epsilon").value_or(0)));
    routing.decisions.insert(routing.decisions.end(), indices.i32(),
                             indices.i32() + indices.numel());
    routing.indices.emplace_back(indices.i32(), indices.i32() + indices.numel());
    routing.topK = indices.shape.back();
    if (instr.kernel != "sparsemixer_router")
      continue;
    TensorView u = instr.inputs.size() > 1 ? ex.cpu->view(*fn, instr.inputs[1]) : TensorView{};
    routing.mixer.push_back(mixerStages(ex.cpu->view(*fn, instr.inputs[0]), u.data ? &u : nullptr,
                                        ex.cpu->view(*fn, instr.outputs[0]), indices,
                                        *instr.attrs.getFloat("epsilon")));
    for (const MixerStage &st : routing.mixer.back()) {
      routing.decisions.push_back(int32_t(st.candidates));
      routing.decisions.push_back(st.argmax);
    }
  }
  return ex.cpu->output(function, "loss").load(0);
}

//===----------------------------------------------------------------------===//
// Whole-model finite differences
//===----------------------------------------------------------------------===//

/// One parameter's directional derivative, analytic and by finite
/// differences.
struct Directional {
  double analytic = 0; ///< <gradient, direction> (over the realised steps)
  double numeric = 0;  ///< Richardson-extrapolated central differences
  double noise = 0;    ///< bound on numeric's error from the fp32 loss
  double step = 0;     ///< the larger of the two steps used
  bool smooth = false; ///< the routing held and the two differences agree
};

/// A bound on the rounding error of an fp32 loss near `loss`: one unit in
/// its last place. The loss kernels sum their rows in double, so the error is
/// mostly the final rounding (half an ulp); across every parameter of the
/// four steps below, the extrapolations stay within 0.45 of the bound this
/// gives.
double lossNoise(double loss) {
  int exponent;
  std::frexp(loss, &exponent);
  return std::ldexp(1.0, exponent - 24);
}

/// The directional derivative of @forward's loss along `dir` of parameter
/// `p`, against <grad, dir>, where the routing is `base`'s.
///
/// The bound must scale with each parameter's own derivative: at the tiny
/// models' starting points the q/k norms' and some routers' directional
/// derivatives are 1e-4..1e-2, below the fixed slack that fp32 losses near 6
/// need at a fixed small step. So the first step moves the loss by about
/// 3e-4: small derivatives get large steps, which keeps the loss's rounding
/// noise divided by the step (`noise`, the absolute part of the bound) near
/// 1 % of the derivative. Steps stay below a tenth of the parameter's root
/// mean square, beyond which the loss is far from its Taylor polynomial (a
/// projection of scale 0.02 moved by 1e-2 per entry is another projection),
/// and Richardson's extrapolation of the central differences at h and h/2
/// cancels the h² term of the curvature that the larger steps bring. h
/// shrinks while the routing at ±h or ±h/2 differs from `base` (the loss
/// jumps there) or the two differences disagree by more than 2 % and their
/// noise, down to about 1/300 of the first. The analytic side sums the
/// perturbation fp32 actually stored, in fp64. G3MOE_FD_VERBOSE=1 prints every comparison.
Directional directional(CpuStep &ex, const ParamDesc &p, const std::vector<float> &grad,
                        const std::vector<float> &dir, double baseLoss, const Routing &base) {
  TensorView param = ex.state.param(p.name);
  std::vector<float> saved = toFloat(param), plus(saved.size()), minus(saved.size());
  // The parameter's own scale (1 for those that start at 0: norm weights
  // enter as 1 + w, biases only shift their input).
  double rms = std::sqrt(dot(saved, saved) / double(saved.size()));
  if (rms == 0)
    rms = 1;
  Routing routing;
  // The central difference at step `by` and <grad, realised displacement> / 2 by;
  // `held` says whether both runs routed as `base`.
  auto central = [&](double by, double &analytic, bool &held) {
    analytic = 0;
    for (size_t i = 0; i < dir.size(); ++i) {
      plus[i] = float(saved[i] + by * dir[i]);
      minus[i] = float(saved[i] - by * dir[i]);
      analytic += double(grad[i]) * (double(plus[i]) - double(minus[i]));
    }
    analytic /= 2 * by;
    std::memcpy(param.data, plus.data(), plus.size() * 4);
    double up = runRecordingRouting(ex, "forward", routing);
    held = routing == base;
    std::memcpy(param.data, minus.data(), minus.size() * 4);
    double down = runRecordingRouting(ex, "forward", routing);
    held = held && routing == base;
    std::memcpy(param.data, saved.data(), saved.size() * 4);
    return (up - down) / (2 * by);
  };
  const double noise = lossNoise(baseLoss);
  const double slope = std::fabs(dot(grad, dir));
  const double first = slope > 0 ? std::min(3e-4 / slope, 0.1 * rms) : 0.1 * rms;
  double h = first;
  Directional d;
  double q1 = 0, q2 = 0, a1 = 0, a2 = 0;
  bool held1 = false, held2 = false;
  q1 = central(h, a1, held1);
  for (;;) {
    if (held1) {
      q2 = central(h / 2, a2, held2);
      // q1 is off by at most noise / h, q2 by 2 noise / h.
      d.smooth = held2 && std::fabs(q1 - q2) <= 3 * noise / h + 2e-2 * std::fabs(q2);
    }
    if (d.smooth || h < first / 300)
      break;
    // A jump usually sits well inside the step: a quarter finds the smooth
    // region sooner.
    h /= held1 && held2 ? 2 : 4;
    if (held1 && held2) {
      q1 = q2;
      a1 = a2;
    } else {
      q1 = central(h, a1, held1);
    }
  }
  d.step = h;
  d.numeric = (4 * q2 - q1) / 3;
  d.analytic = (4 * a2 - a1) / 3;
  d.noise = 3 * noise / h;
  if (std::getenv("G3MOE_FD_VERBOSE"))
    std::fprintf(
        stderr, "%-50s h %.1e analytic % .6e numeric % .6e q1 % .6e q2 % .6e noise %.1e%s\n",
        p.name.c_str(), h, d.analytic, d.numeric, q1, q2, d.noise, d.smooth ? "" : "  JUMP");
  return d;
}

/// Compares the gradients of @forward_backward at `point` with finite
/// differences of @forward's loss, one random direction per parameter tensor
/// (of those `which` selects) so that a failure names the parameter. The
/// bound is each parameter's own: 1 % of its directional derivative plus the
/// finite differences' noise at the step it gets, so a gradient of any size
/// that is wrong by more than a few percent fails, a zeroed one included.
/// Returns false when the point is unusable: for some parameter the loss
/// jumps along every direction tried (a routing choice sits so close to a tie
/// that any step flips it). Mismatches are appended to `failures`; `checked`,
/// when given, receives each parameter's last smooth comparison.
bool checkGradientsAt(const StepProgram &program, const Point &point,
                      std::vector<std::string> &failures,
                      const std::function<bool(const ParamDesc &)> &which = nullptr,
                      std::map<std::string, Directional> *checked = nullptr) {
  CpuStep ex(program);
  prepare(ex, point);

  double loss = runLoss(ex, "forward_backward");
  // The gradients live in the arena, which every later run reuses: keep a copy.
  std::map<std::string, std::vector<float>> grads;
  double gradNormSq = 0;
  for (const ParamDesc &p : program.params)
    if (p.trainable) {
      TensorView grad = ex.cpu->output("forward_backward", "grad:" + p.name);
      EXPECT_NE(grad.data, nullptr) << "no gradient output for " << p.name;
      if (!grad.data)
        return true;
      grads[p.name] = toFloat(grad);
      for (float g : grads[p.name])
        gradNormSq += double(g) * g;
    }
  EXPECT_GT(gradNormSq, 0) << "all gradients are zero";
  Routing routing;
  EXPECT_EQ(loss, runRecordingRouting(ex, "forward", routing))
      << "forward and forward_backward disagree";

  for (const ParamDesc &p : program.params) {
    if (!p.trainable || (which && !which(p)))
      continue;
    const std::vector<float> &grad = grads[p.name];
    std::vector<float> dir(grad.size());
    const double gradNorm = std::sqrt(dot(grad, grad));
    // Another direction while the last one jumped, or was smooth only over
    // steps so small that its noise hides the derivative (a routing tie
    // nearby): one that moves the tied tokens' logits less allows larger
    // steps. Every smooth direction is checked.
    bool smooth = false;
    for (uint64_t attempt = 0; attempt < 4; ++attempt) {
      // Uniform in [-1, 1) plus, at the same length, the gradient's own
      // direction: a random direction sees a gradient of n entries only
      // through about 1/sqrt(n) of its length, the gradient's sees all of it
      // (and a wrong gradient differs from the derivative along itself
      // unless the error is orthogonal to it); a zeroed gradient leaves the
      // random part, along which the loss still moves.
      for (size_t i = 0; i < dir.size(); ++i)
        dir[i] = 2 * uniformAt(11 + attempt, 0, streamOf(p.name), i) - 1;
      const double randomNorm = std::sqrt(dot(dir, dir));
      for (size_t i = 0; gradNorm > 0 && i < dir.size(); ++i)
        dir[i] += float(randomNorm * grad[i] / gradNorm);
      Directional d = directional(ex, p, grad, dir, loss, routing);
      if (!d.smooth)
        continue;
      smooth = true;
      if (checked)
        (*checked)[p.name] = d;
      double bound = 1e-2 * std::fabs(d.analytic) + d.noise;
      if (std::fabs(d.numeric - d.analytic) > bound)
        failures.push_back(p.name + ": finite differences " + std::to_string(d.numeric) +
                           ", gradient " + std::to_string(d.analytic) + " (bound " +
                           std::to_string(bound) + ", step " + std::to_string(d.step) + ")");
      // Resolved. (Both exactly zero is not: a derivative too small to move
      // the loss by an ulp over the step gives that too.)
      if (std::max(std::fabs(d.analytic), std::fabs(d.numeric)) > 3 * d.noise)
        break;
    }
    if (!smooth)
      return false;
  }
  return true;
}

/// The routing `point` gives.
Routing routingAt(const StepProgram &program, const Point &point) {
  CpuStep ex(program);
  prepare(ex, point);
  Routing routing;
  runRecordingRouting(ex, "forward", routing);
  return routing;
}

void checkWholeModelGradient(const std::string &stepName, bool randomizeLoraB) {
  StepProgram program = load(stepName);
  // Points whose routing is furthest from a tie first: nearer ones need
  // smaller steps (noisier differences), or none will do.
  std::vector<std::pair<double, Point>> points;
  for (uint64_t seed = 7; seed < 15; ++seed) {
    Point point;
    point.seed = seed;
    point.randomizeLoraB = randomizeLoraB;
    points.push_back({routingAt(program, point).margin, point});
  }
  std::stable_sort(points.begin(), points.end(),
                   [](const auto &a, const auto &b) { return a.first > b.first; });
  for (size_t i = 0; i < 4; ++i) {
    const Point &point = points[i].second;
    if (std::getenv("G3MOE_FD_VERBOSE"))
      std::fprintf(stderr, "seed %llu, routing margin %.3g\n", (unsigned long long)point.seed,
                   points[i].first);
    std::vector<std::string> failures;
    if (!checkGradientsAt(program, point, failures))
      continue;
    for (const std::string &f : failures)
      ADD_FAILURE() << stepName << " (seed " << point.seed << "): " << f;
    return;
  }
  ADD_FAILURE() << stepName << ": every parameter point tried sits next to a routing tie";
}

TEST(StepGradient, DenseGemma3FullFinetune) { checkWholeModelGradient("gemma3_full_fp32", false); }

TEST(StepGradient, G3MoESoftmaxTopKWithAuxLosses) {
  checkWholeModelGradient("g3moe_topk_full_fp32", false);
}

TEST(StepGradient, G3MoESigmoidGroupedWithSharedExpert) {
  checkWholeModelGradient("g3moe_grouped_full_fp32", false);
}

TEST(StepGradient, G3MoESparseMixerLoRAEverywhereAndRouter) {
  checkWholeModelGradient("g3moe_lora_fp32", true);
}

/// The default router (SparseMixer, G3MOE_SPEC.md §3.4-3.5) with its
/// shipped epsilon, 0.01, where its router gradient is not zero.
///
/// The gradient is an estimator, not the derivative of the forward: it
/// ignores the coin c_j (1/3 when the draw picked a candidate other than the
/// argmax and u <= 0.75) and cuts the softmax path inside w_j. But with the
/// choices held (candidate sets, argmaxes and picks) and every coin 1, w_j =
/// P_j[i_j] is a softmax entry of the candidates' logits and the rule
/// γ_j·w_j·(δ - P_j) is exactly its derivative, so there, and only there, the
/// spec says the estimator equals finite differences of the loss. It is
/// nonzero only through stages with two or more candidates (within 2ε,
/// relative, of the top logit); a stage with one candidate has P one-hot and
/// contributes exactly zero. Comparing with a second implementation of the
/// backward formula (test/reference) would share any misreading of §3.5;
/// finite differences of the product's own forward cannot.
///
/// The point is searched for: several multi-candidate stages, none whose coin
/// is 1/3, at least one whose draw picked a non-argmax candidate that u kept
/// at weight P[pick] (the case an argmax router would never test), and the
/// largest margin to any routing change. Router weights are 300 times their
/// initial scale (logits of tens): the candidate test is relative, so which
/// stages tie hardly changes, but the margins in logit units grow with the
/// scale, and with them the steps the differences can take before a choice
/// flips (at the initial scale those steps leave the loss moving by a few
/// units in its last place, too few to resolve the router's derivative).
TEST(StepGradient, G3MoESparseMixerRouterWhereCandidatesTie) {
  StepProgram program = load("g3moe_sparsemixer_full_fp32");
  Point best;
  double bestMargin = -1;
  int bestTies = 0;
  for (uint64_t seed = 7; seed < 11; ++seed)
    for (int64_t key = 0; key < 16; ++key) {
      Point point;
      point.seed = seed;
      point.key = key;
      point.routerScale = 300;
      Routing routing = routingAt(program, point);
      int ties = 0, offArgmax = 0, coinDown = 0;
      for (const std::vector<MixerStage> &layer : routing.mixer)
        for (const MixerStage &st : layer) {
          bool coin = st.pick == st.argmax || st.coinDraw > 0.75;
          // The router's weight is P[pick] times the coin (§3.4).
          EXPECT_NEAR(st.weight, st.probability * (coin ? 1.0 : 0.3333), 1e-6);
          if (__builtin_popcount(st.candidates) < 2)
            continue;
          ++ties;
          coinDown += !coin;
          offArgmax += coin && st.pick != st.argmax;
        }
      if (coinDown == 0 && ties >= 3 && offArgmax >= 1 && routing.margin > bestMargin) {
        best = point;
        bestMargin = routing.margin;
        bestTies = ties;
      }
    }
  ASSERT_GT(bestMargin, 0) << "no point with tied candidates and every coin 1";
  if (std::getenv("G3MOE_FD_VERBOSE"))
    std::fprintf(stderr, "seed %llu, key %lld: %d tied stages, routing margin %.3g\n",
                 (unsigned long long)best.seed, (long long)best.key, bestTies, bestMargin);

  // Which layers' routers see ties, and the gradients there.
  Routing routing = routingAt(program, best);
  CpuStep ex(program);
  prepare(ex, best);
  ASSERT_TRUE(ex.cpu->run("forward_backward").ok());
  std::vector<std::string> routers;
  for (const ParamDesc &p : program.params)
    if (p.name.find("moe.gate.weight") != std::string::npos)
      routers.push_back(p.name);
  ASSERT_EQ(routers.size(), routing.mixer.size());
  std::vector<bool> tied(routers.size(), false);
  for (size_t l = 0; l < routers.size(); ++l) {
    for (const MixerStage &st : routing.mixer[l])
      tied[l] = tied[l] || __builtin_popcount(st.candidates) >= 2;
    std::vector<float> g = toFloat(ex.cpu->output("forward_backward", "grad:" + routers[l]));
    double norm = std::sqrt(dot(g, g));
    if (tied[l])
      EXPECT_GT(norm, 0) << routers[l] << ": ties, yet no router gradient";
    else
      EXPECT_EQ(norm, 0) << routers[l] << ": one candidate per stage, P one-hot (§3.5)";
  }
  EXPECT_NE(std::count(tied.begin(), tied.end(), true), 0);

  std::vector<std::string> failures;
  std::map<std::string, Directional> checked;
  ASSERT_TRUE(checkGradientsAt(
      program, best, failures,
      [](const ParamDesc &p) { return p.name.find("moe.gate.weight") != std::string::npos; },
      &checked))
      << "the routing flips along every direction tried";
  for (const std::string &f : failures)
    ADD_FAILURE() << "seed " << best.seed << ", key " << best.key << " (" << bestTies
                  << " tied stages): " << f;
  for (size_t l = 0; l < routers.size(); ++l) {
    // The comparison must be able to tell the gradient from zero.
    const Directional &d = checked[routers[l]];
    if (tied[l]) {
      EXPECT_GT(std::fabs(d.numeric), 3 * d.noise)
          << routers[l] << ": finite differences " << d.numeric << " within their noise "
          << d.noise;
    }
  }
}

//===----------------------------------------------------------------------===//
// MoE statistics
//===----------------------------------------------------------------------===//

/// Per router (MoE layer in order), how many of the routing slots of tokens
/// whose segment id is not 0 each expert of `experts` took.
std::vector<std::vector<double>>
expertCounts(const Routing &routing, const std::vector<int32_t> &segmentIds, int64_t experts) {
  std::vector<std::vector<double>> counts;
  for (const std::vector<int32_t> &idx : routing.indices) {
    counts.emplace_back(size_t(experts), 0.0);
    for (size_t n = 0; n < segmentIds.size(); ++n)
      for (int64_t j = 0; segmentIds[n] != 0 && j < routing.topK; ++j)
        counts.back()[size_t(idx[n * size_t(routing.topK) + size_t(j)])] += 1;
  }
  return counts;
}

/// The training step's moe_load outputs name their layer; those layers, in
/// order, are the MoE layers the routers ran in.
std::vector<std::string> moeLoadLayers(const StepProgram &program) {
  std::vector<std::pair<int, std::string>> layers;
  for (const auto &[name, buffer] : program.findFunction("train_micro_step")->outputs)
    if (name.rfind("moe_load:", 0) == 0)
      layers.push_back({std::stoi(name.substr(9)), name.substr(9)});
  std::sort(layers.begin(), layers.end());
  std::vector<std::string> out;
  for (auto &[number, name] : layers)
    out.push_back(name);
  return out;
}

/// expert_load, as the training step returns it per MoE layer, counts every
/// routing slot (both of top-2) of the real tokens and none of the padding:
/// counts recomputed from the indices each router produced in the same run
/// and the segment ids.
TEST(StepMoEStatistics, ExpertLoadCountsTheRoutingSlotsOfRealTokens) {
  StepProgram program = load("g3moe_lora");
  CpuStep ex(program);
  prepare(ex, Point());
  // The second row ends in padding after 11 tokens.
  for (int64_t t = 10; t < 16; ++t) {
    ex.state.input("targets").i32()[16 + t] = -100;
    if (t > 10) {
      ex.state.input("input_ids").i32()[16 + t] = 0;
      ex.state.input("segment_ids").i32()[16 + t] = 0;
    }
  }
  TensorView segmentIds = ex.state.input("segment_ids");
  std::vector<int32_t> segments(segmentIds.i32(), segmentIds.i32() + segmentIds.numel());
  int64_t real = std::count_if(segments.begin(), segments.end(), [](int32_t s) { return s; });
  ASSERT_GT(real, 0);

  Routing routing;
  runRecordingRouting(ex, "train_micro_step", routing);
  std::vector<std::string> layers = moeLoadLayers(program);
  ASSERT_EQ(layers, (std::vector<std::string>{"2", "3", "4", "5"}));
  ASSERT_EQ(routing.indices.size(), layers.size());
  ASSERT_EQ(routing.topK, 2);
  std::vector<std::vector<double>> want = expertCounts(routing, segments, 4),
                                   withPadding = expertCounts(
                                       routing, std::vector<int32_t>(segments.size(), 1), 4);
  bool paddingMatters = false;
  for (size_t l = 0; l < layers.size(); ++l) {
    std::vector<float> got = toFloat(ex.cpu->output("train_micro_step", "moe_load:" + layers[l]));
    ASSERT_EQ(got.size(), 4u);
    double total = 0;
    for (size_t e = 0; e < 4; ++e) {
      EXPECT_EQ(got[e], want[l][e]) << "layer " << layers[l] << ", expert " << e;
      total += got[e];
    }
    EXPECT_EQ(total, 2.0 * double(real)) << "layer " << layers[l];
    paddingMatters = paddingMatters || want[l] != withPadding[l];
  }
  EXPECT_TRUE(paddingMatters) << "the padding routes like the real tokens: pick another batch";
}

/// The shares the trainer logs (metrics.jsonl's moe_expert_share, the text
/// log's largest share per layer) are the counts of the whole accumulation
/// window over its routing slots: replayed here from the routers' own
/// indices, micro-batch by micro-batch. The examples are identical, so the
/// trainer's shuffle cannot change what a micro-batch holds.
TEST(StepMoEStatistics, LoggedSharesAreTheWindowsRoutingCounts) {
  std::string dir = scratch("moe-stats", "shares");
  std::string data = dir + "/data.jsonl";
  {
    std::ofstream out(data);
    for (int i = 0; i < 4; ++i)
      out << "{\"input_ids\": [2, 17, 301, 45, 99, 7, 260, 11, 480, 33, 5]}\n";
  }
  StepProgram program = load("g3moe_lora");
  TrainOptions options;
  options.dataPath = data;
  options.outputDir = dir + "/out";
  options.maxSteps = 1;
  options.gradientAccumulationSteps = 2;
  options.loggingSteps = 1;
  options.seed = 3;
  options.learningRate = 1e-2;
  options.lrSchedulerType = "constant";
  TrainResult result;
  std::string log;
  ASSERT_TRUE(runTraining(program, options, result, &log).ok()) << log;

  // The replay: the trainer's data, parameters and keys (seed, micro-batch).
  DataSpec spec;
  spec.path = data;
  spec.seqLen = 16;
  spec.vocabSize = 512;
  spec.seed = 3;
  DataSplit split;
  ASSERT_TRUE(loadTrainingData(spec, split).ok());
  ASSERT_EQ(split.train.size(), 4u);
  CpuStep ex(program);
  ASSERT_TRUE(initializeParameters(ex.state, 3, 0).ok());
  std::vector<std::string> layers = moeLoadLayers(program);
  std::vector<std::vector<double>> counts(layers.size(), std::vector<double>(4, 0.0));
  for (int64_t mb = 0; mb < 2; ++mb) {
    MicroBatch batch;
    assembleMicroBatch(split.train, {size_t(2 * mb), size_t(2 * mb + 1)}, 2, 16, 0, batch);
    ASSERT_LT(batch.tokens, 32) << "the rows should end in padding";
    auto copy = [&](const char *name, const std::vector<int32_t> &v) {
      std::memcpy(ex.state.input(name).data, v.data(), v.size() * 4);
    };
    copy("input_ids", batch.inputIds);
    copy("targets", batch.targets);
    copy("positions", batch.positions);
    copy("segment_ids", batch.segmentIds);
    ex.state.input("num_items").store(0, 40.0f);
    ex.state.input("rng_key").i64()[0] = 3;
    ex.state.input("rng_key").i64()[1] = mb;
    Routing routing;
    runRecordingRouting(ex, "train_micro_step", routing);
    std::vector<std::vector<double>> c = expertCounts(routing, batch.segmentIds, 4);
    ASSERT_EQ(c.size(), layers.size());
    for (size_t l = 0; l < layers.size(); ++l)
      for (size_t e = 0; e < 4; ++e)
        counts[l][e] += c[l][e];
  }

  std::ifstream metrics(options.outputDir + "/metrics.jsonl");
  nlohmann::json logged;
  for (std::string line; std::getline(metrics, line);)
    if (nlohmann::json j = nlohmann::json::parse(line); j.contains("moe_expert_share"))
      logged = j["moe_expert_share"];
  ASSERT_TRUE(logged.is_object()) << "no moe_expert_share in metrics.jsonl";
  std::string largest = "largest expert share by layer:";
  for (size_t l = 0; l < layers.size(); ++l) {
    double total = 0, top = 0;
    for (double c : counts[l])
      total += c;
    ASSERT_TRUE(logged.contains(layers[l])) << logged.dump();
    std::vector<double> shares = logged[layers[l]].get<std::vector<double>>();
    ASSERT_EQ(shares.size(), 4u);
    for (size_t e = 0; e < 4; ++e) {
      EXPECT_NEAR(shares[e], counts[l][e] / total, 1e-12) << "layer " << layers[l];
      top = std::max(top, counts[l][e] / total);
    }
    char part[32];
    std::snprintf(part, sizeof part, " %s:%.2f", layers[l].c_str(), top);
    largest += part;
  }
  EXPECT_NE(log.find(largest), std::string::npos) << largest << "\n" << log;
}

/// Recomputing whole decoder layers in the backward (with LoRA dropout, the
/// router's random draws and the fused LoRA adds recomputed too), or the MLPs
/// of the first layers (as g3moe-compile chooses under a budget), gives the
/// loss and gradients of the step that keeps every activation, exactly: the
/// recomputed ops are the same kernels on the same inputs.
TrainResult trainTiny(const std::string &stepName, int64_t steps, double lr, uint64_t seed = 42) {
  StepProgram program = load(stepName);
  TrainOptions options;
  options.dataPath = memorizeData();
  options.maxSteps = steps;
  options.learningRate = lr;
  options.lrSchedulerType = "constant";
  options.gradientAccumulationSteps = 2;
  options.seed = int64_t(seed);
  options.noSave = true;
  std::ostringstream log;
  TrainResult result;
  Status s = train(program, options, log, result);
  EXPECT_TRUE(s.ok()) << s.message() << "\n" << log.str();
  return result;
}

TEST(StepTraining, TinyG3MoEMemorises) {
  TrainResult r = trainTiny("g3moe_full", 150, 5e-3);
  ASSERT_EQ(r.optimizerSteps, 150);
  EXPECT_GT(r.losses.front(), 5.0);
  EXPECT_LT(r.losses.back(), 0.02) << "first loss " << r.losses.front();
}

TEST(StepTraining, TinyGemma3Memorises) {
  TrainResult r = trainTiny("gemma3_full", 150, 5e-3);
  EXPECT_GT(r.losses.front(), 5.0);
  EXPECT_LT(r.losses.back(), 0.02) << "first loss " << r.losses.front();
}

TEST(StepTraining, LoRALossFalls) {
  TrainResult r = trainTiny("g3moe_lora", 60, 1e-2);
  EXPECT_LT(r.losses.back(), 0.9 * r.losses.front());
}

TEST(StepTraining, SameSeedSameLosses) {
  TrainResult a = trainTiny("g3moe_lora", 6, 1e-2, 5), b = trainTiny("g3moe_lora", 6, 1e-2, 5),
              c = trainTiny("g3moe_lora", 6, 1e-2, 6);
  EXPECT_EQ(a.losses, b.losses);
  EXPECT_NE(a.losses, c.losses);
}

TEST(StepTraining, FirstWarmupUpdateUsesLearningRateZero) {
  StepProgram program = load("g3moe_lora");
  TrainOptions options;
  options.dataPath = memorizeData();
  options.maxSteps = 4;
  options.warmupSteps = 2;
  options.learningRate = 1e-2;
  options.lrSchedulerType = "linear";
  options.noSave = true;
  std::ostringstream log;
  TrainResult r;
  ASSERT_TRUE(train(program, options, log, r).ok()) << log.str();
  ASSERT_EQ(r.learningRates.size(), 4u);
  EXPECT_EQ(r.learningRates[0], 0.0);
  EXPECT_NEAR(r.learningRates[1], 5e-3, 1e-9);
  EXPECT_NEAR(r.learningRates[2], 1e-2, 1e-9);
  EXPECT_NEAR(r.learningRates[3], 5e-3, 1e-9);
}

TEST(StepMemory, PlanPeakEqualsCpuArenaHighWater) {
  for (const char *name : {"g3moe_lora", "gemma3_full", "g3moe_topk_full_fp32"}) {
    StepProgram program = load(name);
    for (const FunctionDesc &fn : program.functions)
      EXPECT_TRUE(checkArenaPlan(fn).ok()) << name << " " << fn.name;
    CpuStep ex(program);
    ASSERT_TRUE(initializeParameters(ex.state, 1, 0).ok());
    setInputs(ex);
    // The step's arena is what training runs; forward_backward, which holds
    // every gradient at its end, grows it when it runs.
    uint64_t most = 0, training = 0;
    for (const FunctionDesc &fn : program.functions) {
      Status s = ex.cpu->run(fn.name);
      ASSERT_TRUE(s.ok()) << s.message();
      most = std::max(most, fn.arenaBytes);
      if (fn.name != "forward_backward")
        training = std::max(training, fn.arenaBytes);
    }
    EXPECT_EQ(ex.cpu->arenaHighWater(), most) << name;
    EXPECT_EQ(program.arenaBytes, training) << name;
    EXPECT_GT(program.arenaBytes, 0u);
  }
  // An instruction run alone (tests that look between kernels) needs its
  // function's arena reserved first; without it, it fails instead of
  // writing past the arena.
  StepProgram program = load("g3moe_lora");
  const FunctionDesc *fb = program.findFunction("forward_backward");
  ASSERT_TRUE(fb);
  ASSERT_GT(fb->arenaBytes, program.arenaBytes);
  CpuStep ex(program);
  ASSERT_TRUE(initializeParameters(ex.state, 1, 0).ok());
  setInputs(ex);
  Status s = ex.cpu->runInstruction(*fb, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("reserveArena"), std::string::npos) << s.message();
  ASSERT_TRUE(ex.cpu->reserveArena(*fb).ok());
  EXPECT_EQ(ex.cpu->arenaBytes(), fb->arenaBytes);
  for (size_t i = 0; i < fb->instrs.size(); ++i)
    ASSERT_TRUE(ex.cpu->runInstruction(*fb, i).ok()) << i;
}

TEST(StepMemory, OverlappingLiveBuffersAreRejected) {
  FunctionDesc fn;
  fn.name = "f";
  fn.arenaBytes = 1024;
  BufferDesc a;
  a.shape = {64};
  a.bytes = 256;
  a.offset = 0;
  BufferDesc b = a;
  b.offset = 128;
  fn.buffers = {a, b};
  InstrDesc writeA, readAWriteB;
  writeA.kernel = "fill";
  writeA.outputs = {0};
  readAWriteB.kernel = "copy";
  readAWriteB.inputs = {0};
  readAWriteB.outputs = {1};
  fn.instrs = {writeA, readAWriteB};
  Status s = checkArenaPlan(fn);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("overlaps"), std::string::npos) << s.message();
  // Disjoint lifetimes may share bytes.
  fn.instrs[1].inputs.clear();
  InstrDesc writeB = fn.instrs[1];
  fn.instrs = {writeA, writeB};
  EXPECT_TRUE(checkArenaPlan(fn).ok());
}

std::vector<uint8_t> stepBytes() {
  std::vector<uint8_t> bytes;
  EXPECT_TRUE(readFile(stepPath("g3moe_lora"), bytes).ok());
  return bytes;
}

std::string parseError(const std::vector<uint8_t> &bytes) {
  StepProgram program;
  Status s = parseStep(bytes, "bad.step", program);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message().rfind("bad.step: ", 0), 0u) << s.message();
  return s.message();
}

TEST(StepFile, LoadsIntact) {
  StepProgram program;
  Status s = parseStep(stepBytes(), "ok.step", program);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_NE(program.findFunction("train_micro_step"), nullptr);
  EXPECT_NE(program.findFunction("optimizer_step"), nullptr);
}

TEST(StepFile, RejectsTruncated) {
  std::vector<uint8_t> bytes = stepBytes();
  for (size_t keep : {size_t(0), size_t(10), size_t(40), bytes.size() / 2, bytes.size() - 1}) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + long(keep));
    std::string m = parseError(cut);
    EXPECT_TRUE(m.find("truncated") != std::string::npos ||
                m.find("not a step.bin") != std::string::npos)
        << keep << ": " << m;
  }
}

TEST(StepFile, RejectsCorruptPayload) {
  std::vector<uint8_t> bytes = stepBytes();
  for (size_t at : {kStepHeaderBytes + 5, bytes.size() / 2, bytes.size() - 3}) {
    std::vector<uint8_t> bad = bytes;
    bad[at] ^= 0x40;
    EXPECT_NE(parseError(bad).find("corrupt"), std::string::npos) << at;
  }
}

TEST(StepFile, RejectsOtherVersionAndMagic) {
  std::vector<uint8_t> bytes = stepBytes();
  std::vector<uint8_t> version = bytes;
  version[8] = 99;
  EXPECT_NE(parseError(version).find("version 99 is not supported"), std::string::npos);
  std::vector<uint8_t> magic = bytes;
  magic[0] = 'X';
  EXPECT_NE(parseError(magic).find("not a step.bin"), std::string::npos);
}

/// A payload changed consistently (checksum recomputed) must still be
/// rejected by the FlatBuffer verifier or the program checks.
TEST(StepFile, RejectsConsistentlyDamagedPayload) {
  std::vector<uint8_t> bytes = stepBytes();
  std::vector<uint8_t> payload(bytes.begin() + long(kStepHeaderBytes), bytes.end());
  // Rename a kernel: "rms_norm" -> "rms_nxrm". FlatBuffers stores a string
  // as its length, its bytes and a NUL; matching all three finds a kernel name
  // rather than the text inside the configuration JSON.
  std::string needle("\x08\0\0\0rms_norm\0", 13);
  auto it = std::search(payload.begin(), payload.end(), needle.begin(), needle.end());
  ASSERT_NE(it, payload.end());
  it[4 + 5] = 'x';
  std::string m = parseError(wrapStepPayload(payload.data(), payload.size()));
  EXPECT_NE(m.find("no kernel of that name"), std::string::npos) << m;

  // Garbage that keeps the size: the FlatBuffer verifier refuses it.
  std::vector<uint8_t> garbage(payload.size(), 0xab);
  m = parseError(wrapStepPayload(garbage.data(), garbage.size()));
  EXPECT_NE(m.find("malformed"), std::string::npos) << m;
}

TEST(StepFile, MissingFileIsAnError) {
  StepProgram program;
  Status s = loadStep("/nonexistent/x.step", program);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("/nonexistent/x.step"), std::string::npos);
}

TEST(StepFile, PersistentTensorsAgreeAcrossEntryPoints) {
  StepProgram program = load("g3moe_lora");
  ASSERT_TRUE(checkStateDeclarations(program).ok());
  // A second entry point declaring input_ids with another shape would make
  // the backend that allocated the first write past it.
  for (FunctionDesc &fn : program.functions)
    if (fn.name == "eval_forward")
      for (BufferDesc &b : fn.buffers)
        if (b.kind == BufferKind::Input && b.name == "input_ids")
          b.shape.back() += 1;
  Status s = checkStateDeclarations(program);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("function 'eval_forward' declares 'input_ids' as [2, 17] I32"),
            std::string::npos)
      << s.message();
}

} // namespace
