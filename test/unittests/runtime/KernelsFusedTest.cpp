//===- KernelsFusedTest.cpp - fused norm CPU kernel tests -----------------===//
//
// add_rms_norm, rms_norm_rope and rms_norm_grad's addend against the unfused
// kernels they replace (bitwise where the contract says so), and
// rms_norm_rope_grad against central differences of rms_norm_rope.
//
//===----------------------------------------------------------------------===//

#include "KernelTesting.h"

#include <cstring>

using namespace g3rt;
using namespace g3rt::testing;

namespace {

bool sameBytes(const Tensor &a, const Tensor &b) {
  return a.view.bytes() == b.view.bytes() &&
         std::memcmp(a.view.data, b.view.data, a.view.bytes()) == 0;
}

KernelAttrs normRopeAttrs() {
  return attrs({{"eps", AttrValue::ofFloat(1e-6)},
                {"theta", AttrValue::ofFloat(1e4)},
                {"scaling_factor", AttrValue::ofFloat(2)}});
}

Tensor positions(int64_t B, int64_t T) {
  Tensor p = Tensor::i32({B, T});
  for (int64_t i = 0; i < B * T; ++i)
    p.i()[i] = int32_t((i * 7) % 23);
  return p;
}

TEST(FusedKernels, AddRmsNormIsAddThenNorm) {
  std::mt19937 rng(1);
  Tensor a = randomTensor(DType::BF16, {3, 5, 24}, rng),
         b = randomTensor(DType::BF16, {3, 5, 24}, rng);
  Tensor w = randomTensor(DType::BF16, {24}, rng, -0.5, 0.5);
  KernelAttrs eps = attrs({{"eps", AttrValue::ofFloat(1e-6)}});
  Tensor sum(DType::BF16, {3, 5, 24}), y(DType::BF16, {3, 5, 24});
  EXPECT_OK(run("add_rms_norm", {a, b, w}, {sum, y}, eps));
  Tensor sum2(DType::BF16, {3, 5, 24}), y2(DType::BF16, {3, 5, 24});
  EXPECT_OK(run("add", {a, b}, {sum2}));
  EXPECT_OK(run("rms_norm", {sum2, w}, {y2}, eps));
  EXPECT_TRUE(sameBytes(sum, sum2));
  EXPECT_TRUE(sameBytes(y, y2));
  // The weight must have the normalised size, and the summands one shape.
  EXPECT_FALSE(run("add_rms_norm", {a, b, Tensor(DType::BF16, {23})}, {sum, y}, eps).ok());
  EXPECT_FALSE(run("add_rms_norm", {a, Tensor(DType::BF16, {3, 5, 23}), w}, {sum, y}, eps).ok());
}

TEST(FusedKernels, RmsNormGradAddendIsAddedBeforeRounding) {
  std::mt19937 rng(2);
  KernelAttrs eps = attrs({{"eps", AttrValue::ofFloat(1e-6)}});
  // fp32: the addend changes nothing but the sum.
  Tensor x = randomTensor(DType::F32, {6, 32}, rng), w = randomTensor(DType::F32, {32}, rng);
  Tensor dy = randomTensor(DType::F32, {6, 32}, rng), r = randomTensor(DType::F32, {6, 32}, rng);
  Tensor dx = Tensor::f32({6, 32}), dw = Tensor::f32({32});
  Tensor dx0 = Tensor::f32({6, 32}), dw0 = Tensor::f32({32}), sum = Tensor::f32({6, 32});
  EXPECT_OK(run("rms_norm_grad", {x, w, dy, r}, {dx, dw}, eps));
  EXPECT_OK(run("rms_norm_grad", {x, w, dy}, {dx0, dw0}, eps));
  EXPECT_OK(run("add", {r, dx0}, {sum}));
  EXPECT_TRUE(sameBytes(dx, sum));
  EXPECT_TRUE(sameBytes(dw, dw0));

  // bf16: the addend joins the fp32 gradient before its one rounding (the
  // unfused pair would round twice).
  Tensor xb = randomTensor(DType::BF16, {6, 32}, rng), wb = randomTensor(DType::BF16, {32}, rng);
  Tensor dyb = randomTensor(DType::BF16, {6, 32}, rng),
         rb = randomTensor(DType::BF16, {6, 32}, rng);
  Tensor dxb(DType::BF16, {6, 32}), dxf = Tensor::f32({6, 32}), want(DType::BF16, {6, 32});
  EXPECT_OK(run("rms_norm_grad", {xb, wb, dyb, rb}, {dxb, dw}, eps));
  EXPECT_OK(run("rms_norm_grad", {xb, wb, dyb}, {dxf, dw0}, eps));
  for (int64_t i = 0; i < want.numel(); ++i)
    want.view.store(i, rb.view.load(i) + dxf.f()[i]);
  EXPECT_TRUE(sameBytes(dxb, want));

  // An addend of another type or shape is an error naming it.
  Status s = run("rms_norm_grad", {xb, wb, dyb, r}, {dxb, dw}, eps);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("addend"), std::string::npos) << s.message();
}

TEST(FusedKernels, RmsNormRopeIsNormThenRope) {
  std::mt19937 rng(3);
  Tensor x = randomTensor(DType::BF16, {2, 5, 3, 16}, rng, -3, 3);
  Tensor w = randomTensor(DType::BF16, {16}, rng, -0.5, 0.5);
  Tensor pos = positions(2, 5);
  KernelAttrs a = normRopeAttrs();
  Tensor y(DType::BF16, {2, 5, 3, 16}), n(DType::BF16, {2, 5, 3, 16}),
      y2(DType::BF16, {2, 5, 3, 16});
  EXPECT_OK(run("rms_norm_rope", {x, w, pos}, {y}, a));
  EXPECT_OK(run("rms_norm", {x, w}, {n}, a));
  EXPECT_OK(run("rope", {n, pos}, {y2}, a));
  EXPECT_TRUE(sameBytes(y, y2));
  EXPECT_FALSE(run("rms_norm_rope", {x, Tensor(DType::BF16, {8}), pos}, {y}, a).ok());
  EXPECT_FALSE(run("rms_norm_rope", {x, w, positions(2, 4)}, {y}, a).ok());
}

TEST(FusedKernels, RmsNormRopeGradMatchesFiniteDifferences) {
  std::mt19937 rng(4);
  Tensor x = randomTensor(DType::F32, {2, 3, 2, 12}, rng, -2, 2);
  Tensor w = randomTensor(DType::F32, {12}, rng, -0.5, 0.5);
  Tensor pos = positions(2, 3), r = randomTensor(DType::F32, {2, 3, 2, 12}, rng);
  KernelAttrs a = normRopeAttrs();
  Tensor dx = Tensor::f32({2, 3, 2, 12}), dw = Tensor::f32({12});
  EXPECT_OK(run("rms_norm_rope_grad", {x, w, pos, r}, {dx, dw}, a));
  Tensor y = Tensor::f32({2, 3, 2, 12});
  auto loss = [&] {
    Status s = run("rms_norm_rope", {x, w, pos}, {y}, a);
    EXPECT_TRUE(s.ok()) << s.message();
    return dot(r.values(), y.values());
  };
  checkGradient("input", loss, x, dx, rng);
  checkGradient("weight", loss, w, dw, rng);
  EXPECT_FALSE(
      run("rms_norm_rope_grad", {x, w, pos, Tensor::f32({2, 3, 2, 10})}, {dx, dw}, a).ok());
}

} // namespace
