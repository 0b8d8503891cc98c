//===- FuseDropout.cpp - dropout that draws its own mask ------------------===//
//
// Implements --g3moe-fuse-dropout. A LoRA dropout reads a uniform draw as
// large as its input, in fp32: at 64K tokens the draws and the dropouts
// that read them took a fifth of an H100's step time, and at 120K the draw
// of one down_proj input is a 9.4 GiB buffer. keyed_dropout makes each
// element's draw where it uses it, from the same key and stream, so the
// values are those of the two ops it replaces.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOEFUSEDROPOUTPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// dropout(x, random_uniform(key) {stream, low = 0, high = 1}, p)
///   -> keyed_dropout(x, key) {stream, p}.
struct FuseKeyedDropout : OpRewritePattern<DropoutOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(DropoutOp dropout, PatternRewriter &rewriter) const override {
    auto draw = dropout.getUniform().getDefiningOp<RandomUniformOp>();
    if (!draw)
      return rewriter.notifyMatchFailure(dropout, "the mask is not a random_uniform");
    // Other bounds would change the values compared with p.
    if (draw.getLow().convertToDouble() != 0.0 || draw.getHigh().convertToDouble() != 1.0)
      return rewriter.notifyMatchFailure(dropout, "the draw is not on [0, 1)");
    rewriter.replaceOpWithNewOp<KeyedDropoutOp>(dropout, dropout.getType(), dropout.getInput(),
                                                draw.getKey(), draw.getStreamAttr(),
                                                dropout.getPAttr());
    return success();
  }
};

struct G3MoEFuseDropoutPass : g3moe::impl::G3MoEFuseDropoutPassBase<G3MoEFuseDropoutPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateFuseDropoutPatterns(patterns);
    // The draws left without readers are pure, so the driver erases them.
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
  }
};

} // namespace

void g3moe::populateFuseDropoutPatterns(RewritePatternSet &patterns) {
  patterns.add<FuseKeyedDropout>(patterns.getContext());
}
