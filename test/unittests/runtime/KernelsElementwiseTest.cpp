//===- KernelsElementwiseTest.cpp - elementwise CPU kernel tests ----------===//
//
// The elementwise and plumbing kernels against direct evaluations of their
// formulas in docs/kernels.md, their backward kernels against central
// differences of the forward ones, bf16 round-to-nearest-even on values whose
// rounding is known, and the properties the step relies on from
// random_uniform (range, mean, a pure function of key and stream).
//
//===----------------------------------------------------------------------===//

#include "KernelTesting.h"

#include "runtime/base/parallel.h"
#include "runtime/base/random.h"

#include <cstring>

using namespace g3rt;
using namespace g3rt::testing;

namespace {

double geluRef(double g) {
  return 0.5 * g * (1 + std::tanh(std::sqrt(2 / M_PI) * (g + 0.044715 * g * g * g)));
}

TEST(ElementwiseKernels, AddMulScaleValues) {
  std::mt19937 rng(1);
  Tensor a = randomTensor(DType::F32, {3, 5}, rng), b = randomTensor(DType::F32, {3, 5}, rng);
  Tensor sum = Tensor::f32({3, 5}), prod = Tensor::f32({3, 5}), scaled = Tensor::f32({3, 5});
  EXPECT_OK(run("add", {a, b}, {sum}));
  EXPECT_OK(run("mul", {a, b}, {prod}));
  EXPECT_OK(run("scale", {a}, {scaled}, attrs({{"factor", AttrValue::ofFloat(-2.5)}})));
  for (int64_t i = 0; i < a.numel(); ++i) {
    EXPECT_EQ(sum.f()[i], a.f()[i] + b.f()[i]);
    EXPECT_EQ(prod.f()[i], a.f()[i] * b.f()[i]);
    EXPECT_EQ(scaled.f()[i], -2.5f * a.f()[i]);
  }
}

TEST(ElementwiseKernels, AddAliasedOutput) {
  std::mt19937 rng(2);
  // Large enough to span several blocks and threads.
  Tensor a = randomTensor(DType::F32, {300, 301}, rng),
         b = randomTensor(DType::F32, {300, 301}, rng);
  Tensor want = Tensor::f32({300, 301});
  EXPECT_OK(run("add", {a, b}, {want}));
  Tensor acc = a.clone();
  EXPECT_OK(run("add", {acc, b}, {acc}));
  EXPECT_EQ(std::memcmp(acc.f(), want.f(), size_t(want.numel()) * 4), 0);
  Tensor acc2 = b.clone();
  EXPECT_OK(run("add", {a, acc2}, {acc2}));
  EXPECT_EQ(std::memcmp(acc2.f(), want.f(), size_t(want.numel()) * 4), 0);
}

TEST(ElementwiseKernels, AddBF16RoundsOnce) {
  Tensor a(DType::BF16, {2}), b(DType::BF16, {2}), y(DType::BF16, {2});
  a.view.store(0, 1.0f);
  b.view.store(0, 0.00390625f); // 1 + 2^-8: a tie, rounds to even (1.0)
  a.view.store(1, 1.0078125f);
  b.view.store(1, 0.00390625f); // 1 + 3·2^-8: a tie, rounds up to 1 + 2^-6
  EXPECT_OK(run("add", {a, b}, {y}));
  EXPECT_EQ(y.view.load(0), 1.0f);
  EXPECT_EQ(y.view.load(1), 1.015625f);
}

TEST(ElementwiseKernels, ConvertRoundsToNearestEven) {
  // Ties go to the even mantissa; one fp32 ulp above a tie rounds up.
  const float in[] = {
      1.00390625f, 1.01171875f, -1.00390625f, 1.0078125f, std::nextafter(1.00390625f, 2.0f), 3.0f};
  const float want[] = {1.0f, 1.015625f, -1.0f, 1.0078125f, 1.0078125f, 3.0f};
  Tensor x = Tensor::f32({6}), y(DType::BF16, {6}), back = Tensor::f32({6});
  std::memcpy(x.f(), in, sizeof(in));
  EXPECT_OK(run("convert", {x}, {y}));
  EXPECT_OK(run("convert", {y}, {back}));
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(back.f()[i], want[i]) << "element " << i;
}

TEST(ElementwiseKernels, CopyBytesAndConverts) {
  Tensor ids = Tensor::i32({2, 3}), out = Tensor::i32({6});
  for (int i = 0; i < 6; ++i)
    ids.i()[i] = 1000003 * i - 7;
  EXPECT_OK(run("copy", {ids}, {out}));
  EXPECT_EQ(std::memcmp(ids.i(), out.i(), 24), 0);

  Tensor x = Tensor::f32({3}), y(DType::BF16, {3});
  x.f()[0] = 1.01171875f;
  x.f()[1] = -2.0f;
  x.f()[2] = 0.1f;
  EXPECT_OK(run("copy", {x}, {y}));
  EXPECT_EQ(y.view.load(0), 1.015625f);
  EXPECT_EQ(y.view.load(1), -2.0f);
  EXPECT_EQ(y.view.load(2), roundToBF16(0.1f));

  Tensor wrong = Tensor::f32({4});
  Status s = run("copy", {x}, {wrong});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("copy"), std::string::npos) << s.message();
}

TEST(ElementwiseKernels, SplitAndConcatRowsAreInverse) {
  Tensor x(DType::BF16, {5, 3}), a(DType::BF16, {2, 3}), b(DType::BF16, {3, 3});
  for (int64_t i = 0; i < x.numel(); ++i)
    x.view.store(i, float(i) - 4.5f);
  EXPECT_OK(run("split_rows", {x}, {a, b}));
  for (int64_t i = 0; i < 6; ++i)
    EXPECT_EQ(a.view.load(i), x.view.load(i));
  for (int64_t i = 0; i < 9; ++i)
    EXPECT_EQ(b.view.load(i), x.view.load(6 + i));
  Tensor y(DType::BF16, {5, 3});
  EXPECT_OK(run("concat_rows", {a, b}, {y}));
  EXPECT_EQ(std::memcmp(x.view.data, y.view.data, x.view.bytes()), 0);

  Tensor idx = Tensor::i32({4, 2}), i0 = Tensor::i32({1, 2}), i1 = Tensor::i32({3, 2});
  for (int i = 0; i < 8; ++i)
    idx.i()[i] = 7 * i - 3;
  EXPECT_OK(run("split_rows", {idx}, {i0, i1}));
  EXPECT_EQ(i1.i()[0], idx.i()[2]);
  EXPECT_EQ(i1.i()[5], idx.i()[7]);

  Tensor short_(DType::BF16, {1, 3}), wide(DType::BF16, {3, 4}), f32 = Tensor::f32({3, 3});
  Status s = run("split_rows", {x}, {a, short_});
  EXPECT_NE(s.message().find("parts have 3 rows in all"), std::string::npos) << s.message();
  s = run("concat_rows", {a, wide}, {y});
  EXPECT_NE(s.message().find("is not a block of rows"), std::string::npos) << s.message();
  EXPECT_FALSE(run("concat_rows", {a, f32}, {y}).ok()) << "dtypes differ";
}

TEST(ElementwiseKernels, FillEveryElement) {
  Tensor y = Tensor::f32({4, 7}), yb(DType::BF16, {3}), yi = Tensor::i32({5});
  EXPECT_OK(run("fill", {}, {y}, attrs({{"value", AttrValue::ofFloat(-1.25)}})));
  EXPECT_OK(run("fill", {}, {yb}, attrs({{"value", AttrValue::ofFloat(0.1)}})));
  EXPECT_OK(run("fill", {}, {yi}, attrs({{"value", AttrValue::ofFloat(7)}})));
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_EQ(y.f()[i], -1.25f);
  for (int64_t i = 0; i < yb.numel(); ++i)
    EXPECT_EQ(yb.view.load(i), roundToBF16(0.1f));
  for (int64_t i = 0; i < yi.numel(); ++i)
    EXPECT_EQ(yi.i()[i], 7);
  EXPECT_FALSE(run("fill", {}, {y}).ok()) << "missing value";
}

Tensor key(int64_t seed, int64_t counter) {
  Tensor k(DType::I64, {2});
  k.view.i64()[0] = seed;
  k.view.i64()[1] = counter;
  return k;
}

TEST(ElementwiseKernels, RandomUniformRangeMeanAndFormula) {
  Tensor y = Tensor::f32({256, 256});
  KernelAttrs a = attrs({{"stream", AttrValue::ofInt(3)},
                         {"low", AttrValue::ofFloat(0.99)},
                         {"high", AttrValue::ofFloat(1.01)}});
  EXPECT_OK(run("random_uniform", {key(1234, 5)}, {y}, a));
  double sum = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    float v = y.f()[i];
    EXPECT_GE(v, 0.99f);
    EXPECT_LE(v, 1.01f);
    sum += v;
    if (i % 997 == 0) {
      EXPECT_EQ(v, float(0.99 + 0.02 * double(uniformAt(1234, 5, 3, uint64_t(i)))));
    }
  }
  // The standard error of the mean of 65536 draws of width 0.02 is ~2e-5.
  EXPECT_NEAR(sum / double(y.numel()), 1.0, 2e-4);

  Tensor u = Tensor::f32({100000});
  EXPECT_OK(run("random_uniform", {key(7, 0)}, {u},
                attrs({{"stream", AttrValue::ofInt(0)},
                       {"low", AttrValue::ofFloat(0)},
                       {"high", AttrValue::ofFloat(1)}})));
  double mean = 0, below = 0;
  for (int64_t i = 0; i < u.numel(); ++i) {
    mean += u.f()[i];
    below += u.f()[i] < 0.25f;
  }
  EXPECT_NEAR(mean / 1e5, 0.5, 0.005);
  EXPECT_NEAR(below / 1e5, 0.25, 0.005);
}

TEST(ElementwiseKernels, RandomUniformDeterminism) {
  auto draw = [](int64_t seed, int64_t counter, int64_t stream) {
    Tensor y = Tensor::f32({64, 33});
    Status s = run("random_uniform", {key(seed, counter)}, {y},
                   attrs({{"stream", AttrValue::ofInt(stream)},
                          {"low", AttrValue::ofFloat(-1)},
                          {"high", AttrValue::ofFloat(1)}}));
    EXPECT_TRUE(s.ok()) << s.message();
    return y.values();
  };
  std::vector<float> base = draw(42, 3, 1);
  EXPECT_EQ(base, draw(42, 3, 1));
  EXPECT_NE(base, draw(42, 3, 2));
  EXPECT_NE(base, draw(42, 4, 1));
  EXPECT_NE(base, draw(43, 3, 1));
  int saved = parallelThreads();
  setParallelThreads(1);
  std::vector<float> serial = draw(42, 3, 1);
  setParallelThreads(4);
  std::vector<float> four = draw(42, 3, 1);
  setParallelThreads(saved);
  EXPECT_EQ(base, serial);
  EXPECT_EQ(base, four);
}

TEST(ElementwiseKernels, RandomUniformBadKey) {
  Tensor bad = Tensor::i32({2}), y = Tensor::f32({4});
  Status s = run("random_uniform", {bad}, {y},
                 attrs({{"stream", AttrValue::ofInt(0)},
                        {"low", AttrValue::ofFloat(0)},
                        {"high", AttrValue::ofFloat(1)}}));
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("random_uniform"), std::string::npos) << s.message();
}

TEST(ElementwiseKernels, DropoutValuesAndMaskReuse) {
  std::mt19937 rng(3);
  const double p = 0.3;
  KernelAttrs a = attrs({{"p", AttrValue::ofFloat(p)}});
  Tensor x = randomTensor(DType::F32, {17, 9}, rng),
         u = randomTensor(DType::F32, {17, 9}, rng, 0, 1);
  Tensor y = Tensor::f32({17, 9});
  EXPECT_OK(run("dropout", {x, u}, {y}, a));
  // Kept elements are multiplied by 1 / (1 - p) rounded to fp32, torch's
  // factor (not divided by 1 - p, which rounds differently).
  int kept = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    bool keep = u.f()[i] >= float(p);
    kept += keep;
    EXPECT_EQ(y.f()[i], keep ? x.f()[i] * float(1 / (1 - p)) : 0.0f);
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, x.numel());

  // The backward is dropout of the gradient with the same draws: linear, with
  // the forward's zeros, and the adjoint of the forward.
  Tensor g1 = randomTensor(DType::F32, {17, 9}, rng), g2 = randomTensor(DType::F32, {17, 9}, rng);
  Tensor mix = Tensor::f32({17, 9});
  for (int64_t i = 0; i < mix.numel(); ++i)
    mix.f()[i] = 2 * g1.f()[i] - 3 * g2.f()[i];
  Tensor d1 = Tensor::f32({17, 9}), d2 = Tensor::f32({17, 9}), dmix = Tensor::f32({17, 9});
  EXPECT_OK(run("dropout", {g1, u}, {d1}, a));
  EXPECT_OK(run("dropout", {g2, u}, {d2}, a));
  EXPECT_OK(run("dropout", {mix, u}, {dmix}, a));
  for (int64_t i = 0; i < mix.numel(); ++i) {
    G3RT_EXPECT_CLOSE(dmix.f()[i], 2 * d1.f()[i] - 3 * d2.f()[i], 1e-6, 1e-6);
    bool keep = u.f()[i] >= float(p);
    EXPECT_EQ(d1.f()[i], keep ? g1.f()[i] * float(1 / (1 - p)) : 0.0f);
    EXPECT_EQ(y.f()[i] == 0.0f, !keep) << "the forward's zeros";
  }
  auto loss = [&] {
    Status s = run("dropout", {x, u}, {y}, a);
    EXPECT_TRUE(s.ok()) << s.message();
    return dot(g1.values(), y.values());
  };
  checkGradient("dropout", loss, x, d1, rng);

  EXPECT_FALSE(run("dropout", {x, u}, {y}, attrs({{"p", AttrValue::ofFloat(1.5)}})).ok());
}

TEST(ElementwiseKernels, DropoutAllOrNothing) {
  std::mt19937 rng(4);
  Tensor x = randomTensor(DType::F32, {50}, rng), u = randomTensor(DType::F32, {50}, rng, 0, 1);
  Tensor y = Tensor::f32({50});
  EXPECT_OK(run("dropout", {x, u}, {y}, attrs({{"p", AttrValue::ofFloat(0)}})));
  EXPECT_EQ(y.values(), x.values());
  EXPECT_OK(run("dropout", {x, u}, {y}, attrs({{"p", AttrValue::ofFloat(1)}})));
  for (float v : y.values())
    EXPECT_EQ(v, 0.0f);
}

TEST(ElementwiseKernels, KeyedDropoutIsDropoutOfItsDraw) {
  // Bit for bit the two kernels it replaces, for either float type, sizes
  // that are not a multiple of the generator's block of four, and the
  // extremes of p.
  std::mt19937 rng(5);
  for (DType dtype : {DType::F32, DType::BF16})
    for (double p : {0.0, 0.05, 0.5, 1.0}) {
      SCOPED_TRACE(std::string(dtypeName(dtype)) + " p " + std::to_string(p));
      Tensor x = randomTensor(dtype, {13, 7}, rng);
      Tensor u = Tensor::f32({13, 7}), want(dtype, {13, 7}), got(dtype, {13, 7});
      EXPECT_OK(run("random_uniform", {key(99, 4)}, {u},
                    attrs({{"stream", AttrValue::ofInt(11)},
                           {"low", AttrValue::ofFloat(0)},
                           {"high", AttrValue::ofFloat(1)}})));
      EXPECT_OK(run("dropout", {x, u}, {want}, attrs({{"p", AttrValue::ofFloat(p)}})));
      KernelAttrs a = attrs({{"stream", AttrValue::ofInt(11)}, {"p", AttrValue::ofFloat(p)}});
      EXPECT_OK(run("keyed_dropout", {x, key(99, 4)}, {got}, a));
      EXPECT_EQ(got.values(), want.values());
      // Another stream draws another mask.
      if (p == 0.5) {
        Tensor other(dtype, {13, 7});
        KernelAttrs b = attrs({{"stream", AttrValue::ofInt(12)}, {"p", AttrValue::ofFloat(p)}});
        EXPECT_OK(run("keyed_dropout", {x, key(99, 4)}, {other}, b));
        EXPECT_NE(other.values(), got.values());
      }
    }
  Tensor x = Tensor::f32({4}), y = Tensor::f32({4});
  KernelAttrs a = attrs({{"stream", AttrValue::ofInt(0)}, {"p", AttrValue::ofFloat(0.1)}});
  expectErrorNaming(run("keyed_dropout", {x, Tensor::i32({2})}, {y}, a), "keyed_dropout",
                    "key must be i64 [2]");
  expectErrorNaming(run("keyed_dropout", {x, key(1, 2)}, {y},
                        attrs({{"stream", AttrValue::ofInt(0)}, {"p", AttrValue::ofFloat(1.5)}})),
                    "keyed_dropout", "outside [0, 1]");
}

TEST(ElementwiseKernels, KeyedJitterIsTheProductWithItsConvertedDraw) {
  // Bit for bit random_uniform, convert to the input's type and mul, for
  // each float type and a size that is not a multiple of four.
  std::mt19937 rng(7);
  for (DType dtype : {DType::F32, DType::BF16, DType::F16})
    for (auto [low, high] : {std::pair(0.99, 1.01), std::pair(-2.0, 3.0)}) {
      SCOPED_TRACE(std::string(dtypeName(dtype)) + " [" + std::to_string(low) + ", " +
                   std::to_string(high) + ")");
      Tensor x = randomTensor(dtype, {13, 7}, rng);
      Tensor u = Tensor::f32({13, 7}), factor(dtype, {13, 7}), want(dtype, {13, 7}),
             got(dtype, {13, 7});
      KernelAttrs a = attrs({{"stream", AttrValue::ofInt(3)},
                             {"low", AttrValue::ofFloat(low)},
                             {"high", AttrValue::ofFloat(high)}});
      EXPECT_OK(run("random_uniform", {key(41, 2)}, {u}, a));
      EXPECT_OK(run("convert", {u}, {factor}));
      EXPECT_OK(run("mul", {x, factor}, {want}));
      EXPECT_OK(run("keyed_jitter", {x, key(41, 2)}, {got}, a));
      EXPECT_EQ(got.values(), want.values());
      EXPECT_NE(got.values(), x.values());
    }
  Tensor x(DType::BF16, {4}), y = Tensor::f32({4});
  KernelAttrs a = attrs({{"stream", AttrValue::ofInt(0)},
                         {"low", AttrValue::ofFloat(0.9)},
                         {"high", AttrValue::ofFloat(1.1)}});
  expectErrorNaming(run("keyed_jitter", {x, key(1, 2)}, {y}, a), "keyed_jitter", "differ");
  Tensor z(DType::BF16, {4});
  expectErrorNaming(run("keyed_jitter", {x, key(1, 2)}, {z},
                        attrs({{"stream", AttrValue::ofInt(0)},
                               {"low", AttrValue::ofFloat(1.1)},
                               {"high", AttrValue::ofFloat(0.9)}})),
                    "keyed_jitter", "low < high");
}

TEST(ElementwiseKernels, GeluTanhMulValues) {
  std::mt19937 rng(5);
  Tensor g = randomTensor(DType::F32, {4, 33}, rng, -4, 4),
         up = randomTensor(DType::F32, {4, 33}, rng);
  Tensor y = Tensor::f32({4, 33});
  EXPECT_OK(run("gelu_tanh_mul", {g, up}, {y}));
  for (int64_t i = 0; i < y.numel(); ++i)
    G3RT_EXPECT_CLOSE(y.f()[i], geluRef(g.f()[i]) * up.f()[i], 1e-5, 1e-6);
  // Known points: gelu(0) = 0, gelu(z) -> z for large z, -> 0 for very negative z.
  Tensor g2 = Tensor::f32({3}), u2 = Tensor::f32({3}), y2 = Tensor::f32({3});
  g2.f()[0] = 0;
  g2.f()[1] = 10;
  g2.f()[2] = -10;
  for (int i = 0; i < 3; ++i)
    u2.f()[i] = 2;
  EXPECT_OK(run("gelu_tanh_mul", {g2, u2}, {y2}));
  EXPECT_EQ(y2.f()[0], 0.0f);
  EXPECT_NEAR(y2.f()[1], 20.0f, 1e-5);
  EXPECT_NEAR(y2.f()[2], 0.0f, 1e-5);
}

TEST(ElementwiseKernels, GeluTanhMulGradMatchesFiniteDifferences) {
  std::mt19937 rng(6);
  Tensor g = randomTensor(DType::F32, {5, 37}, rng, -3, 3),
         up = randomTensor(DType::F32, {5, 37}, rng);
  Tensor r = randomTensor(DType::F32, {5, 37}, rng);
  Tensor y = Tensor::f32({5, 37}), dg = Tensor::f32({5, 37}), du = Tensor::f32({5, 37});
  EXPECT_OK(run("gelu_tanh_mul_grad", {g, up, r}, {dg, du}));
  auto loss = [&] {
    Status s = run("gelu_tanh_mul", {g, up}, {y});
    EXPECT_TRUE(s.ok()) << s.message();
    return dot(r.values(), y.values());
  };
  checkGradient("gate", loss, g, dg, rng);
  checkGradient("up", loss, up, du, rng);
  // Per element as well: up_grad = dy·gelu(g).
  for (int64_t i = 0; i < du.numel(); ++i)
    G3RT_EXPECT_CLOSE(du.f()[i], r.f()[i] * geluRef(g.f()[i]), 1e-5, 1e-6);
}

TEST(ElementwiseKernels, ScaleMulAddGradients) {
  std::mt19937 rng(7);
  Tensor a = randomTensor(DType::F32, {6, 11}, rng), b = randomTensor(DType::F32, {6, 11}, rng);
  Tensor r = randomTensor(DType::F32, {6, 11}, rng), y = Tensor::f32({6, 11});
  KernelAttrs f = attrs({{"factor", AttrValue::ofFloat(0.75)}});

  // scale's backward is scale with the same factor.
  Tensor ds = Tensor::f32({6, 11});
  EXPECT_OK(run("scale", {r}, {ds}, f));
  checkGradient(
      "scale",
      [&] {
        EXPECT_TRUE(run("scale", {a}, {y}, f).ok());
        return dot(r.values(), y.values());
      },
      a, ds, rng);

  // mul's backward multiplies the cotangent by the other operand.
  Tensor da = Tensor::f32({6, 11}), db = Tensor::f32({6, 11});
  EXPECT_OK(run("mul", {r, b}, {da}));
  EXPECT_OK(run("mul", {r, a}, {db}));
  auto mulLoss = [&] {
    EXPECT_TRUE(run("mul", {a, b}, {y}).ok());
    return dot(r.values(), y.values());
  };
  checkGradient("mul lhs", mulLoss, a, da, rng);
  checkGradient("mul rhs", mulLoss, b, db, rng);

  // add's backward passes the cotangent to both operands.
  auto addLoss = [&] {
    EXPECT_TRUE(run("add", {a, b}, {y}).ok());
    return dot(r.values(), y.values());
  };
  checkGradient("add lhs", addLoss, a, r, rng);
  checkGradient("add rhs", addLoss, b, r, rng);
}

TEST(ElementwiseKernels, MixedPrecisionOperands) {
  std::mt19937 rng(8);
  Tensor a = randomTensor(DType::BF16, {40}, rng), b = randomTensor(DType::F32, {40}, rng);
  Tensor y = Tensor::f32({40}), yb(DType::BF16, {40});
  EXPECT_OK(run("mul", {a, b}, {y}));
  EXPECT_OK(run("mul", {a, b}, {yb}));
  for (int64_t i = 0; i < 40; ++i) {
    float want = a.view.load(i) * b.f()[i];
    EXPECT_EQ(y.f()[i], want);
    EXPECT_EQ(yb.view.load(i), roundToBF16(want));
  }
}

TEST(ElementwiseKernels, ShapeAndCountErrors) {
  Tensor a = Tensor::f32({4}), b = Tensor::f32({5}), y = Tensor::f32({4});
  Status s = run("add", {a, b}, {y});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("add"), std::string::npos) << s.message();
  s = run("gelu_tanh_mul_grad", {a, a}, {y, y});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("gelu_tanh_mul_grad"), std::string::npos) << s.message();
  s = run("scale", {a}, {y});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("factor"), std::string::npos) << s.message();
  Tensor ids = Tensor::i32({4});
  EXPECT_FALSE(run("mul", {a, ids}, {y}).ok());
}

} // namespace
