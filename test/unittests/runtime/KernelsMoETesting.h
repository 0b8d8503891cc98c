//===- KernelsMoETesting.h - helpers for the MoE kernel tests ---*- C++ -*-===//
//
// Tensors from literal values, attributes from pairs, random directions and
// well-separated router logits, shared by the tests of the MoE kernels
// (routers, dispatch / combine, auxiliary losses).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_TEST_UNITTESTS_RUNTIME_KERNELSMOETESTING_H
#define G3MOE_TEST_UNITTESTS_RUNTIME_KERNELSMOETESTING_H

#include "KernelTesting.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace g3rt::testing {

/// An fp32 tensor of `shape` holding `values`.
inline Tensor f32Of(std::vector<int64_t> shape, const std::vector<float> &values) {
  Tensor t = Tensor::f32(std::move(shape));
  EXPECT_EQ(size_t(t.numel()), values.size());
  std::copy(values.begin(), values.end(), t.f());
  return t;
}

/// An int32 tensor of `shape` holding `values`.
inline Tensor i32Of(std::vector<int64_t> shape, const std::vector<int32_t> &values) {
  Tensor t = Tensor::i32(std::move(shape));
  EXPECT_EQ(size_t(t.numel()), values.size());
  std::copy(values.begin(), values.end(), t.i());
  return t;
}

/// An fp32 scalar tensor.
inline Tensor scalarOf(float v) { return f32Of({}, {v}); }

/// Kernel attributes from (name, value) pairs.
inline KernelAttrs makeAttrs(std::vector<std::pair<std::string, AttrValue>> entries) {
  KernelAttrs a;
  for (auto &e : entries)
    a.set(e.first, e.second);
  return a;
}

/// `n` values uniform in [-1, 1): a direction for finite differences.
inline std::vector<float> randomDir(int64_t n, std::mt19937 &rng) {
  std::uniform_real_distribution<float> d(-1, 1);
  std::vector<float> v(static_cast<size_t>(n));
  for (float &x : v)
    x = d(rng);
  return v;
}

/// Logits whose entries in each row are at least 0.25 apart, so that small
/// perturbations never change a top-k choice.
inline Tensor spacedLogits(int64_t N, int64_t E, std::mt19937 &rng) {
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

} // namespace g3rt::testing

#endif // G3MOE_TEST_UNITTESTS_RUNTIME_KERNELSMOETESTING_H
