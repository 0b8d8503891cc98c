//===- FuseLinearAdd.cpp - adds folded into the products they add ---------===//
//
// Implements --g3moe-fuse-linear-add. LoRA makes every adapted projection
// `x·Wᵀ + (x·Aᵀ)·Bᵀ`, and its backward `dy·W + (dy·B)·A`: each an add that
// reads two activation-sized tensors and writes a third. A product that takes
// the add's other operand as its `addend` adds it in its epilogue instead;
// an expert product whose addend is the wide product of the same rows
// becomes that product with a `lowrank` term, so that the rank-r product
// adds into the wide one's accumulators and nothing of the output's size is
// written twice. Run again after --g3moe-fuse-dropout, it also moves a
// dropped input gradient through A (a rank-r product with `dropout`) into
// the wide input gradient of the same rows, mask and all.
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
      .Case([&](LinearGradInputOp p) {
        return p.getAddend() || p.getDropoutMask() ? 0 : lastDim(p.getGrad());
      })
      .Case([&](ExpertLinearGradInputOp p) {
        // Its mask, with a low-rank term, drops only that term.
        return p.getAddend() || (p.getDropoutMask() && !p.getLowrankInput()) ? 0
                                                                             : lastDim(p.getGrad());
      })
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

/// Whether `h` (a low-rank product's operand) has a LoRA rank's width: at
/// most 64 (what the verifiers take) and narrower than the wide product's
/// operand `x`.
bool isLowRankOf(Value h, Value x) {
  auto width = [](Value t) { return cast<RankedTensorType>(t.getType()).getShape().back(); };
  return width(h) <= 64 && width(h) < width(x);
}

/// `base` with the addend `addend` and the low-rank term h, l (dropped by
/// `mask` with `p`, if given), made at the rewriter's position.
template <typename Product>
Product withLowRank(PatternRewriter &rewriter, Product base, Value addend, Value h, Value l,
                    Value mask = {}, FloatAttr p = {}) {
  return Product::create(rewriter, base.getLoc(), base.getType(), base->getOperand(0),
                         base.getExpertOffsets(), base.getWeight(), addend, h, l, mask, p);
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
    if (lowrank.getLowrankInput() || !lowrank.getAddend() || lowrank.getDropoutMask())
      return rewriter.notifyMatchFailure(lowrank, "not a plain product with an addend");
    auto base = lowrank.getAddend().template getDefiningOp<Product>();
    if (!base || base.getLowrankInput() || base.getDropoutMask() || !base->hasOneUse() ||
        base.getExpertOffsets() != lowrank.getExpertOffsets())
      return rewriter.notifyMatchFailure(lowrank, "the addend is not a product of the same rows");
    Value h = lowrank->getOperand(0), x = base->getOperand(0);
    if (!isLowRankOf(h, x))
      return rewriter.notifyMatchFailure(lowrank, "not a low-rank term of a wider product");
    rewriter.replaceOp(
        lowrank, withLowRank<Product>(rewriter, base, base.getAddend(), h, lowrank.getWeight()));
    rewriter.eraseOp(base);
    return success();
  }
};

/// A rank-r input gradient `term` of the rows of `wide` that only its user
/// reads and that can join a product as its low-rank term (masked or not).
bool isFreeTerm(ExpertLinearGradInputOp term, ExpertLinearGradInputOp wide) {
  return term && term->hasOneUse() && !term.getLowrankInput() &&
         term.getExpertOffsets() == wide.getExpertOffsets() &&
         isLowRankOf(term.getGrad(), wide.getGrad());
}

/// A wide input gradient without a term takes a rank-r one of its rows that
/// its addend chain holds:
///   W plus T              -> W lowrank T [plus T's addend]
///   W plus (V plus T)     -> W lowrank T plus V [plus T's addend]
/// with V a wide product that has its own term. Where several LoRA
/// projections read one input (gate and up), autodiff sums their input
/// gradients in a chain, ((T_u + U) + T_g) + G; the add folds leave a term
/// as the addend of a wide product or of another term, and a term with a
/// dropout (from --g3moe-fuse-dropout) takes no addend at all. The sum does
/// not depend on the order, so the terms move to the wide products, one
/// each, with their masks: those then drop only their term.
struct MoveLowRankToFreeProduct : OpRewritePattern<ExpertLinearGradInputOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ExpertLinearGradInputOp wide,
                                PatternRewriter &rewriter) const override {
    if (wide.getLowrankInput() || wide.getDropoutMask() || !wide.getAddend())
      return rewriter.notifyMatchFailure(wide, "not a wide product with an addend");
    auto next = wide.getAddend().getDefiningOp<ExpertLinearGradInputOp>();
    if (!next)
      return rewriter.notifyMatchFailure(wide, "its addend is no input gradient");
    ExpertLinearGradInputOp term = next;
    ExpertLinearGradInputOp middle;
    if (next.getLowrankInput() && next->hasOneUse() &&
        next.getExpertOffsets() == wide.getExpertOffsets() && next.getAddend()) {
      middle = next;
      term = next.getAddend().getDefiningOp<ExpertLinearGradInputOp>();
    }
    if (!isFreeTerm(term, wide))
      return rewriter.notifyMatchFailure(wide, "its addend chain holds no free rank-r term");
    Value rest = term.getAddend();
    if (middle) {
      rewriter.modifyOpInPlace(middle, [&] {
        if (rest)
          middle.getAddendMutable().assign(rest);
        else
          middle.getAddendMutable().clear();
      });
      rest = middle;
    }
    rewriter.replaceOp(wide, withLowRank<ExpertLinearGradInputOp>(
                                 rewriter, wide, rest, term.getGrad(), term.getWeight(),
                                 term.getDropoutMask(), term.getDropoutPAttr()));
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
               FoldLowRankIntoProduct<ExpertLinearGradInputOp>, MoveLowRankToFreeProduct>(
      patterns.getContext());
}
