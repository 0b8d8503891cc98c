//===- G3MoEFp8Ops.cpp - verifiers of the e4m3 products -------------------===//
//
// A quantized weight and its scales must be what quantize_fp8 makes of one
// [N, K] (or [E, N, K]) weight, and the products must read them along K.
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

} // namespace

LogicalResult QuantizeFp8Op::verify() {
  if (failed(requireStatic(*this)))
    return failure();
  auto w = getInput().getType();
  if (w.getRank() != 2 && w.getRank() != 3)
    return emitOpError() << "input must have rank 2 or 3, got " << shapeStr(w.getShape());
  SmallVector<int64_t> expected(w.getShape());
  if (getTranspose())
    std::swap(expected[expected.size() - 1], expected[expected.size() - 2]);
  if (failed(expectShape(*this, "result", getResult().getType(), expected)))
    return failure();
  return verifyRowScales(*this, "scale", getResult().getType(), getScale().getType());
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
  return expectShape(*this, "expert_offsets", getExpertOffsets().getType(), {w.getDimSize(0) + 1});
}
