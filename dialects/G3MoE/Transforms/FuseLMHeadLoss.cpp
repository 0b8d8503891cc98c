//===- FuseLMHeadLoss.cpp - fused, chunked LM head + cross-entropy --------===//
//
// Implements --g3moe-fuse-lm-head-loss. The LM head of a 262K-token
// vocabulary makes the largest tensors of a step: fp32 logits and their
// gradient, each [tokens, vocab]. Fusing the head with the loss lets the
// kernels work on chunks of rows and never hold either in full.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOEFUSELMHEADLOSSPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// cross_entropy(lm_head(x, table), t, n) -> lm_head_cross_entropy(x, table, t, n).
struct FuseForward : OpRewritePattern<CrossEntropyOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(CrossEntropyOp ce, PatternRewriter &rewriter) const override {
    auto head = ce.getLogits().getDefiningOp<LMHeadOp>();
    if (!head)
      return rewriter.notifyMatchFailure(ce, "logits do not come from lm_head");
    rewriter.replaceOpWithNewOp<LMHeadCrossEntropyOp>(
        ce, ce.getType(), head.getInput(), head.getTable(), ce.getTargets(),
        ce.getNumItems(), head.getSoftcapAttr(), ce.getIgnoreIndexAttr());
    return success();
  }
};

/// lm_head_grad(x, table, cross_entropy_grad(lm_head(x, table), t, n, g))
///   -> lm_head_cross_entropy_grad(x, table, t, n, g).
struct FuseBackward : OpRewritePattern<LMHeadGradOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(LMHeadGradOp grad, PatternRewriter &rewriter) const override {
    auto ceGrad = grad.getGrad().getDefiningOp<CrossEntropyGradOp>();
    if (!ceGrad)
      return rewriter.notifyMatchFailure(grad, "the gradient is not cross_entropy_grad's");
    auto head = ceGrad.getLogits().getDefiningOp<LMHeadOp>();
    if (!head || head.getInput() != grad.getInput() || head.getTable() != grad.getTable() ||
        head.getSoftcapAttr() != grad.getSoftcapAttr())
      return rewriter.notifyMatchFailure(grad, "not the gradient of the same lm_head");
    bool wantTable = !grad.getTableGrad().use_empty();
    Type tableGradType = wantTable ? grad.getTableGrad().getType() : Type();
    auto fused = LMHeadCrossEntropyGradOp::create(
        rewriter, grad.getLoc(), grad.getInputGrad().getType(), tableGradType,
        grad.getInput(), grad.getTable(), ceGrad.getTargets(), ceGrad.getNumItems(),
        ceGrad.getGrad(), grad.getSoftcapAttr(), ceGrad.getIgnoreIndexAttr());
    rewriter.replaceAllUsesWith(grad.getInputGrad(), fused.getInputGrad());
    if (wantTable)
      rewriter.replaceAllUsesWith(grad.getTableGrad(), fused.getTableGrad());
    rewriter.eraseOp(grad);
    return success();
  }
};

struct G3MoEFuseLMHeadLossPass
    : g3moe::impl::G3MoEFuseLMHeadLossPassBase<G3MoEFuseLMHeadLossPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateFuseLMHeadLossPatterns(patterns);
    // The unfused ops left without users (the logits, their gradient) are
    // pure, so the driver erases them.
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
  }
};

} // namespace

void g3moe::populateFuseLMHeadLossPatterns(RewritePatternSet &patterns) {
  patterns.add<FuseForward, FuseBackward>(patterns.getContext());
}
