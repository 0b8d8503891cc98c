//===- SaveAttentionStats.cpp - the forward's softmax statistics ----------===//
//
// Implements --g3moe-save-attention-stats. Without them, attention_grad
// repeats the forward's sweep over the keys to rebuild each row's softmax
// (about a third of the backward's work on cuDNN); with the forward's output
// and per-row logsumexp it starts from them. The forward gets an `lse` result
// (a float per query row and head), and its output lives on to the backward.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOESAVEATTENTIONSTATSPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// The forward of `grad`: an attention of the same operands and attributes
/// before it in its block, or null.
AttentionOp forwardOf(AttentionGradOp grad) {
  for (Operation *user : grad.getQuery().getUsers()) {
    auto fwd = dyn_cast<AttentionOp>(user);
    if (fwd && fwd->getBlock() == grad->getBlock() && fwd->isBeforeInBlock(grad) &&
        fwd.getKey() == grad.getKey() && fwd.getValue() == grad.getValue() &&
        fwd.getSegmentIds() == grad.getSegmentIds() && fwd.getScaleAttr() == grad.getScaleAttr() &&
        fwd.getSlidingWindowAttr() == grad.getSlidingWindowAttr() &&
        fwd.getSoftcapAttr() == grad.getSoftcapAttr())
      return fwd;
  }
  return {};
}

/// `fwd` with an `lse` result (itself when it has one).
AttentionOp withLse(AttentionOp fwd) {
  if (fwd.getLse())
    return fwd;
  OpBuilder b(fwd);
  auto q = fwd.getQuery().getType();
  auto lseType =
      RankedTensorType::get({q.getDimSize(0), q.getDimSize(2), q.getDimSize(1)}, b.getF32Type());
  auto op = AttentionOp::create(b, fwd.getLoc(), q, lseType, fwd.getQuery(), fwd.getKey(),
                                fwd.getValue(), fwd.getSegmentIds(), fwd.getScaleAttr(),
                                fwd.getSlidingWindowAttr(), fwd.getSoftcapAttr());
  fwd.getResult().replaceAllUsesWith(op.getResult());
  fwd.erase();
  return op;
}

struct G3MoESaveAttentionStatsPass
    : g3moe::impl::G3MoESaveAttentionStatsPassBase<G3MoESaveAttentionStatsPass> {
  void runOnOperation() override {
    SmallVector<AttentionGradOp> grads;
    getOperation()->walk([&](AttentionGradOp grad) {
      if (grad.getSaved().empty())
        grads.push_back(grad);
    });
    for (AttentionGradOp grad : grads) {
      AttentionOp fwd = forwardOf(grad);
      if (!fwd)
        continue;
      fwd = withLse(fwd);
      grad.getSavedMutable().assign({fwd.getResult(), fwd.getLse()});
    }
  }
};

} // namespace
