//===- G3MoEFp8Ops.cpp - verifiers of the e4m3 products -------------------===//
//
// A quantized weight and its scales (quantize_fp8, frozen_e4m3) must be what
// quantization makes of one [N, K] (or [E, N, K]) weight, and the products
// must read them along K.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/IR/VerifyUtils.h"

using namespace mlir;
using namespace g3moe;
using namespace g3moe::detail;

namespace {

/// `scale` (named `what`) must hold one value per row of the quantized
/// `weight`: its shape with the last dimension dropped.
LogicalResult verifyRowScales(Operation *op, StringRef what, RankedTensorType weight,
                              RankedTensorType scale) {
  return expectShape(op, what, scale, weight.getShape().drop_back());
}

/// The shared checks of the two products: `weight` of rank `rank`, its
/// scales, the input's last dimension equal to K, and the result [..., N].
LogicalResult verifyScaledProduct(Operation *op, RankedTensorType x, RankedTensorType w,
                                  RankedTensorType scale, RankedTensorType result, Value addend,
                                  int64_t rank) {
  if (failed(requireStatic(op)) || failed(expectRank(op, "weight", w, rank)) ||
      failed(verifyRowScales(op, "weight_scale", w, scale)))
    return failure();
  if (x.getShape().back() != w.getShape().back())
    return op->emitOpError() << "input features (" << x.getShape().back()
                             << ") must equal the weight's last dimension (weight is "
                             << shapeStr(w.getShape()) << ")";
  SmallVector<int64_t> expected(x.getShape());
  expected.back() = w.getShape()[rank - 2];
  if (failed(expectShape(op, "result", result, expected)))
    return failure();
  return verifyAddend(op, addend, result);
}

/// The e4m3 values and scales of a weight `w` of rank 2 or 3, as
/// quantize_fp8 (or frozen_e4m3) makes them: the weight's shape, its last
/// two dimensions swapped with `transpose`, and one scale per row.
LogicalResult verifyQuantized(Operation *op, RankedTensorType w, bool transpose,
                              RankedTensorType result, RankedTensorType scale) {
  if (w.getRank() != 2 && w.getRank() != 3)
    return op->emitOpError() << "input must have rank 2 or 3, got " << shapeStr(w.getShape());
  SmallVector<int64_t> expected(w.getShape());
  if (transpose)
    std::swap(expected[expected.size() - 1], expected[expected.size() - 2]);
  if (failed(expectShape(op, "result", result, expected)))
    return failure();
  return verifyRowScales(op, "scale", result, scale);
}

} // namespace

LogicalResult QuantizeFp8Op::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  return verifyQuantized(*this, getInput().getType(), getTranspose(), getResult().getType(),
                         getScale().getType());
}

LogicalResult FrozenE4M3Op::verify() {
  auto source = cast<RankedTensorType>(getSourceType());
  if (getName().empty())
    return emitOpError("needs the name of a parameter");
  if (!source.hasStaticShape() ||
      !isa<BFloat16Type, Float16Type, Float32Type>(source.getElementType()))
    return emitOpError() << "source_type must be a static bf16, f16 or f32 tensor, got " << source;
  if (failed(requireStatic(*this)))
    return failure();
  return verifyQuantized(*this, source, getTranspose(), getResult().getType(),
                         getScale().getType());
}

LogicalResult ScaledLinearOp::verify() {
  return verifyScaledProduct(*this, getInput().getType(), getWeight().getType(),
                             getWeightScale().getType(), getType(), getAddend(), 2);
}

LogicalResult ScaledExpertLinearOp::verify() {
  auto x = getInput().getType(), w = getWeight().getType();
  if (failed(expectRank(*this, "input", x, 2)) ||
      failed(
          verifyScaledProduct(*this, x, w, getWeightScale().getType(), getType(), getAddend(), 3)))
    return failure();
  if (failed(expectShape(*this, "expert_offsets", getExpertOffsets().getType(),
                         {w.getDimSize(0) + 1})))
    return failure();
  if (getLowrankTransposed() && !getLowrankInput())
    return emitOpError("transposed needs a lowrank term");
  if (failed(verifyExpertLowRank(*this, getLowrankInput(), getLowrankWeight(), x.getDimSize(0),
                                 w.getDimSize(0), w.getDimSize(1),
                                 /*rankLast=*/!getLowrankTransposed())))
    return failure();
  return verifyProductDropout(*this, getDropoutMask(), getDropoutP(), getType().getNumElements(),
                              getLowrankInput() ? "" : "no lowrank");
}
