//===- Fp8Base.cpp - frozen products in e4m3 ------------------------------===//
//
// Implements --g3moe-fp8-base (fp8_base). Under LoRA the frozen base weights
// carry nearly all of a step's FLOPs, in their forward products and in the
// input gradients through them; Hopper runs e4m3 products at twice the bf16
// rate. Each such product reads its weight as a `frozen_e4m3`: the weight,
// quantized once when the runtime loads it (transposed for an input
// gradient), kept in place of the bf16 weight, which then stays on the host:
// both e4m3 copies together take the bf16 weight's bytes. The adapters, their
// gradients, norms, attention and the loss keep their types.
//
// An expert product's fused LoRA term (`lowrank`, from
// --g3moe-fuse-linear-add) stays in the e4m3 product, which adds it to its
// scaled fp32 accumulation.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOEFP8BASEPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// Whether `weight` is a frozen weight the e4m3 products take: a frozen
/// parameter in the activation type (not the fp32 router), whose two last
/// dimensions are multiples of 16 (what e4m3 tensor-core products need of
/// both the weight and its transpose).
bool isFrozenWeight(Value weight) {
  auto param = weight.getDefiningOp<ParamOp>();
  if (!param || param.getTrainable())
    return false;
  auto type = cast<RankedTensorType>(weight.getType());
  ArrayRef<int64_t> shape = type.getShape();
  return !type.getElementType().isF32() && shape.size() >= 2 && shape.back() % 16 == 0 &&
         shape[shape.size() - 2] % 16 == 0;
}

/// The e4m3 weight and scales of the frozen parameter `weight`, transposed
/// for an input gradient, made right after the parameter (so that CSE
/// merges the products' copies of one weight).
FrozenE4M3Op frozenCopy(PatternRewriter &rewriter, Value weight, bool transpose) {
  auto param = weight.getDefiningOp<ParamOp>();
  auto type = cast<RankedTensorType>(weight.getType());
  SmallVector<int64_t> shape(type.getShape());
  if (transpose)
    std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
  auto fp8 = RankedTensorType::get(shape, Float8E4M3FNType::get(rewriter.getContext()));
  auto scale = RankedTensorType::get(ArrayRef<int64_t>(shape).drop_back(), rewriter.getF32Type());
  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPointAfter(param);
  return FrozenE4M3Op::create(rewriter, param.getLoc(), fp8, scale, param.getName(), type,
                              transpose);
}

/// linear and linear_grad_input of a frozen weight (no dropout: only LoRA's
/// A products have one) -> frozen_e4m3 + scaled_linear.
template <typename Product> struct DenseToFp8 : OpRewritePattern<Product> {
  using OpRewritePattern<Product>::OpRewritePattern;
  LogicalResult matchAndRewrite(Product op, PatternRewriter &rewriter) const override {
    if (!isFrozenWeight(op.getWeight()) || op.getDropoutMask())
      return rewriter.notifyMatchFailure(op, "not a product of a frozen weight");
    constexpr bool kGradient = std::is_same_v<Product, LinearGradInputOp>;
    FrozenE4M3Op q = frozenCopy(rewriter, op.getWeight(), kGradient);
    rewriter.replaceOpWithNewOp<ScaledLinearOp>(op, op.getType(), op->getOperand(0), q.getResult(),
                                                q.getScale(), op.getAddend());
    return success();
  }
};

/// expert_linear and expert_linear_grad_input of a frozen weight ->
/// frozen_e4m3 + scaled_expert_linear, which keeps a fused low-rank term
/// and its mask (the input gradient's A as `transposed`).
template <typename Product> struct ExpertsToFp8 : OpRewritePattern<Product> {
  using OpRewritePattern<Product>::OpRewritePattern;
  LogicalResult matchAndRewrite(Product op, PatternRewriter &rewriter) const override {
    // A mask without a low-rank term drops the whole product: a LoRA one.
    if (!isFrozenWeight(op.getWeight()) || (op.getDropoutMask() && !op.getLowrankInput()))
      return rewriter.notifyMatchFailure(op, "not a product of a frozen weight");
    constexpr bool kGradient = std::is_same_v<Product, ExpertLinearGradInputOp>;
    FrozenE4M3Op q = frozenCopy(rewriter, op.getWeight(), kGradient);
    rewriter.replaceOpWithNewOp<ScaledExpertLinearOp>(
        op, op.getType(), op->getOperand(0), op.getExpertOffsets(), q.getResult(), q.getScale(),
        op.getAddend(), op.getLowrankInput(), op.getLowrankWeight(),
        kGradient && op.getLowrankInput(), op.getDropoutMask(), op.getDropoutPAttr());
    return success();
  }
};

struct G3MoEFp8BasePass : g3moe::impl::G3MoEFp8BasePassBase<G3MoEFp8BasePass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateFp8BasePatterns(patterns);
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
  }
};

} // namespace

void g3moe::populateFp8BasePatterns(RewritePatternSet &patterns) {
  patterns.add<DenseToFp8<LinearOp>, DenseToFp8<LinearGradInputOp>, ExpertsToFp8<ExpertLinearOp>,
               ExpertsToFp8<ExpertLinearGradInputOp>>(patterns.getContext());
}
