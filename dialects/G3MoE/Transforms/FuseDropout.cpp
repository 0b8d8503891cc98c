//===- FuseDropout.cpp - dropout that draws its own mask ------------------===//
//
// Implements --g3moe-fuse-dropout. A LoRA dropout reads a uniform draw as
// large as its input, in fp32: at 64K tokens the draws and the dropouts
// that read them took a fifth of an H100's step time, and at 120K the draw
// of one down_proj input is a 9.4 GiB buffer. keyed_dropout makes each
// element's draw where it uses it, from the same key and stream, so the
// values are those of the two ops it replaces. The router's input jitter
// (a draw, its conversion and a product: three passes over [T, H] in the
// forward and again in the backward) becomes one keyed_jitter the same way.
//
// A keyed_dropout still writes the dropped input, as large as the input,
// and LoRA keeps it for the A gradient. Moved into the products that read
// it (the A product, the A gradient) and the one that writes the dropout of
// the backward (the input gradient through A), the dropped tensor never
// exists: those products read the keep-mask as bits (dropout_mask), drawn
// once for the forward and the backward. Drawing the mask inside each
// product instead was slower on an H100 than the separate dropouts: the
// generator's arithmetic, three times per mask, in kernels that run few
// blocks.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Transforms/GreedyPatternRewriteDriver.h"
#include "llvm/ADT/TypeSwitch.h"

#include <type_traits>

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

/// mul(x, convert(random_uniform(key) {stream, low, high})), the draw on
/// either side and its conversion absent in fp32,
///   -> keyed_jitter(x, key) {stream, low, high}.
struct FuseKeyedJitter : OpRewritePattern<MulOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(MulOp mul, PatternRewriter &rewriter) const override {
    for (unsigned side : {0u, 1u}) {
      Value factor = mul->getOperand(side);
      if (auto convert = factor.getDefiningOp<ConvertOp>())
        factor = convert.getInput();
      auto draw = factor.getDefiningOp<RandomUniformOp>();
      if (!draw)
        continue;
      rewriter.replaceOpWithNewOp<KeyedJitterOp>(mul, mul.getType(), mul->getOperand(1 - side),
                                                 draw.getKey(), draw.getStreamAttr(),
                                                 draw.getLowAttr(), draw.getHighAttr());
      return success();
    }
    return rewriter.notifyMatchFailure(mul, "neither factor is a random_uniform");
  }
};

/// Whether the low-rank kernels take a product of operands `a` and `b` with
/// narrow side `narrow` (the rank) and wide side `wide`: bf16 operands, a
/// rank of 8, 16, 24 or 32 and a wide side of a multiple of 8. Only these
/// apply a fused mask on the GPU (runtime/cuda/lowrank_products.h).
bool lowRankKernelsTake(Value a, Value b, int64_t narrow, int64_t wide) {
  auto bf16 = [](Value v) { return cast<RankedTensorType>(v.getType()).getElementType().isBF16(); };
  return bf16(a) && bf16(b) && narrow % 8 == 0 && narrow >= 8 && narrow <= 32 && wide % 8 == 0;
}

int64_t lastDim(Value v) { return cast<RankedTensorType>(v.getType()).getShape().back(); }

/// A keep-mask of `dropout`'s draw made before `before` (the pass keeps one
/// per draw after the patterns: shareMasks).
Value maskOf(PatternRewriter &rewriter, KeyedDropoutOp dropout, Operation *before) {
  const int64_t elements = cast<RankedTensorType>(dropout.getType()).getNumElements();
  auto type = RankedTensorType::get({(elements + 31) / 32}, rewriter.getI32Type());
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(before);
  return DropoutMaskOp::create(rewriter, dropout.getLoc(), type, dropout.getKey(),
                               dropout.getStreamAttr(), dropout.getPAttr());
}

/// Gives `product` the dropout of `dropout` with its keep-mask `mask`.
template <typename Product> void setDropout(Product product, KeyedDropoutOp dropout, Value mask) {
  product.getDropoutMaskMutable().assign(mask);
  product.setDropoutPAttr(dropout.getPAttr());
}

/// A product reading keyed_dropout(x) reads x and the keep-mask's bits:
///   linear(keyed_dropout(x, key), A) -> linear(x, A) dropout dropout_mask(key)
/// and likewise expert_linear, linear_grad_weight(dh, keyed_dropout(x)) and
/// expert_linear_grad_weight. The dropout goes once its last reader does.
template <typename Product> struct DropoutIntoProductInput : OpRewritePattern<Product> {
  using OpRewritePattern<Product>::OpRewritePattern;
  LogicalResult matchAndRewrite(Product product, PatternRewriter &rewriter) const override {
    auto dropout = product.getInput().template getDefiningOp<KeyedDropoutOp>();
    if (!dropout || product.getDropoutMask())
      return rewriter.notifyMatchFailure(product, "its input is not a keyed_dropout");
    // The narrow side: the forward's out features (A is [r, in]), or the
    // gradient's columns (dA is [r, in]).
    Value other;
    int64_t narrow;
    if constexpr (std::is_same_v<Product, LinearOp> || std::is_same_v<Product, ExpertLinearOp>) {
      other = product.getWeight();
      narrow = lastDim(product.getResult());
    } else {
      other = product.getGrad();
      narrow = lastDim(other);
    }
    if constexpr (std::is_same_v<Product, ExpertLinearOp>)
      if (product.getLowrankInput())
        return rewriter.notifyMatchFailure(product, "it has a low-rank term");
    if (!lowRankKernelsTake(dropout.getInput(), other, narrow, lastDim(dropout.getInput())))
      return rewriter.notifyMatchFailure(product, "not a product the low-rank kernels take");
    Value mask = maskOf(rewriter, dropout, dropout);
    rewriter.modifyOpInPlace(product, [&] {
      product.getInputMutable().assign(dropout.getInput());
      setDropout(product, dropout, mask);
    });
    return success();
  }
};

/// A dropout of an input gradient through A, which nothing else reads, is
/// applied by that product as it writes its result:
///   keyed_dropout(linear_grad_input(dh, A), key)
///     -> linear_grad_input(dh, A) dropout dropout_mask(key)
/// and likewise expert_linear_grad_input.
struct DropoutIntoProductResult : OpRewritePattern<KeyedDropoutOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(KeyedDropoutOp dropout, PatternRewriter &rewriter) const override {
    Operation *op = dropout.getInput().getDefiningOp();
    if (!op || !op->hasOneUse() || op->getBlock() != dropout->getBlock())
      return rewriter.notifyMatchFailure(dropout, "its input is not a product only it reads");
    auto fits = [&](auto product) {
      return !product.getAddend() && !product.getDropoutMask() &&
             lowRankKernelsTake(product.getGrad(), product.getWeight(), lastDim(product.getGrad()),
                                lastDim(product.getResult()));
    };
    bool fused =
        llvm::TypeSwitch<Operation *, bool>(op)
            .Case([&](LinearGradInputOp p) { return fits(p); })
            .Case([&](ExpertLinearGradInputOp p) { return !p.getLowrankInput() && fits(p); })
            .Default([](Operation *) { return false; });
    if (!fused)
      return rewriter.notifyMatchFailure(dropout, "not a product the low-rank kernels take");
    // The key may be defined after the product; the dropout's position is
    // after both.
    rewriter.moveOpBefore(op, dropout);
    Value mask = maskOf(rewriter, dropout, op);
    rewriter.modifyOpInPlace(op, [&] {
      llvm::TypeSwitch<Operation *>(op).Case<LinearGradInputOp, ExpertLinearGradInputOp>(
          [&](auto p) { setDropout(p, dropout, mask); });
    });
    rewriter.replaceOp(dropout, op->getResults());
    return success();
  }
};

struct G3MoEFuseDropoutPass : g3moe::impl::G3MoEFuseDropoutPassBase<G3MoEFuseDropoutPass> {
  using G3MoEFuseDropoutPassBase::G3MoEFuseDropoutPassBase;
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateFuseDropoutPatterns(patterns, intoProducts);
    // The draws left without readers are pure, so the driver erases them.
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
    shareMasks();
  }

  /// One mask per draw and block: the backward's products read the
  /// forward's bits (the driver may have made the backward's mask first).
  /// Not CSE, which would merge --g3moe-regenerate-random's draws too.
  void shareMasks() {
    llvm::DenseMap<Block *, SmallVector<DropoutMaskOp>> seen;
    SmallVector<DropoutMaskOp> repeated;
    getOperation().walk([&](DropoutMaskOp mask) {
      for (DropoutMaskOp first : seen[mask->getBlock()])
        if (first.getKey() == mask.getKey() && first.getStream() == mask.getStream() &&
            first.getP() == mask.getP() && first.getType() == mask.getType()) {
          mask.replaceAllUsesWith(first.getResult());
          repeated.push_back(mask);
          return;
        }
      seen[mask->getBlock()].push_back(mask);
    });
    for (DropoutMaskOp mask : repeated)
      mask.erase();
  }
};

} // namespace

void g3moe::populateFuseDropoutPatterns(RewritePatternSet &patterns, bool intoProducts) {
  patterns.add<FuseKeyedDropout, FuseKeyedJitter>(patterns.getContext());
  if (intoProducts)
    patterns.add<DropoutIntoProductInput<LinearOp>, DropoutIntoProductInput<ExpertLinearOp>,
                 DropoutIntoProductInput<LinearGradWeightOp>,
                 DropoutIntoProductInput<ExpertLinearGradWeightOp>, DropoutIntoProductResult>(
        patterns.getContext());
}
