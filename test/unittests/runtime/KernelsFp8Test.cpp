//===- KernelsFp8Test.cpp - e4m3 conversions and products on the CPU ------===//
//
// The e4m3 rounding against hand-worked values and every code's round trip;
// quantize_fp8's scales and values, transposed or not; the scaled products
// against a double-precision loop over the same quantized values, and near
// the unquantized product.
//
//===----------------------------------------------------------------------===//

#include "KernelTesting.h"

#include <cmath>
#include <cstring>

using namespace g3rt;
using namespace g3rt::testing;

namespace {

TEST(E4M3, RoundsToNearestEvenAndSaturates) {
  struct Case {
    float value;
    uint8_t code;
  };
  const Case cases[] = {
      {0.0f, 0x00},     {-0.0f, 0x80},    {1.0f, 0x38},    {-1.5f, 0xbc},
      {448.0f, 0x7e},   {500.0f, 0x7e},   {-1e9f, 0xfe},   {0x1p-9f, 0x01},
      {0x1p-10f, 0x00}, {0x3p-10f, 0x02}, {0x1p-6f, 0x08}, {1.0625f, 0x38},
      {1.1875f, 0x3a},  {0.3f, 0x2a},     {240.0f, 0x77},  {0x1.fp-7f, 0x08},
  };
  for (const Case &c : cases)
    EXPECT_EQ(floatToE4M3(c.value), c.code) << c.value;
  EXPECT_EQ(floatToE4M3(NAN) & 0x7f, 0x7f);
  EXPECT_TRUE(std::isnan(e4m3ToFloat(0x7f)));
}

TEST(E4M3, EveryFiniteCodeRoundTrips) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f)
      continue;
    float v = e4m3ToFloat(uint8_t(code));
    EXPECT_EQ(floatToE4M3(v), code) << code << " = " << v;
    EXPECT_LE(std::fabs(v), kE4M3Max);
  }
}

/// The quantized values of a float tensor, as floats.
std::vector<float> decoded(const Tensor &q) {
  std::vector<float> out(size_t(q.numel()));
  for (int64_t i = 0; i < q.numel(); ++i)
    out[size_t(i)] = e4m3ToFloat(static_cast<const uint8_t *>(q.view.data)[i]);
  return out;
}

/// quantize_fp8 with `transpose` of w [E, N, K] is quantize_fp8 of each
/// expert's transpose.
void expectTransposeQuantized(const Tensor &w) {
  const int64_t E = w.view.shape[0], N = w.view.shape[1], K = w.view.shape[2];
  Tensor qt(DType::F8E4M3, {E, K, N}), st = Tensor::f32({E, K}), wt(DType::BF16, {E, K, N});
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        wt.view.store((e * K + k) * N + n, w.view.load((e * N + n) * K + k));
  Tensor qt2(DType::F8E4M3, {E, K, N}), st2 = Tensor::f32({E, K});
  EXPECT_OK(run("quantize_fp8", {w}, {qt, st}, attrs({{"transpose", AttrValue::ofBool(true)}})));
  EXPECT_OK(run("quantize_fp8", {wt}, {qt2, st2}));
  EXPECT_EQ(decoded(qt), decoded(qt2)) << "K " << K;
  EXPECT_EQ(st.values(), st2.values()) << "K " << K;
}

TEST(Fp8Kernels, QuantizeScalesEachRowToItsLargestMagnitude) {
  std::mt19937 rng(3);
  const int64_t E = 2, N = 5, K = 7;
  Tensor w = randomTensor(DType::BF16, {E, N, K}, rng);
  for (int64_t k = 0; k < K; ++k) // a row of zeros: scale 1, values 0
    w.view.store(N * K + 2 * K + k, 0.0f);
  Tensor q(DType::F8E4M3, {E, N, K}), s = Tensor::f32({E, N});
  EXPECT_OK(run("quantize_fp8", {w}, {q, s}));
  std::vector<float> qv = decoded(q);
  for (int64_t r = 0; r < E * N; ++r) {
    float amax = 0, qmax = 0;
    for (int64_t k = 0; k < K; ++k) {
      amax = std::max(amax, std::fabs(w.view.load(r * K + k)));
      qmax = std::max(qmax, std::fabs(qv[size_t(r * K + k)]));
    }
    if (amax == 0) {
      EXPECT_EQ(s.f()[r], 1.0f);
      EXPECT_EQ(qmax, 0.0f);
      continue;
    }
    EXPECT_EQ(s.f()[r], amax / 448.0f) << r;
    EXPECT_EQ(qmax, 448.0f) << r;
    const float inv = 448.0f / amax;
    for (int64_t k = 0; k < K; ++k)
      EXPECT_EQ(qv[size_t(r * K + k)], e4m3ToFloat(floatToE4M3(w.view.load(r * K + k) * inv)));
  }

  expectTransposeQuantized(w);
  // Columns gathered in blocks of 32: several, the last one partial.
  expectTransposeQuantized(randomTensor(DType::BF16, {E, N, 70}, rng));

  expectErrorNaming(run("quantize_fp8", {w}, {Tensor(DType::BF16, {E, N, K}), s}), "quantize_fp8",
                    "F8_E4M3");
  expectErrorNaming(run("quantize_fp8", {w}, {q, Tensor::f32({E, K})}), "quantize_fp8", "scale");
}

TEST(Fp8Kernels, ScaledProductsAreTheProductsOfTheQuantizedValues) {
  std::mt19937 rng(11);
  const int64_t E = 2, M = 9, N = 6, K = 32;
  Tensor x = randomTensor(DType::BF16, {M, K}, rng), w = randomTensor(DType::BF16, {E, N, K}, rng);
  Tensor a = randomTensor(DType::BF16, {M, N}, rng);
  Tensor q(DType::F8E4M3, {E, N, K}), s = Tensor::f32({E, N});
  EXPECT_OK(run("quantize_fp8", {w}, {q, s}));
  // The input's rows quantized as quantize_fp8 quantizes a weight's.
  Tensor qx(DType::F8E4M3, {1, M, K}), sx = Tensor::f32({1, M});
  Tensor x3(DType::BF16, {1, M, K});
  std::memcpy(x3.view.data, x.view.data, x.view.bytes());
  EXPECT_OK(run("quantize_fp8", {x3}, {qx, sx}));
  std::vector<float> qw = decoded(q), qxv = decoded(qx);
  auto want = [&](int64_t e, int64_t m, int64_t n) {
    double acc = 0;
    for (int64_t k = 0; k < K; ++k)
      acc += double(qxv[size_t(m * K + k)]) * qw[size_t((e * N + n) * K + k)];
    return acc * sx.f()[m] * s.f()[e * N + n];
  };
  auto exact = [&](int64_t e, int64_t m, int64_t n) {
    double acc = 0;
    for (int64_t k = 0; k < K; ++k)
      acc += double(x.view.load(m * K + k)) * w.view.load((e * N + n) * K + k);
    return acc;
  };

  // scaled_linear on expert 1's weight.
  Tensor q1(DType::F8E4M3, {N, K}), s1 = Tensor::f32({N});
  std::memcpy(q1.view.data, static_cast<char *>(q.view.data) + N * K, size_t(N * K));
  std::memcpy(s1.view.data, s.f() + N, size_t(N) * sizeof(float));
  Tensor y = Tensor::f32({M, N}), ya(DType::BF16, {M, N});
  EXPECT_OK(run("scaled_linear", {x, q1, s1}, {y}));
  EXPECT_OK(run("scaled_linear", {x, q1, s1, a}, {ya}));
  double worst = 0, scale = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      G3RT_EXPECT_CLOSE(y.f()[m * N + n], want(1, m, n), 1e-5, 1e-6);
      G3RT_EXPECT_CLOSE(ya.view.load(m * N + n), want(1, m, n) + a.view.load(m * N + n), 8e-3,
                        1e-2);
      worst = std::max(worst, std::fabs(want(1, m, n) - exact(1, m, n)));
      scale = std::max(scale, std::fabs(exact(1, m, n)));
    }
  // e4m3 keeps 3 mantissa bits; over 32 terms the error stays a few percent.
  EXPECT_LT(worst, 0.06 * scale);
  EXPECT_GT(worst, 0.0) << "the product was not quantized";

  // scaled_expert_linear: rows 0..3 on expert 0, 3..7 on expert 1, row 8
  // past the last expert gets the addend.
  Tensor off = Tensor::i32({E + 1});
  const int32_t offsets[] = {0, 3, 8};
  std::memcpy(off.i(), offsets, sizeof(offsets));
  Tensor ye = Tensor::f32({M, N}), a32 = Tensor::f32({M, N});
  for (int64_t i = 0; i < M * N; ++i)
    a32.f()[i] = a.view.load(i);
  EXPECT_OK(run("scaled_expert_linear", {x, off, q, s, a32}, {ye}));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double base = m < 3 ? want(0, m, n) : m < 8 ? want(1, m, n) : 0.0;
      G3RT_EXPECT_CLOSE(ye.f()[m * N + n], base + a32.f()[m * N + n], 1e-5, 1e-6);
    }

  expectErrorNaming(run("scaled_linear", {x, w, s1}, {y}), "scaled_linear", "weight");
  expectErrorNaming(run("scaled_linear", {x, q1, Tensor::f32({N + 1})}, {y}), "scaled_linear",
                    "scale");
  expectErrorNaming(run("scaled_expert_linear", {x, off, q, s, Tensor::f32({M, N + 1})}, {ye}),
                    "scaled_expert_linear", "addend");
}

/// scaled_expert_linear's LoRA term (--g3moe-fp8-base keeps an expert
/// product's fused term): h·L_eᵀ with L [E, N, r], or [E, r, N] with
/// `lowrank_transposed`, joins the scaled fp32 product before the addend;
/// with a dropout the term alone is rounded to the result's type and
/// dropped. Against the same call without the term plus the term computed
/// here in double.
TEST(Fp8Kernels, ScaledExpertProductsAddTheirLowRankTerm) {
  std::mt19937 rng(12);
  const int64_t E = 2, M = 9, N = 64, K = 32, r = 4;
  Tensor x = randomTensor(DType::BF16, {M, K}, rng), w = randomTensor(DType::BF16, {E, N, K}, rng);
  Tensor h = randomTensor(DType::BF16, {M, r}, rng), b = randomTensor(DType::BF16, {E, N, r}, rng);
  Tensor a = randomTensor(DType::F32, {M, N}, rng);
  Tensor q(DType::F8E4M3, {E, N, K}), s = Tensor::f32({E, N});
  EXPECT_OK(run("quantize_fp8", {w}, {q, s}));
  // The A layout of the same values: at[e, j, n] = b[e, n, j].
  Tensor at(DType::BF16, {E, r, N});
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < r; ++j)
        at.view.store((e * r + j) * N + n, b.view.load((e * N + n) * r + j));
  Tensor off = Tensor::i32({E + 1});
  const int32_t offsets[] = {0, 3, 8};
  std::memcpy(off.i(), offsets, sizeof(offsets));
  auto term = [&](int64_t m, int64_t n) {
    if (m >= 8)
      return 0.0;
    const int64_t e = m < 3 ? 0 : 1;
    double acc = 0;
    for (int64_t j = 0; j < r; ++j)
      acc += double(h.view.load(m * r + j)) * b.view.load((e * N + n) * r + j);
    return acc;
  };
  Tensor base = Tensor::f32({M, N});
  EXPECT_OK(run("scaled_expert_linear", {x, off, q, s}, {base}));
  // Every other element of the result kept (p = 0.5: kept ones doubled).
  Tensor mask = Tensor::i32({M * N / 32});
  for (int64_t i = 0; i < mask.numel(); ++i)
    mask.i()[i] = int32_t(0x55555555);
  for (bool transposed : {false, true})
    for (bool dropped : {false, true}) {
      SCOPED_TRACE(std::string(transposed ? "transposed" : "B") + (dropped ? ", dropped" : ""));
      KernelAttrs kattrs;
      if (transposed)
        kattrs.set("lowrank_transposed", AttrValue::ofBool(true));
      if (dropped)
        kattrs.set("dropout_p", AttrValue::ofFloat(0.5));
      std::vector<Tensor> ins = {x, off, q, s, a, h, transposed ? at : b};
      if (dropped)
        ins.push_back(mask);
      Tensor y = Tensor::f32({M, N});
      Status st = run("scaled_expert_linear", ins, {y}, kattrs);
      ASSERT_TRUE(st.ok()) << st.message();
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          const int64_t i = m * N + n;
          const double t = !dropped ? term(m, n) : i % 2 == 0 ? 2 * term(m, n) : 0.0;
          G3RT_EXPECT_CLOSE(y.f()[i], base.f()[i] + t + a.view.load(i), 1e-5, 1e-5);
        }
    }
  expectErrorNaming(run("scaled_expert_linear", {x, off, q, s, h, at}, {base}),
                    "scaled_expert_linear", "lowrank_weight");
  expectErrorNaming(run("scaled_expert_linear", {x, off, q, s, mask}, {base},
                        attrs({{"dropout_p", AttrValue::ofFloat(0.5)}})),
                    "scaled_expert_linear", "lowrank term");
}

} // namespace
