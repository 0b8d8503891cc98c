//===- FuseLMHeadLoss.cpp - fused, chunked LM head + cross-entropy --------===//
//
// Implements --g3moe-fuse-lm-head-loss. The LM head of a 262K-token
// vocabulary makes the largest tensors of a step: fp32 logits and their
// gradient, each [tokens, vocab]. Fusing the head with the loss lets the
// kernels work on chunks of rows and never hold either in full; the forward
// hands its rows' logsumexp to the backward, or, where the backward's seed
// is known before the forward and the table is frozen (LoRA), forward and
// backward become one op that computes each tile of logits once. An
// evaluation reads the logits twice (loss and token accuracy): both fuse
// into one lm_head_eval.
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

/// cross_entropy(lm_head(x, table), t, n) and token_accuracy(lm_head(x,
/// table), t) -> lm_head_eval(x, table, t, n). Tried before FuseForward
/// (higher benefit), which would leave the logits to the accuracy.
struct FuseEvaluation : OpRewritePattern<TokenAccuracyOp> {
  FuseEvaluation(MLIRContext *context) : OpRewritePattern(context, /*benefit=*/2) {}
  LogicalResult matchAndRewrite(TokenAccuracyOp accuracy,
                                PatternRewriter &rewriter) const override {
    auto head = accuracy.getLogits().getDefiningOp<LMHeadOp>();
    if (!head)
      return rewriter.notifyMatchFailure(accuracy, "logits do not come from lm_head");
    CrossEntropyOp ce;
    for (Operation *user : head.getResult().getUsers())
      if (auto c = dyn_cast<CrossEntropyOp>(user))
        if (c.getTargets() == accuracy.getTargets() &&
            c.getIgnoreIndexAttr() == accuracy.getIgnoreIndexAttr() &&
            c->getBlock() == accuracy->getBlock())
          ce = c;
    if (!ce)
      return rewriter.notifyMatchFailure(accuracy, "no cross_entropy of the same logits");
    // At the earlier of the two, which the users of both follow. Its
    // operands come before the head or before the loss; when the accuracy
    // is first, the loss's num_items must come before it too.
    Operation *at = ce->isBeforeInBlock(accuracy) ? ce.getOperation() : accuracy.getOperation();
    Operation *numItems = ce.getNumItems().getDefiningOp();
    if (numItems && numItems->getBlock() == at->getBlock() && !numItems->isBeforeInBlock(at))
      return rewriter.notifyMatchFailure(accuracy, "num_items is defined after the accuracy");
    rewriter.setInsertionPoint(at);
    auto fused = LMHeadEvalOp::create(
        rewriter, accuracy.getLoc(), ce.getType(), accuracy.getCorrect().getType(),
        accuracy.getTotal().getType(), head.getInput(), head.getTable(), ce.getTargets(),
        ce.getNumItems(), head.getSoftcapAttr(), ce.getIgnoreIndexAttr());
    rewriter.replaceOp(ce, fused.getLoss());
    rewriter.replaceOp(accuracy, ValueRange{fused.getCorrect(), fused.getTotal()});
    return success();
  }
};

/// cross_entropy(lm_head(x, table), t, n) -> lm_head_cross_entropy(x, table, t, n).
struct FuseForward : OpRewritePattern<CrossEntropyOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(CrossEntropyOp ce, PatternRewriter &rewriter) const override {
    auto head = ce.getLogits().getDefiningOp<LMHeadOp>();
    if (!head)
      return rewriter.notifyMatchFailure(ce, "logits do not come from lm_head");
    rewriter.replaceOpWithNewOp<LMHeadCrossEntropyOp>(
        ce, ce.getType(), /*lse=*/Type(), head.getInput(), head.getTable(), ce.getTargets(),
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
        rewriter, grad.getLoc(), grad.getInputGrad().getType(), tableGradType, grad.getInput(),
        grad.getTable(), ceGrad.getTargets(), ceGrad.getNumItems(), ceGrad.getGrad(),
        /*lse=*/Value(), grad.getSoftcapAttr(), ceGrad.getIgnoreIndexAttr());
    rewriter.replaceAllUsesWith(grad.getInputGrad(), fused.getInputGrad());
    if (wantTable)
      rewriter.replaceAllUsesWith(grad.getTableGrad(), fused.getTableGrad());
    rewriter.eraseOp(grad);
    return success();
  }
};

/// The forward of `grad`: an lm_head_cross_entropy of the same operands and
/// attributes before it in its block, or null.
LMHeadCrossEntropyOp forwardOf(LMHeadCrossEntropyGradOp grad) {
  for (Operation *user : grad.getInput().getUsers()) {
    auto fwd = dyn_cast<LMHeadCrossEntropyOp>(user);
    if (fwd && fwd->getBlock() == grad->getBlock() && fwd->isBeforeInBlock(grad) &&
        fwd.getTable() == grad.getTable() && fwd.getTargets() == grad.getTargets() &&
        fwd.getNumItems() == grad.getNumItems() && fwd.getSoftcapAttr() == grad.getSoftcapAttr() &&
        fwd.getIgnoreIndexAttr() == grad.getIgnoreIndexAttr())
      return fwd;
  }
  return {};
}

/// Whether `value` is defined before `at` in its block (or is an argument
/// of that block). Autodiff's seed is a constant, which the pattern driver
/// has moved to the top of the function by then.
bool availableAt(Value value, Operation *at) {
  Operation *def = value.getDefiningOp();
  if (!def)
    return cast<BlockArgument>(value).getOwner() == at->getBlock();
  return def->getBlock() == at->getBlock() && def->isBeforeInBlock(at);
}

/// Replaces each forward and input-only backward pair whose seed gradient is
/// known at the forward by one lm_head_cross_entropy_and_grad there: the
/// logits are computed once for both.
void fuseOnePass(Operation *root) {
  SmallVector<LMHeadCrossEntropyGradOp> grads;
  root->walk([&](LMHeadCrossEntropyGradOp grad) {
    if (!grad.getTableGrad() && !grad.getLse())
      grads.push_back(grad);
  });
  for (LMHeadCrossEntropyGradOp grad : grads) {
    LMHeadCrossEntropyOp fwd = forwardOf(grad);
    if (!fwd || fwd.getLse())
      continue;
    if (!availableAt(grad.getGrad(), fwd))
      continue;
    OpBuilder b(fwd);
    auto fused = LMHeadCrossEntropyAndGradOp::create(
        b, fwd.getLoc(), fwd.getResult().getType(), grad.getInputGrad().getType(), fwd.getInput(),
        fwd.getTable(), fwd.getTargets(), fwd.getNumItems(), grad.getGrad(), fwd.getSoftcapAttr(),
        fwd.getIgnoreIndexAttr());
    fwd.getResult().replaceAllUsesWith(fused.getResult());
    grad.getInputGrad().replaceAllUsesWith(fused.getInputGrad());
    grad.erase();
    fwd.erase();
  }
}

/// Gives each fused backward its forward's logsumexp (an `lse` result added
/// to the forward), which saves the backward a sweep over the vocabulary.
void linkLogSumExp(Operation *root) {
  SmallVector<LMHeadCrossEntropyGradOp> grads;
  root->walk([&](LMHeadCrossEntropyGradOp grad) {
    if (!grad.getLse())
      grads.push_back(grad);
  });
  for (LMHeadCrossEntropyGradOp grad : grads) {
    LMHeadCrossEntropyOp fwd = forwardOf(grad);
    if (!fwd)
      continue;
    if (!fwd.getLse()) {
      OpBuilder b(fwd);
      auto lseType = RankedTensorType::get(fwd.getTargets().getType().getShape(), b.getF32Type());
      auto withLse = LMHeadCrossEntropyOp::create(
          b, fwd.getLoc(), fwd.getResult().getType(), lseType, fwd.getInput(), fwd.getTable(),
          fwd.getTargets(), fwd.getNumItems(), fwd.getSoftcapAttr(), fwd.getIgnoreIndexAttr());
      fwd.getResult().replaceAllUsesWith(withLse.getResult());
      fwd.erase();
      fwd = withLse;
    }
    grad.getLseMutable().assign(fwd.getLse());
  }
}

struct G3MoEFuseLMHeadLossPass : g3moe::impl::G3MoEFuseLMHeadLossPassBase<G3MoEFuseLMHeadLossPass> {
  using Base::Base;

  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateFuseLMHeadLossPatterns(patterns);
    // The unfused ops left without users (the logits, their gradient) are
    // pure, so the driver erases them.
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
    if (onePass)
      fuseOnePass(getOperation());
    linkLogSumExp(getOperation());
  }
};

} // namespace

void g3moe::populateFuseLMHeadLossPatterns(RewritePatternSet &patterns) {
  patterns.add<FuseEvaluation, FuseForward, FuseBackward>(patterns.getContext());
}
