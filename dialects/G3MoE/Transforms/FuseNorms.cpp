//===- FuseNorms.cpp - RMSNorm fused with the residual add and RoPE -------===//
//
// Implements --g3moe-fuse-norms. Every Gemma-3 layer adds a block's output
// to the residual stream and normalises the sum, and its backward adds the
// norm's input gradient to the stream's; queries and keys are normalised
// and then rotated, and rotated back before the norm's backward. Each pair
// is two passes over an activation-sized tensor where one suffices.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOEFUSENORMSPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// True when `v` is available at `point` (in `point`'s block): a block
/// argument of it, or defined before `point` there.
bool availableBefore(Value v, Operation *point) {
  if (auto arg = dyn_cast<BlockArgument>(v))
    return arg.getOwner() == point->getBlock();
  Operation *def = v.getDefiningOp();
  return def->getBlock() == point->getBlock() && def->isBeforeInBlock(point);
}

/// rms_norm(add(a, b), w) -> add_rms_norm(a, b, w). The fused op goes where
/// the norm was when nothing else reads the sum before it, else where the
/// add was (the weight must then exist there).
struct FuseAddRMSNorm : OpRewritePattern<RMSNormOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(RMSNormOp norm, PatternRewriter &rewriter) const override {
    auto add = norm.getInput().getDefiningOp<AddOp>();
    if (!add || add->getBlock() != norm->getBlock())
      return rewriter.notifyMatchFailure(norm, "input is not an add of the same block");
    bool readBefore = llvm::any_of(add->getUsers(), [&](Operation *user) {
      return user != norm && user->getBlock() == norm->getBlock() && user->isBeforeInBlock(norm);
    });
    Operation *point = norm;
    if (readBefore) {
      if (!availableBefore(norm.getWeight(), add))
        return rewriter.notifyMatchFailure(norm, "the sum is read before the norm, and the "
                                                 "weight is defined after the add");
      point = add;
    }
    rewriter.setInsertionPoint(point);
    auto fused = AddRMSNormOp::create(rewriter, rewriter.getFusedLoc({add.getLoc(), norm.getLoc()}),
                                      add.getType(), norm.getType(), add.getLhs(), add.getRhs(),
                                      norm.getWeight(), norm.getEpsAttr());
    rewriter.replaceOp(norm, fused.getResult());
    rewriter.replaceOp(add, fused.getSum());
    return success();
  }
};

/// add(rms_norm_grad(x, w, dy).input_grad, r) -> rms_norm_grad(x, w, dy) plus r,
/// when the add is the input gradient's only reader.
struct FoldAddIntoNormGrad : OpRewritePattern<AddOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(AddOp add, PatternRewriter &rewriter) const override {
    for (auto [mine, other] :
         {std::pair(add.getLhs(), add.getRhs()), std::pair(add.getRhs(), add.getLhs())}) {
      auto grad = mine.getDefiningOp<RMSNormGradOp>();
      if (!grad || grad.getAddend() || !mine.hasOneUse() || grad->getBlock() != add->getBlock() ||
          mine != grad.getInputGrad())
        continue;
      // The addend may be defined after the norm's backward; the add comes
      // after both and after the backward's operands.
      rewriter.moveOpBefore(grad, add);
      rewriter.modifyOpInPlace(grad, [&] { grad.getAddendMutable().assign(other); });
      rewriter.replaceOp(add, grad.getInputGrad());
      return success();
    }
    return rewriter.notifyMatchFailure(add, "no summand is a norm gradient only this add reads");
  }
};

/// rope(rms_norm(x, w), pos) -> rms_norm_rope(x, w, pos), when the rope is
/// the norm's only reader (the un-rotated value is then never needed).
struct FuseRMSNormRoPE : OpRewritePattern<RoPEOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(RoPEOp rope, PatternRewriter &rewriter) const override {
    auto norm = rope.getInput().getDefiningOp<RMSNormOp>();
    if (rope.getTranspose() || !norm || !norm->hasOneUse() || norm->getBlock() != rope->getBlock())
      return rewriter.notifyMatchFailure(rope, "not a forward rope of a norm only it reads");
    rewriter.replaceOpWithNewOp<RMSNormRoPEOp>(
        rope, rope.getType(), norm.getInput(), norm.getWeight(), rope.getPositions(),
        norm.getEpsAttr(), rope.getThetaAttr(), rope.getScalingFactorAttr());
    rewriter.eraseOp(norm);
    return success();
  }
};

/// rms_norm_grad(x, w, rope(dy, pos) transposed) -> rms_norm_rope_grad(x, w, pos, dy),
/// when the norm's backward is the rotated gradient's only reader.
struct FuseRMSNormRoPEGrad : OpRewritePattern<RMSNormGradOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(RMSNormGradOp grad, PatternRewriter &rewriter) const override {
    auto rope = grad.getGrad().getDefiningOp<RoPEOp>();
    if (grad.getAddend() || !rope || !rope.getTranspose() || !rope->hasOneUse() ||
        rope->getBlock() != grad->getBlock())
      return rewriter.notifyMatchFailure(grad, "not the backward of a rotated norm");
    rewriter.replaceOpWithNewOp<RMSNormRoPEGradOp>(
        grad, grad.getInputGrad().getType(), grad.getWeightGrad().getType(), grad.getInput(),
        grad.getWeight(), rope.getPositions(), rope.getInput(), grad.getEpsAttr(),
        rope.getThetaAttr(), rope.getScalingFactorAttr());
    rewriter.eraseOp(rope);
    return success();
  }
};

struct G3MoEFuseNormsPass : g3moe::impl::G3MoEFuseNormsPassBase<G3MoEFuseNormsPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateFuseNormsPatterns(patterns);
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
  }
};

} // namespace

void g3moe::populateFuseNormsPatterns(RewritePatternSet &patterns) {
  patterns.add<FuseAddRMSNorm, FoldAddIntoNormGrad, FuseRMSNormRoPE, FuseRMSNormRoPEGrad>(
      patterns.getContext());
}
