//===- KernelsMoERoutersTest.cpp - softmax top-k and grouped sigmoid ------===//
//
// The CPU softmax top-k and grouped sigmoid (DeepSeek-V3) router kernels
// against reference code written here and finite differences, with the
// group limit and the errors.
//
//===----------------------------------------------------------------------===//

#include "KernelsMoETesting.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

using namespace g3rt;
using namespace g3rt::testing;

namespace {

//===----------------------------------------------------------------------===//
// Softmax top-k
//===----------------------------------------------------------------------===//

KernelAttrs topkAttrs(int64_t k, bool norm) {
  return makeAttrs({{"top_k", AttrValue::ofInt(k)}, {"norm_topk_prob", AttrValue::ofBool(norm)}});
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
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return S[a] > S[b]; });
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

KernelAttrs groupedAttrs(int64_t k, int64_t nGroup, int64_t topkGroup, double scaling, bool norm) {
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
    if (std::find(groups.begin(), groups.begin() + topkGroup, e / gs) != groups.begin() + topkGroup)
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
    Status st =
        run("sigmoid_grouped_router", {logits, bias}, {w, idx}, groupedAttrs(2, 4, 2, 2.5, norm));
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
  ASSERT_TRUE(
      run("sigmoid_grouped_router", {logits, bias}, {w, idx}, groupedAttrs(2, 4, 4, 1.0, false))
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
  EXPECT_FALSE(
      run("sigmoid_grouped_router", {logits, bias}, {w, idx}, groupedAttrs(2, 3, 1, 1.0, true))
          .ok());
  EXPECT_FALSE(
      run("sigmoid_grouped_router", {logits, bias}, {w, idx}, groupedAttrs(2, 4, 5, 1.0, true))
          .ok());
  Tensor w3 = Tensor::f32({2, 3}), idx3 = Tensor::i32({2, 3});
  EXPECT_FALSE(
      run("sigmoid_grouped_router", {logits, bias}, {w3, idx3}, groupedAttrs(3, 8, 2, 1.0, true))
          .ok());
  EXPECT_FALSE(
      run("sigmoid_grouped_router", {logits}, {w, idx}, groupedAttrs(2, 4, 2, 1.0, true)).ok());
}

} // namespace
