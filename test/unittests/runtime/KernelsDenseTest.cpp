//===- KernelsDenseTest.cpp - dense-layer CPU kernel tests ----------------===//
//
// Every backward kernel of the dense layers against central differences of
// its forward kernel (fp32, random directions and cotangents), the forward
// kernels against straightforward loop references and hand-computed values,
// the index errors each kernel must report, and results that are bitwise the
// same for any thread count.
//
//===----------------------------------------------------------------------===//

#include "KernelTesting.h"

#include "runtime/base/parallel.h"

#include <cstring>

using namespace g3rt;
using namespace g3rt::testing;

namespace {

Tensor randomF32(std::vector<int64_t> shape, std::mt19937 &rng, float lo = -1, float hi = 1) {
  return randomTensor(DType::F32, std::move(shape), rng, lo, hi);
}

Tensor indices(std::vector<int64_t> shape, const std::vector<int32_t> &values) {
  Tensor t = Tensor::i32(std::move(shape));
  EXPECT_EQ(size_t(t.numel()), values.size());
  std::memcpy(t.i(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

Tensor scalar(float v) {
  Tensor t = Tensor::f32({});
  t.f()[0] = v;
  return t;
}

/// <r, y> after running `kernel` on `in` into `y`: the scalar whose gradient
/// the backward kernels compute for cotangent r.
std::function<double()> innerLoss(std::string kernel, std::vector<Tensor> in, Tensor y, Tensor r,
                                  KernelAttrs a = {}) {
  return [=] {
    Status s = run(kernel, in, {y}, a);
    EXPECT_TRUE(s.ok()) << s.message();
    return dot(r.values(), y.values());
  };
}

/// y[m, o] = Σ_i x[m, i]·w[o, i] in double, the reference of every product.
std::vector<double> referenceLinear(const Tensor &x, const Tensor &w, int64_t M, int64_t in,
                                    int64_t out) {
  std::vector<double> y(size_t(M * out), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i)
        s += double(x.view.load(m * in + i)) * w.view.load(o * in + i);
      y[size_t(m * out + o)] = s;
    }
  return y;
}

//===----------------------------------------------------------------------===//
// Embedding
//===----------------------------------------------------------------------===//

TEST(DenseKernels, EmbeddingScalesRows) {
  std::mt19937 rng(1);
  Tensor table = randomTensor(DType::BF16, {10, 6}, rng);
  Tensor ids = indices({2, 3}, {3, 0, 9, 3, 4, 1});
  Tensor y(DType::BF16, {2, 3, 6}), yf = Tensor::f32({2, 3, 6});
  KernelAttrs a = attrs({{"scale", AttrValue::ofFloat(2.5)}, {"padding_idx", AttrValue::ofInt(0)}});
  EXPECT_OK(run("embedding", {ids, table}, {y}, a));
  EXPECT_OK(run("embedding", {ids, table}, {yf}, a));
  for (int64_t t = 0; t < 6; ++t)
    for (int64_t h = 0; h < 6; ++h) {
      float want = table.view.load(ids.i()[t] * 6 + h) * 2.5f;
      EXPECT_EQ(yf.f()[t * 6 + h], want);
      EXPECT_EQ(y.view.load(t * 6 + h), roundToBF16(want));
    }
}

TEST(DenseKernels, EmbeddingGradPaddingRowAndRepeats) {
  Tensor ids = indices({5}, {2, 0, 2, 4, 2});
  Tensor dy = Tensor::f32({5, 3});
  for (int64_t i = 0; i < dy.numel(); ++i)
    dy.f()[i] = float(i + 1);
  Tensor dt = Tensor::f32({6, 3});
  std::mt19937 rng(9);
  fillUniform(dt, rng); // stale contents to be overwritten
  EXPECT_OK(run("embedding_grad", {dy, ids}, {dt},
                attrs({{"scale", AttrValue::ofFloat(0.5)}, {"padding_idx", AttrValue::ofInt(0)}})));
  for (int64_t h = 0; h < 3; ++h) {
    EXPECT_EQ(dt.f()[0 * 3 + h], 0.0f) << "padding row";
    EXPECT_EQ(dt.f()[1 * 3 + h], 0.0f);
    // Row 2 collects tokens 0, 2 and 4.
    EXPECT_EQ(dt.f()[2 * 3 + h], 0.5f * ((1 + h) + (7 + h) + (13 + h)));
    EXPECT_EQ(dt.f()[3 * 3 + h], 0.0f);
    EXPECT_EQ(dt.f()[4 * 3 + h], 0.5f * (10 + h));
    EXPECT_EQ(dt.f()[5 * 3 + h], 0.0f);
  }
}

TEST(DenseKernels, EmbeddingGradMatchesFiniteDifferences) {
  std::mt19937 rng(2);
  Tensor table = randomF32({12, 7}, rng);
  Tensor ids = indices({3, 4}, {1, 5, 5, 11, 0, 3, 5, 1, 7, 7, 2, 10});
  Tensor r = randomF32({3, 4, 7}, rng), dt = Tensor::f32({12, 7});
  // No padding row here: the table gradient is then the exact one.
  KernelAttrs a =
      attrs({{"scale", AttrValue::ofFloat(1.75)}, {"padding_idx", AttrValue::ofInt(-1)}});
  EXPECT_OK(run("embedding_grad", {r, ids}, {dt}, a));
  checkGradient("table", innerLoss("embedding", {ids, table}, Tensor::f32({3, 4, 7}), r, a), table,
                dt, rng);
}

TEST(DenseKernels, EmbeddingIdOutOfRange) {
  Tensor table = Tensor::f32({8, 4}), y = Tensor::f32({3, 4}), dt = Tensor::f32({8, 4});
  KernelAttrs a = attrs({{"scale", AttrValue::ofFloat(1)}, {"padding_idx", AttrValue::ofInt(0)}});
  expectErrorNaming(run("embedding", {indices({3}, {1, 8, 2}), table}, {y}, a), "embedding", "8");
  expectErrorNaming(run("embedding", {indices({3}, {1, 2, -1}), table}, {y}, a), "embedding", "-1");
  expectErrorNaming(run("embedding_grad", {y, indices({3}, {1, 12, 2})}, {dt}, a), "embedding_grad",
                    "12");
}

//===----------------------------------------------------------------------===//
// RMSNorm
//===----------------------------------------------------------------------===//

TEST(DenseKernels, RmsNormGemmaGain) {
  // mean(x²) = 7.5, so each x is divided by sqrt(7.5 + eps) and scaled by 1 + w.
  Tensor x = Tensor::f32({1, 4}), w = Tensor::f32({4}), y = Tensor::f32({1, 4});
  const float xs[] = {1, 2, 3, 4}, ws[] = {0, 0.5f, -1, 1};
  std::memcpy(x.f(), xs, sizeof(xs));
  std::memcpy(w.f(), ws, sizeof(ws));
  EXPECT_OK(run("rms_norm", {x, w}, {y}, attrs({{"eps", AttrValue::ofFloat(1e-6)}})));
  double rms = std::sqrt(7.5 + 1e-6);
  for (int d = 0; d < 4; ++d)
    G3RT_EXPECT_CLOSE(y.f()[d], xs[d] / rms * (1 + ws[d]), 1e-6, 1e-7);
  EXPECT_EQ(y.f()[2], 0.0f) << "w = -1 zeroes the channel";
}

TEST(DenseKernels, RmsNormBF16AndHeads) {
  // QK-norm layout: [B, T, heads, d] normalised over d with one [d] weight.
  std::mt19937 rng(3);
  Tensor x = randomTensor(DType::BF16, {2, 3, 4, 8}, rng, -2, 2);
  Tensor w = randomTensor(DType::BF16, {8}, rng, -0.5, 0.5);
  Tensor y(DType::BF16, {2, 3, 4, 8});
  EXPECT_OK(run("rms_norm", {x, w}, {y}, attrs({{"eps", AttrValue::ofFloat(1e-6)}})));
  for (int64_t r = 0; r < 24; ++r) {
    double ss = 0;
    for (int d = 0; d < 8; ++d)
      ss += double(x.view.load(r * 8 + d)) * x.view.load(r * 8 + d);
    double inv = 1 / std::sqrt(ss / 8 + 1e-6);
    for (int d = 0; d < 8; ++d) {
      double want = x.view.load(r * 8 + d) * inv * (1 + w.view.load(d));
      G3RT_EXPECT_CLOSE(y.view.load(r * 8 + d), want, 8e-3, 1e-6);
    }
  }
}

TEST(DenseKernels, RmsNormGradMatchesFiniteDifferences) {
  std::mt19937 rng(4);
  Tensor x = randomF32({3, 5, 19}, rng, -2, 2), w = randomF32({19}, rng, -0.5, 0.5);
  Tensor r = randomF32({3, 5, 19}, rng);
  Tensor dx = Tensor::f32({3, 5, 19}), dw = Tensor::f32({19});
  KernelAttrs a = attrs({{"eps", AttrValue::ofFloat(1e-6)}});
  EXPECT_OK(run("rms_norm_grad", {x, w, r}, {dx, dw}, a));
  auto loss = innerLoss("rms_norm", {x, w}, Tensor::f32({3, 5, 19}), r, a);
  checkGradient("input", loss, x, dx, rng);
  checkGradient("weight", loss, w, dw, rng);

  // Element by element against the contract's formula in double: a random
  // direction averages over elements, this does not.
  const int64_t D = 19, rows = 15;
  std::vector<double> dwWant(D, 0.0);
  for (int64_t r0 = 0; r0 < rows; ++r0) {
    const float *xr = x.f() + r0 * D, *gr = r.f() + r0 * D;
    double ss = 0;
    for (int64_t d = 0; d < D; ++d)
      ss += double(xr[d]) * xr[d];
    double rms = std::sqrt(ss / D + 1e-6), mean = 0;
    for (int64_t d = 0; d < D; ++d)
      mean += gr[d] * (1.0 + w.f()[d]) * (xr[d] / rms) / D;
    for (int64_t d = 0; d < D; ++d) {
      double xhat = xr[d] / rms;
      G3RT_EXPECT_CLOSE(dx.f()[r0 * D + d], (gr[d] * (1.0 + w.f()[d]) - xhat * mean) / rms, 1e-5,
                        1e-6);
      dwWant[size_t(d)] += gr[d] * xhat;
    }
  }
  for (int64_t d = 0; d < D; ++d)
    G3RT_EXPECT_CLOSE(dw.f()[d], dwWant[size_t(d)], 1e-5, 1e-6);
}

//===----------------------------------------------------------------------===//
// Linear layers
//===----------------------------------------------------------------------===//

TEST(DenseKernels, LinearMatchesReferenceMixedDtypes) {
  std::mt19937 rng(5);
  const int64_t M = 6, in = 19, out = 13;
  for (DType xt : {DType::F32, DType::BF16})
    for (DType wt : {DType::F32, DType::BF16}) {
      Tensor x = randomTensor(xt, {2, 3, in}, rng), w = randomTensor(wt, {out, in}, rng);
      Tensor y = Tensor::f32({2, 3, out}), yb(DType::BF16, {2, 3, out});
      EXPECT_OK(run("linear", {x, w}, {y}));
      EXPECT_OK(run("linear", {x, w}, {yb}));
      std::vector<double> want = referenceLinear(x, w, M, in, out);
      for (int64_t i = 0; i < M * out; ++i) {
        G3RT_EXPECT_CLOSE(y.f()[i], want[size_t(i)], 1e-5, 1e-5);
        G3RT_EXPECT_CLOSE(yb.view.load(i), want[size_t(i)], 4e-3, 1e-5);
      }
    }
}

TEST(DenseKernels, LinearProductsAddTheirAddend) {
  // With a last input (the addend, fused from a following add) the products
  // return addend + product, rounded once; a result buffer that is also the
  // addend works; rows past the last expert get the addend.
  std::mt19937 rng(14);
  const int64_t in = 19, out = 13, M = 6;
  Tensor x = randomTensor(DType::BF16, {M, in}, rng), w = randomTensor(DType::BF16, {out, in}, rng);
  Tensor a = randomTensor(DType::BF16, {M, out}, rng);
  Tensor plain(DType::BF16, {M, out}), y(DType::BF16, {M, out});
  EXPECT_OK(run("linear", {x, w, a}, {y}));
  std::vector<double> want = referenceLinear(x, w, M, in, out);
  for (int64_t i = 0; i < M * out; ++i)
    G3RT_EXPECT_CLOSE(y.view.load(i), want[size_t(i)] + a.view.load(i), 4e-3, 1e-5);
  Tensor inPlace = a.clone();
  EXPECT_OK(run("linear", {x, w, inPlace}, {inPlace}));
  EXPECT_EQ(inPlace.values(), y.values());

  Tensor dy = randomTensor(DType::BF16, {M, out}, rng),
         ax = randomTensor(DType::BF16, {M, in}, rng);
  Tensor dx(DType::BF16, {M, in}), dxPlain(DType::BF16, {M, in});
  EXPECT_OK(run("linear_grad_input", {dy, w, ax}, {dx}));
  EXPECT_OK(run("linear_grad_input", {dy, w}, {Tensor(dxPlain)}));
  for (int64_t i = 0; i < M * in; ++i)
    G3RT_EXPECT_CLOSE(dx.view.load(i), dxPlain.view.load(i) + ax.view.load(i), 8e-3, 1e-2);

  const int64_t E = 2;
  Tensor we = randomTensor(DType::BF16, {E, out, in}, rng), off = indices({E + 1}, {0, 2, 5});
  Tensor ye(DType::BF16, {M, out}), yePlain(DType::BF16, {M, out});
  EXPECT_OK(run("expert_linear", {x, off, we, a}, {ye}));
  EXPECT_OK(run("expert_linear", {x, off, we}, {yePlain}));
  for (int64_t i = 0; i < M * out; ++i)
    G3RT_EXPECT_CLOSE(ye.view.load(i), yePlain.view.load(i) + a.view.load(i), 8e-3, 1e-2);
  for (int64_t o = 0; o < out; ++o)
    EXPECT_EQ(ye.view.load(5 * out + o), a.view.load(5 * out + o)) << "row past the last expert";
  Tensor wt = randomTensor(DType::BF16, {E, out, in}, rng), dxe(DType::BF16, {M, in});
  EXPECT_OK(run("expert_linear_grad_input", {dy, off, wt, ax}, {dxe}));
  for (int64_t i = 0; i < in; ++i)
    EXPECT_EQ(dxe.view.load(5 * in + i), ax.view.load(5 * in + i));

  // An addend that does not match the result is refused by name.
  expectErrorNaming(run("linear", {x, w, Tensor::f32({M, out})}, {y}), "linear", "addend");
  expectErrorNaming(run("expert_linear", {x, off, we, Tensor(DType::BF16, {M, out + 1})}, {ye}),
                    "expert_linear", "addend");
}

TEST(DenseKernels, ProductsWithDropoutAreKeyedDropoutAndTheProduct) {
  // --g3moe-fuse-dropout's products read a dropout_mask's bits: the input
  // masked (the A product, the A gradient) or the result masked (the input
  // gradient through A) is what keyed_dropout with the mask's key, stream and
  // p gives, bit for bit.
  std::mt19937 rng(21);
  const int64_t M = 40, in = 24, r = 8, E = 2;
  Tensor key(DType::I64, {2});
  key.view.i64()[0] = 77;
  key.view.i64()[1] = 3;
  KernelAttrs draw = attrs({{"stream", AttrValue::ofInt(5)}, {"p", AttrValue::ofFloat(0.25)}});
  KernelAttrs fused = attrs({{"dropout_p", AttrValue::ofFloat(0.25)}});
  Tensor mask = Tensor::i32({(M * in + 31) / 32});
  EXPECT_OK(run("dropout_mask", {key}, {mask}, draw));
  Tensor x = randomTensor(DType::BF16, {M, in}, rng), a = randomTensor(DType::BF16, {r, in}, rng);
  Tensor dh = randomTensor(DType::BF16, {M, r}, rng), off = indices({E + 1}, {0, 15, 33});
  Tensor ae = randomTensor(DType::BF16, {E, r, in}, rng);
  Tensor dropped(DType::BF16, {M, in});
  EXPECT_OK(run("keyed_dropout", {x, key}, {dropped}, draw));
  int64_t zeros = 0;
  for (int64_t i = 0; i < M * in; ++i)
    zeros += dropped.view.load(i) == 0.0f;
  EXPECT_GT(zeros, M * in / 8) << "about a quarter of the elements are dropped";

  auto same = [&](const char *name, std::vector<Tensor> fusedIn, std::vector<Tensor> plainIn,
                  Tensor want, bool maskResult) {
    SCOPED_TRACE(name);
    Tensor got(want.view.dtype, want.view.shape);
    fusedIn.push_back(mask);
    EXPECT_OK(run(name, fusedIn, {got}, fused));
    EXPECT_OK(run(name, plainIn, {want}));
    if (maskResult)
      EXPECT_OK(run("keyed_dropout", {want.clone(), key}, {want}, draw));
    EXPECT_EQ(got.values(), want.values());
  };
  same("linear", {x, a}, {dropped, a}, Tensor(DType::BF16, {M, r}), false);
  same("linear_grad_weight", {dh, x}, {dh, dropped}, Tensor::f32({r, in}), false);
  same("linear_grad_input", {dh, a}, {dh, a}, Tensor(DType::BF16, {M, in}), true);
  same("expert_linear", {x, off, ae}, {dropped, off, ae}, Tensor(DType::BF16, {M, r}), false);
  same("expert_linear_grad_weight", {dh, off, x}, {dh, off, dropped}, Tensor::f32({E, r, in}),
       false);
  same("expert_linear_grad_input", {dh, off, ae}, {dh, off, ae}, Tensor(DType::BF16, {M, in}),
       true);

  // A dropout without its mask, with a mask too short or p out of range is
  // refused by name.
  Tensor y(DType::BF16, {M, r});
  expectErrorNaming(run("linear", {x, a}, {y}, fused), "linear", "mask as the last input");
  expectErrorNaming(run("linear", {x, a, Tensor::f32({30})}, {y}, fused), "linear",
                    "dropout mask must be i32");
  expectErrorNaming(run("linear", {x, a, Tensor::i32({29})}, {y}, fused), "linear",
                    "does not cover the 960 masked elements");
  expectErrorNaming(
      run("linear", {x, a, mask}, {y}, attrs({{"dropout_p", AttrValue::ofFloat(1.0)}})), "linear",
      "outside [0, 1)");
  expectErrorNaming(run("dropout_mask", {key}, {Tensor::f32({4})}, draw), "dropout_mask",
                    "mask must be i32");
}

TEST(DenseKernels, InputGradientDropsOnlyItsLowRankTerm) {
  // After --g3moe-fuse-dropout, --g3moe-fuse-linear-add gives the wide input
  // gradient the masked input gradient through A as its low-rank term. The
  // mask then drops that term as the masked rank-r product drops its result,
  // and not the wide product: without another addend, the wide product
  // with the masked product as its addend, bit for bit.
  std::mt19937 rng(23);
  const int64_t M = 40, in = 64, out = 24, r = 8, E = 2;
  Tensor key(DType::I64, {2});
  key.view.i64()[0] = 5;
  key.view.i64()[1] = 9;
  KernelAttrs draw = attrs({{"stream", AttrValue::ofInt(3)}, {"p", AttrValue::ofFloat(0.25)}});
  KernelAttrs fused = attrs({{"dropout_p", AttrValue::ofFloat(0.25)}});
  Tensor mask = Tensor::i32({M * in / 32});
  EXPECT_OK(run("dropout_mask", {key}, {mask}, draw));
  Tensor off = indices({E + 1}, {0, 15, 33});
  Tensor dy = randomTensor(DType::BF16, {M, out}, rng),
         w = randomTensor(DType::BF16, {E, out, in}, rng);
  Tensor dh = randomTensor(DType::BF16, {M, r}, rng),
         a = randomTensor(DType::BF16, {E, r, in}, rng);
  Tensor term(DType::BF16, {M, in}), want(DType::BF16, {M, in}), got(DType::BF16, {M, in});
  EXPECT_OK(run("expert_linear_grad_input", {dh, off, a, mask}, {term}, fused));
  EXPECT_OK(run("expert_linear_grad_input", {dy, off, w, term}, {want}));
  EXPECT_OK(run("expert_linear_grad_input", {dy, off, w, dh, a, mask}, {got}, fused));
  EXPECT_EQ(got.values(), want.values());

  // With an addend too: the wide product, the dropped term and the addend
  // summed in fp32 and rounded once.
  Tensor c = randomTensor(DType::BF16, {M, in}, rng), plain = Tensor::f32({M, in});
  EXPECT_OK(run("expert_linear_grad_input", {dy, off, w}, {plain}));
  EXPECT_OK(run("expert_linear_grad_input", {dy, off, w, c, dh, a, mask}, {got}, fused));
  int64_t dropped = 0;
  for (int64_t i = 0; i < M * in; ++i) {
    G3RT_EXPECT_CLOSE(got.view.load(i), plain.f()[i] + term.view.load(i) + c.view.load(i), 8e-3,
                      1e-2);
    dropped += i < 33 * in && term.view.load(i) == 0.0f;
  }
  EXPECT_GT(dropped, 33 * in / 8) << "about a quarter of the term is dropped";
  for (int64_t i = 33 * in; i < M * in; ++i)
    EXPECT_EQ(got.view.load(i), c.view.load(i)) << "row past the last expert";

  // A dropped result with an addend but no term is refused by name.
  expectErrorNaming(run("expert_linear_grad_input", {dh, off, a, c, mask}, {got}, fused),
                    "expert_linear_grad_input", "addend but no lowrank");
  expectErrorNaming(
      run("linear_grad_input", {dh, Tensor(DType::BF16, {r, in}), c, mask}, {got}, fused),
      "linear_grad_input", "addend but no lowrank");
}

TEST(DenseKernels, ExpertProductsAddTheirLowRankTerm) {
  // With a low-rank pair (--g3moe-fuse-linear-add) the expert products add
  // h·B_eᵀ (forward) or dh·A_e (input gradient) to each expert's rows: the
  // sum of the two products, before the addend; rows past the last expert
  // get the addend alone.
  std::mt19937 rng(15);
  const int64_t in = 19, out = 13, M = 7, E = 2, r = 3;
  Tensor off = indices({E + 1}, {0, 2, 5});
  Tensor x = randomTensor(DType::F32, {M, in}, rng),
         w = randomTensor(DType::F32, {E, out, in}, rng);
  Tensor h = randomTensor(DType::F32, {M, r}, rng), b = randomTensor(DType::F32, {E, out, r}, rng);
  Tensor a = randomTensor(DType::F32, {E, r, in}, rng);
  Tensor add = randomTensor(DType::F32, {M, out}, rng),
         addIn = randomTensor(DType::F32, {M, in}, rng);
  Tensor base = Tensor::f32({M, out}), term = Tensor::f32({M, out}), y = Tensor::f32({M, out});
  EXPECT_OK(run("expert_linear", {x, off, w}, {base}));
  EXPECT_OK(run("expert_linear", {h, off, b}, {term}));
  EXPECT_OK(run("expert_linear", {x, off, w, add, h, b}, {y}));
  for (int64_t i = 0; i < M * out; ++i)
    G3RT_EXPECT_CLOSE(y.f()[i], base.f()[i] + term.f()[i] + add.f()[i], 1e-5, 1e-5);
  for (int64_t o = 0; o < out; ++o)
    EXPECT_EQ(y.f()[5 * out + o], add.f()[5 * out + o]) << "row past the last expert";
  Tensor noAddend = Tensor::f32({M, out});
  EXPECT_OK(run("expert_linear", {x, off, w, h, b}, {noAddend}));
  for (int64_t i = 0; i < M * out; ++i)
    G3RT_EXPECT_CLOSE(noAddend.f()[i], base.f()[i] + term.f()[i], 1e-5, 1e-5);

  Tensor dy = randomTensor(DType::F32, {M, out}, rng);
  Tensor dBase = Tensor::f32({M, in}), dTerm = Tensor::f32({M, in}), dx = Tensor::f32({M, in});
  EXPECT_OK(run("expert_linear_grad_input", {dy, off, w}, {dBase}));
  EXPECT_OK(run("expert_linear_grad_input", {h, off, a}, {dTerm}));
  EXPECT_OK(run("expert_linear_grad_input", {dy, off, w, addIn, h, a}, {dx}));
  for (int64_t i = 0; i < M * in; ++i)
    G3RT_EXPECT_CLOSE(dx.f()[i], dBase.f()[i] + dTerm.f()[i] + addIn.f()[i], 1e-5, 1e-5);

  // A pair that does not fit the product is refused by name, as is a
  // seventh input.
  expectErrorNaming(run("expert_linear", {x, off, w, h, a}, {y}), "expert_linear",
                    "lowrank_weight");
  expectErrorNaming(run("expert_linear_grad_input", {dy, off, w, Tensor::f32({M, r + 1}), a}, {dx}),
                    "expert_linear_grad_input", "lowrank_input");
  expectErrorNaming(run("expert_linear", {x, off, w, add, h, b, b}, {y}), "expert_linear",
                    "3 to 6 inputs");
}

TEST(DenseKernels, LinearGradsMatchFiniteDifferences) {
  std::mt19937 rng(6);
  const int64_t in = 21, out = 10;
  Tensor x = randomF32({2, 7, in}, rng), w = randomF32({out, in}, rng);
  Tensor r = randomF32({2, 7, out}, rng);
  Tensor dx = Tensor::f32({2, 7, in}), dw = Tensor::f32({out, in});
  EXPECT_OK(run("linear_grad_input", {r, w}, {dx}));
  EXPECT_OK(run("linear_grad_weight", {r, x}, {dw}));
  auto loss = innerLoss("linear", {x, w}, Tensor::f32({2, 7, out}), r);
  checkGradient("input", loss, x, dx, rng);
  checkGradient("weight", loss, w, dw, rng);
}

TEST(DenseKernels, LinearShapeMismatch) {
  Tensor x = Tensor::f32({4, 5}), w = Tensor::f32({3, 6}), y = Tensor::f32({4, 3});
  Status s = run("linear", {x, w}, {y});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("linear"), std::string::npos) << s.message();
  EXPECT_FALSE(run("linear", {x}, {y}).ok());
  EXPECT_FALSE(run("linear_grad_weight", {y, x}, {Tensor::f32({5, 3})}).ok());
}

TEST(DenseKernels, ResultsIndependentOfThreadCount) {
  // Sizes large enough that every kernel below actually splits its work.
  std::mt19937 rng(7);
  const int64_t M = 128, in = 256, out = 384;
  Tensor x = randomF32({M, in}, rng), w = randomTensor(DType::BF16, {out, in}, rng);
  Tensor dy = randomF32({M, out}, rng), we = randomF32({3, out, in}, rng);
  Tensor off = indices({4}, {0, 50, 50, 120});
  Tensor xn = randomF32({1024, 64}, rng), wn = randomF32({64}, rng),
         dyn = randomF32({1024, 64}, rng);
  auto compute = [&](int threads) {
    setParallelThreads(threads);
    std::vector<Tensor> res = {Tensor::f32({M, out}),   Tensor::f32({M, in}),
                               Tensor::f32({out, in}),  Tensor::f32({M, out}),
                               Tensor::f32({M, in}),    Tensor::f32({3, out, in}),
                               Tensor::f32({1024, 64}), Tensor::f32({64})};
    EXPECT_OK(run("linear", {x, w}, {res[0]}));
    EXPECT_OK(run("linear_grad_input", {dy, w}, {res[1]}));
    EXPECT_OK(run("linear_grad_weight", {dy, x}, {res[2]}));
    EXPECT_OK(run("expert_linear", {x, off, we}, {res[3]}));
    EXPECT_OK(run("expert_linear_grad_input", {dy, off, we}, {res[4]}));
    EXPECT_OK(run("expert_linear_grad_weight", {dy, off, x}, {res[5]}));
    EXPECT_OK(run("rms_norm_grad", {xn, wn, dyn}, {res[6], res[7]},
                  attrs({{"eps", AttrValue::ofFloat(1e-6)}})));
    return res;
  };
  int saved = parallelThreads();
  std::vector<Tensor> one = compute(1), four = compute(4);
  setParallelThreads(saved);
  ASSERT_EQ(one.size(), four.size());
  for (size_t k = 0; k < one.size(); ++k)
    EXPECT_EQ(std::memcmp(one[k].f(), four[k].f(), one[k].view.bytes()), 0) << "result " << k;
}

//===----------------------------------------------------------------------===//
// LM head
//===----------------------------------------------------------------------===//

TEST(DenseKernels, LmHeadSoftcapValues) {
  std::mt19937 rng(8);
  const int64_t M = 5, H = 16, V = 23;
  Tensor x = randomTensor(DType::BF16, {M, H}, rng), table = randomTensor(DType::BF16, {V, H}, rng);
  Tensor plain = Tensor::f32({M, V}), capped = Tensor::f32({M, V});
  EXPECT_OK(run("lm_head", {x, table}, {plain}));
  EXPECT_OK(run("lm_head", {x, table}, {capped}, attrs({{"softcap", AttrValue::ofFloat(1.5)}})));
  std::vector<double> want = referenceLinear(x, table, M, H, V);
  bool sawCap = false;
  for (int64_t i = 0; i < M * V; ++i) {
    G3RT_EXPECT_CLOSE(plain.f()[i], want[size_t(i)], 1e-5, 1e-5);
    G3RT_EXPECT_CLOSE(capped.f()[i], 1.5 * std::tanh(want[size_t(i)] / 1.5), 1e-5, 1e-5);
    EXPECT_LT(std::fabs(capped.f()[i]), 1.5f);
    sawCap |= std::fabs(want[size_t(i)]) > 2.0;
  }
  EXPECT_TRUE(sawCap) << "some logits should be large enough for the cap to matter";
  EXPECT_FALSE(
      run("lm_head", {x, table}, {capped}, attrs({{"softcap", AttrValue::ofFloat(0)}})).ok());
}

TEST(DenseKernels, LmHeadGradMatchesFiniteDifferences) {
  for (bool cap : {false, true}) {
    SCOPED_TRACE(cap ? "softcap" : "no softcap");
    std::mt19937 rng(cap ? 10 : 9);
    const int64_t H = 17, V = 29;
    Tensor x = randomF32({2, 3, H}, rng), table = randomF32({V, H}, rng);
    Tensor r = randomF32({2, 3, V}, rng);
    Tensor dx = Tensor::f32({2, 3, H}), dt = Tensor::f32({V, H});
    KernelAttrs a;
    if (cap)
      a.set("softcap", AttrValue::ofFloat(2.0));
    EXPECT_OK(run("lm_head_grad", {x, table, r}, {dx, dt}, a));
    auto loss = innerLoss("lm_head", {x, table}, Tensor::f32({2, 3, V}), r, a);
    checkGradient("input", loss, x, dx, rng);
    checkGradient("table", loss, table, dt, rng);
  }
}

TEST(DenseKernels, LmHeadCrossEntropyLogSumExp) {
  // The fused head's lse output: each row's logsumexp over the capped
  // logits, 0 on ignored rows; the gradient takes it as a sixth input and
  // gives what it gives without it.
  std::mt19937 rng(11);
  const int64_t M = 4, H = 16, V = 23;
  Tensor x = randomTensor(DType::BF16, {1, M, H}, rng),
         table = randomTensor(DType::BF16, {V, H}, rng);
  Tensor targets = indices({1, M}, {3, -100, 22, 7});
  KernelAttrs a =
      attrs({{"ignore_index", AttrValue::ofInt(-100)}, {"softcap", AttrValue::ofFloat(1.5)}});
  Tensor loss = Tensor::f32({}), loss2 = Tensor::f32({}), lse = Tensor::f32({1, M});
  EXPECT_OK(run("lm_head_cross_entropy", {x, table, targets, scalar(3)}, {loss}, a));
  EXPECT_OK(run("lm_head_cross_entropy", {x, table, targets, scalar(3)}, {loss2, lse}, a));
  EXPECT_EQ(loss.f()[0], loss2.f()[0]);
  Tensor logits = Tensor::f32({M, V});
  EXPECT_OK(run("lm_head", {x, table}, {logits}, a));
  for (int64_t r = 0; r < M; ++r) {
    double sum = 0;
    for (int64_t v = 0; v < V; ++v)
      sum += std::exp(double(logits.f()[r * V + v]));
    double want = r == 1 ? 0.0 : std::log(sum);
    G3RT_EXPECT_CLOSE(lse.f()[r], want, 1e-6, 1e-6);
  }
  Tensor dx = Tensor::f32({1, M, H}), dxLse = Tensor::f32({1, M, H});
  EXPECT_OK(run("lm_head_cross_entropy_grad", {x, table, targets, scalar(3), scalar(1)}, {dx}, a));
  EXPECT_OK(run("lm_head_cross_entropy_grad", {x, table, targets, scalar(3), scalar(1), lse},
                {dxLse}, a));
  EXPECT_EQ(dx.values(), dxLse.values());
  // A bad target is an error with lse as without; so is an lse of the wrong size.
  Tensor bad = indices({1, M}, {3, -100, 23, 7});
  expectErrorNaming(run("lm_head_cross_entropy", {x, table, bad, scalar(3)}, {loss2, lse}, a),
                    "lm_head_cross_entropy", "23");
  expectErrorNaming(run("lm_head_cross_entropy", {x, table, targets, scalar(3)},
                        {loss2, Tensor::f32({M + 1})}, a),
                    "lm_head_cross_entropy", "lse must be f32 with one entry per row");
}

TEST(DenseKernels, LmHeadCrossEntropyAndGradIsTheForwardAndTheBackward) {
  // The one-pass op gives the forward's loss and the backward's input
  // gradient (seed 0.5), ignored rows included; a call with a table
  // gradient output is refused (the op has none).
  std::mt19937 rng(12);
  const int64_t M = 5, H = 16, V = 23;
  Tensor x = randomTensor(DType::BF16, {1, M, H}, rng),
         table = randomTensor(DType::BF16, {V, H}, rng);
  Tensor targets = indices({1, M}, {3, -100, 22, 7, 0});
  KernelAttrs a =
      attrs({{"ignore_index", AttrValue::ofInt(-100)}, {"softcap", AttrValue::ofFloat(1.5)}});
  Tensor loss = Tensor::f32({}), dx = Tensor(DType::BF16, {1, M, H});
  EXPECT_OK(run("lm_head_cross_entropy", {x, table, targets, scalar(4)}, {loss}, a));
  EXPECT_OK(
      run("lm_head_cross_entropy_grad", {x, table, targets, scalar(4), scalar(0.5)}, {dx}, a));
  Tensor fusedLoss = Tensor::f32({}), fusedDx = Tensor(DType::BF16, {1, M, H});
  EXPECT_OK(run("lm_head_cross_entropy_and_grad", {x, table, targets, scalar(4), scalar(0.5)},
                {fusedLoss, fusedDx}, a));
  EXPECT_EQ(loss.f()[0], fusedLoss.f()[0]);
  EXPECT_EQ(dx.values(), fusedDx.values());
  expectErrorNaming(run("lm_head_cross_entropy_and_grad",
                        {x, table, targets, scalar(4), scalar(0.5)},
                        {fusedLoss, fusedDx, Tensor::f32({V, H})}, a),
                    "lm_head_cross_entropy_and_grad", "expected 5 inputs and 2 outputs");
  Tensor bad = indices({1, M}, {3, -100, 23, 7, 0});
  expectErrorNaming(run("lm_head_cross_entropy_and_grad", {x, table, bad, scalar(4), scalar(0.5)},
                        {fusedLoss, fusedDx}, a),
                    "lm_head_cross_entropy", "23");
}

TEST(DenseKernels, LmHeadEvalIsCrossEntropyAndAccuracyOfTheHead) {
  // More rows than one chunk of the fused kernels, some ignored, with the
  // cap: the evaluation's three numbers equal those of the unfused ops on
  // the full logits (the counts exactly, the loss up to the order of its sum).
  std::mt19937 rng(12);
  const int64_t B = 2, T = 300, H = 8, V = 37;
  Tensor x = randomTensor(DType::BF16, {B, T, H}, rng),
         table = randomTensor(DType::BF16, {V, H}, rng);
  std::vector<int32_t> tv(size_t(B * T));
  for (int64_t m = 0; m < B * T; ++m)
    tv[size_t(m)] = m % 5 == 2 ? -100 : int32_t((m * 13 + 1) % V);
  Tensor targets = indices({B, T}, tv);
  KernelAttrs a =
      attrs({{"ignore_index", AttrValue::ofInt(-100)}, {"softcap", AttrValue::ofFloat(1.5)}});
  Tensor logits = Tensor::f32({B, T, V});
  Tensor loss = Tensor::f32({}), correct = Tensor::f32({}), total = Tensor::f32({});
  EXPECT_OK(run("lm_head", {x, table}, {logits}, a));
  EXPECT_OK(run("cross_entropy", {logits, targets, scalar(400)}, {loss}, a));
  EXPECT_OK(run("token_accuracy", {logits, targets}, {correct, total}, a));
  Tensor fusedLoss = Tensor::f32({}), fusedCorrect = Tensor::f32({}), fusedTotal = Tensor::f32({});
  EXPECT_OK(run("lm_head_eval", {x, table, targets, scalar(400)},
                {fusedLoss, fusedCorrect, fusedTotal}, a));
  G3RT_EXPECT_CLOSE(fusedLoss.f()[0], loss.f()[0], 1e-6, 0);
  EXPECT_EQ(fusedCorrect.f()[0], correct.f()[0]);
  EXPECT_EQ(fusedTotal.f()[0], total.f()[0]);
  EXPECT_EQ(total.f()[0], 480.0f);
  EXPECT_GT(correct.f()[0], 0.0f) << "some argmax should hit its target";
  // Its own checks: the output count, and a target outside the vocabulary.
  expectErrorNaming(run("lm_head_eval", {x, table, targets, scalar(400)}, {fusedLoss}, a),
                    "lm_head_eval", "expected");
  tv[7] = int32_t(V);
  expectErrorNaming(run("lm_head_eval", {x, table, indices({B, T}, tv), scalar(400)},
                        {fusedLoss, fusedCorrect, fusedTotal}, a),
                    "lm_head_eval", "37");
}

/// The fused head's loss, per-row logsumexp and gradients computed directly
/// in double from the definitions (lm_head, then cross_entropy): the oracle
/// of LmHeadCrossEntropyMatchesDoubleReference.
struct HeadLossReference {
  double loss = 0;
  std::vector<double> lse, dx, dtable;
};

HeadLossReference referenceHeadLoss(const Tensor &x, const Tensor &table,
                                    const std::vector<int32_t> &targets, int32_t ignore,
                                    double numItems, double dloss, double softcap) {
  const int64_t V = table.view.dim(0), H = table.view.dim(1), M = x.numel() / H;
  std::vector<double> raw = referenceLinear(x, table, M, H, V);
  HeadLossReference r;
  r.lse.assign(size_t(M), 0.0);
  r.dx.assign(size_t(M * H), 0.0);
  r.dtable.assign(size_t(V * H), 0.0);
  for (int64_t m = 0; m < M; ++m) {
    int32_t t = targets[size_t(m)];
    if (t == ignore)
      continue;
    std::vector<double> l(static_cast<size_t>(V)), slope(static_cast<size_t>(V));
    double top = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      double z = raw[size_t(m * V + v)];
      l[size_t(v)] = softcap > 0 ? softcap * std::tanh(z / softcap) : z;
      slope[size_t(v)] = softcap > 0 ? 1 - std::pow(std::tanh(z / softcap), 2) : 1;
      top = std::max(top, l[size_t(v)]);
    }
    double sum = 0;
    for (double z : l)
      sum += std::exp(z - top);
    double lse = top + std::log(sum);
    r.lse[size_t(m)] = lse;
    r.loss += (lse - l[size_t(t)]) / numItems;
    for (int64_t v = 0; v < V; ++v) {
      // d loss / d raw logit: (softmax - onehot) · dloss / num_items, through the cap.
      double g = (std::exp(l[size_t(v)] - lse) - (v == t)) * dloss / numItems * slope[size_t(v)];
      for (int64_t h = 0; h < H; ++h) {
        r.dx[size_t(m * H + h)] += g * table.view.load(v * H + h);
        r.dtable[size_t(v * H + h)] += g * x.view.load(m * H + h);
      }
    }
  }
  return r;
}

/// Expects every value of `got` within `rtol` of `want`, relative to the
/// largest |want| (gradients have entries near 0 whose own relative error
/// means nothing).
void expectCloseToReference(const char *what, const std::vector<float> &got,
                            const std::vector<double> &want, double rtol) {
  SCOPED_TRACE(what);
  ASSERT_EQ(got.size(), want.size());
  double scale = 0;
  for (double w : want)
    scale = std::max(scale, std::fabs(w));
  ASSERT_GT(scale, 0);
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i)
    if (!(std::fabs(got[i] - want[i]) <= rtol * scale)) {
      ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", reference " << want[i];
      ++bad;
    }
}

TEST(DenseKernels, LmHeadCrossEntropyMatchesDoubleReference) {
  // The fused head is built from lm_head and cross_entropy run over chunks of
  // 256 rows, so checking it against those kernels alone would repeat its own
  // arithmetic. The oracle here is the definition evaluated in double over all
  // rows at once, plus central differences of the fused loss itself. 600 rows
  // are two whole chunks and a partial one; ignored targets sit in every
  // chunk and fill the whole middle one (which then contributes nothing);
  // num_items (a whole accumulation window's labels) exceeds this
  // micro-batch's, and the incoming gradient is not 1.
  const int64_t B = 3, T = 200, M = B * T, H = 12, V = 37;
  const int32_t ignore = -100;
  std::vector<int32_t> tv(static_cast<size_t>(M));
  for (int64_t m = 0; m < M; ++m)
    tv[size_t(m)] = (m % 7 == 3 || (m >= 256 && m < 512)) ? ignore : int32_t((m * 11 + 5) % V);
  int64_t counted = 0;
  for (int32_t t : tv)
    counted += t != ignore;
  const double numItems = double(counted + 40), dloss = 0.75;
  for (double cap : {0.0, 3.0}) {
    for (DType dtype : {DType::F32, DType::BF16}) {
      SCOPED_TRACE(std::string(cap > 0 ? "softcap 3" : "no softcap") +
                   (dtype == DType::BF16 ? ", bf16" : ", f32"));
      std::mt19937 rng(cap > 0 ? 21 : 20);
      // Logits of a few units: the cap at 3 bends most of them.
      Tensor x = randomTensor(dtype, {B, T, H}, rng, -1, 1);
      Tensor table = randomTensor(dtype, {V, H}, rng, -1, 1);
      Tensor targets = indices({B, T}, tv);
      KernelAttrs a = attrs({{"ignore_index", AttrValue::ofInt(ignore)}});
      if (cap > 0)
        a.set("softcap", AttrValue::ofFloat(cap));
      HeadLossReference want = referenceHeadLoss(x, table, tv, ignore, numItems, dloss, cap);

      Tensor loss = Tensor::f32({}), lse = Tensor::f32({B, T});
      fillUniform(lse, rng, 5, 6); // stale contents to be overwritten
      EXPECT_OK(run("lm_head_cross_entropy", {x, table, targets, scalar(float(numItems))},
                    {loss, lse}, a));
      G3RT_EXPECT_CLOSE(loss.f()[0], want.loss, 2e-6, 0);
      expectCloseToReference("lse", lse.values(), want.lse, 1e-6);
      for (int64_t m = 0; m < M; ++m) {
        if (tv[size_t(m)] == ignore) {
          EXPECT_EQ(lse.f()[m], 0.0f) << "ignored row " << m;
        }
      }

      Tensor dx(dtype, {B, T, H}), dtable = Tensor::f32({V, H});
      Tensor dxOnly(dtype, {B, T, H});
      fillUniform(dtable, rng); // stale contents to be overwritten
      EXPECT_OK(run("lm_head_cross_entropy_grad",
                    {x, table, targets, scalar(float(numItems)), scalar(float(dloss)), lse},
                    {dx, dtable}, a));
      EXPECT_OK(run("lm_head_cross_entropy_grad",
                    {x, table, targets, scalar(float(numItems)), scalar(float(dloss))}, {dxOnly},
                    a));
      // bf16 results are rounded once, to 8 bits of mantissa.
      expectCloseToReference("dx", dx.values(), want.dx, dtype == DType::BF16 ? 8e-3 : 1e-5);
      expectCloseToReference("dtable", dtable.values(), want.dtable, 1e-5);
      EXPECT_EQ(dx.values(), dxOnly.values()) << "dx without the table gradient";
      for (int64_t m = 0; m < M; ++m)
        for (int64_t h = 0; h < H && tv[size_t(m)] == ignore; ++h)
          ASSERT_EQ(dx.view.load(m * H + h), 0.0f) << "ignored row " << m;

      if (dtype != DType::F32)
        continue;
      // The gradients are those of the loss the forward computes.
      auto f = [&] {
        Status s =
            run("lm_head_cross_entropy", {x, table, targets, scalar(float(numItems))}, {loss}, a);
        EXPECT_TRUE(s.ok()) << s.message();
        return double(loss.f()[0]) * dloss;
      };
      checkGradient("input", f, x, dx, rng);
      checkGradient("table", f, table, dtable, rng);
    }
  }
}

//===----------------------------------------------------------------------===//
// Cross-entropy
//===----------------------------------------------------------------------===//

TEST(DenseKernels, CrossEntropyIgnoreIndexAndNumItems) {
  // Row 0: logits [1, 2, 3], target 2. Row 1: ignored. Row 2: uniform, target 0.
  Tensor logits = Tensor::f32({1, 3, 3});
  const float ls[] = {1, 2, 3, 50, -50, 7, 0, 0, 0};
  std::memcpy(logits.f(), ls, sizeof(ls));
  Tensor targets = indices({1, 3}, {2, -100, 0});
  KernelAttrs a = attrs({{"ignore_index", AttrValue::ofInt(-100)}});
  Tensor loss = Tensor::f32({});
  // num_items counts the labels of the whole accumulation window (HF), here
  // more than this micro-batch's two.
  EXPECT_OK(run("cross_entropy", {logits, targets, scalar(5)}, {loss}, a));
  double lse0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  double want = ((lse0 - 3) + std::log(3.0)) / 5;
  G3RT_EXPECT_CLOSE(loss.f()[0], want, 1e-6, 1e-7);

  Tensor dl = Tensor::f32({1, 3, 3});
  EXPECT_OK(run("cross_entropy_grad", {logits, targets, scalar(5), scalar(2)}, {dl}, a));
  for (int v = 0; v < 3; ++v) {
    double p0 = std::exp(ls[v] - lse0);
    G3RT_EXPECT_CLOSE(dl.f()[v], (p0 - (v == 2)) * 2 / 5, 1e-6, 1e-7);
    EXPECT_EQ(dl.f()[3 + v], 0.0f) << "ignored row";
    G3RT_EXPECT_CLOSE(dl.f()[6 + v], (1.0 / 3 - (v == 0)) * 2 / 5, 1e-6, 1e-7);
  }

  // A micro-batch without labels contributes nothing, even with num_items 0.
  Tensor none = indices({1, 3}, {-100, -100, -100});
  EXPECT_OK(run("cross_entropy", {logits, none, scalar(0)}, {loss}, a));
  EXPECT_EQ(loss.f()[0], 0.0f);
  EXPECT_OK(run("cross_entropy_grad", {logits, none, scalar(0), scalar(1)}, {dl}, a));
  for (float v : dl.values())
    EXPECT_EQ(v, 0.0f);
}

TEST(DenseKernels, CrossEntropyGradMatchesFiniteDifferences) {
  std::mt19937 rng(11);
  const int64_t V = 11;
  Tensor logits = randomF32({2, 4, V}, rng, -2, 2);
  Tensor targets = indices({2, 4}, {3, 0, -100, 10, 7, -100, 7, 1});
  KernelAttrs a = attrs({{"ignore_index", AttrValue::ofInt(-100)}});
  Tensor n = scalar(9), loss = Tensor::f32({}), dl = Tensor::f32({2, 4, V});
  EXPECT_OK(run("cross_entropy_grad", {logits, targets, n, scalar(1)}, {dl}, a));
  auto f = [&] {
    Status s = run("cross_entropy", {logits, targets, n}, {loss}, a);
    EXPECT_TRUE(s.ok()) << s.message();
    return double(loss.f()[0]);
  };
  checkGradient("logits", f, logits, dl, rng);
  // The incoming gradient scales the result linearly.
  Tensor dl3 = Tensor::f32({2, 4, V});
  EXPECT_OK(run("cross_entropy_grad", {logits, targets, n, scalar(3)}, {dl3}, a));
  for (int64_t i = 0; i < dl.numel(); ++i)
    G3RT_EXPECT_CLOSE(dl3.f()[i], 3 * dl.f()[i], 1e-6, 1e-9);
}

TEST(DenseKernels, CrossEntropyBadTarget) {
  Tensor logits = Tensor::f32({4, 6}), loss = Tensor::f32({}), dl = Tensor::f32({4, 6});
  KernelAttrs a = attrs({{"ignore_index", AttrValue::ofInt(-100)}});
  expectErrorNaming(
      run("cross_entropy", {logits, indices({4}, {1, 6, 2, -100}), scalar(3)}, {loss}, a),
      "cross_entropy", "6");
  expectErrorNaming(
      run("cross_entropy", {logits, indices({4}, {1, -1, 2, 0}), scalar(3)}, {loss}, a),
      "cross_entropy", "-1");
  expectErrorNaming(run("cross_entropy_grad",
                        {logits, indices({4}, {1, 2, 99, 0}), scalar(3), scalar(1)}, {dl}, a),
                    "cross_entropy_grad", "99");
}

//===----------------------------------------------------------------------===//
// Expert linear layers
//===----------------------------------------------------------------------===//

TEST(DenseKernels, ExpertLinearMatchesPerExpertReference) {
  std::mt19937 rng(12);
  const int64_t M = 10, in = 9, out = 6, E = 4;
  Tensor x = randomTensor(DType::BF16, {M, in}, rng),
         w = randomTensor(DType::BF16, {E, out, in}, rng);
  // Expert 1 has no rows; row 9 lies past the last offset.
  Tensor off = indices({E + 1}, {0, 3, 3, 7, 9});
  Tensor y = Tensor::f32({M, out});
  fillUniform(y, rng); // stale contents to be overwritten
  EXPECT_OK(run("expert_linear", {x, off, w}, {y}));
  for (int64_t m = 0; m < M; ++m) {
    int64_t e = m < 3 ? 0 : m < 7 ? 2 : m < 9 ? 3 : -1;
    for (int64_t o = 0; o < out; ++o) {
      double want = 0;
      for (int64_t i = 0; e >= 0 && i < in; ++i)
        want += double(x.view.load(m * in + i)) * w.view.load((e * out + o) * in + i);
      G3RT_EXPECT_CLOSE(y.f()[m * out + o], want, 1e-5, 1e-6);
    }
  }
}

TEST(DenseKernels, ExpertLinearGradsMatchFiniteDifferences) {
  std::mt19937 rng(13);
  const int64_t M = 11, in = 10, out = 7, E = 4;
  Tensor x = randomF32({M, in}, rng), w = randomF32({E, out, in}, rng);
  Tensor off = indices({E + 1}, {0, 4, 4, 9, 10}); // expert 1 empty, row 10 unrouted
  Tensor r = randomF32({M, out}, rng);
  Tensor dx = Tensor::f32({M, in}), dw = Tensor::f32({E, out, in});
  fillUniform(dw, rng); // stale contents, including the empty expert's
  EXPECT_OK(run("expert_linear_grad_input", {r, off, w}, {dx}));
  EXPECT_OK(run("expert_linear_grad_weight", {r, off, x}, {dw}));
  auto loss = innerLoss("expert_linear", {x, off, w}, Tensor::f32({M, out}), r);
  checkGradient("input", loss, x, dx, rng);
  checkGradient("weight", loss, w, dw, rng);
  for (int64_t i = 0; i < out * in; ++i)
    EXPECT_EQ(dw.f()[1 * out * in + i], 0.0f) << "empty expert";
  for (int64_t i = 0; i < in; ++i)
    EXPECT_EQ(dx.f()[10 * in + i], 0.0f) << "unrouted row";
}

TEST(DenseKernels, ExpertOffsetsInvalid) {
  Tensor x = Tensor::f32({6, 4}), w = Tensor::f32({3, 5, 4}), y = Tensor::f32({6, 5});
  Tensor dw = Tensor::f32({3, 5, 4});
  expectErrorNaming(run("expert_linear", {x, indices({4}, {0, 4, 2, 6}), w}, {y}), "expert_linear",
                    "2");
  expectErrorNaming(run("expert_linear", {x, indices({4}, {1, 2, 3, 4}), w}, {y}), "expert_linear",
                    "1");
  expectErrorNaming(run("expert_linear", {x, indices({4}, {0, 2, 3, 7}), w}, {y}), "expert_linear",
                    "7");
  expectErrorNaming(run("expert_linear", {x, indices({3}, {0, 2, 3}), w}, {y}), "expert_linear",
                    "3");
  expectErrorNaming(run("expert_linear_grad_input", {y, indices({4}, {0, 5, 3, 6}), w}, {x}),
                    "expert_linear_grad_input", "3");
  expectErrorNaming(run("expert_linear_grad_weight", {y, indices({4}, {0, 1, 2, 9}), x}, {dw}),
                    "expert_linear_grad_weight", "9");
}

} // namespace
