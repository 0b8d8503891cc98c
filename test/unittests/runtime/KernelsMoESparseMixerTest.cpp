//===- KernelsMoESparseMixerTest.cpp - the SparseMixer router -------------===//
//
// The CPU SparseMixer kernels against hand-computed cases, reference code
// written here from docs/kernels.md, and finite differences: both stages, the
// Gumbel draws, the 1/3 coin, eval argmax, thread independence and the custom
// backward.
//
//===----------------------------------------------------------------------===//

#include "KernelsMoETesting.h"

#include "runtime/base/parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

using namespace g3rt;
using namespace g3rt::testing;

namespace {

/// A reference SparseMixer stage, written from docs/kernels.md: `out` marks
/// the expert removed by stage 1 (or -1).
struct RefStage {
  std::vector<double> P;
  std::vector<bool> keep;
  int argmax = -1;
};

RefStage refStage(const float *S, int E, int out, double eps, double clamp) {
  RefStage r;
  r.P.assign(size_t(E), 0.0);
  r.keep.assign(size_t(E), false);
  double m = -INFINITY;
  for (int e = 0; e < E; ++e)
    if (e != out && S[e] > m) {
      m = S[e];
      r.argmax = e;
    }
  double z = 0;
  for (int e = 0; e < E; ++e) {
    if (e == out)
      continue;
    double denom = std::max(std::max(std::fabs(double(S[e])), std::fabs(m)), clamp);
    r.keep[size_t(e)] = !((m - S[e]) / denom > 2 * eps);
    if (r.keep[size_t(e)])
      z += std::exp(S[e] - m);
  }
  for (int e = 0; e < E; ++e)
    if (r.keep[size_t(e)])
      r.P[size_t(e)] = std::exp(S[e] - m) / z;
  return r;
}

struct RefRoute {
  int idx[2];
  double w[2];
};

/// Reference forward: `u` is the token's [2, E+1] noise, or null for eval.
RefRoute refSparseMixer(const float *S, int E, double eps, const float *u) {
  RefRoute r{};
  for (int j = 0; j < 2; ++j) {
    RefStage st = refStage(S, E, j == 0 ? -1 : r.idx[0], eps, j == 0 ? 1e-10 : 1e-8);
    int pick = st.argmax;
    double coin = 1;
    if (u) {
      const float *us = u + j * (E + 1);
      double best = -INFINITY;
      for (int e = 0; e < E; ++e) {
        if (!st.keep[size_t(e)])
          continue;
        double g = S[e] - std::log(-std::log(double(us[e])));
        if (g > best) {
          best = g;
          pick = e;
        }
      }
      coin = (pick == st.argmax || us[E] > 0.75) ? 1.0 : 0.3333;
    }
    r.idx[j] = pick;
    r.w[j] = st.P[size_t(pick)] * coin;
  }
  return r;
}

/// The spec's backward, from reference stages.
std::vector<double> refSparseMixerGrad(const float *S, int E, double eps, const int32_t *idx,
                                       const float *dw) {
  std::vector<double> dS(size_t(E), 0.0);
  for (int j = 0; j < 2; ++j) {
    RefStage st = refStage(S, E, j == 0 ? -1 : idx[0], eps, j == 0 ? 1e-10 : 1e-8);
    for (int e = 0; e < E; ++e)
      dS[size_t(e)] += dw[j] * st.P[size_t(idx[j])] * ((e == idx[j]) - st.P[size_t(e)]);
  }
  return dS;
}

KernelAttrs epsAttrs(double eps = 0.01) {
  return makeAttrs({{"epsilon", AttrValue::ofFloat(eps)}});
}

struct Routed {
  Tensor w, idx;
};

Routed runSparseMixer(const Tensor &logits, const Tensor *noise, double eps = 0.01) {
  const int64_t N = logits.view.shape[0];
  Routed r{Tensor::f32({N, 2}), Tensor::i32({N, 2})};
  std::vector<Tensor> in{logits};
  if (noise)
    in.push_back(*noise);
  Status s = run("sparsemixer_router", in, {r.w, r.idx}, epsAttrs(eps));
  EXPECT_TRUE(s.ok()) << s.message();
  return r;
}

TEST(MoEKernelsSparseMixer, ClearWinnerKeepsOnlyTheArgmax) {
  // Row 0: 3.0 leads by far; stage 2 then sees 2.0 lead the rest.
  // Row 1: negative logits: -0.5 leads, then -1.0.
  Tensor logits = f32Of({2, 4}, {1.0f, 3.0f, 2.0f, 0.5f, -1.0f, -0.5f, -3.0f, -2.0f});
  std::mt19937 rng(7);
  Tensor noise = Tensor::f32({2, 2, 5});
  fillUniform(noise, rng, 0.01f, 0.99f);
  for (const Tensor *u : std::vector<const Tensor *>{nullptr, &noise}) {
    Routed r = runSparseMixer(logits, u);
    EXPECT_EQ(r.idx.i()[0], 1);
    EXPECT_EQ(r.idx.i()[1], 2);
    EXPECT_EQ(r.idx.i()[2], 1);
    EXPECT_EQ(r.idx.i()[3], 0);
    // A single survivor has P = 1, and it is the argmax, so the coin is 1.
    for (int i = 0; i < 4; ++i)
      EXPECT_EQ(r.w.f()[i], 1.0f) << "slot " << i << (u ? " (training)" : " (eval)");
  }
}

TEST(MoEKernelsSparseMixer, TwoExpertsSecondStagePicksTheOtherWithWeightOne) {
  std::mt19937 rng(11);
  const int64_t N = 64;
  Tensor logits = Tensor::f32({N, 2});
  fillUniform(logits, rng, -2, 2);
  // A few near-ties, so stage 1 has two survivors there.
  logits.f()[0] = 1.0f, logits.f()[1] = 1.001f;
  logits.f()[2] = -0.5f, logits.f()[3] = -0.5f;
  Tensor noise = Tensor::f32({N, 2, 3});
  fillUniform(noise, rng, 0.001f, 0.999f);
  for (const Tensor *u : std::vector<const Tensor *>{nullptr, &noise}) {
    Routed r = runSparseMixer(logits, u);
    for (int64_t n = 0; n < N; ++n) {
      EXPECT_EQ(r.idx.i()[n * 2 + 1], 1 - r.idx.i()[n * 2]) << "row " << n;
      EXPECT_EQ(r.w.f()[n * 2 + 1], 1.0f) << "row " << n;
    }
  }
  // The exact tie in row 1 goes to expert 0 in eval, with P = 1/2.
  Routed eval = runSparseMixer(logits, nullptr);
  EXPECT_EQ(eval.idx.i()[2], 0);
  EXPECT_FLOAT_EQ(eval.w.f()[2], 0.5f);
}

TEST(MoEKernelsSparseMixer, NearTiesGumbelChoiceAndCoin) {
  // Stage 1: 2.0, 2.01, 1.99 are within 2ε (relative) of 2.01; 0.5 is not.
  const std::vector<float> row{2.0f, 2.01f, 1.99f, 0.5f};
  Tensor logits = f32Of({2, 4}, {row[0], row[1], row[2], row[3], row[0], row[1], row[2], row[3]});
  // Row 0: stage 1 draws expert 2 (u near 1), though expert 3 has an even
  // larger u it is excluded; coin 0.5 <= 0.75 and 2 is not the argmax -> 1/3.
  // Stage 2 (2 removed): draws expert 0 over 1; coin 0.9 -> 1.
  // Row 1: stage 1 draws the argmax (1) with a low coin -> 1 anyway; stage 2
  // (1 removed, 0 and 2 survive around m2 = 2.0) draws 2, not the argmax,
  // with coin 0.2 -> 1/3.
  Tensor noise = f32Of({2, 2, 5}, {0.5f,   0.5f,   0.999f, 0.99999f, 0.5f, //
                                   0.999f, 0.5f,   0.5f,   0.5f,     0.9f, //
                                   0.5f,   0.999f, 0.5f,   0.99999f, 0.1f, //
                                   0.5f,   0.5f,   0.999f, 0.5f,     0.2f});
  Routed r = runSparseMixer(logits, &noise);

  auto softmax = [](std::vector<double> v) {
    double m = *std::max_element(v.begin(), v.end()), z = 0;
    for (double &x : v)
      z += (x = std::exp(x - m));
    for (double &x : v)
      x /= z;
    return v;
  };
  std::vector<double> P1 = softmax({2.0f, 2.01f, 1.99f}); // experts 0, 1, 2
  std::vector<double> P2 = softmax({2.0f, 2.01f});        // experts 0, 1
  EXPECT_EQ(r.idx.i()[0], 2);
  EXPECT_EQ(r.idx.i()[1], 0);
  EXPECT_NEAR(r.w.f()[0], P1[2] * 0.3333, 1e-6);
  EXPECT_NEAR(r.w.f()[1], P2[0], 1e-6);
  EXPECT_EQ(r.idx.i()[2], 1);
  EXPECT_EQ(r.idx.i()[3], 2);
  EXPECT_NEAR(r.w.f()[2], P1[1], 1e-6);
  std::vector<double> P2b = softmax({2.0f, 1.99f}); // experts 0, 2
  EXPECT_NEAR(r.w.f()[3], P2b[1] * 0.3333, 1e-6);
}

TEST(MoEKernelsSparseMixer, AllEqualLogitsUseTheClampAndLowerIndexTies) {
  // m = S_e = 0: the clamped denominator keeps every expert.
  Tensor logits = f32Of({1, 4}, {0, 0, 0, 0});
  Routed r = runSparseMixer(logits, nullptr);
  EXPECT_EQ(r.idx.i()[0], 0);
  EXPECT_EQ(r.idx.i()[1], 1);
  EXPECT_FLOAT_EQ(r.w.f()[0], 0.25f);
  EXPECT_FLOAT_EQ(r.w.f()[1], 1.0f / 3);
}

TEST(MoEKernelsSparseMixer, EvalIsArgmaxAndMatchesReference) {
  std::mt19937 rng(3);
  const int64_t N = 200, E = 8;
  Tensor logits = Tensor::f32({N, E});
  fillUniform(logits, rng, -0.2f, 0.2f);
  // Some rows of near-equal values so several experts survive.
  for (int64_t n = 0; n < N; n += 3)
    for (int64_t e = 0; e < E; ++e)
      logits.f()[n * E + e] = 1.0f + 0.004f * float((e * 5 + n) % 7);
  Routed r = runSparseMixer(logits, nullptr);
  for (int64_t n = 0; n < N; ++n) {
    const float *S = logits.f() + n * E;
    int64_t a = std::max_element(S, S + E) - S;
    EXPECT_EQ(r.idx.i()[n * 2], a) << "row " << n;
    RefRoute ref = refSparseMixer(S, int(E), 0.01, nullptr);
    EXPECT_EQ(r.idx.i()[n * 2 + 1], ref.idx[1]) << "row " << n;
    for (int j = 0; j < 2; ++j)
      G3RT_EXPECT_CLOSE(r.w.f()[n * 2 + j], ref.w[j], 1e-6, 1e-7);
  }
}

TEST(MoEKernelsSparseMixer, TrainingMatchesReferenceAndIsThreadIndependent) {
  std::mt19937 rng(5);
  const int64_t N = 300, E = 6;
  Tensor logits = Tensor::f32({N, E});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t e = 0; e < E; ++e)
      logits.f()[n * E + e] =
          (n % 2 ? 1.5f : -1.5f) + std::uniform_real_distribution<float>(-0.03f, 0.03f)(rng);
  Tensor noise = Tensor::f32({N, 2, E + 1});
  fillUniform(noise, rng, 0.0001f, 0.9999f);
  const int saved = parallelThreads();
  setParallelThreads(1);
  Routed one = runSparseMixer(logits, &noise);
  setParallelThreads(4);
  Routed four = runSparseMixer(logits, &noise);
  setParallelThreads(saved);
  EXPECT_EQ(std::memcmp(one.w.f(), four.w.f(), size_t(N * 2 * 4)), 0);
  EXPECT_EQ(std::memcmp(one.idx.i(), four.idx.i(), size_t(N * 2 * 4)), 0);
  int leftArgmax = 0;
  for (int64_t n = 0; n < N; ++n) {
    RefRoute ref = refSparseMixer(logits.f() + n * E, int(E), 0.01, noise.f() + n * 2 * (E + 1));
    for (int j = 0; j < 2; ++j) {
      EXPECT_EQ(one.idx.i()[n * 2 + j], ref.idx[j]) << "row " << n << " stage " << j;
      G3RT_EXPECT_CLOSE(one.w.f()[n * 2 + j], ref.w[j], 1e-6, 1e-7);
    }
    const float *S = logits.f() + n * E;
    leftArgmax += one.idx.i()[n * 2] != std::max_element(S, S + E) - S;
  }
  // The draws really are random: stage 1 leaves the argmax some of the time.
  EXPECT_GT(leftArgmax, 10);
}

TEST(MoEKernelsSparseMixer, BackwardMatchesSpecFormula) {
  std::mt19937 rng(9);
  const int64_t N = 100, E = 5;
  Tensor logits = Tensor::f32({N, E});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t e = 0; e < E; ++e)
      logits.f()[n * E + e] = 0.8f + std::uniform_real_distribution<float>(-0.012f, 0.012f)(rng) -
                              (e == 4 && n % 2 ? 1.0f : 0.0f);
  Tensor noise = Tensor::f32({N, 2, E + 1});
  fillUniform(noise, rng, 0.001f, 0.999f);
  Routed r = runSparseMixer(logits, &noise);
  Tensor dw = Tensor::f32({N, 2});
  fillUniform(dw, rng);
  Tensor dS = Tensor::f32({N, E});
  Status s = run("sparsemixer_router_grad", {logits, r.idx, dw}, {dS}, epsAttrs());
  ASSERT_TRUE(s.ok()) << s.message();
  double maxAbs = 0;
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> ref =
        refSparseMixerGrad(logits.f() + n * E, int(E), 0.01, r.idx.i() + n * 2, dw.f() + n * 2);
    for (int64_t e = 0; e < E; ++e) {
      G3RT_EXPECT_CLOSE(dS.f()[n * E + e], ref[size_t(e)], 1e-5, 1e-7);
      maxAbs = std::max(maxAbs, std::fabs(ref[size_t(e)]));
    }
  }
  EXPECT_GT(maxAbs, 0.05); // several survivors: the gradient is not trivial.
}

TEST(MoEKernelsSparseMixer, BackwardEqualsTrueGradientWhenCoinsAreOne) {
  // Near-tied logits (several survivors, far from the 2ε boundary), Gumbel
  // noise with wide margins and coins above 0.75: for perturbations this
  // small the choices and masks are fixed and w = P[i] exactly.
  const int64_t N = 3, E = 4;
  Tensor logits = f32Of({N, E}, {2.0f, 2.01f, 1.99f, 0.5f,       //
                                 -1.0f, -1.005f, -1.002f, -3.0f, //
                                 0.5f, 0.502f, 0.3f, 0.501f});
  Tensor noise = f32Of({N, 2, E + 1}, {0.5f,   0.5f,   0.999f, 0.5f,   0.9f,  //
                                       0.999f, 0.5f,   0.5f,   0.5f,   0.8f,  //
                                       0.5f,   0.999f, 0.5f,   0.5f,   0.95f, //
                                       0.5f,   0.5f,   0.999f, 0.5f,   0.9f,  //
                                       0.5f,   0.5f,   0.5f,   0.999f, 0.8f,  //
                                       0.999f, 0.5f,   0.5f,   0.5f,   0.99f});
  Routed r = runSparseMixer(logits, &noise);
  std::mt19937 rng(13);
  Tensor dw = Tensor::f32({N, 2});
  fillUniform(dw, rng);
  Tensor dS = Tensor::f32({N, E});
  ASSERT_TRUE(run("sparsemixer_router_grad", {logits, r.idx, dw}, {dS}, epsAttrs()).ok());
  auto loss = [&] {
    Routed p = runSparseMixer(logits, &noise);
    for (int i = 0; i < N * 2; ++i)
      EXPECT_EQ(p.idx.i()[i], r.idx.i()[i]) << "choice flipped at slot " << i;
    return dot(p.w.values(), dw.values());
  };
  for (int trial = 0; trial < 4; ++trial) {
    std::vector<float> dir = randomDir(N * E, rng);
    double fd = directionalDerivative(loss, logits, dir, 1e-3);
    G3RT_EXPECT_CLOSE(dot(dS.values(), dir), fd, 2e-3, 2e-4);
  }
  // Not the trivial zero gradient of a single survivor.
  double norm = 0;
  for (float v : dS.values())
    norm += std::fabs(v);
  EXPECT_GT(norm, 0.1);
}

TEST(MoEKernelsSparseMixer, Errors) {
  Tensor logits = Tensor::f32({2, 4});
  Tensor w = Tensor::f32({2, 2}), idx = Tensor::i32({2, 2});
  Tensor noise = Tensor::f32({2, 2, 5}), bad = Tensor::f32({2, 2, 4});
  EXPECT_FALSE(run("sparsemixer_router", {logits, noise, noise}, {w, idx}, epsAttrs()).ok());
  EXPECT_FALSE(run("sparsemixer_router", {logits, bad}, {w, idx}, epsAttrs()).ok());
  EXPECT_FALSE(run("sparsemixer_router", {logits}, {w, idx}).ok()); // no epsilon
  Tensor one = Tensor::f32({2, 1});
  EXPECT_FALSE(run("sparsemixer_router", {one}, {w, idx}, epsAttrs()).ok());
  Tensor badIdx = i32Of({2, 2}, {0, 1, 4, 0});
  Status s = run("sparsemixer_router_grad", {logits, badIdx, w}, {logits.clone()}, epsAttrs());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("4"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("row 1"), std::string::npos) << s.message();
}

} // namespace
