//===- KernelTesting.h - helpers for kernel unit tests ----------*- C++ -*-===//
//
// Owning tensors, seeded random fills, a kernel runner and a central
// finite-difference directional derivative, shared by the kernel tests.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_TEST_UNITTESTS_RUNTIME_KERNELTESTING_H
#define G3MOE_TEST_UNITTESTS_RUNTIME_KERNELTESTING_H

#include "runtime/cpu/cpu_kernels.h"
#include "runtime/kernels/kernel.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <vector>

namespace g3rt::testing {

/// A tensor that owns its storage.
struct Tensor {
  std::shared_ptr<std::vector<uint8_t>> storage;
  TensorView view;

  Tensor() = default;
  Tensor(DType dtype, std::vector<int64_t> shape) {
    view.dtype = dtype;
    view.shape = std::move(shape);
    storage = std::make_shared<std::vector<uint8_t>>(view.bytes() + 8, 0);
    view.data = storage->data();
  }
  static Tensor f32(std::vector<int64_t> shape) { return Tensor(DType::F32, shape); }
  static Tensor i32(std::vector<int64_t> shape) { return Tensor(DType::I32, shape); }

  float *f() const { return view.f32(); }
  int32_t *i() const { return view.i32(); }
  int64_t numel() const { return view.numel(); }
  std::vector<float> values() const { return toFloat(view); }
  /// A deep copy.
  Tensor clone() const {
    Tensor t(view.dtype, view.shape);
    std::memcpy(t.view.data, view.data, view.bytes());
    return t;
  }
};

/// Fills a float tensor with uniform values in [lo, hi).
inline void fillUniform(Tensor &t, std::mt19937 &rng, float lo = -1, float hi = 1) {
  std::uniform_real_distribution<float> d(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.view.store(i, d(rng));
}

/// Runs kernel `name` on the given tensors; fails the test when it is unknown.
inline Status run(const std::string &name, const std::vector<Tensor> &in,
                  const std::vector<Tensor> &out, const KernelAttrs &attrs = {}) {
  KernelFn fn = cpu::findCpuKernel(name);
  if (!fn)
    return Status::error("no kernel named " + name);
  KernelArgs args;
  for (const Tensor &t : in)
    args.inputs.push_back(t.view);
  for (const Tensor &t : out)
    args.outputs.push_back(t.view);
  args.attrs = &attrs;
  args.name = name;
  return fn(args);
}

/// <a, b> over all elements.
/// A failed kernel call whose message names the kernel and `value`.
inline void expectErrorNaming(const Status &s, const std::string &kernel,
                              const std::string &value) {
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(kernel), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(value), std::string::npos) << s.message();
}

inline double dot(const std::vector<float> &a, const std::vector<float> &b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i)
    s += double(a[i]) * b[i];
  return s;
}

/// Central difference of `f` along `dir` at the current values of `x`
/// (an fp32 tensor that `f` reads): (f(x + eps dir) - f(x - eps dir)) / 2 eps.
inline double directionalDerivative(const std::function<double()> &f, Tensor &x,
                                    const std::vector<float> &dir, double eps = 1e-3) {
  std::vector<float> x0 = x.values();
  for (int64_t i = 0; i < x.numel(); ++i)
    x.f()[i] = float(x0[i] + eps * dir[i]);
  double plus = f();
  for (int64_t i = 0; i < x.numel(); ++i)
    x.f()[i] = float(x0[i] - eps * dir[i]);
  double minus = f();
  for (int64_t i = 0; i < x.numel(); ++i)
    x.f()[i] = x0[i];
  return (plus - minus) / (2 * eps);
}

/// Expects |a - b| <= atol + rtol * |b|.
#define G3RT_EXPECT_CLOSE(a, b, rtol, atol)                                                        \
  EXPECT_LE(std::fabs(double(a) - double(b)), (atol) + (rtol) * std::fabs(double(b)))              \
      << #a " = " << (a) << ", " #b " = " << (b)

/// Expects a Status to be ok, printing its message otherwise.
#define EXPECT_OK(expr)                                                                            \
  do {                                                                                             \
    ::g3rt::Status s_ = (expr);                                                                    \
    EXPECT_TRUE(s_.ok()) << s_.message();                                                          \
  } while (0)

/// Kernel attributes from (name, value) pairs.
inline KernelAttrs attrs(std::initializer_list<std::pair<const char *, AttrValue>> list) {
  KernelAttrs a;
  for (const auto &[name, value] : list)
    a.set(name, value);
  return a;
}

/// A tensor of uniform values in [lo, hi).
inline Tensor randomTensor(DType dtype, std::vector<int64_t> shape, std::mt19937 &rng,
                           float lo = -1, float hi = 1) {
  Tensor t(dtype, std::move(shape));
  fillUniform(t, rng, lo, hi);
  return t;
}

/// Compares <grad, dir> with the central difference of `loss` along a random
/// direction `dir` at the current value of `x`.
inline void checkGradient(const char *what, const std::function<double()> &loss, Tensor &x,
                          const Tensor &grad, std::mt19937 &rng) {
  SCOPED_TRACE(what);
  ASSERT_EQ(x.numel(), grad.numel());
  std::uniform_real_distribution<float> d(-1, 1);
  std::vector<float> dir(size_t(x.numel()));
  for (float &v : dir)
    v = d(rng);
  double numeric = directionalDerivative(loss, x, dir);
  double analytic = dot(grad.values(), dir);
  // fp32 forward passes leave the central difference ~1e-4 relative (at
  // worst ~1e-3 absolute) from the exact derivative; a 1% error in a
  // gradient shows well above that.
  G3RT_EXPECT_CLOSE(analytic, numeric, 2e-3, 2e-3);
}

} // namespace g3rt::testing

#endif // G3MOE_TEST_UNITTESTS_RUNTIME_KERNELTESTING_H
