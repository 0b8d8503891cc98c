//===- KernelsMoELossesTest.cpp - the auxiliary losses --------------------===//
//
// The CPU auxiliary-loss kernels of the MoE block: the load-balancing loss
// and the router z-loss against reference code and finite differences
// (padding ignored), and the weighted loss_sum.
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

KernelAttrs expertsAttrs(int64_t E) { return makeAttrs({{"num_experts", AttrValue::ofInt(E)}}); }

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
  Status s =
      run("load_balancing_loss_grad", {logits[0], logits[1], idx[0], idx[1], seg, scalarOf(dloss)},
          {d0, d1}, expertsAttrs(E));
  ASSERT_TRUE(s.ok()) << s.message();
  auto loss = [&] {
    return dloss * double(runScalar("load_balancing_loss",
                                    {logits[0], logits[1], idx[0], idx[1], seg}, expertsAttrs(E)));
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
  EXPECT_FALSE(
      run("loss_sum", {scalarOf(1), scalarOf(1), Tensor::f32({2})}, {Tensor::f32({})}, a).ok());
}

} // namespace
