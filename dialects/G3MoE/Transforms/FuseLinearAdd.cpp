//===- FuseLinearAdd.cpp - adds folded into the products they add ---------===//
//
// Implements --g3moe-fuse-linear-add. LoRA makes every adapted projection
// `x·Wᵀ + (x·Aᵀ)·Bᵀ`, and its backward `dy·W + (dy·B)·A`: each an add that
// reads two activation-sized tensors and writes a third. A product that takes
// the add's other operand as its `addend` adds it in its epilogue instead;
// an expert product whose addend is the wide product of the same rows
// becomes that product with a `lowrank` term, so that the rank-r product
// adds into the wide one's accumulators and nothing of the output's size is
// written twice.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Transforms/GreedyPatternRewriteDriver.h"
#include "llvm/ADT/TypeSwitch.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOEFUSELINEARADDPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// The contraction length of `v` when it is a product that can take an
/// addend (none yet, in the add's block, and the add is its only user),
/// else 0.
int64_t fusableContraction(Value v, AddOp add) {
  Operation *op = v.getDefiningOp();
  if (!op || !v.hasOneUse() || op->getBlock() != add->getBlock())
    return 0;
  auto lastDim = [](Value t) { return cast<RankedTensorType>(t.getType()).getShape().back(); };
  return llvm::TypeSwitch<Operation *, int64_t>(op)
      .Case([&](LinearOp p) { return p.getAddend() ? 0 : lastDim(p.getInput()); })
      .Case([&](ExpertLinearOp p) { return p.getAddend() ? 0 : lastDim(p.getInput()); })
      .Case([&](LinearGradInputOp p) { return p.getAddend() ? 0 : lastDim(p.getGrad()); })
      .Case([&](ExpertLinearGradInputOp p) { return p.getAddend() ? 0 : lastDim(p.getGrad()); })
      .Default([](Operation *) { return 0; });
}

/// add(a, p) -> p plus a. When both operands qualify, the product with the
/// shorter contraction takes the addend: it is the one bound by memory
/// traffic (LoRA's rank-r product), where reading one more tensor costs
/// least, and the large GEMM keeps its plain form.
struct FoldAddIntoProduct : OpRewritePattern<AddOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(AddOp add, PatternRewriter &rewriter) const override {
    int64_t kl = fusableContraction(add.getLhs(), add), kr = fusableContraction(add.getRhs(), add);
    if (!kl && !kr)
      return rewriter.notifyMatchFailure(add, "no operand is a product only this add reads");
    bool intoRhs = kr && (!kl || kr <= kl);
    Value product = intoRhs ? add.getRhs() : add.getLhs();
    Value addend = intoRhs ? add.getLhs() : add.getRhs();
    Operation *op = product.getDefiningOp();
    // The addend may be defined after the product; the add's position is
    // after both and after the product's operands.
    rewriter.moveOpBefore(op, add);
    rewriter.modifyOpInPlace(op, [&] {
      llvm::TypeSwitch<Operation *>(op)
          .Case<LinearOp, ExpertLinearOp, LinearGradInputOp, ExpertLinearGradInputOp>(
              [&](auto p) { p.getAddendMutable().assign(addend); });
    });
    rewriter.replaceOp(add, product);
    return success();
  }
};

/// Whether `h` (a low-rank product's operand) has a LoRA rank's width, at
/// most 64 (what the verifiers take) and narrower than the wide product's
/// operand `x`.
bool isLowRankOf(Value h, Value x) {
  auto width = [](Value t) { return cast<RankedTensorType>(t.getType()).getShape().back(); };
  return width(h) <= 64 && width(h) < width(x);
}

/// `base` with the low-rank term h, l and the addend `addend`, created at
/// the rewriter's position.
ExpertLinearOp withLowRank(PatternRewriter &rewriter, ExpertLinearOp base, Value addend, Value h,
                           Value l) {
  return ExpertLinearOp::create(rewriter, base.getLoc(), base.getType(), base.getInput(),
                                base.getExpertOffsets(), base.getWeight(), addend, h, l);
}
ExpertLinearGradInputOp withLowRank(PatternRewriter &rewriter, ExpertLinearGradInputOp base,
                                    Value addend, Value h, Value l) {
  return ExpertLinearGradInputOp::create(rewriter, base.getLoc(), base.getType(), base.getGrad(),
                                         base.getExpertOffsets(), base.getWeight(), addend, h, l,
                                         Value(), IntegerAttr(), FloatAttr());
}

/// The low-rank product `lowrank` and its addend `base`, a wide product of
/// the same kind over the same expert rows, as one product:
///   expert_linear(h, off, B) plus expert_linear(x, off, W) [plus a]
///     -> expert_linear(x, off, W) [plus a] lowrank h, B
/// and the same for expert_linear_grad_input. The rank-r term then rides in
/// the wide product's accumulation instead of a pass that reads and writes
/// a [rows, out] tensor once more.
template <typename Product> struct FoldLowRankIntoProduct : OpRewritePattern<Product> {
  using OpRewritePattern<Product>::OpRewritePattern;
  LogicalResult matchAndRewrite(Product lowrank, PatternRewriter &rewriter) const override {
    if (lowrank.getLowrankInput() || !lowrank.getAddend())
      return rewriter.notifyMatchFailure(lowrank, "not a plain product with an addend");
    auto base = lowrank.getAddend().template getDefiningOp<Product>();
    if (!base || base.getLowrankInput() || !base->hasOneUse() ||
        base.getExpertOffsets() != lowrank.getExpertOffsets())
      return rewriter.notifyMatchFailure(lowrank, "the addend is not a product of the same rows");
    Value h = lowrank->getOperand(0), x = base->getOperand(0);
    if (!isLowRankOf(h, x))
      return rewriter.notifyMatchFailure(lowrank, "not a low-rank term of a wider product");
    rewriter.replaceOp(lowrank,
                       withLowRank(rewriter, base, base.getAddend(), h, lowrank.getWeight()));
    rewriter.eraseOp(base);
    return success();
  }
};

/// A dropout's mask as keyed_dropout draws it: the key, stream and p of a
/// keyed_dropout, or of a dropout whose draw is a random_uniform on [0, 1).
struct MaskOf {
  Operation *op = nullptr;
  Value input, key;
  IntegerAttr stream;
  FloatAttr p;
};
MaskOf maskOf(Value v) {
  if (auto keyed = v.getDefiningOp<KeyedDropoutOp>())
    return {keyed, keyed.getInput(), keyed.getKey(), keyed.getStreamAttr(), keyed.getPAttr()};
  auto dropout = v.getDefiningOp<DropoutOp>();
  auto draw = dropout ? dropout.getUniform().getDefiningOp<RandomUniformOp>() : nullptr;
  if (!draw || draw.getLow().convertToDouble() != 0.0 || draw.getHigh().convertToDouble() != 1.0)
    return {};
  return {dropout, dropout.getInput(), draw.getKey(), draw.getStreamAttr(), dropout.getPAttr()};
}

/// Puts `mask` on `product`'s low-rank term.
void setMask(ExpertLinearGradInputOp product, const MaskOf &mask) {
  product.getDropoutKeyMutable().assign(mask.key);
  product.setStreamAttr(mask.stream);
  product.setPAttr(mask.p);
}

/// The same for a low-rank term under a LoRA dropout's gradient (the
/// dropout of the term, the wide product's addend):
///   expert_linear_grad_input(dy, off, W)
///       plus dropout(expert_linear_grad_input(dh, off, A), draw of key)
///     -> expert_linear_grad_input(dy, off, W) lowrank dh, A dropout key
/// so that neither the term nor its masked copy is written (nor the draw,
/// where the backward would have drawn it again).
struct FoldMaskedLowRankIntoProduct : OpRewritePattern<ExpertLinearGradInputOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ExpertLinearGradInputOp base,
                                PatternRewriter &rewriter) const override {
    MaskOf mask = base.getAddend() ? maskOf(base.getAddend()) : MaskOf();
    if (!mask.op || base.getLowrankInput() || !mask.op->hasOneUse())
      return rewriter.notifyMatchFailure(base, "the addend is not a dropout only it reads");
    auto term = mask.input.getDefiningOp<ExpertLinearGradInputOp>();
    if (!term || !term->hasOneUse() || term.getAddend() || term.getLowrankInput() ||
        term.getExpertOffsets() != base.getExpertOffsets() ||
        !isLowRankOf(term.getGrad(), base.getGrad()))
      return rewriter.notifyMatchFailure(base, "the dropout is not of a low-rank term");
    auto fused = withLowRank(rewriter, base, Value(), term.getGrad(), term.getWeight());
    setMask(fused, mask);
    rewriter.replaceOp(base, fused);
    rewriter.eraseOp(mask.op);
    rewriter.eraseOp(term);
    return success();
  }
};

/// Where several LoRA projections read one input (gate and up), autodiff
/// sums their input gradients in a chain, and the folds above can leave a
/// low-rank term on a product that already has one:
///   Q plus (P lowrank .. plus dropout(T))   or   Q plus (T plus P lowrank ..)
/// with Q a wide product without a term, P one with a term and T a rank-r
/// product, all of the same expert rows and each read once. The sum does
/// not depend on the order, so T (with its mask) moves into Q:
///   Q lowrank T [dropout] plus P.
struct MoveLowRankToFreeProduct : OpRewritePattern<ExpertLinearGradInputOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ExpertLinearGradInputOp q,
                                PatternRewriter &rewriter) const override {
    auto sameRows = [&](ExpertLinearGradInputOp op) {
      return op && op->hasOneUse() && op.getExpertOffsets() == q.getExpertOffsets();
    };
    auto x = q.getAddend() ? q.getAddend().getDefiningOp<ExpertLinearGradInputOp>() : nullptr;
    if (q.getLowrankInput() || !sameRows(x))
      return rewriter.notifyMatchFailure(q, "no product of the same rows as its addend");
    // Q plus (T plus P): T is the rank-r product, P the rest of the sum.
    if (!x.getLowrankInput() && isLowRankOf(x.getGrad(), q.getGrad())) {
      rewriter.replaceOp(q, withLowRank(rewriter, q, x.getAddend(), x.getGrad(), x.getWeight()));
      rewriter.eraseOp(x);
      return success();
    }
    // Q plus (P plus dropout(T)).
    MaskOf mask = x.getAddend() ? maskOf(x.getAddend()) : MaskOf();
    auto term = mask.op ? mask.input.getDefiningOp<ExpertLinearGradInputOp>() : nullptr;
    if (!x.getLowrankInput() || !term || !mask.op->hasOneUse() || !sameRows(term) ||
        term.getAddend() || term.getLowrankInput() || !isLowRankOf(term.getGrad(), q.getGrad()))
      return rewriter.notifyMatchFailure(q, "no low-rank term to move");
    rewriter.modifyOpInPlace(x, [&] { x.getAddendMutable().clear(); });
    auto fused = withLowRank(rewriter, q, x, term.getGrad(), term.getWeight());
    setMask(fused, mask);
    rewriter.replaceOp(q, fused);
    rewriter.eraseOp(mask.op);
    rewriter.eraseOp(term);
    return success();
  }
};

struct G3MoEFuseLinearAddPass : g3moe::impl::G3MoEFuseLinearAddPassBase<G3MoEFuseLinearAddPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateFuseLinearAddPatterns(patterns);
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
  }
};

} // namespace

void g3moe::populateFuseLinearAddPatterns(RewritePatternSet &patterns) {
  patterns.add<FoldAddIntoProduct, FoldLowRankIntoProduct<ExpertLinearOp>,
               FoldLowRankIntoProduct<ExpertLinearGradInputOp>, FoldMaskedLowRankIntoProduct,
               MoveLowRankToFreeProduct>(patterns.getContext());
}
