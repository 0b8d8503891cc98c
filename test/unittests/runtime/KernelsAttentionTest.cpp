//===- KernelsAttentionTest.cpp - rope / attention CPU kernel tests -------===//
//
// The attention kernels walk only the keys a mask can admit; these tests hold
// them against a deliberately naive reference (full T x T score matrix with an
// explicit mask, in double) for every mask ingredient, check attention_grad
// and rope's transpose against central finite differences, and check that the
// results do not depend on the thread count.
//
//===----------------------------------------------------------------------===//

#include "KernelTesting.h"

#include "runtime/base/parallel.h"

#include <cstring>

using namespace g3rt;
using namespace g3rt::testing;

namespace {

struct AttnCase {
  int64_t B = 1, T = 6, nh = 2, nkv = 2, d = 8;
  double scale = 0.35;
  int64_t window = 0;       // 0: none
  double softcap = 0;       // 0: none
  std::vector<int32_t> seg; // [B*T]; empty: all ones
};

KernelAttrs attnAttrs(const AttnCase &c) {
  KernelAttrs a;
  a.set("scale", AttrValue::ofFloat(c.scale));
  if (c.window > 0)
    a.set("sliding_window", AttrValue::ofInt(c.window));
  if (c.softcap > 0)
    a.set("softcap", AttrValue::ofFloat(c.softcap));
  return a;
}

struct AttnInputs {
  Tensor q, k, v, seg;
};

AttnInputs makeInputs(const AttnCase &c, uint32_t seed, DType dtype = DType::F32,
                      float range = 1.0f) {
  std::mt19937 rng(seed);
  AttnInputs in;
  in.q = Tensor(dtype, {c.B, c.T, c.nh, c.d});
  in.k = Tensor(dtype, {c.B, c.T, c.nkv, c.d});
  in.v = Tensor(dtype, {c.B, c.T, c.nkv, c.d});
  fillUniform(in.q, rng, -range, range);
  fillUniform(in.k, rng, -range, range);
  fillUniform(in.v, rng, -1, 1);
  in.seg = Tensor::i32({c.B, c.T});
  for (int64_t i = 0; i < c.B * c.T; ++i)
    in.seg.i()[i] = c.seg.empty() ? 1 : c.seg[size_t(i)];
  return in;
}

bool visibleRef(const AttnCase &c, const int32_t *seg, int64_t b, int64_t i, int64_t j) {
  int32_t si = seg[b * c.T + i], sj = seg[b * c.T + j];
  return j <= i && sj != 0 && sj == si && (c.window == 0 || i - j < c.window);
}

// Naive reference: the whole score matrix, an explicit mask, softmax in double.
std::vector<double> naiveAttention(const AttnCase &c, const AttnInputs &in) {
  std::vector<float> q = in.q.values(), k = in.k.values(), v = in.v.values();
  const int32_t *seg = in.seg.i();
  std::vector<double> out(size_t(c.B * c.T * c.nh * c.d), 0.0);
  int64_t group = c.nh / c.nkv;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.nh; ++h) {
      int64_t kh = h / group;
      std::vector<double> S(size_t(c.T * c.T));
      std::vector<char> mask(size_t(c.T * c.T));
      for (int64_t i = 0; i < c.T; ++i)
        for (int64_t j = 0; j < c.T; ++j) {
          double s = 0;
          for (int64_t e = 0; e < c.d; ++e)
            s += double(q[size_t(((b * c.T + i) * c.nh + h) * c.d + e)]) *
                 k[size_t(((b * c.T + j) * c.nkv + kh) * c.d + e)];
          s *= c.scale;
          if (c.softcap > 0)
            s = c.softcap * std::tanh(s / c.softcap);
          S[size_t(i * c.T + j)] = s;
          mask[size_t(i * c.T + j)] = visibleRef(c, seg, b, i, j);
        }
      for (int64_t i = 0; i < c.T; ++i) {
        double mx = -1e300;
        bool any = false;
        for (int64_t j = 0; j < c.T; ++j)
          if (mask[size_t(i * c.T + j)]) {
            mx = std::max(mx, S[size_t(i * c.T + j)]);
            any = true;
          }
        if (!any)
          continue;
        double sum = 0;
        for (int64_t j = 0; j < c.T; ++j)
          if (mask[size_t(i * c.T + j)])
            sum += std::exp(S[size_t(i * c.T + j)] - mx);
        for (int64_t j = 0; j < c.T; ++j) {
          if (!mask[size_t(i * c.T + j)])
            continue;
          double p = std::exp(S[size_t(i * c.T + j)] - mx) / sum;
          for (int64_t e = 0; e < c.d; ++e)
            out[size_t(((b * c.T + i) * c.nh + h) * c.d + e)] +=
                p * v[size_t(((b * c.T + j) * c.nkv + kh) * c.d + e)];
        }
      }
    }
  return out;
}

Tensor runAttention(const AttnCase &c, const AttnInputs &in, DType outType = DType::F32) {
  Tensor o(outType, {c.B, c.T, c.nh, c.d});
  Status s = run("attention", {in.q, in.k, in.v, in.seg}, {o}, attnAttrs(c));
  EXPECT_TRUE(s.ok()) << s.message();
  return o;
}

void expectMatchesNaive(const AttnCase &c, const AttnInputs &in, double tol = 2e-6) {
  std::vector<double> want = naiveAttention(c, in);
  std::vector<float> got = runAttention(c, in).values();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    G3RT_EXPECT_CLOSE(got[i], want[i], tol, tol) << " at " << i;
}

//===----------------------------------------------------------------------===//
// attention forward
//===----------------------------------------------------------------------===//

TEST(AttentionKernels, ForwardCausal) {
  AttnCase c;
  c.B = 2;
  c.T = 7;
  AttnInputs in = makeInputs(c, 1);
  expectMatchesNaive(c, in);
  // The first query sees only itself: its output is v[0] of its kv head.
  Tensor o = runAttention(c, in);
  for (int64_t e = 0; e < c.d; ++e)
    EXPECT_FLOAT_EQ(o.f()[e], in.v.f()[e]);
}

TEST(AttentionKernels, ForwardGQA) {
  AttnCase c;
  c.B = 2;
  c.T = 9;
  c.nh = 4;
  c.nkv = 2;
  AttnInputs in = makeInputs(c, 2);
  expectMatchesNaive(c, in);
  // Heads 0 and 1 read kv head 0, heads 2 and 3 kv head 1: changing kv head 1
  // must leave heads 0 and 1 untouched.
  Tensor before = runAttention(c, in);
  for (int64_t t = 0; t < c.B * c.T; ++t)
    for (int64_t e = 0; e < c.d; ++e)
      in.v.f()[(t * c.nkv + 1) * c.d + e] += 1.0f;
  Tensor after = runAttention(c, in);
  for (int64_t t = 0; t < c.B * c.T; ++t)
    for (int64_t h = 0; h < c.nh; ++h)
      for (int64_t e = 0; e < c.d; ++e) {
        int64_t i = (t * c.nh + h) * c.d + e;
        if (h < 2)
          EXPECT_EQ(before.f()[i], after.f()[i]);
        else
          EXPECT_NE(before.f()[i], after.f()[i]);
      }
}

TEST(AttentionKernels, ForwardSlidingWindow) {
  AttnCase c;
  c.T = 10;
  c.window = 3;
  AttnInputs in = makeInputs(c, 3);
  expectMatchesNaive(c, in);
  // The window binds: without it the late queries differ.
  AttnCase full = c;
  full.window = 0;
  std::vector<double> unwindowed = naiveAttention(full, in);
  std::vector<float> got = runAttention(c, in).values();
  size_t last = size_t(((c.T - 1) * c.nh) * c.d);
  EXPECT_GT(std::fabs(got[last] - unwindowed[last]), 1e-4);
  // A window of 1 leaves each query alone with its own key.
  c.window = 1;
  Tensor o = runAttention(c, in);
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t h = 0; h < c.nh; ++h)
      for (int64_t e = 0; e < c.d; ++e)
        EXPECT_FLOAT_EQ(o.f()[(t * c.nh + h) * c.d + e], in.v.f()[(t * c.nkv + h) * c.d + e]);
}

TEST(AttentionKernels, ForwardPackedDocumentsAndPadding) {
  AttnCase c;
  c.B = 2;
  c.T = 10;
  c.nh = 4;
  c.nkv = 2;
  // Row 0: two documents then padding; row 1: one document, padding, and a
  // stray document after the padding.
  c.seg = {1, 1, 1, 2, 2, 2, 2, 0, 0, 0, //
           5, 5, 5, 5, 5, 5, 0, 0, 7, 7};
  AttnInputs in = makeInputs(c, 4);
  expectMatchesNaive(c, in);
  Tensor o = runAttention(c, in);
  // Padding queries have no visible key at all: exactly 0.
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t t = 0; t < c.T; ++t)
      if (c.seg[size_t(b * c.T + t)] == 0) {
        for (int64_t i = 0; i < c.nh * c.d; ++i)
          EXPECT_EQ(o.f()[(b * c.T + t) * c.nh * c.d + i], 0.0f);
      }
  // The first token of document 2 sees only itself.
  for (int64_t h = 0; h < c.nh; ++h)
    for (int64_t e = 0; e < c.d; ++e)
      EXPECT_FLOAT_EQ(o.f()[(3 * c.nh + h) * c.d + e], in.v.f()[(3 * c.nkv + h / 2) * c.d + e]);
}

TEST(AttentionKernels, ForwardSoftcap) {
  AttnCase c;
  c.T = 8;
  c.scale = 1.0;
  c.softcap = 1.5;
  // Large scores so that the cap changes the softmax noticeably.
  AttnInputs in = makeInputs(c, 5, DType::F32, 2.0f);
  expectMatchesNaive(c, in);
  AttnCase uncapped = c;
  uncapped.softcap = 0;
  std::vector<double> plain = naiveAttention(uncapped, in);
  std::vector<float> got = runAttention(c, in).values();
  double diff = 0;
  for (size_t i = 0; i < got.size(); ++i)
    diff = std::max(diff, std::fabs(got[i] - plain[i]));
  EXPECT_GT(diff, 1e-2);
}

TEST(AttentionKernels, ForwardAllMasksBF16) {
  AttnCase c;
  c.B = 2;
  c.T = 12;
  c.nh = 4;
  c.nkv = 1;
  c.window = 4;
  c.softcap = 5.0;
  c.seg = {1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, //
           3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3};
  AttnInputs in = makeInputs(c, 6, DType::BF16);
  std::vector<double> want = naiveAttention(c, in); // from the bf16 values
  std::vector<float> got = runAttention(c, in, DType::BF16).values();
  for (size_t i = 0; i < got.size(); ++i)
    G3RT_EXPECT_CLOSE(got[i], want[i], 1e-2, 1e-2) << " at " << i;
}

// The optional lse output: each row's logsumexp of its visible scores, in
// double from the whole score row; 0 for a row that sees nothing. The output
// itself is unchanged by asking for it.
TEST(AttentionKernels, ForwardLogSumExp) {
  AttnCase c;
  c.B = 2;
  c.T = 10;
  c.nh = 4;
  c.nkv = 2;
  c.window = 4;
  c.softcap = 3.0;
  c.seg = {1, 1, 1, 2, 2, 2, 2, 0, 0, 0, //
           5, 5, 5, 5, 5, 5, 0, 0, 7, 7};
  AttnInputs in = makeInputs(c, 8, DType::F32, 2.0f);
  Tensor o = Tensor::f32({c.B, c.T, c.nh, c.d}), lse = Tensor::f32({c.B, c.nh, c.T});
  Status s = run("attention", {in.q, in.k, in.v, in.seg}, {o, lse}, attnAttrs(c));
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(o.values() == runAttention(c, in).values());
  std::vector<float> q = in.q.values(), k = in.k.values();
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.nh; ++h)
      for (int64_t i = 0; i < c.T; ++i) {
        double sum = 0;
        for (int64_t j = 0; j < c.T; ++j) {
          if (!visibleRef(c, in.seg.i(), b, i, j))
            continue;
          double dot = 0;
          for (int64_t e = 0; e < c.d; ++e)
            dot += double(q[size_t(((b * c.T + i) * c.nh + h) * c.d + e)]) *
                   k[size_t(((b * c.T + j) * c.nkv + h / 2) * c.d + e)];
          sum += std::exp(c.softcap * std::tanh(dot * c.scale / c.softcap));
        }
        double want = sum > 0 ? std::log(sum) : 0.0;
        G3RT_EXPECT_CLOSE(lse.f()[(b * c.nh + h) * c.T + i], want, 2e-6, 2e-6)
            << "b " << b << " h " << h << " row " << i;
      }
}

TEST(AttentionKernels, RejectsBadShapes) {
  AttnCase c;
  c.nh = 3;
  c.nkv = 2;
  AttnInputs in = makeInputs(c, 7);
  Tensor o = Tensor::f32({c.B, c.T, c.nh, c.d});
  Status s = run("attention", {in.q, in.k, in.v, in.seg}, {o}, attnAttrs(c));
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("attention"), std::string::npos);
  c.nh = 2;
  AttnInputs good = makeInputs(c, 7);
  Tensor badSeg = Tensor::i32({c.B, c.T + 1});
  s = run("attention", {good.q, good.k, good.v, badSeg}, {o}, attnAttrs(c));
  EXPECT_FALSE(s.ok());
  s = run("attention", {good.q, good.k, good.v}, {o}, attnAttrs(c));
  EXPECT_FALSE(s.ok());
  KernelAttrs noScale;
  s = run("attention", {good.q, good.k, good.v, good.seg}, {o}, noScale);
  EXPECT_FALSE(s.ok());
  Tensor dq = Tensor::f32({c.B, c.T, c.nh, c.d});
  s = run("attention_grad", {good.q, good.k, good.v, good.seg, o}, {dq, dq}, attnAttrs(c));
  EXPECT_FALSE(s.ok());
}

//===----------------------------------------------------------------------===//
// attention_grad: finite differences
//===----------------------------------------------------------------------===//

struct Grads {
  Tensor dq, dk, dv;
};

Grads runGrad(const AttnCase &c, const AttnInputs &in, const Tensor &dout) {
  Grads g{Tensor::f32({c.B, c.T, c.nh, c.d}), Tensor::f32({c.B, c.T, c.nkv, c.d}),
          Tensor::f32({c.B, c.T, c.nkv, c.d})};
  Status s =
      run("attention_grad", {in.q, in.k, in.v, in.seg, dout}, {g.dq, g.dk, g.dv}, attnAttrs(c));
  EXPECT_TRUE(s.ok()) << s.message();
  return g;
}

void checkGradFD(const AttnCase &c, uint32_t seed, float range = 1.0f) {
  AttnInputs in = makeInputs(c, seed, DType::F32, range);
  std::mt19937 rng(seed + 100);
  Tensor R = Tensor::f32({c.B, c.T, c.nh, c.d});
  fillUniform(R, rng);
  std::vector<float> r = R.values();
  Grads g = runGrad(c, in, R);
  auto loss = [&] { return dot(r, runAttention(c, in).values()); };

  Tensor *xs[3] = {&in.q, &in.k, &in.v};
  const Tensor *gs[3] = {&g.dq, &g.dk, &g.dv};
  const char *names[3] = {"q", "k", "v"};
  for (int w = 0; w < 3; ++w) {
    Tensor dir(DType::F32, xs[w]->view.shape);
    fillUniform(dir, rng);
    std::vector<float> dv = dir.values();
    double fd = directionalDerivative(loss, *xs[w], dv, 2e-3);
    double analytic = dot(gs[w]->values(), dv);
    EXPECT_NEAR(analytic, fd, 2e-3 + 2e-3 * std::fabs(fd)) << "d" << names[w];
    // Guard against a vacuous check.
    EXPECT_GT(std::fabs(analytic), 1e-3) << "d" << names[w];
  }
}

TEST(AttentionKernels, GradFDCausal) {
  AttnCase c;
  c.B = 2;
  c.T = 6;
  checkGradFD(c, 11);
}

TEST(AttentionKernels, GradFDGQA) {
  AttnCase c;
  c.T = 7;
  c.nh = 6;
  c.nkv = 2;
  checkGradFD(c, 12);
}

TEST(AttentionKernels, GradFDSlidingWindow) {
  AttnCase c;
  c.T = 10;
  c.window = 3;
  checkGradFD(c, 13);
}

TEST(AttentionKernels, GradFDSegments) {
  AttnCase c;
  c.B = 2;
  c.T = 8;
  c.seg = {1, 1, 1, 2, 2, 2, 0, 0, //
           4, 4, 4, 4, 4, 0, 6, 6};
  checkGradFD(c, 14);
}

TEST(AttentionKernels, GradFDSoftcap) {
  AttnCase c;
  c.T = 7;
  c.scale = 1.0;
  c.softcap = 1.5;
  checkGradFD(c, 15, 1.5f);
}

TEST(AttentionKernels, GradFDEverything) {
  AttnCase c;
  c.B = 2;
  c.T = 11;
  c.nh = 4;
  c.nkv = 2;
  c.window = 4;
  c.softcap = 2.0;
  c.scale = 0.8;
  c.seg = {1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 0, //
           3, 3, 0, 3, 3, 3, 3, 3, 3, 3, 3};
  checkGradFD(c, 16, 1.2f);
}

// The backward's saved forward output and lse: checked like the other
// operands, and (on the CPU, which rebuilds the statistics) without effect.
TEST(AttentionKernels, GradTakesSavedForward) {
  AttnCase c;
  c.T = 8;
  AttnInputs in = makeInputs(c, 9);
  Tensor o = Tensor::f32({c.B, c.T, c.nh, c.d}), lse = Tensor::f32({c.B, c.nh, c.T});
  ASSERT_TRUE(run("attention", {in.q, in.k, in.v, in.seg}, {o, lse}, attnAttrs(c)).ok());
  std::mt19937 rng(10);
  Tensor dout = Tensor::f32({c.B, c.T, c.nh, c.d});
  fillUniform(dout, rng);
  Grads plain = runGrad(c, in, dout);
  Grads saved{Tensor::f32({c.B, c.T, c.nh, c.d}), Tensor::f32({c.B, c.T, c.nkv, c.d}),
              Tensor::f32({c.B, c.T, c.nkv, c.d})};
  Status s = run("attention_grad", {in.q, in.k, in.v, in.seg, dout, o, lse},
                 {saved.dq, saved.dk, saved.dv}, attnAttrs(c));
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(saved.dq.values() == plain.dq.values());
  EXPECT_TRUE(saved.dk.values() == plain.dk.values());
  EXPECT_TRUE(saved.dv.values() == plain.dv.values());
  // An lse of the wrong shape or type, or an output alone.
  Tensor badLse = Tensor::f32({c.B, c.T, c.nh});
  s = run("attention_grad", {in.q, in.k, in.v, in.seg, dout, o, badLse},
          {saved.dq, saved.dk, saved.dv}, attnAttrs(c));
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("lse must be an f32 [B, nh, T] tensor"), std::string::npos)
      << s.message();
  s = run("attention_grad", {in.q, in.k, in.v, in.seg, dout, o}, {saved.dq, saved.dk, saved.dv},
          attnAttrs(c));
  EXPECT_FALSE(s.ok());
  Tensor bf16Lse(DType::BF16, {c.B, c.nh, c.T});
  s = run("attention", {in.q, in.k, in.v, in.seg}, {o, bf16Lse}, attnAttrs(c));
  EXPECT_FALSE(s.ok());
}

TEST(AttentionKernels, GradZeroForMaskedPositions) {
  AttnCase c;
  c.B = 1;
  c.T = 8;
  c.nh = 4;
  c.nkv = 2;
  c.seg = {1, 1, 1, 0, 2, 2, 0, 0};
  AttnInputs in = makeInputs(c, 17);
  std::mt19937 rng(18);
  Tensor R = Tensor::f32({c.B, c.T, c.nh, c.d});
  fillUniform(R, rng);
  Grads g = runGrad(c, in, R);
  for (int64_t t = 0; t < c.T; ++t) {
    if (c.seg[size_t(t)] != 0)
      continue;
    for (int64_t i = 0; i < c.nh * c.d; ++i)
      EXPECT_EQ(g.dq.f()[t * c.nh * c.d + i], 0.0f);
    for (int64_t i = 0; i < c.nkv * c.d; ++i) {
      EXPECT_EQ(g.dk.f()[t * c.nkv * c.d + i], 0.0f);
      EXPECT_EQ(g.dv.f()[t * c.nkv * c.d + i], 0.0f);
    }
  }
}

//===----------------------------------------------------------------------===//
// thread-count independence
//===----------------------------------------------------------------------===//

bool bitwiseEqual(const Tensor &a, const Tensor &b) {
  return a.view.bytes() == b.view.bytes() &&
         std::memcmp(a.view.data, b.view.data, a.view.bytes()) == 0;
}

TEST(AttentionKernels, ThreadCountIndependent) {
  AttnCase c;
  c.B = 2;
  c.T = 53;
  c.nh = 4;
  c.nkv = 2;
  c.d = 16;
  c.window = 9;
  c.softcap = 3.0;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t t = 0; t < c.T; ++t)
      c.seg.push_back(t < 20 ? 1 : t < 47 ? 2 : 0);
  for (int64_t window : {int64_t(0), int64_t(9)}) {
    c.window = window;
    AttnInputs in = makeInputs(c, 21, DType::BF16);
    std::mt19937 rng(22);
    Tensor R(DType::BF16, {c.B, c.T, c.nh, c.d});
    fillUniform(R, rng);
    int saved = parallelThreads();
    setParallelThreads(1);
    Tensor o1 = runAttention(c, in, DType::BF16);
    Grads g1 = runGrad(c, in, R);
    setParallelThreads(4);
    Tensor o4 = runAttention(c, in, DType::BF16);
    Grads g4 = runGrad(c, in, R);
    setParallelThreads(saved);
    EXPECT_TRUE(bitwiseEqual(o1, o4)) << "window " << window;
    EXPECT_TRUE(bitwiseEqual(g1.dq, g4.dq)) << "window " << window;
    EXPECT_TRUE(bitwiseEqual(g1.dk, g4.dk)) << "window " << window;
    EXPECT_TRUE(bitwiseEqual(g1.dv, g4.dv)) << "window " << window;
  }
}

//===----------------------------------------------------------------------===//
// rope
//===----------------------------------------------------------------------===//

KernelAttrs ropeAttrs(double theta, double factor, bool transpose) {
  KernelAttrs a;
  a.set("theta", AttrValue::ofFloat(theta));
  a.set("scaling_factor", AttrValue::ofFloat(factor));
  if (transpose)
    a.set("transpose", AttrValue::ofBool(true));
  return a;
}

Tensor runRope(const Tensor &x, const Tensor &pos, const KernelAttrs &attrs) {
  Tensor y(x.view.dtype, x.view.shape);
  Status s = run("rope", {x, pos}, {y}, attrs);
  EXPECT_TRUE(s.ok()) << s.message();
  return y;
}

TEST(AttentionKernels, RopeKnownValuesLinearScaling) {
  const int64_t d = 8, n = 2;
  const double theta = 1e6, factor = 8;
  Tensor x = Tensor::f32({1, 3, n, d});
  std::mt19937 rng(31);
  fillUniform(x, rng);
  Tensor pos = Tensor::i32({1, 3});
  pos.i()[0] = 0;
  pos.i()[1] = 37;
  pos.i()[2] = 1000;
  Tensor y = runRope(x, pos, ropeAttrs(theta, factor, false));
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t h = 0; h < n; ++h)
      for (int64_t i = 0; i < d / 2; ++i) {
        double inv = std::pow(theta, -2.0 * double(i) / double(d)) / factor;
        double phi = pos.i()[t] * inv;
        int64_t base = (t * n + h) * d;
        double a = x.f()[base + i], b = x.f()[base + i + d / 2];
        G3RT_EXPECT_CLOSE(y.f()[base + i], a * std::cos(phi) - b * std::sin(phi), 0, 1e-5);
        G3RT_EXPECT_CLOSE(y.f()[base + i + d / 2], b * std::cos(phi) + a * std::sin(phi), 0, 1e-5);
      }
  // Position 0 is the identity.
  for (int64_t i = 0; i < n * d; ++i)
    EXPECT_EQ(y.f()[i], x.f()[i]);
}

TEST(AttentionKernels, RopeTransposeInverts) {
  Tensor x = Tensor::f32({2, 5, 3, 16});
  std::mt19937 rng(32);
  fillUniform(x, rng);
  Tensor pos = Tensor::i32({2, 5});
  for (int64_t i = 0; i < 10; ++i)
    pos.i()[i] = int32_t((i * 37) % 11); // packed documents restart positions
  Tensor y = runRope(x, pos, ropeAttrs(1e4, 1, false));
  Tensor back = runRope(y, pos, ropeAttrs(1e4, 1, true));
  for (int64_t i = 0; i < x.numel(); ++i)
    G3RT_EXPECT_CLOSE(back.f()[i], x.f()[i], 0, 1e-6);
}

TEST(AttentionKernels, RopeGradientIsTranspose) {
  Tensor x = Tensor::f32({2, 4, 2, 8});
  std::mt19937 rng(33);
  fillUniform(x, rng);
  Tensor pos = Tensor::i32({2, 4});
  for (int64_t i = 0; i < 8; ++i)
    pos.i()[i] = int32_t(3 * i + 1);
  Tensor R = Tensor::f32(x.view.shape), dir = Tensor::f32(x.view.shape);
  fillUniform(R, rng);
  fillUniform(dir, rng);
  std::vector<float> r = R.values(), dv = dir.values();
  KernelAttrs fwd = ropeAttrs(1e6, 8, false);
  auto loss = [&] { return dot(r, runRope(x, pos, fwd).values()); };
  double fd = directionalDerivative(loss, x, dv, 1e-2);
  double analytic = dot(runRope(R, pos, ropeAttrs(1e6, 8, true)).values(), dv);
  EXPECT_NEAR(analytic, fd, 1e-4 + 1e-4 * std::fabs(fd));
}

TEST(AttentionKernels, RopeRejectsBadShapes) {
  Tensor x = Tensor::f32({1, 2, 1, 7});
  Tensor pos = Tensor::i32({1, 2});
  Tensor y = Tensor::f32({1, 2, 1, 7});
  EXPECT_FALSE(run("rope", {x, pos}, {y}, ropeAttrs(1e4, 1, false)).ok());
  Tensor x2 = Tensor::f32({1, 2, 1, 8}), y2 = Tensor::f32({1, 2, 1, 8});
  Tensor badPos = Tensor::i32({2, 2});
  EXPECT_FALSE(run("rope", {x2, badPos}, {y2}, ropeAttrs(1e4, 1, false)).ok());
  KernelAttrs noTheta;
  noTheta.set("scaling_factor", AttrValue::ofFloat(1));
  EXPECT_FALSE(run("rope", {x2, pos}, {y2}, noTheta).ok());
}

} // namespace
