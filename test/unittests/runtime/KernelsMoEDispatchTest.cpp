//===- KernelsMoEDispatchTest.cpp - dispatch and combine ------------------===//
//
// The CPU dispatch / combine permutations of the MoE block: offsets, slots
// and stable order, the round trip, the adjoints by finite differences, and
// the errors; and that every MoE kernel is registered.
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
  G3RT_EXPECT_CLOSE(dot(d.permuted.values(), R.values()), dot(x.values(), dx.values()), 1e-5, 1e-5);
  // And row by row: dx[n] = Σ_j R[slots[n, j]].
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      EXPECT_FLOAT_EQ(dx.f()[n * H + h],
                      R.f()[d.slots.i()[n * k] * H + h] + R.f()[d.slots.i()[n * k + 1] * H + h]);
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

TEST(MoEKernels, AllRegistered) {
  for (const char *name :
       {"sparsemixer_router", "sparsemixer_router_grad", "softmax_topk_router",
        "softmax_topk_router_grad", "sigmoid_grouped_router", "sigmoid_grouped_router_grad",
        "moe_dispatch", "moe_dispatch_grad", "moe_combine", "moe_combine_grad",
        "load_balancing_loss", "load_balancing_loss_grad", "router_z_loss", "router_z_loss_grad",
        "loss_sum"})
    EXPECT_NE(cpu::findCpuKernel(name), nullptr) << name;
}

} // namespace
