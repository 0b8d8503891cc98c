//===- fp8_checks.h - argument checks of the e4m3 kernels -------*- C++ -*-===//
//
// The host-side checks of quantize_fp8, scaled_linear and
// scaled_expert_linear (docs/kernels.md, "e4m3 products"), shared by the CPU
// and CUDA backends so that both accept the same calls with the same
// messages.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_KERNELS_FP8_CHECKS_H
#define G3MOE_RUNTIME_KERNELS_FP8_CHECKS_H

#include "runtime/kernels/dense_checks.h"

namespace g3rt::checks {

/// An e4m3 tensor of rank `rank`.
inline Status checkFp8(const KernelArgs &args, const TensorView &t, const char *what,
                       int64_t rank) {
  if (t.dtype != DType::F8E4M3 || t.rank() != rank)
    return args.fail(std::string(what) + " must be an F8_E4M3 tensor of rank " + str(rank) +
                     ", got " + describe(t));
  return Status();
}

/// One fp32 scale per row of the e4m3 tensor `q`: its shape less the last
/// dimension.
inline Status checkRowScales(const KernelArgs &args, const TensorView &scale, const TensorView &q) {
  std::vector<int64_t> expected(q.shape.begin(), q.shape.end() - 1);
  if (scale.dtype != DType::F32)
    return args.fail("scale must be F32, got " + describe(scale));
  return checkShape(args, scale, "scale", expected);
}

/// A weight quantized by quantize_fp8: `batches` matrices (experts) of
/// `rows` x `cols` read from `input`, written transposed or not.
struct QuantizeShape {
  int64_t batches = 1, rows = 0, cols = 0;
  bool transpose = false;
};

/// quantize_fp8: input [(E,) N, K] → result [(E,) N, K] (or [(E,) K, N]
/// with `transpose`), scale [(E,) N] (or [(E,) K]).
inline Status checkQuantizeFp8(const KernelArgs &args, QuantizeShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 1, 2));
  const TensorView &w = args.inputs[0], &q = args.outputs[0], &scale = args.outputs[1];
  G3RT_RETURN_IF_ERROR(checkFloat(args, w, "input", 2));
  if (w.rank() > 3)
    return args.fail("input must have rank 2 or 3, got " + describe(w));
  s.transpose = args.attrs && args.attrs->getFlag("transpose");
  s.batches = w.rank() == 3 ? w.dim(0) : 1;
  s.rows = w.dim(-2);
  s.cols = w.dim(-1);
  std::vector<int64_t> expected = w.shape;
  if (s.transpose)
    std::swap(expected[expected.size() - 1], expected[expected.size() - 2]);
  G3RT_RETURN_IF_ERROR(checkFp8(args, q, "result", w.rank()));
  G3RT_RETURN_IF_ERROR(checkShape(args, q, "result", expected));
  return checkRowScales(args, scale, q);
}

/// A product of M rows of K features with N rows of an e4m3 weight (per
/// expert, E of them, for scaled_expert_linear) and its addend, if any; an
/// expert product's low-rank term (`extras`: its addend is `addend`).
struct ScaledShape {
  int64_t M = 0, K = 0, N = 0, E = 0;
  const TensorView *addend = nullptr;
  /// scaled_expert_linear's optional inputs, as findExpertExtras reads
  /// them; `lowTransposed`: the low-rank weight is [E, r, N].
  MatmulShape extras;
  bool lowTransposed = false;
};

/// The weight (input `at`) and its scales, [N, K] and [N] (rank 2) or
/// [E, N, K] and [E, N] (rank 3), for K input features.
inline Status checkScaledWeight(const KernelArgs &args, size_t at, int64_t rank, ScaledShape &s) {
  const TensorView &w = args.inputs[at], &scale = args.inputs[at + 1];
  G3RT_RETURN_IF_ERROR(checkFp8(args, w, "weight", rank));
  if (w.dim(-1) != s.K)
    return args.fail("weight " + describe(w) + " does not take " + str(s.K) + " input features");
  s.N = w.dim(-2);
  s.E = rank == 3 ? w.dim(0) : 0;
  return checkRowScales(args, scale, w);
}

/// scaled_linear: input [..., K], weight [N, K], weight_scale [N]
/// (, addend) → result [..., N].
inline Status checkScaledLinear(const KernelArgs &args, ScaledShape &s) {
  G3RT_RETURN_IF_ERROR(checkCountsWithAddend(args, 3));
  const TensorView &x = args.inputs[0], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, y, "result"));
  s.K = x.dim(-1);
  s.M = leadingRows(x);
  G3RT_RETURN_IF_ERROR(checkScaledWeight(args, 1, 2, s));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, y, "result", s.M, s.N));
  return findAddend(args, 3, y, s.addend);
}

/// scaled_expert_linear, its dropout split off: input [M, K],
/// expert_offsets, weight [E, N, K], weight_scale [E, N] (, addend)
/// (, lowrank_input [M, r], lowrank_weight [E, N, r], or [E, r, N] with
/// `lowrank_transposed`) → result [M, N].
inline Status checkScaledExpertLinear(const KernelArgs &args, ScaledShape &s) {
  if (args.inputs.size() < 4 || args.outputs.size() != 1)
    return checkCounts(args, 4, 1);
  const TensorView &x = args.inputs[0], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, y, "result"));
  s.M = x.dim(0);
  s.K = x.dim(1);
  G3RT_RETURN_IF_ERROR(checkScaledWeight(args, 2, 3, s));
  G3RT_RETURN_IF_ERROR(checkShape(args, y, "result", {s.M, s.N}));
  G3RT_RETURN_IF_ERROR(checkExpertOffsets(args, args.inputs[1], s.E));
  s.lowTransposed = args.attrs && args.attrs->getFlag("lowrank_transposed");
  s.extras = {s.M, s.K, s.N, s.E};
  G3RT_RETURN_IF_ERROR(findExpertExtras(args, y, !s.lowTransposed, s.extras, 4));
  s.addend = s.extras.addend;
  return Status();
}

/// A scaled_expert_linear's dropout drops its low-rank term, which it must
/// have, and covers the result.
inline Status checkScaledTermDropout(const KernelArgs &args, const ProductDropout &drop,
                                     const ScaledShape &s) {
  if (drop.mask && !s.extras.lowInput)
    return args.fail("a scaled_expert_linear's dropout drops its lowrank term, and it has none");
  return checkMaskCovers(args, drop, s.M * s.N);
}

} // namespace g3rt::checks

#endif // G3MOE_RUNTIME_KERNELS_FP8_CHECKS_H
