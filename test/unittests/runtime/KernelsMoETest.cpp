//===- KernelsMoETest.cpp - routers, dispatch / combine, aux losses -------===//
//
// The CPU kernels of runtime/cpu/kernels_moe.cpp against hand-computed cases,
// straightforward reference code written here, and finite differences:
// SparseMixer (both stages, Gumbel draws, the 1/3 coin, eval argmax, its
// custom backward), the softmax top-k and grouped sigmoid routers, the
// dispatch / combine permutations, and the auxiliary losses.
//
//===----------------------------------------------------------------------===//

#include "KernelTesting.h"

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

Tensor f32Of(std::vector<int64_t> shape, const std::vector<float> &values) {
  Tensor t = Tensor::f32(std::move(shape));
  EXPECT_EQ(size_t(t.numel()), values.size());
  std::copy(values.begin(), values.end(), t.f());
  return t;
}

Tensor i32Of(std::vector<int64_t> shape, const std::vector<int32_t> &values) {
  Tensor t = Tensor::i32(std::move(shape));
  EXPECT_EQ(size_t(t.numel()), values.size());
  std::copy(values.begin(), values.end(), t.i());
  return t;
}

Tensor scalarOf(float v) { return f32Of({}, {v}); }

KernelAttrs makeAttrs(std::vector<std::pair<std::string, AttrValue>> entries) {
  KernelAttrs a;
  for (auto &e : entries)
    a.set(e.first, e.second);
  return a;
}

std::vector<float> randomDir(int64_t n, std::mt19937 &rng) {
  std::uniform_real_distribution<float> d(-1, 1);
  std::vector<float> v(static_cast<size_t>(n));
  for (float &x : v)
    x = d(rng);
  return v;
}

/// Logits whose entries in each row are at least 0.25 apart, so that small
/// perturbations never change a top-k choice.
Tensor spacedLogits(int64_t N, int64_t E, std::mt19937 &rng) {
  Tensor t = Tensor::f32({N, E});
  std::uniform_real_distribution<float> jitter(0, 0.1f);
  std::vector<int> order(static_cast<size_t>(E));
  for (int64_t n = 0; n < N; ++n) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t e = 0; e < E; ++e)
      t.f()[n * E + e] = 0.35f * float(order[size_t(e)]) - 1.0f + jitter(rng);
  }
  return t;
}

//===----------------------------------------------------------------------===//
// SparseMixer
//===----------------------------------------------------------------------===//

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
  Tensor noise = f32Of({2, 2, 5}, {0.5f, 0.5f, 0.999f, 0.99999f, 0.5f,   //
                                   0.999f, 0.5f, 0.5f, 0.5f, 0.9f,       //
                                   0.5f, 0.999f, 0.5f, 0.99999f, 0.1f,   //
                                   0.5f, 0.5f, 0.999f, 0.5f, 0.2f});
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
      logits.f()[n * E + e] = 0.8f +
                              std::uniform_real_distribution<float>(-0.012f, 0.012f)(rng) -
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
    std::vector<double> ref = refSparseMixerGrad(logits.f() + n * E, int(E), 0.01,
                                                 r.idx.i() + n * 2, dw.f() + n * 2);
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
  Tensor logits = f32Of({N, E}, {2.0f, 2.01f, 1.99f, 0.5f,    //
                                 -1.0f, -1.005f, -1.002f, -3.0f, //
                                 0.5f, 0.502f, 0.3f, 0.501f});
  Tensor noise = f32Of({N, 2, E + 1}, {0.5f, 0.5f, 0.999f, 0.5f, 0.9f,  //
                                       0.999f, 0.5f, 0.5f, 0.5f, 0.8f,  //
                                       0.5f, 0.999f, 0.5f, 0.5f, 0.95f, //
                                       0.5f, 0.5f, 0.999f, 0.5f, 0.9f,  //
                                       0.5f, 0.5f, 0.5f, 0.999f, 0.8f,  //
                                       0.999f, 0.5f, 0.5f, 0.5f, 0.99f});
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

//===----------------------------------------------------------------------===//
// Softmax top-k
//===----------------------------------------------------------------------===//

KernelAttrs topkAttrs(int64_t k, bool norm) {
  return makeAttrs({{"top_k", AttrValue::ofInt(k)},
                    {"norm_topk_prob", AttrValue::ofBool(norm)}});
}

TEST(MoEKernelsSoftmaxTopK, MatchesReference) {
  std::mt19937 rng(21);
  const int64_t N = 150, E = 7;
  Tensor logits = Tensor::f32({N, E});
  fillUniform(logits, rng, -3, 3);
  // Exact ties go to the lower index.
  for (int64_t e = 0; e < E; ++e)
    logits.f()[e] = e == 6 ? -1.0f : 0.5f;
  for (int64_t k : {1, 2, 3}) {
    for (bool norm : {false, true}) {
      Tensor w = Tensor::f32({N, k}), idx = Tensor::i32({N, k});
      ASSERT_TRUE(run("softmax_topk_router", {logits}, {w, idx}, topkAttrs(k, norm)).ok());
      for (int64_t n = 0; n < N; ++n) {
        const float *S = logits.f() + n * E;
        std::vector<double> p(static_cast<size_t>(E));
        double z = 0;
        for (int64_t e = 0; e < E; ++e)
          z += std::exp(double(S[e]));
        for (int64_t e = 0; e < E; ++e)
          p[size_t(e)] = std::exp(double(S[e])) / z;
        std::vector<int> order(static_cast<size_t>(E));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int a, int b) { return S[a] > S[b]; });
        double sum = 0;
        for (int64_t j = 0; j < k; ++j)
          sum += p[size_t(order[size_t(j)])];
        for (int64_t j = 0; j < k; ++j) {
          EXPECT_EQ(idx.i()[n * k + j], order[size_t(j)]) << "row " << n;
          double want = p[size_t(order[size_t(j)])] / (norm ? sum : 1.0);
          G3RT_EXPECT_CLOSE(w.f()[n * k + j], want, 1e-6, 1e-8);
        }
      }
      EXPECT_EQ(idx.i()[0], 0);
      if (k > 1) {
        EXPECT_EQ(idx.i()[1], 1);
      }
    }
  }
}

TEST(MoEKernelsSoftmaxTopK, GradientByFiniteDifferences) {
  std::mt19937 rng(22);
  const int64_t N = 40, E = 6, k = 2;
  for (bool norm : {false, true}) {
    Tensor logits = spacedLogits(N, E, rng);
    Tensor w = Tensor::f32({N, k}), idx = Tensor::i32({N, k});
    ASSERT_TRUE(run("softmax_topk_router", {logits}, {w, idx}, topkAttrs(k, norm)).ok());
    Tensor dw = Tensor::f32({N, k});
    fillUniform(dw, rng);
    Tensor dS = Tensor::f32({N, E});
    KernelAttrs gradAttrs = makeAttrs({{"norm_topk_prob", AttrValue::ofBool(norm)}});
    ASSERT_TRUE(run("softmax_topk_router_grad", {logits, idx, dw}, {dS}, gradAttrs).ok());
    auto loss = [&] {
      Tensor w2 = Tensor::f32({N, k}), idx2 = Tensor::i32({N, k});
      EXPECT_TRUE(run("softmax_topk_router", {logits}, {w2, idx2}, topkAttrs(k, norm)).ok());
      EXPECT_EQ(std::memcmp(idx2.i(), idx.i(), size_t(N * k * 4)), 0);
      return dot(w2.values(), dw.values());
    };
    for (int trial = 0; trial < 3; ++trial) {
      std::vector<float> dir = randomDir(N * E, rng);
      double fd = directionalDerivative(loss, logits, dir, 1e-3);
      G3RT_EXPECT_CLOSE(dot(dS.values(), dir), fd, 2e-3, 1e-4) << "norm " << norm;
    }
  }
}

//===----------------------------------------------------------------------===//
// Grouped sigmoid
//===----------------------------------------------------------------------===//

KernelAttrs groupedAttrs(int64_t k, int64_t nGroup, int64_t topkGroup, double scaling,
                         bool norm) {
  return makeAttrs({{"top_k", AttrValue::ofInt(k)},
                    {"n_group", AttrValue::ofInt(nGroup)},
                    {"topk_group", AttrValue::ofInt(topkGroup)},
                    {"routed_scaling_factor", AttrValue::ofFloat(scaling)},
                    {"norm_topk_prob", AttrValue::ofBool(norm)}});
}

double sigmoidRef(double x) { return 1 / (1 + std::exp(-x)); }

/// The DeepSeek-V3 router, written with sorts.
void refGrouped(const float *S, const float *bias, int E, int k, int nGroup, int topkGroup,
                double scaling, bool norm, std::vector<int> &idx, std::vector<double> &w) {
  std::vector<double> s(static_cast<size_t>(E)), sel(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) {
    s[size_t(e)] = sigmoidRef(S[e]);
    sel[size_t(e)] = s[size_t(e)] + bias[e];
  }
  const int gs = E / nGroup;
  std::vector<double> score(static_cast<size_t>(nGroup));
  for (int g = 0; g < nGroup; ++g) {
    std::vector<double> v(sel.begin() + g * gs, sel.begin() + (g + 1) * gs);
    std::sort(v.rbegin(), v.rend());
    score[size_t(g)] = gs == 1 ? v[0] : v[0] + v[1];
  }
  std::vector<int> groups(static_cast<size_t>(nGroup));
  std::iota(groups.begin(), groups.end(), 0);
  std::stable_sort(groups.begin(), groups.end(),
                   [&](int a, int b) { return score[size_t(a)] > score[size_t(b)]; });
  std::vector<int> cand;
  for (int e = 0; e < E; ++e)
    if (std::find(groups.begin(), groups.begin() + topkGroup, e / gs) !=
        groups.begin() + topkGroup)
      cand.push_back(e);
  std::stable_sort(cand.begin(), cand.end(),
                   [&](int a, int b) { return sel[size_t(a)] > sel[size_t(b)]; });
  idx.assign(cand.begin(), cand.begin() + k);
  double sum = 0;
  for (int e : idx)
    sum += s[size_t(e)];
  w.clear();
  for (int e : idx)
    w.push_back(s[size_t(e)] / (norm ? sum + 1e-20 : 1.0) * scaling);
}

TEST(MoEKernelsSigmoidGrouped, GroupLimitExcludesTheBestSingleExpert) {
  // Groups of two. Desired selection scores per expert:
  //   group 0: 2.0, 0.0  -> 2.0 (holds the single best expert)
  //   group 1: 1.25, 1.15 -> 2.4
  //   group 2: 1.2, 1.0  -> 2.2
  //   group 3: 0.5, 0.5  -> 1.0
  // topk_group = 2 keeps groups 1 and 2, so the top-2 is experts 2 and 4.
  const std::vector<float> S{0.0f, 0.3f, -0.4f, 0.2f, 0.7f, -1.0f, 0.1f, 0.0f};
  const std::vector<double> sel{2.0, 0.0, 1.25, 1.15, 1.2, 1.0, 0.5, 0.5};
  std::vector<float> b(8);
  for (int e = 0; e < 8; ++e)
    b[size_t(e)] = float(sel[size_t(e)] - sigmoidRef(S[size_t(e)]));
  Tensor logits = f32Of({1, 8}, S), bias = f32Of({8}, b);
  for (bool norm : {false, true}) {
    Tensor w = Tensor::f32({1, 2}), idx = Tensor::i32({1, 2});
    Status st = run("sigmoid_grouped_router", {logits, bias}, {w, idx},
                    groupedAttrs(2, 4, 2, 2.5, norm));
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(idx.i()[0], 2);
    EXPECT_EQ(idx.i()[1], 4);
    // Weights are the un-biased sigmoids, renormalised, then scaled.
    double s2 = sigmoidRef(S[2]), s4 = sigmoidRef(S[4]);
    double d = norm ? s2 + s4 : 1.0;
    EXPECT_NEAR(w.f()[0], 2.5 * s2 / d, 1e-6);
    EXPECT_NEAR(w.f()[1], 2.5 * s4 / d, 1e-6);
  }
  // With every group kept, expert 0 wins.
  Tensor w = Tensor::f32({1, 2}), idx = Tensor::i32({1, 2});
  ASSERT_TRUE(run("sigmoid_grouped_router", {logits, bias}, {w, idx},
                  groupedAttrs(2, 4, 4, 1.0, false))
                  .ok());
  EXPECT_EQ(idx.i()[0], 0);
  EXPECT_EQ(idx.i()[1], 2);
}

TEST(MoEKernelsSigmoidGrouped, MatchesReference) {
  std::mt19937 rng(31);
  const int64_t N = 120, E = 8;
  Tensor logits = Tensor::f32({N, E}), bias = Tensor::f32({E});
  fillUniform(logits, rng, -2, 2);
  fillUniform(bias, rng, -0.3f, 0.3f);
  struct Config {
    int k, nGroup, topkGroup;
    double scaling;
    bool norm;
  };
  for (Config c : {Config{2, 4, 2, 2.5, true}, Config{3, 2, 1, 1.0, false},
                   Config{2, 8, 3, 1.5, true}, Config{4, 1, 1, 1.0, true}}) {
    Tensor w = Tensor::f32({N, c.k}), idx = Tensor::i32({N, c.k});
    Status st = run("sigmoid_grouped_router", {logits, bias}, {w, idx},
                    groupedAttrs(c.k, c.nGroup, c.topkGroup, c.scaling, c.norm));
    ASSERT_TRUE(st.ok()) << st.message();
    for (int64_t n = 0; n < N; ++n) {
      std::vector<int> ri;
      std::vector<double> rw;
      refGrouped(logits.f() + n * E, bias.f(), int(E), c.k, c.nGroup, c.topkGroup, c.scaling,
                 c.norm, ri, rw);
      for (int j = 0; j < c.k; ++j) {
        EXPECT_EQ(idx.i()[n * c.k + j], ri[size_t(j)]) << "row " << n << " n_group " << c.nGroup;
        G3RT_EXPECT_CLOSE(w.f()[n * c.k + j], rw[size_t(j)], 1e-6, 1e-7);
      }
    }
  }
}

TEST(MoEKernelsSigmoidGrouped, GradientByFiniteDifferences) {
  std::mt19937 rng(32);
  const int64_t N = 30, E = 8, k = 3;
  Tensor bias = Tensor::f32({E});
  fillUniform(bias, rng, -0.05f, 0.05f);
  for (bool norm : {false, true}) {
    Tensor logits = spacedLogits(N, E, rng);
    KernelAttrs fwd = groupedAttrs(k, 4, 3, 2.5, norm);
    Tensor w = Tensor::f32({N, k}), idx = Tensor::i32({N, k});
    ASSERT_TRUE(run("sigmoid_grouped_router", {logits, bias}, {w, idx}, fwd).ok());
    Tensor dw = Tensor::f32({N, k});
    fillUniform(dw, rng);
    Tensor dS = Tensor::f32({N, E});
    KernelAttrs gradAttrs = makeAttrs({{"norm_topk_prob", AttrValue::ofBool(norm)},
                                       {"routed_scaling_factor", AttrValue::ofFloat(2.5)}});
    Status st = run("sigmoid_grouped_router_grad", {logits, idx, dw}, {dS}, gradAttrs);
    ASSERT_TRUE(st.ok()) << st.message();
    // The choice (idx) is an input of the gradient; the loss below keeps it
    // by recomputing w for those indices directly.
    auto loss = [&] {
      double l = 0;
      for (int64_t n = 0; n < N; ++n) {
        double sum = 0;
        for (int64_t j = 0; j < k; ++j)
          sum += sigmoidRef(logits.f()[n * E + idx.i()[n * k + j]]);
        for (int64_t j = 0; j < k; ++j) {
          double s = sigmoidRef(logits.f()[n * E + idx.i()[n * k + j]]);
          l += dw.f()[n * k + j] * 2.5 * s / (norm ? sum + 1e-20 : 1.0);
        }
      }
      return l;
    };
    for (int trial = 0; trial < 3; ++trial) {
      std::vector<float> dir = randomDir(N * E, rng);
      double fd = directionalDerivative(loss, logits, dir, 1e-3);
      G3RT_EXPECT_CLOSE(dot(dS.values(), dir), fd, 1e-3, 1e-5) << "norm " << norm;
    }
    // And the kernel's forward agrees with that loss (same choice).
    G3RT_EXPECT_CLOSE(dot(w.values(), dw.values()), loss(), 1e-5, 1e-6);
  }
}

TEST(MoEKernelsSigmoidGrouped, Errors) {
  Tensor logits = Tensor::f32({2, 8}), bias = Tensor::f32({8});
  Tensor w = Tensor::f32({2, 2}), idx = Tensor::i32({2, 2});
  // 3 groups do not divide 8 experts; topk_group above n_group; k too large.
  EXPECT_FALSE(run("sigmoid_grouped_router", {logits, bias}, {w, idx},
                   groupedAttrs(2, 3, 1, 1.0, true))
                   .ok());
  EXPECT_FALSE(run("sigmoid_grouped_router", {logits, bias}, {w, idx},
                   groupedAttrs(2, 4, 5, 1.0, true))
                   .ok());
  Tensor w3 = Tensor::f32({2, 3}), idx3 = Tensor::i32({2, 3});
  EXPECT_FALSE(run("sigmoid_grouped_router", {logits, bias}, {w3, idx3},
                   groupedAttrs(3, 8, 2, 1.0, true))
                   .ok());
  EXPECT_FALSE(run("sigmoid_grouped_router", {logits}, {w, idx},
                   groupedAttrs(2, 4, 2, 1.0, true))
                   .ok());
}

//===----------------------------------------------------------------------===//
// Dispatch and combine
//===----------------------------------------------------------------------===//

/// [N, k] expert indices drawn uniformly from [0, E).
Tensor randomExperts(std::mt19937 &rng, int64_t N, int64_t k, int64_t E) {
  Tensor idx = Tensor::i32({N, k});
  std::uniform_int_distribution<int> pick(0, int(E) - 1);
  for (int64_t i = 0; i < N * k; ++i)
    idx.i()[i] = pick(rng);
  return idx;
}

struct Dispatched {
  Tensor permuted, offsets, slots;
};

Dispatched dispatch(const Tensor &x, const Tensor &idx, int64_t E) {
  const int64_t N = x.view.shape[0], H = x.view.shape[1], k = idx.view.shape[1];
  Dispatched d{Tensor(x.view.dtype, {N * k, H}), Tensor::i32({E + 1}), Tensor::i32({N, k})};
  Status s = run("moe_dispatch", {x, idx}, {d.permuted, d.offsets, d.slots},
                 makeAttrs({{"num_experts", AttrValue::ofInt(E)}}));
  EXPECT_TRUE(s.ok()) << s.message();
  return d;
}

TEST(MoEKernelsDispatch, OffsetsSlotsAndStableOrder) {
  const int64_t N = 4, H = 3, E = 3;
  std::vector<float> xv(N * H);
  for (int64_t i = 0; i < N * H; ++i)
    xv[size_t(i)] = float(i);
  Tensor x = f32Of({N, H}, xv);
  Tensor idx = i32Of({N, 2}, {2, 0, 0, 2, 1, 0, 2, 2});
  Dispatched d = dispatch(x, idx, E);
  // Expert 0: (0,1) (1,0) (2,1); expert 1: (2,0); expert 2: (0,0) (1,1) (3,0) (3,1).
  EXPECT_EQ(std::vector<int32_t>(d.offsets.i(), d.offsets.i() + 4),
            (std::vector<int32_t>{0, 3, 4, 8}));
  EXPECT_EQ(std::vector<int32_t>(d.slots.i(), d.slots.i() + 8),
            (std::vector<int32_t>{4, 0, 1, 5, 3, 2, 6, 7}));
  const int64_t tokenOfRow[8] = {0, 1, 2, 2, 0, 1, 3, 3};
  for (int64_t r = 0; r < 8; ++r)
    for (int64_t h = 0; h < H; ++h)
      EXPECT_EQ(d.permuted.f()[r * H + h], xv[size_t(tokenOfRow[r] * H + h)]) << "row " << r;
}

TEST(MoEKernelsDispatch, RandomSlotsAreConsistent) {
  std::mt19937 rng(41);
  const int64_t N = 257, H = 5, E = 7, k = 3;
  Tensor x = Tensor::f32({N, H});
  fillUniform(x, rng);
  Tensor idx = randomExperts(rng, N, k, E);
  Dispatched d = dispatch(x, idx, E);
  EXPECT_EQ(d.offsets.i()[0], 0);
  EXPECT_EQ(d.offsets.i()[E], N * k);
  std::vector<int> seen(size_t(N * k), 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < k; ++j) {
      int32_t s = d.slots.i()[n * k + j], e = idx.i()[n * k + j];
      ASSERT_GE(s, d.offsets.i()[e]);
      ASSERT_LT(s, d.offsets.i()[e + 1]);
      ++seen[size_t(s)];
      for (int64_t h = 0; h < H; ++h)
        EXPECT_EQ(d.permuted.f()[s * H + h], x.f()[n * H + h]);
    }
  for (int c : seen)
    EXPECT_EQ(c, 1); // a permutation
  // Stable: within an expert, (n, j) order is row order.
  for (int64_t a = 0; a < N * k; ++a)
    for (int64_t b = a + 1; b < std::min(N * k, a + 20); ++b)
      if (idx.i()[a] == idx.i()[b]) {
        EXPECT_LT(d.slots.i()[a], d.slots.i()[b]);
      }
}

TEST(MoEKernelsDispatch, RoundTripGivesKTimesInputBF16) {
  std::mt19937 rng(42);
  const int64_t N = 50, H = 8, E = 4, k = 2;
  Tensor x(DType::BF16, {N, H});
  fillUniform(x, rng);
  Tensor idx = Tensor::i32({N, k});
  for (int64_t n = 0; n < N; ++n) {
    idx.i()[n * k] = int32_t(n % E);
    idx.i()[n * k + 1] = int32_t((n * 3 + 1) % E);
  }
  Dispatched d = dispatch(x, idx, E);
  Tensor ones = Tensor::f32({N, k});
  std::fill(ones.f(), ones.f() + N * k, 1.0f);
  Tensor out(DType::BF16, {N, H});
  ASSERT_TRUE(run("moe_combine", {d.permuted, d.slots, ones}, {out}).ok());
  std::vector<float> xv = x.values(), ov = out.values();
  for (int64_t i = 0; i < N * H; ++i)
    EXPECT_EQ(ov[size_t(i)], float(k) * xv[size_t(i)]); // exact: times 2 in bf16
}

TEST(MoEKernelsDispatch, DispatchGradIsTheAdjoint) {
  std::mt19937 rng(43);
  const int64_t N = 70, H = 6, E = 5, k = 2;
  Tensor x = Tensor::f32({N, H});
  fillUniform(x, rng);
  Tensor idx = randomExperts(rng, N, k, E);
  Dispatched d = dispatch(x, idx, E);
  Tensor R = Tensor::f32({N * k, H});
  fillUniform(R, rng);
  Tensor dx = Tensor::f32({N, H});
  ASSERT_TRUE(run("moe_dispatch_grad", {R, d.slots}, {dx}).ok());
  G3RT_EXPECT_CLOSE(dot(d.permuted.values(), R.values()), dot(x.values(), dx.values()), 1e-5,
                    1e-5);
  // And row by row: dx[n] = Σ_j R[slots[n, j]].
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      EXPECT_FLOAT_EQ(dx.f()[n * H + h], R.f()[d.slots.i()[n * k] * H + h] +
                                             R.f()[d.slots.i()[n * k + 1] * H + h]);
}

TEST(MoEKernelsCombine, ValuesAndGradientsByFiniteDifferences) {
  std::mt19937 rng(44);
  const int64_t N = 60, H = 5, E = 4, k = 2;
  Tensor x = Tensor::f32({N, H});
  Tensor idx = Tensor::i32({N, k});
  for (int64_t n = 0; n < N; ++n) {
    idx.i()[n * k] = int32_t((n * 7) % E);
    idx.i()[n * k + 1] = int32_t((n * 7 + 1 + n % 3) % E);
  }
  Dispatched d = dispatch(x, idx, E);
  Tensor y = Tensor::f32({N * k, H}), w = Tensor::f32({N, k}), g = Tensor::f32({N, H});
  fillUniform(y, rng);
  fillUniform(w, rng);
  fillUniform(g, rng);
  Tensor out = Tensor::f32({N, H});
  ASSERT_TRUE(run("moe_combine", {y, d.slots, w}, {out}).ok());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      double want = 0;
      for (int64_t j = 0; j < k; ++j)
        want += double(w.f()[n * k + j]) * y.f()[d.slots.i()[n * k + j] * H + h];
      G3RT_EXPECT_CLOSE(out.f()[n * H + h], want, 1e-6, 1e-6);
    }
  Tensor dy = Tensor::f32({N * k, H}), dw = Tensor::f32({N, k});
  ASSERT_TRUE(run("moe_combine_grad", {y, d.slots, w, g}, {dy, dw}).ok());
  auto loss = [&] {
    Tensor o = Tensor::f32({N, H});
    EXPECT_TRUE(run("moe_combine", {y, d.slots, w}, {o}).ok());
    return dot(o.values(), g.values());
  };
  for (int trial = 0; trial < 2; ++trial) {
    std::vector<float> dirY = randomDir(N * k * H, rng), dirW = randomDir(N * k, rng);
    G3RT_EXPECT_CLOSE(dot(dy.values(), dirY), directionalDerivative(loss, y, dirY), 1e-3, 1e-3);
    G3RT_EXPECT_CLOSE(dot(dw.values(), dirW), directionalDerivative(loss, w, dirW), 1e-3, 1e-3);
  }
}

TEST(MoEKernelsCombine, GradZeroesUnreferencedRowsAndSumsSharedOnes) {
  // Slots need not be a permutation: row 1 is used twice, row 2 never.
  Tensor y = f32Of({3, 2}, {1, 2, 3, 4, 5, 6});
  Tensor slots = i32Of({2, 2}, {1, 0, 1, 1});
  Tensor w = f32Of({2, 2}, {0.5f, 2.0f, 1.0f, -1.0f});
  Tensor g = f32Of({2, 2}, {1, 10, 100, 1000});
  Tensor dy = Tensor::f32({3, 2}), dw = Tensor::f32({2, 2});
  std::fill(dy.f(), dy.f() + 6, 99.0f);
  ASSERT_TRUE(run("moe_combine_grad", {y, slots, w, g}, {dy, dw}).ok());
  EXPECT_EQ(dy.values(), (std::vector<float>{2, 20, 0.5f + 0, 5 + 0, 0, 0}));
  EXPECT_EQ(dw.values(), (std::vector<float>{43, 21, 4300, 4300}));
}

TEST(MoEKernelsDispatch, Errors) {
  Tensor x = Tensor::f32({3, 2});
  Tensor idx = i32Of({3, 2}, {0, 1, 2, 4, 1, 0});
  Tensor p = Tensor::f32({6, 2}), off = Tensor::i32({4}), slots = Tensor::i32({3, 2});
  KernelAttrs a = makeAttrs({{"num_experts", AttrValue::ofInt(3)}});
  Status s = run("moe_dispatch", {x, idx}, {p, off, slots}, a);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("moe_dispatch"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("4"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("row 1"), std::string::npos) << s.message();
  idx.i()[3] = -1;
  EXPECT_FALSE(run("moe_dispatch", {x, idx}, {p, off, slots}, a).ok());
  idx.i()[3] = 1;
  EXPECT_TRUE(run("moe_dispatch", {x, idx}, {p, off, slots}, a).ok());
  // Wrong counts, missing attribute, wrong offsets size.
  EXPECT_FALSE(run("moe_dispatch", {x}, {p, off, slots}, a).ok());
  EXPECT_FALSE(run("moe_dispatch", {x, idx}, {p, off}, a).ok());
  EXPECT_FALSE(run("moe_dispatch", {x, idx}, {p, off, slots}).ok());
  Tensor off5 = Tensor::i32({5});
  EXPECT_FALSE(run("moe_dispatch", {x, idx}, {p, off5, slots}, a).ok());
  // Slots out of range in the gathers.
  Tensor badSlots = i32Of({3, 2}, {0, 1, 2, 6, 4, 5});
  Tensor out = Tensor::f32({3, 2}), w = Tensor::f32({3, 2});
  s = run("moe_combine", {p, badSlots, w}, {out});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("6"), std::string::npos) << s.message();
  EXPECT_FALSE(run("moe_dispatch_grad", {p, badSlots}, {out}).ok());
  Tensor dw = Tensor::f32({3, 2});
  EXPECT_FALSE(run("moe_combine_grad", {p, badSlots, w, out}, {p.clone(), dw}).ok());
  EXPECT_FALSE(run("moe_combine", {p, slots}, {out}).ok());
  EXPECT_FALSE(run("moe_combine_grad", {p, slots, w, out}, {p.clone()}).ok());
}

//===----------------------------------------------------------------------===//
// Auxiliary losses
//===----------------------------------------------------------------------===//

KernelAttrs expertsAttrs(int64_t E) {
  return makeAttrs({{"num_experts", AttrValue::ofInt(E)}});
}

float runScalar(const std::string &name, const std::vector<Tensor> &in, const KernelAttrs &a) {
  Tensor out = Tensor::f32({});
  Status s = run(name, in, {out}, a);
  EXPECT_TRUE(s.ok()) << s.message();
  return out.f()[0];
}

TEST(MoEKernelsLoadBalancing, PerfectBalanceIsK) {
  const int64_t E = 4;
  Tensor logits = Tensor::f32({4, E}); // uniform softmax
  Tensor idx = i32Of({4, 2}, {0, 1, 2, 3, 3, 0, 1, 2});
  Tensor seg = i32Of({2, 2}, {1, 1, 2, 2});
  EXPECT_FLOAT_EQ(runScalar("load_balancing_loss", {logits, idx, seg}, expertsAttrs(E)), 2.0f);
  // Two layers, each balanced: still k.
  EXPECT_FLOAT_EQ(
      runScalar("load_balancing_loss", {logits, logits, idx, idx, seg}, expertsAttrs(E)), 2.0f);
  // k = 1 balanced.
  Tensor idx1 = i32Of({4, 1}, {3, 1, 0, 2});
  EXPECT_FLOAT_EQ(runScalar("load_balancing_loss", {logits, idx1, seg}, expertsAttrs(E)), 1.0f);
  // Imbalance the router agrees with costs more: p = [3/4, 1/4], all tokens
  // to expert 0, so f = [1, 0] and the loss is 2 · 3/4.
  Tensor skewed = f32Of({1, 2}, {std::log(3.0f), 0.0f});
  EXPECT_FLOAT_EQ(runScalar("load_balancing_loss", {skewed, i32Of({1, 1}, {0}), i32Of({1, 1}, {1})},
                            expertsAttrs(2)),
                  1.5f);
}

double refLoadBalancing(const std::vector<Tensor> &logits, const std::vector<Tensor> &idx,
                        const Tensor &seg, int64_t E) {
  std::vector<double> f(size_t(E), 0.0), P(size_t(E), 0.0);
  double R = 0;
  for (size_t l = 0; l < logits.size(); ++l) {
    const int64_t N = logits[l].view.shape[0], k = idx[l].view.shape[1];
    for (int64_t n = 0; n < N; ++n) {
      if (seg.i()[n] == 0)
        continue;
      R += 1;
      double z = 0;
      for (int64_t e = 0; e < E; ++e)
        z += std::exp(double(logits[l].f()[n * E + e]));
      for (int64_t e = 0; e < E; ++e)
        P[size_t(e)] += std::exp(double(logits[l].f()[n * E + e])) / z;
      for (int64_t j = 0; j < k; ++j)
        f[size_t(idx[l].i()[n * k + j])] += 1;
    }
  }
  double loss = 0;
  for (int64_t e = 0; e < E; ++e)
    loss += (f[size_t(e)] / R) * (P[size_t(e)] / R);
  return double(E) * loss;
}

TEST(MoEKernelsLoadBalancing, MatchesReferenceAndIgnoresPadding) {
  std::mt19937 rng(51);
  const int64_t B = 3, T = 40, N = B * T, E = 6, k = 2;
  Tensor seg = Tensor::i32({B, T});
  for (int64_t n = 0; n < N; ++n)
    seg.i()[n] = (n % T) < 30 ? int32_t(1 + n / 17 % 3) : 0;
  std::vector<Tensor> logits, idx;
  for (int l = 0; l < 2; ++l) {
    Tensor lg = Tensor::f32({N, E});
    fillUniform(lg, rng, -2, 2);
    Tensor ix = Tensor::i32({N, k});
    for (int64_t i = 0; i < N * k; ++i)
      ix.i()[i] = int32_t(rng() % (l == 0 ? E : 3)); // layer 1 unbalanced
    logits.push_back(lg);
    idx.push_back(ix);
  }
  const double want = refLoadBalancing(logits, idx, seg, E);
  float got = runScalar("load_balancing_loss", {logits[0], logits[1], idx[0], idx[1], seg},
                        expertsAttrs(E));
  G3RT_EXPECT_CLOSE(got, want, 1e-5, 1e-7);
  // Padding rows may hold anything, even invalid indices.
  for (int l = 0; l < 2; ++l)
    for (int64_t n = 0; n < N; ++n)
      if (seg.i()[n] == 0) {
        logits[size_t(l)].f()[n * E] = 50.0f;
        idx[size_t(l)].i()[n * k] = 99;
      }
  EXPECT_EQ(runScalar("load_balancing_loss", {logits[0], logits[1], idx[0], idx[1], seg},
                      expertsAttrs(E)),
            got);
  // No real token at all: 0, not NaN.
  Tensor none = Tensor::i32({B, T});
  EXPECT_EQ(runScalar("load_balancing_loss", {logits[0], idx[0], none}, expertsAttrs(E)), 0.0f);
}

TEST(MoEKernelsLoadBalancing, GradientByFiniteDifferences) {
  std::mt19937 rng(52);
  const int64_t B = 2, T = 12, N = B * T, E = 5, k = 2;
  Tensor seg = Tensor::i32({B, T});
  for (int64_t n = 0; n < N; ++n)
    seg.i()[n] = n % T < 9 ? 1 : 0;
  std::vector<Tensor> logits, idx;
  for (int l = 0; l < 2; ++l) {
    Tensor lg = Tensor::f32({N, E});
    fillUniform(lg, rng, -2, 2);
    Tensor ix = Tensor::i32({N, k});
    for (int64_t i = 0; i < N * k; ++i)
      ix.i()[i] = int32_t(rng() % (l == 0 ? 2 : E));
    logits.push_back(lg);
    idx.push_back(ix);
  }
  const float dloss = 1.7f;
  Tensor d0 = Tensor::f32({N, E}), d1 = Tensor::f32({N, E});
  Status s = run("load_balancing_loss_grad",
                 {logits[0], logits[1], idx[0], idx[1], seg, scalarOf(dloss)}, {d0, d1},
                 expertsAttrs(E));
  ASSERT_TRUE(s.ok()) << s.message();
  auto loss = [&] {
    return dloss * double(runScalar("load_balancing_loss",
                                    {logits[0], logits[1], idx[0], idx[1], seg},
                                    expertsAttrs(E)));
  };
  Tensor *grads[2] = {&d0, &d1};
  for (int l = 0; l < 2; ++l)
    for (int trial = 0; trial < 2; ++trial) {
      std::vector<float> dir = randomDir(N * E, rng);
      double fd = directionalDerivative(loss, logits[size_t(l)], dir, 1e-2);
      G3RT_EXPECT_CLOSE(dot(grads[l]->values(), dir), fd, 1e-2, 1e-4) << "layer " << l;
    }
  for (int64_t n = 0; n < N; ++n)
    if (seg.i()[n] == 0) {
      for (int64_t e = 0; e < E; ++e)
        EXPECT_EQ(d0.f()[n * E + e], 0.0f);
    }
  // Wrong output count.
  EXPECT_FALSE(run("load_balancing_loss_grad",
                   {logits[0], logits[1], idx[0], idx[1], seg, scalarOf(dloss)}, {d0},
                   expertsAttrs(E))
                   .ok());
}

TEST(MoEKernelsLoadBalancing, Errors) {
  Tensor logits = Tensor::f32({4, 4}), idx = Tensor::i32({4, 2}), seg = i32Of({1, 4}, {1, 1, 1, 0});
  // Even input count (no segment_ids), missing attribute, wrong E, bad index.
  EXPECT_FALSE(run("load_balancing_loss", {logits, idx}, {Tensor::f32({})}, expertsAttrs(4)).ok());
  EXPECT_FALSE(run("load_balancing_loss", {logits, idx, seg}, {Tensor::f32({})}).ok());
  EXPECT_FALSE(
      run("load_balancing_loss", {logits, idx, seg}, {Tensor::f32({})}, expertsAttrs(5)).ok());
  idx.i()[3] = 7;
  Status s = run("load_balancing_loss", {logits, idx, seg}, {Tensor::f32({})}, expertsAttrs(4));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("7"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("row 1"), std::string::npos) << s.message();
  Tensor seg5 = Tensor::i32({5});
  EXPECT_FALSE(
      run("load_balancing_loss", {logits, idx, seg5}, {Tensor::f32({})}, expertsAttrs(4)).ok());
}

TEST(MoEKernelsRouterZLoss, ValueAndGradient) {
  std::mt19937 rng(61);
  const int64_t B = 2, T = 10, N = B * T;
  Tensor seg = Tensor::i32({B, T});
  for (int64_t n = 0; n < N; ++n)
    seg.i()[n] = n % T < 7 ? 3 : 0;
  Tensor l0 = Tensor::f32({N, 4}), l1 = Tensor::f32({N, 6});
  fillUniform(l0, rng, -3, 3);
  fillUniform(l1, rng, -3, 3);
  double want = 0, R = 0;
  for (const Tensor *t : {&l0, &l1}) {
    const int64_t E = t->view.shape[1];
    for (int64_t n = 0; n < N; ++n) {
      if (!seg.i()[n])
        continue;
      double z = 0;
      for (int64_t e = 0; e < E; ++e)
        z += std::exp(double(t->f()[n * E + e]));
      want += std::log(z) * std::log(z);
      R += 1;
    }
  }
  want /= R;
  KernelAttrs none;
  G3RT_EXPECT_CLOSE(runScalar("router_z_loss", {l0, l1, seg}, none), want, 1e-5, 1e-7);

  const float dloss = 0.3f;
  Tensor d0 = Tensor::f32({N, 4}), d1 = Tensor::f32({N, 6});
  std::fill(d0.f(), d0.f() + d0.numel(), 5.0f);
  Status s = run("router_z_loss_grad", {l0, l1, seg, scalarOf(dloss)}, {d0, d1});
  ASSERT_TRUE(s.ok()) << s.message();
  auto loss = [&] { return dloss * double(runScalar("router_z_loss", {l0, l1, seg}, none)); };
  Tensor *logits[2] = {&l0, &l1}, *grads[2] = {&d0, &d1};
  for (int l = 0; l < 2; ++l)
    for (int trial = 0; trial < 2; ++trial) {
      std::vector<float> dir = randomDir(logits[l]->numel(), rng);
      double fd = directionalDerivative(loss, *logits[l], dir, 1e-2);
      G3RT_EXPECT_CLOSE(dot(grads[l]->values(), dir), fd, 1e-2, 1e-4) << "layer " << l;
    }
  for (int64_t n = 0; n < N; ++n)
    if (!seg.i()[n]) {
      for (int64_t e = 0; e < 4; ++e)
        EXPECT_EQ(d0.f()[n * 4 + e], 0.0f);
    }
  // Errors: no segment ids, segment ids of the wrong size, output count.
  EXPECT_FALSE(run("router_z_loss", {l0}, {Tensor::f32({})}).ok());
  EXPECT_FALSE(run("router_z_loss", {l0, Tensor::i32({3})}, {Tensor::f32({})}).ok());
  EXPECT_FALSE(run("router_z_loss_grad", {l0, l1, seg, scalarOf(1)}, {d0}).ok());
}

TEST(MoEKernelsLossSum, WeightedSum) {
  KernelAttrs a = makeAttrs({{"coefficients", AttrValue::ofFloats({1.0, 1e-3, 0.5})}});
  EXPECT_NEAR(runScalar("loss_sum", {scalarOf(2.0f), scalarOf(3.0f), scalarOf(-4.0f)}, a),
              2.0 + 3e-3 - 2.0, 1e-9);
  EXPECT_FALSE(run("loss_sum", {scalarOf(2.0f), scalarOf(3.0f)}, {Tensor::f32({})}, a).ok());
  EXPECT_FALSE(run("loss_sum", {scalarOf(2.0f)}, {Tensor::f32({})}).ok());
  EXPECT_FALSE(run("loss_sum", {scalarOf(1), scalarOf(1), Tensor::f32({2})}, {Tensor::f32({})}, a)
                   .ok());
}

TEST(MoEKernels, AllRegistered) {
  for (const char *name :
       {"sparsemixer_router", "sparsemixer_router_grad", "softmax_topk_router",
        "softmax_topk_router_grad", "sigmoid_grouped_router", "sigmoid_grouped_router_grad",
        "moe_dispatch", "moe_dispatch_grad", "moe_combine", "moe_combine_grad",
        "load_balancing_loss", "load_balancing_loss_grad", "router_z_loss",
        "router_z_loss_grad", "loss_sum"})
    EXPECT_NE(findCpuKernel(name), nullptr) << name;
}

} // namespace
