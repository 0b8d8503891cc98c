//===- VerifyUtils.h - helpers shared by the g3moe verifiers ----*- C++ -*-===//
//
// Shape checks with messages that name the operand and print both shapes.
// Internal to the dialect library.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_DIALECTS_G3MOE_IR_VERIFYUTILS_H
#define G3MOE_DIALECTS_G3MOE_IR_VERIFYUTILS_H

#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Operation.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/raw_ostream.h"

#include <optional>
#include <string>

namespace g3moe::detail {

/// Prints a shape as `[2, 16, 64]`.
inline std::string shapeStr(llvm::ArrayRef<int64_t> shape) {
  std::string s = "[";
  llvm::raw_string_ostream os(s);
  llvm::interleaveComma(shape, os);
  os << "]";
  return s;
}

inline mlir::RankedTensorType tensorOf(mlir::Value v) {
  return llvm::cast<mlir::RankedTensorType>(v.getType());
}

/// The optional addend of the linear products is typed like the result.
inline mlir::LogicalResult verifyAddend(mlir::Operation *op, mlir::Value addend,
                                        mlir::Type result) {
  if (addend && addend.getType() != result)
    return op->emitOpError("addend type ")
           << addend.getType() << " must equal the result type " << result;
  return mlir::success();
}

/// The low-rank pair of a fused expert product (--g3moe-fuse-linear-add):
/// both or neither; `input` [rows, r] and `weight` [experts, out, r]
/// (`rankLast`, the forward's B) or [experts, r, out] (the input gradient's
/// A), with r at most 64.
inline mlir::LogicalResult verifyExpertLowRank(mlir::Operation *op, mlir::Value input,
                                               mlir::Value weight, int64_t rows, int64_t experts,
                                               int64_t out, bool rankLast) {
  if (!input && !weight)
    return mlir::success();
  if (!input || !weight)
    return op->emitOpError("lowrank needs both an input and a weight");
  auto h = tensorOf(input), w = tensorOf(weight);
  if (h.getRank() != 2 || w.getRank() != 3)
    return op->emitOpError() << "lowrank input " << shapeStr(h.getShape()) << " and weight "
                             << shapeStr(w.getShape()) << " must be of rank 2 and 3";
  int64_t r = h.getDimSize(1);
  llvm::SmallVector<int64_t> expected{experts, r, out};
  if (rankLast)
    expected = {experts, out, r};
  if (h.getDimSize(0) != rows || w.getShape() != llvm::ArrayRef<int64_t>(expected) || r > 64) {
    std::string e = std::to_string(experts), o = std::to_string(out);
    return op->emitOpError() << "lowrank input " << shapeStr(h.getShape()) << " and weight "
                             << shapeStr(w.getShape()) << " must be [" << rows << ", r] and ["
                             << (rankLast ? e + ", " + o + ", r" : e + ", r, " + o)
                             << "] with r <= 64";
  }
  return mlir::success();
}

/// The dropout fused into a product (--g3moe-fuse-dropout): the mask with
/// dropout_p or neither, p in [0, 1), a mask of at least one bit per
/// element of the masked tensor (`masked` elements); `excluded` names an
/// operand the product may not have with it ("" when none).
inline mlir::LogicalResult verifyProductDropout(mlir::Operation *op, mlir::Value mask,
                                                std::optional<llvm::APFloat> p, int64_t masked,
                                                llvm::StringRef excluded = "") {
  if (!mask && !p)
    return mlir::success();
  if (!mask || !p)
    return op->emitOpError("dropout needs a mask and dropout_p together");
  if (!excluded.empty())
    return op->emitOpError("dropout cannot be fused into a product with ") << excluded;
  double pv = p->convertToDouble();
  if (pv < 0 || pv >= 1)
    return op->emitOpError("dropout_p must be in [0, 1), got ") << pv;
  int64_t words = tensorOf(mask).getDimSize(0);
  if (words < (masked + 31) / 32)
    return op->emitOpError() << "dropout mask of " << words << " words does not cover the "
                             << masked << " masked elements";
  return mlir::success();
}

/// All g3moe ops work on static shapes: sizes are compile-time per step.
inline mlir::LogicalResult requireStatic(mlir::Operation *op) {
  for (mlir::Type t : llvm::concat<mlir::Type>(op->getOperandTypes(), op->getResultTypes()))
    if (auto rt = llvm::dyn_cast<mlir::RankedTensorType>(t); rt && !rt.hasStaticShape())
      return op->emitOpError("requires static shapes, got ") << rt;
  return mlir::success();
}

inline mlir::LogicalResult expectShape(mlir::Operation *op, llvm::StringRef what,
                                       mlir::RankedTensorType t, llvm::ArrayRef<int64_t> expected) {
  if (t.getShape() == expected)
    return mlir::success();
  return op->emitOpError() << what << " must have shape " << shapeStr(expected) << ", got "
                           << shapeStr(t.getShape());
}

inline mlir::LogicalResult expectRank(mlir::Operation *op, llvm::StringRef what,
                                      mlir::RankedTensorType t, int64_t rank) {
  if (t.getRank() == rank)
    return mlir::success();
  return op->emitOpError() << what << " must have rank " << rank << ", got "
                           << shapeStr(t.getShape());
}

/// Router results: weights [N, k] and indices [N, k] for logits [N, E].
inline mlir::LogicalResult verifyRouterResults(mlir::Operation *op, mlir::RankedTensorType logits,
                                               int64_t topK) {
  if (mlir::failed(expectRank(op, "logits", logits, 2)))
    return mlir::failure();
  int64_t n = logits.getDimSize(0), e = logits.getDimSize(1);
  if (topK < 1 || topK > e)
    return op->emitOpError() << "top_k must be in [1, " << e << "] (the number of experts), got "
                             << topK;
  for (mlir::Value r : op->getResults())
    if (mlir::failed(
            expectShape(op, "result", llvm::cast<mlir::RankedTensorType>(r.getType()), {n, topK})))
      return mlir::failure();
  return mlir::success();
}

/// An RMSNorm's weight (one gain per element of the input's last dimension)
/// and its positive eps.
inline mlir::LogicalResult verifyNormWeight(mlir::Operation *op, mlir::RankedTensorType x,
                                            mlir::Value weight, double eps) {
  if (mlir::failed(expectShape(op, "weight", llvm::cast<mlir::RankedTensorType>(weight.getType()),
                               {x.getShape().back()})))
    return mlir::failure();
  if (eps <= 0)
    return op->emitOpError("eps must be positive");
  return mlir::success();
}

/// The rotary-embedding operands shared by rope and the fused QK-norm ops:
/// x [B, T, heads, d] with an even d, positions [B, T], positive theta and
/// scaling factor.
inline mlir::LogicalResult verifyRoPEOperands(mlir::Operation *op, mlir::RankedTensorType x,
                                              mlir::Value positions, double theta,
                                              double scalingFactor) {
  if (mlir::failed(expectRank(op, "input", x, 4)))
    return mlir::failure();
  if (x.getDimSize(3) % 2 != 0)
    return op->emitOpError("head dimension must be even, got ") << x.getDimSize(3);
  if (mlir::failed(expectShape(op, "positions",
                               llvm::cast<mlir::RankedTensorType>(positions.getType()),
                               {x.getDimSize(0), x.getDimSize(1)})))
    return mlir::failure();
  if (theta <= 0 || scalingFactor <= 0)
    return op->emitOpError("theta and scaling_factor must be positive");
  return mlir::success();
}

/// A uniform draw on [low, high) from a [2] key and a stream >= 0
/// (random_uniform, keyed_jitter); static shapes.
template <typename DrawOp> mlir::LogicalResult verifyUniformDraw(DrawOp op) {
  if (mlir::failed(expectShape(op, "key", op.getKey().getType(), {2})))
    return mlir::failure();
  if (op.getStreamAttr().getInt() < 0)
    return op.emitOpError("stream must be non-negative, got ") << op.getStreamAttr().getInt();
  if (!(op.getLow().convertToDouble() < op.getHigh().convertToDouble()))
    return op.emitOpError("requires low < high, got [")
           << op.getLow().convertToDouble() << ", " << op.getHigh().convertToDouble() << ")";
  return requireStatic(op);
}

} // namespace g3moe::detail

#endif // G3MOE_DIALECTS_G3MOE_IR_VERIFYUTILS_H
