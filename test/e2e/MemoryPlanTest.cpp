//===- MemoryPlanTest.cpp - the memory planner's choices change no result -===//
//
// A step compiled to fit less memory (activations recomputed in the backward,
// whole layers from their checkpoints, feed-forward blocks run on chunks of
// tokens, activations kept in host memory) computes the same loss and
// gradients as the step that keeps every activation: bit for bit where the
// order of every sum is unchanged, within fp32 rounding where chunks sum a
// weight's gradient in parts.
//
//===----------------------------------------------------------------------===//

#include "test/e2e/StepFixtures.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <ostream>
#include <string>

using namespace g3rt;
using namespace g3moe_test;

namespace {

int64_t arenaBytes(const std::string &name) {
  return loadProgram(name).findFunction("forward_backward")->arenaBytes;
}

/// Step `name`'s loss and gradients are g3moe_lora_fp32's, bit for bit, in a
/// smaller arena.
void expectSameAsKeepingEverything(const std::string &name) {
  ASSERT_LT(arenaBytes(name), arenaBytes("g3moe_lora_fp32")) << name << " should need less arena";
  StepResult kept = runStep("g3moe_lora_fp32"), planned = runStep(name);
  EXPECT_EQ(kept.loss, planned.loss);
  ASSERT_GT(kept.grads.size(), 10u);
  for (const auto &[param, g] : kept.grads)
    EXPECT_EQ(g, planned.grads[param]) << param;
}

class StepRecompute : public ::testing::TestWithParam<const char *> {};

TEST_P(StepRecompute, SameLossAndGradientsAsKeepingActivations) {
  expectSameAsKeepingEverything(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Steps, StepRecompute,
                         ::testing::Values("g3moe_lora_fp32_recompute", "g3moe_lora_fp32_partial",
                                           "g3moe_lora_fp32_checkpoints",
                                           "g3moe_lora_fp32_keep_attention"));

/// The checkpointed step whose global layer keeps its attention runs one
/// attention fewer (the global layer's, not made again) than the one that
/// recomputes every layer whole.
TEST(StepRecompute, ACheckpointKeepingItsAttentionRunsItOnce) {
  auto attentions = [](const std::string &name) {
    return countKernel(loadProgram(name), "attention");
  };
  EXPECT_EQ(attentions("g3moe_lora_fp32_keep_attention") + 1,
            attentions("g3moe_lora_fp32_recompute"));
}

/// Steps keeping activations in host memory between their uses: the copies
/// move bytes and change no arithmetic, so loss and gradients are those of
/// the step that keeps everything on the device, bit for bit.
class StepOffload : public ::testing::TestWithParam<const char *> {};

TEST_P(StepOffload, SameLossAndGradientsAsKeepingActivationsOnTheDevice) {
  StepProgram program = loadProgram(GetParam());
  const FunctionDesc *fb = program.findFunction("forward_backward");
  ASSERT_NE(fb, nullptr);
  EXPECT_GT(fb->copies, 0u) << GetParam() << " offloads nothing";
  EXPECT_GT(program.hostBytes, 0u);
  expectSameAsKeepingEverything(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Steps, StepOffload,
                         ::testing::Values("g3moe_lora_fp32_offload",
                                           "g3moe_lora_fp32_offload_layers",
                                           "g3moe_lora_fp32_offload_budget"));

/// A step whose LoRA dropouts sit inside the products
/// (--dropout-in-products, the default: a dropout_mask of bits per draw,
/// read by the A products and gradients) against the same step with separate
/// keyed_dropouts (--dropout-in-products=false): the same arithmetic on the
/// same dropped values, without the dropped tensors kept for the backward.
/// The forward is the same bit for bit, so the loss is. The backward differs
/// in one rounding: a dropped input gradient through A joins the wide input
/// gradient's fp32 sum where the separate step rounds it, and gate's and
/// up's terms to bf16 first; a few bf16 ulps per element, which the layers
/// below carry into their gradients (up to 2.6 % of a tensor's largest
/// element in layer 0). Each gradient is within 3 % of its largest element
/// of the separate step's; the last layer's experts, whose LoRA gradients
/// come before any such sum, are the same bit for bit.
TEST(StepDropoutMask, SameLossAndGradientsAsSeparateDropouts) {
  StepProgram masked = loadProgram("g3moe_lora_r16_masked");
  const FunctionDesc *fb = masked.findFunction("forward_backward");
  ASSERT_NE(fb, nullptr);
  EXPECT_GT(countKernel(masked, "dropout_mask"), 0);
  EXPECT_EQ(countKernel(masked, "keyed_dropout"), 0);
  EXPECT_LT(fb->arenaBytes, arenaBytes("g3moe_lora_r16"));
  StepResult separate = runStep("g3moe_lora_r16"), inside = runStep("g3moe_lora_r16_masked");
  EXPECT_EQ(separate.loss, inside.loss);
  ASSERT_GT(separate.grads.size(), 10u);
  expectGradientsNear(separate, inside, 0.03f);
  const std::string lastMoE = "layers.5.moe."; // tiny-g3moe has six layers
  for (const auto &[param, g] : separate.grads)
    if (param.find(lastMoE) != std::string::npos)
      EXPECT_EQ(g, inside.grads[param]) << param;
}

/// A step with its feed-forward blocks tiled against the same step whole.
/// Without LoRA dropout, so that no chunk draws a mask, a tiled step computes
/// the same function: the forward is row by row either way; a weight's
/// gradient is summed chunk by chunk, in another order. (In steps this small
/// the chunks' copies outweigh what tiling saves: lit tests check the memory
/// of the 4B steps.)
struct TilePair {
  const char *whole, *tiled;
};

/// Names the pair in test listings (the default prints its pointers).
void PrintTo(const TilePair &p, std::ostream *os) { *os << p.whole << " vs " << p.tiled; }

class StepTile : public ::testing::TestWithParam<TilePair> {};

TEST_P(StepTile, SameLossAndGradientsAsWholeBlocks) {
  StepProgram tiledProgram = loadProgram(GetParam().tiled);
  const FunctionDesc *fb = tiledProgram.findFunction("forward_backward");
  ASSERT_NE(fb, nullptr);
  ASSERT_TRUE(std::any_of(fb->instrs.begin(), fb->instrs.end(),
                          [](const InstrDesc &i) { return i.kernel == "split_rows"; }))
      << GetParam().tiled << " runs no block in chunks";
  if (std::string(GetParam().tiled).find("offload") != std::string::npos)
    EXPECT_GT(fb->copies, 0u) << GetParam().tiled << " offloads nothing";
  StepResult whole = runStep(GetParam().whole), tiled = runStep(GetParam().tiled);
  EXPECT_NEAR(whole.loss, tiled.loss, 1e-6 * std::abs(whole.loss));
  ASSERT_GT(whole.grads.size(), 10u);
  expectGradientsNear(whole, tiled, 1e-5f, 1e-9f);
}

INSTANTIATE_TEST_SUITE_P(
    Steps, StepTile,
    ::testing::Values(TilePair{"g3moe_lora_fp32_nodrop", "g3moe_lora_fp32_tiled"},
                      TilePair{"g3moe_lora_fp32_nodrop", "g3moe_lora_fp32_tiled_layers"},
                      TilePair{"g3moe_lora_fp32_nodrop", "g3moe_lora_fp32_tiled_budget"},
                      TilePair{"g3moe_lora_fp32_nodrop", "g3moe_lora_fp32_tiled_offload"},
                      TilePair{"gemma3_full_fp32", "gemma3_full_fp32_tiled"},
                      TilePair{"g3moe_topk_full_fp32", "g3moe_topk_full_fp32_tiled"},
                      TilePair{"g3moe_grouped_full_fp32", "g3moe_grouped_full_fp32_tiled"}),
    [](const ::testing::TestParamInfo<TilePair> &info) { return std::string(info.param.tiled); });

} // namespace
