//===- KernelsOptimizerTest.cpp - optimizer CPU kernel tests --------------===//
//
// adamw against a hand-written loop of torch.optim.AdamW's update (in double),
// run in place as the executor does; the HF schedules at the steps where
// their pieces meet; torch's clipping coefficient; the global norm.
//
//===----------------------------------------------------------------------===//

#include "KernelTesting.h"

#include "runtime/base/parallel.h"

#include <cstring>

using namespace g3rt;
using namespace g3rt::testing;

namespace {

Tensor scalarF32(float v) {
  Tensor t = Tensor::f32({});
  t.f()[0] = v;
  return t;
}

Tensor scalarI64(int64_t v) {
  Tensor t(DType::I64, {});
  t.view.i64()[0] = v;
  return t;
}

//===----------------------------------------------------------------------===//
// adamw
//===----------------------------------------------------------------------===//

KernelAttrs adamAttrs(double b1, double b2, double eps, double wd) {
  KernelAttrs a;
  a.set("beta1", AttrValue::ofFloat(b1));
  a.set("beta2", AttrValue::ofFloat(b2));
  a.set("epsilon", AttrValue::ofFloat(eps));
  a.set("weight_decay", AttrValue::ofFloat(wd));
  return a;
}

TEST(OptimizerKernels, AdamWMatchesTorchLoopInPlace) {
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
  const int64_t n = 300;
  std::mt19937 rng(1);
  Tensor p = Tensor::f32({3, n / 3}), m = Tensor::f32({3, n / 3}), v = Tensor::f32({3, n / 3});
  fillUniform(p, rng);
  // torch's state starts at zero.
  std::vector<float> p0 = p.values();
  std::vector<double> rp(p0.begin(), p0.end()), rm(size_t(n), 0.0), rv(size_t(n), 0.0);
  const float lrs[3] = {1e-3f, 5e-4f, 2e-3f};
  const float scales[3] = {0.5f, 0.25f, 1.0f};
  KernelAttrs attrs = adamAttrs(b1, b2, eps, wd);
  for (int64_t step = 0; step < 3; ++step) {
    Tensor g = Tensor::f32({3, n / 3});
    fillUniform(g, rng, -2, 2);
    Tensor lr = scalarF32(lrs[step]), scale = scalarF32(scales[step]), stepT = scalarI64(step);
    // Outputs are the inputs' own buffers, as the executor passes them.
    Status s = run("adamw", {p, g, m, v, stepT, lr, scale}, {p, m, v}, attrs);
    ASSERT_TRUE(s.ok()) << s.message();

    // torch.optim.AdamW (single tensor), t = number of this update.
    double t = double(step + 1), lrD = lrs[step];
    double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    for (int64_t i = 0; i < n; ++i) {
      double gi = double(g.f()[i]) * scales[step];
      rp[size_t(i)] *= 1 - lrD * wd;
      rm[size_t(i)] = b1 * rm[size_t(i)] + (1 - b1) * gi;
      rv[size_t(i)] = b2 * rv[size_t(i)] + (1 - b2) * gi * gi;
      double denom = std::sqrt(rv[size_t(i)]) / std::sqrt(bc2) + eps;
      rp[size_t(i)] -= lrD / bc1 * rm[size_t(i)] / denom;
    }
    for (int64_t i = 0; i < n; ++i) {
      G3RT_EXPECT_CLOSE(p.f()[i], rp[size_t(i)], 1e-6, 1e-7) << "step " << step << " i " << i;
      G3RT_EXPECT_CLOSE(m.f()[i], rm[size_t(i)], 1e-5, 1e-8) << "step " << step << " i " << i;
      G3RT_EXPECT_CLOSE(v.f()[i], rv[size_t(i)], 1e-5, 1e-10) << "step " << step << " i " << i;
    }
  }
}

TEST(OptimizerKernels, AdamWAliasedEqualsSeparateOutputs) {
  std::mt19937 rng(2);
  const int64_t n = 10000; // several parallel chunks
  Tensor p = Tensor::f32({n}), g = Tensor::f32({n}), m = Tensor::f32({n}), v = Tensor::f32({n});
  fillUniform(p, rng);
  fillUniform(g, rng);
  fillUniform(m, rng, -0.1f, 0.1f);
  fillUniform(v, rng, 0.0f, 0.01f);
  Tensor p1 = Tensor::f32({n}), m1 = Tensor::f32({n}), v1 = Tensor::f32({n});
  Tensor stepT = scalarI64(4), lr = scalarF32(1e-3f), scale = scalarF32(0.7f);
  KernelAttrs attrs = adamAttrs(0.9, 0.95, 1e-6, 0.1);
  ASSERT_TRUE(run("adamw", {p, g, m, v, stepT, lr, scale}, {p1, m1, v1}, attrs).ok());
  ASSERT_TRUE(run("adamw", {p, g, m, v, stepT, lr, scale}, {p, m, v}, attrs).ok());
  EXPECT_EQ(std::memcmp(p.view.data, p1.view.data, p.view.bytes()), 0);
  EXPECT_EQ(std::memcmp(m.view.data, m1.view.data, m.view.bytes()), 0);
  EXPECT_EQ(std::memcmp(v.view.data, v1.view.data, v.view.bytes()), 0);
}

// The multi-tensor form: three tensors of different sizes in one call give
// bit for bit what three single-tensor calls give.
TEST(OptimizerKernels, AdamWManyTensorsEqualsOneAtATime) {
  std::mt19937 rng(3);
  const std::vector<std::vector<int64_t>> shapes = {{7}, {3, 50}, {2, 2, 1000}};
  std::vector<Tensor> state[4], single[4];
  for (const auto &shape : shapes)
    for (int role = 0; role < 4; ++role) {
      Tensor t = Tensor::f32(shape);
      fillUniform(t, rng, role == 3 ? 0.0f : -1.0f, role == 3 ? 0.01f : 1.0f);
      state[role].push_back(t);
      single[role].push_back(t.clone());
    }
  Tensor stepT = scalarI64(2), lr = scalarF32(1e-3f), scale = scalarF32(0.8f);
  KernelAttrs attrs = adamAttrs(0.9, 0.999, 1e-8, 0.01);
  std::vector<Tensor> in, out;
  for (int role = 0; role < 4; ++role)
    in.insert(in.end(), state[role].begin(), state[role].end());
  in.insert(in.end(), {stepT, lr, scale});
  for (int role : {0, 2, 3})
    out.insert(out.end(), state[role].begin(), state[role].end());
  EXPECT_OK(run("adamw", in, out, attrs));
  for (size_t k = 0; k < shapes.size(); ++k) {
    EXPECT_OK(run("adamw",
                  {single[0][k], single[1][k], single[2][k], single[3][k], stepT, lr, scale},
                  {single[0][k], single[2][k], single[3][k]}, attrs));
    for (int role : {0, 2, 3})
      EXPECT_EQ(std::memcmp(state[role][k].view.data, single[role][k].view.data,
                            state[role][k].view.bytes()),
                0)
          << "tensor " << k << " role " << role;
  }
  // 4n + 3 inputs and 3n outputs: one output short is an error.
  out.pop_back();
  EXPECT_FALSE(run("adamw", in, out, attrs).ok());
}

TEST(OptimizerKernels, AdamWRejectsBadArguments) {
  Tensor p = Tensor::f32({4}), g = Tensor::f32({5}), m = Tensor::f32({4}), v = Tensor::f32({4});
  Tensor stepT = scalarI64(0), lr = scalarF32(1e-3f), scale = scalarF32(1);
  KernelAttrs attrs = adamAttrs(0.9, 0.999, 1e-8, 0);
  EXPECT_FALSE(run("adamw", {p, g, m, v, stepT, lr, scale}, {p, m, v}, attrs).ok());
  Tensor g4 = Tensor::f32({4});
  EXPECT_FALSE(run("adamw", {p, g4, m, v, stepT, lr}, {p, m, v}, attrs).ok());
  EXPECT_FALSE(run("adamw", {p, g4, m, v, scalarI64(-1), lr, scale}, {p, m, v}, attrs).ok());
  KernelAttrs missing;
  missing.set("beta1", AttrValue::ofFloat(0.9));
  EXPECT_FALSE(run("adamw", {p, g4, m, v, stepT, lr, scale}, {p, m, v}, missing).ok());
  EXPECT_TRUE(run("adamw", {p, g4, m, v, stepT, lr, scale}, {p, m, v}, attrs).ok());
}

//===----------------------------------------------------------------------===//
// lr_schedule
//===----------------------------------------------------------------------===//

float schedule(const std::string &kind, int64_t step, int64_t total, int64_t warmup,
               double lr = 2e-4) {
  KernelAttrs a;
  a.set("kind", AttrValue::ofString(kind));
  a.set("learning_rate", AttrValue::ofFloat(lr));
  Tensor out = Tensor::f32({});
  Status s = run("lr_schedule", {scalarI64(step), scalarI64(total), scalarI64(warmup)}, {out}, a);
  EXPECT_TRUE(s.ok()) << s.message();
  return out.f()[0];
}

TEST(OptimizerKernels, LrScheduleWarmupKinds) {
  const double lr = 2e-4;
  const int64_t S = 100, w = 10;
  for (const char *kind : {"cosine", "linear", "constant_with_warmup"}) {
    SCOPED_TRACE(kind);
    // The first update (nothing taken yet) runs at lr 0.
    EXPECT_EQ(schedule(kind, 0, S, w), 0.0f);
    EXPECT_FLOAT_EQ(schedule(kind, 5, S, w), float(lr * 0.5));
    EXPECT_FLOAT_EQ(schedule(kind, 9, S, w), float(lr * 0.9));
    // End of warmup: the peak.
    EXPECT_FLOAT_EQ(schedule(kind, 10, S, w), float(lr));
  }
  // Middle of the decay: t - w = 45 of S - w = 90.
  EXPECT_FLOAT_EQ(schedule("cosine", 55, S, w), float(lr * 0.5));
  EXPECT_FLOAT_EQ(schedule("linear", 55, S, w), float(lr * 0.5));
  EXPECT_FLOAT_EQ(schedule("constant_with_warmup", 55, S, w), float(lr));
  EXPECT_FLOAT_EQ(schedule("cosine", 40, S, w),
                  float(lr * 0.5 * (1 + std::cos(3.14159265358979323846 * 30.0 / 90.0))));
  EXPECT_FLOAT_EQ(schedule("linear", 40, S, w), float(lr * 60.0 / 90.0));
  // End of the horizon.
  EXPECT_NEAR(schedule("cosine", 100, S, w), 0.0, 1e-12);
  EXPECT_EQ(schedule("linear", 100, S, w), 0.0f);
  EXPECT_EQ(schedule("linear", 120, S, w), 0.0f); // not below 0
  EXPECT_FLOAT_EQ(schedule("constant_with_warmup", 100, S, w), float(lr));
}

TEST(OptimizerKernels, LrScheduleConstantAndNoWarmup) {
  const double lr = 2e-4;
  for (int64_t t : {0, 5, 10, 55, 100})
    EXPECT_FLOAT_EQ(schedule("constant", t, 100, 10), float(lr)) << t;
  // Without warmup the first update already uses the full rate.
  EXPECT_FLOAT_EQ(schedule("cosine", 0, 100, 0), float(lr));
  EXPECT_FLOAT_EQ(schedule("linear", 0, 100, 0), float(lr));
  EXPECT_FLOAT_EQ(schedule("cosine", 50, 100, 0), float(lr * 0.5));
}

TEST(OptimizerKernels, LrScheduleRejectsUnknownKind) {
  KernelAttrs a;
  a.set("kind", AttrValue::ofString("polynomial"));
  a.set("learning_rate", AttrValue::ofFloat(1e-4));
  Tensor out = Tensor::f32({});
  Status s = run("lr_schedule", {scalarI64(0), scalarI64(10), scalarI64(1)}, {out}, a);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("polynomial"), std::string::npos);
}

//===----------------------------------------------------------------------===//
// clip_scale, global_norm
//===----------------------------------------------------------------------===//

float clip(float norm, double maxNorm) {
  KernelAttrs a;
  a.set("max_norm", AttrValue::ofFloat(maxNorm));
  Tensor out = Tensor::f32({});
  Status s = run("clip_scale", {scalarF32(norm)}, {out}, a);
  EXPECT_TRUE(s.ok()) << s.message();
  return out.f()[0];
}

TEST(OptimizerKernels, ClipScale) {
  EXPECT_EQ(clip(0.5f, 1.0), 1.0f);
  EXPECT_FLOAT_EQ(clip(4.0f, 1.0), float(1.0 / (4.0 + 1e-6)));
  EXPECT_FLOAT_EQ(clip(10.0f, 2.5), float(2.5 / (10.0 + 1e-6)));
  // Clipping off.
  EXPECT_EQ(clip(1000.0f, 0.0), 1.0f);
  EXPECT_EQ(clip(1000.0f, -1.0), 1.0f);
}

TEST(OptimizerKernels, GlobalNormOverSeveralTensors) {
  std::mt19937 rng(3);
  // The last tensor spans several reduction blocks.
  std::vector<Tensor> grads = {Tensor::f32({4, 7}), Tensor::f32({}), Tensor::f32({3, 100000})};
  double want = 0;
  for (Tensor &g : grads) {
    fillUniform(g, rng);
    for (float x : g.values())
      want += double(x) * x;
  }
  want = std::sqrt(want);
  Tensor out = Tensor::f32({});
  int saved = parallelThreads();
  setParallelThreads(1);
  ASSERT_TRUE(run("global_norm", grads, {out}).ok());
  float one = out.f()[0];
  setParallelThreads(4);
  ASSERT_TRUE(run("global_norm", grads, {out}).ok());
  setParallelThreads(saved);
  EXPECT_EQ(one, out.f()[0]);
  EXPECT_FLOAT_EQ(out.f()[0], float(want));

  // Known value: 3-4-5 spread over two tensors.
  Tensor a = Tensor::f32({1}), b = Tensor::f32({2});
  a.f()[0] = 3;
  b.f()[0] = 0;
  b.f()[1] = -4;
  ASSERT_TRUE(run("global_norm", {a, b}, {out}).ok());
  EXPECT_EQ(out.f()[0], 5.0f);
}

TEST(CollectiveKernels, AloneTheyCopyTheirInputs) {
  // A process that runs alone: all_reduce and broadcast (root 0) copy; a
  // root that is not process 0 and tensors that differ in and out are
  // refused. (DistTest.cpp runs them between processes.)
  Tensor a = Tensor::f32({2, 3}), out = Tensor::f32({2, 3});
  for (int i = 0; i < 6; ++i)
    a.f()[i] = float(i) - 2.5f;
  ASSERT_TRUE(run("all_reduce", {a}, {out}).ok());
  EXPECT_EQ(out.values(), a.values());
  KernelAttrs root = attrs({{"root", AttrValue::ofInt(0)}});
  Tensor out2 = Tensor::f32({2, 3});
  ASSERT_TRUE(run("broadcast", {a}, {out2}, root).ok());
  EXPECT_EQ(out2.values(), a.values());
  expectErrorNaming(run("broadcast", {a}, {out2}, attrs({{"root", AttrValue::ofInt(1)}})),
                    "broadcast", "root 1 is not a process of this job of 1");
  expectErrorNaming(run("all_reduce", {a}, {Tensor::f32({3, 2})}), "all_reduce",
                    "tensor 0 must be f32 and shaped alike in and out");
  expectErrorNaming(run("broadcast", {a}, {out2}), "broadcast", "root");
}

} // namespace
