//===- ScratchBoundsTest.cpp - the attention scratch the planner counts ---===//
//
// The bound on cuDNN attention's scratch, which the memory planner adds to a
// step's device memory and the CUDA backend to its memory check: the parts
// cudnn_attention.cu lays out, plus a workspace the size of the dq
// accumulator.
//
//===----------------------------------------------------------------------===//

#include "runtime/kernels/scratch_bounds.h"

#include <gtest/gtest.h>

using namespace g3rt;

namespace {

constexpr uint64_t kMiB = uint64_t(1) << 20;

TEST(ScratchBounds, TheBackwardAtLongContext) {
  // G3MoE-4B's queries at 262,144 tokens: 8 heads of 256. q has 2^29
  // elements: 1 GiB in bf16 (the masked output gradient), 2 GiB in fp32 (the
  // dq accumulator, and the workspace bound), 8 MiB of fp32 row statistics
  // twice: 5.0 GiB, what the H100 run needed beside the plan.
  EXPECT_EQ(attentionScratchBound(1, 262144, 8, 256, /*grad=*/true, /*saved=*/true),
            5 * 1024 * kMiB + 16 * kMiB);
  // Without the forward's output saved, the backward reruns it into scratch.
  EXPECT_EQ(attentionScratchBound(1, 262144, 8, 256, true, false), 6 * 1024 * kMiB + 16 * kMiB);
  // The forward needs only its statistics and the workspace.
  EXPECT_EQ(attentionScratchBound(1, 262144, 8, 256, false, false), 2 * 1024 * kMiB + 8 * kMiB);
}

TEST(ScratchBounds, ScalesWithTokensAndAligns) {
  EXPECT_EQ(attentionScratchBound(1, 131072, 8, 256, true, true) * 2,
            attentionScratchBound(1, 262144, 8, 256, true, true));
  EXPECT_EQ(attentionScratchBound(2, 131072, 8, 256, true, true),
            attentionScratchBound(1, 262144, 8, 256, true, true));
  // One row of one head: every part rounded up to 256 bytes.
  EXPECT_EQ(attentionScratchBound(1, 1, 1, 4, true, true), 5 * 256u);
}

TEST(ScratchBounds, PerLaunch) {
  const int64_t q[] = {1, 262144, 8, 256};
  // A backward with the forward's output and log-sum-exp has seven inputs.
  EXPECT_EQ(launchScratchBound("attention_grad", q, 4, 7),
            attentionScratchBound(1, 262144, 8, 256, true, true));
  EXPECT_EQ(launchScratchBound("attention_grad", q, 4, 5),
            attentionScratchBound(1, 262144, 8, 256, true, false));
  EXPECT_EQ(launchScratchBound("attention", q, 4, 4),
            attentionScratchBound(1, 262144, 8, 256, false, false));
  EXPECT_EQ(launchScratchBound("linear", q, 4, 2), 0u);
  EXPECT_EQ(launchScratchBound("attention", q, 3, 4), 0u);
}

} // namespace
