//===- Fp8StepTest.cpp - a step with e4m3 frozen products against bf16 ----===//
//
// fp8_base changes the arithmetic of every product of a frozen weight: its
// weight and its input rows are rounded to e4m3 (3 mantissa bits) first. The
// step must still compute the loss and the adapters' gradients of the bf16
// step up to that rounding: the tolerances below are above what the tiny
// model shows and below what a wrong scale or a lost term would give. The
// e4m3 copies of the frozen weights are derived parameters, made on the host
// from weights that no function reads.
//
//===----------------------------------------------------------------------===//

#include "test/e2e/StepFixtures.h"

#include "runtime/train/derived.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

using namespace g3rt;
using namespace g3moe_test;

namespace {

/// ‖a − b‖ / ‖b‖.
double relativeError(const std::vector<float> &a, const std::vector<float> &b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    n += double(b[i]) * b[i];
  }
  return std::sqrt(d / std::max(n, 1e-30));
}

TEST(StepFp8, LossAndAdapterGradientsNearTheBf16Step) {
  StepProgram fp8 = loadProgram("g3moe_lora_r16_fp8");
  // Every frozen product of the step (q, k, v, o and the MLPs of the dense
  // layers, and the experts, forward and input gradient) reads e4m3 copies
  // derived once from the weight, which no function reads in bf16 any more:
  // the weight stays on the host.
  EXPECT_GT(countKernel(fp8, "scaled_linear"), 0);
  EXPECT_GT(countKernel(fp8, "scaled_expert_linear"), 0);
  EXPECT_EQ(countKernel(fp8, "quantize_fp8"), 0);
  const int layers = int(fp8.model.numHiddenLayers);
  // Four weights of attention and three of the feed-forward block per
  // layer, each as values and scales, plain and transposed; but no input
  // gradient flows into the first layer's q, k and v (the embedding is
  // frozen), so those three have no transposed copy.
  EXPECT_EQ(fp8.derived.size(), size_t((layers * 7 * 2 - 3) * 2));
  std::set<std::string> read;
  for (const FunctionDesc &fn : fp8.functions)
    for (const BufferDesc &b : fn.buffers)
      if (b.kind == BufferKind::Param)
        read.insert(b.name);
  for (const DerivedParamDesc &d : fp8.derived) {
    EXPECT_TRUE(read.count(d.name)) << d.name;
    EXPECT_FALSE(read.count(d.source)) << d.source;
  }
  StepResult bf16 = runStep("g3moe_lora_r16_masked"), e4m3 = runStep("g3moe_lora_r16_fp8");
  EXPECT_NE(bf16.loss, e4m3.loss) << "nothing was quantized";
  EXPECT_NEAR(e4m3.loss, bf16.loss, 0.01 * std::abs(bf16.loss));
  ASSERT_GT(bf16.grads.size(), 10u);
  // The gradients of a random model move far under e4m3 (a tensor by up to
  // 0.7 of its norm here, all of them together by 0.54, where bf16 against
  // fp32 moves a tensor by 0.05); a lost or doubled term, or a wrong scale,
  // moves them by their whole norm or more.
  std::vector<float> all, allE4M3;
  for (const auto &[name, g] : bf16.grads) {
    EXPECT_LT(relativeError(e4m3.grads[name], g), 1.0) << name;
    all.insert(all.end(), g.begin(), g.end());
    allE4M3.insert(allE4M3.end(), e4m3.grads[name].begin(), e4m3.grads[name].end());
  }
  EXPECT_LT(relativeError(allE4M3, all), 0.75); // 0.54 here
}

} // namespace

namespace {

/// The derived parameter of `program` deriving `derivation` from `source`.
const DerivedParamDesc *derivedOf(const StepProgram &program, const std::string &source,
                                  Derivation derivation) {
  for (const DerivedParamDesc &d : program.derived)
    if (d.source == source && d.derivation == derivation)
      return &d;
  return nullptr;
}

TEST(StepFp8, TheHostKeepsTheSourcesAndDerivesTheCopies) {
  StepProgram program = loadProgram("g3moe_lora_r16_fp8");
  HostState state(program);
  ASSERT_TRUE(initializeParameters(state, 5, 0).ok());
  const std::string name = "model.layers.2.moe.experts.{e}.up_proj.weight";
  TensorView w = state.param(name);
  ASSERT_NE(w.data, nullptr) << "the host holds the source that no function reads";
  ASSERT_EQ(w.rank(), 3);
  const int64_t E = w.dim(0), N = w.dim(1), K = w.dim(2);
  auto view = [&](Derivation d) {
    const DerivedParamDesc *desc = derivedOf(program, name, d);
    EXPECT_NE(desc, nullptr);
    return desc ? state.param(desc->name) : TensorView{};
  };
  // Each copy, scaled back, is the weight up to e4m3's rounding (half a
  // step of 3 mantissa bits: 1/16 of the value; 1/8 of the row's largest
  // value at the bottom of the range), the transposed one read across.
  auto check = [&]() {
    TensorView q = view(Derivation::E4M3), s = view(Derivation::E4M3Scales);
    TensorView qt = view(Derivation::E4M3Transposed), st = view(Derivation::E4M3TransposedScales);
    ASSERT_TRUE(q.data && s.data && qt.data && st.data);
    ASSERT_EQ(qt.shape, (std::vector<int64_t>{E, K, N}));
    double worst = 0, worstT = 0;
    for (int64_t e = 0; e < E; ++e)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const double x = w.load((e * N + n) * K + k);
          const double back = q.load((e * N + n) * K + k) * s.load(e * N + n);
          const double backT = qt.load((e * K + k) * N + n) * st.load(e * K + k);
          worst = std::max(worst, std::abs(back - x) / (s.load(e * N + n) * 448));
          worstT = std::max(worstT, std::abs(backT - x) / (st.load(e * K + k) * 448));
        }
    EXPECT_LT(worst, 1.0 / 8);
    EXPECT_LT(worstT, 1.0 / 8);
    EXPECT_GT(worst, 0.0) << "nothing was rounded";
  };
  check();
  // Parameters written otherwise (a checkpoint) are derived again.
  for (int64_t i = 0; i < w.numel(); ++i)
    w.store(i, float(i % 7) - 3.0f);
  ASSERT_TRUE(deriveParameters(state).ok());
  check();
}

TEST(StepFp8, DerivedParametersAreCheckedAgainstTheirSources) {
  const StepProgram program = loadProgram("g3moe_lora_r16_fp8");
  ASSERT_FALSE(program.derived.empty());
  ASSERT_TRUE(checkDerivedParams(program).ok());
  auto error = [](const StepProgram &p) {
    Status s = checkDerivedParams(p);
    EXPECT_FALSE(s.ok());
    return s.message();
  };
  StepProgram missing = program;
  missing.derived[0].source = "model.layers.0.nothing.weight";
  EXPECT_NE(error(missing).find("names the source 'model.layers.0.nothing.weight', which is no "
                                "frozen float parameter"),
            std::string::npos);
  StepProgram shape = program;
  shape.derived[0].shape[0] += 1;
  EXPECT_NE(error(shape).find("its derivation of"), std::string::npos);
  StepProgram alone = program;
  alone.derived.erase(std::remove_if(alone.derived.begin(), alone.derived.end(),
                                     [](const DerivedParamDesc &d) {
                                       return d.derivation == Derivation::E4M3Scales;
                                     }),
                      alone.derived.end());
  EXPECT_NE(error(alone).find("has no scales beside it"), std::string::npos);
}

} // namespace

namespace {

/// fp8_base under the memory planner's choices: a recomputed feed-forward
/// block or a checkpointed layer makes its e4m3 products again in the
/// backward from the same derived copies, the same arithmetic, so loss and gradients are the same
/// bit for bit; in chunks of tokens, too, the forward is row by row either way, and only the order
/// of a weight gradient's sum over the chunks changes.
TEST(StepFp8, CheckpointsAndChunksComputeTheWholeStep) {
  const int64_t whole =
      countKernel(loadProgram("g3moe_lora_r16_fp8_nodrop"), "scaled_expert_linear");
  StepResult kept = runStep("g3moe_lora_r16_fp8_nodrop");
  ASSERT_GT(kept.grads.size(), 10u);
  for (const char *recomputed : {"g3moe_lora_r16_fp8_mlp", "g3moe_lora_r16_fp8_layers"}) {
    EXPECT_GT(countKernel(loadProgram(recomputed), "scaled_expert_linear"), whole)
        << recomputed << " makes no e4m3 product again";
    StepResult again = runStep(recomputed);
    EXPECT_EQ(kept.loss, again.loss) << recomputed;
    for (const auto &[param, g] : kept.grads)
      EXPECT_EQ(g, again.grads[param]) << recomputed << ": " << param;
  }
  EXPECT_GT(countKernel(loadProgram("g3moe_lora_r16_fp8_tiled"), "split_rows"), 0);
  StepResult tiled = runStep("g3moe_lora_r16_fp8_tiled");
  EXPECT_NEAR(kept.loss, tiled.loss, 1e-6 * std::abs(kept.loss));
  expectGradientsNear(kept, tiled, 1e-5f, 1e-9f);
}

} // namespace
