//===- Fp8StepTest.cpp - a step with e4m3 frozen products against bf16 ----===//
//
// fp8_base changes the arithmetic of every product of a frozen weight: its
// weight and its input rows are rounded to e4m3 (3 mantissa bits) first. The
// step must still compute the loss and the adapters' gradients of the bf16
// step up to that rounding: the tolerances below are above what the tiny
// model shows and below what a wrong scale or a lost term would give.
//
//===----------------------------------------------------------------------===//

#include "test/e2e/StepFixtures.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
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
  // Every frozen product of the step: q, k, v, o and the MLPs of the dense
  // layers, and the experts, forward and input gradient, each with its own
  // quantized weight.
  EXPECT_GT(countKernel(fp8, "scaled_linear"), 0);
  EXPECT_GT(countKernel(fp8, "scaled_expert_linear"), 0);
  EXPECT_EQ(countKernel(fp8, "quantize_fp8"),
            countKernel(fp8, "scaled_linear") + countKernel(fp8, "scaled_expert_linear"));
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
