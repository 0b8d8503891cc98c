//===- dense_checks.h - argument checks of the dense kernels ----*- C++ -*-===//
//
// The host-side checks of the embedding, RMSNorm, linear, LM head and expert
// (grouped) linear kernels (docs/kernels.md), shared by the CPU and CUDA
// backends so that both accept the same calls with the same messages. Data
// values (token ids, expert offsets) are checked by each backend where the
// data lives.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_KERNELS_DENSE_CHECKS_H
#define G3MOE_RUNTIME_KERNELS_DENSE_CHECKS_H

#include "runtime/kernels/kernel_checks.h"

#include <optional>

namespace g3rt::checks {

/// A rank-2 float tensor.
inline Status checkFloatMatrix(const KernelArgs &args, const TensorView &t, const char *what) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, t, what, 2));
  if (t.rank() != 2)
    return args.fail(std::string(what) + " must be a matrix, got " + describe(t));
  return Status();
}

/// Stacked expert weights [E, out, in].
inline Status checkExpertWeight(const KernelArgs &args, const TensorView &w, int64_t out,
                                int64_t in, const char *what) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, w, what, 3));
  if (w.rank() != 3 || w.dim(1) != out || w.dim(2) != in)
    return args.fail(std::string(what) + " has shape " + shapeString(w.shape) + ", expected [E, " +
                     std::to_string(out) + ", " + std::to_string(in) + "]");
  return Status();
}

/// The optional `softcap` attribute, positive when present.
inline Status readSoftcap(const KernelArgs &args, std::optional<float> &softcap) {
  softcap.reset();
  if (!args.attrs || !args.attrs->find("softcap"))
    return Status();
  std::optional<double> c = args.attrs->getFloat("softcap");
  if (!c || !(*c > 0))
    return args.fail("softcap must be a positive float when present");
  softcap = float(*c);
  return Status();
}

/// An embedding lookup: N ids into a [V, H] table.
struct EmbeddingShape {
  int64_t V = 0, H = 0, N = 0;
};

/// embedding: ids, table [V, H] → result [N, H] (`scale` read).
inline Status checkEmbedding(const KernelArgs &args, double &scale, EmbeddingShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &ids = args.inputs[0], &table = args.inputs[1], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIndex(args, ids, "ids"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, table, "table", 2));
  G3RT_RETURN_IF_ERROR(checkFloat(args, y, "result"));
  if (table.rank() != 2)
    return args.fail("table must be [V, H], got " + describe(table));
  G3RT_RETURN_IF_ERROR(args.requireFloat("scale", scale));
  s = {table.dim(0), table.dim(1), ids.numel()};
  return checkRowsCols(args, y, "result", s.N, s.H);
}

/// embedding_grad: grad [N, H], ids → result [V, H] (`scale` and
/// `padding_idx` read).
inline Status checkEmbeddingGrad(const KernelArgs &args, double &scale, int64_t &paddingIdx,
                                 EmbeddingShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &dy = args.inputs[0], &ids = args.inputs[1], &dtable = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkIndex(args, ids, "ids"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dtable, "result", 2));
  if (dtable.rank() != 2)
    return args.fail("result must be [V, H], got " + describe(dtable));
  G3RT_RETURN_IF_ERROR(args.requireFloat("scale", scale));
  G3RT_RETURN_IF_ERROR(args.requireInt("padding_idx", paddingIdx));
  s = {dtable.dim(0), dtable.dim(1), ids.numel()};
  return checkRowsCols(args, dy, "grad", s.N, s.H);
}

/// x [..., D] and a weight of D elements.
inline Status checkNormOperands(const KernelArgs &args, const TensorView &x, const TensorView &w) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, w, "weight"));
  if (w.numel() != x.dim(-1) || x.dim(-1) == 0)
    return args.fail("weight " + shapeString(w.shape) +
                     " does not match the last dimension of input " + shapeString(x.shape));
  return Status();
}

/// The counts of a call that may take an addend: `operands` inputs and
/// `outputs` outputs, or one more input (the addend).
inline Status checkCountsWithAddend(const KernelArgs &args, size_t operands, size_t outputs = 1) {
  if (args.inputs.size() == operands + 1 && args.outputs.size() == outputs)
    return Status();
  return checkCounts(args, operands, outputs);
}

/// The addend (input `operands`, when present), typed and shaped like
/// `result`, or null when there is none.
inline Status findAddend(const KernelArgs &args, size_t operands, const TensorView &result,
                         const TensorView *&addend) {
  addend = nullptr;
  if (args.inputs.size() <= operands)
    return Status();
  const TensorView &a = args.inputs[operands];
  if (a.dtype != result.dtype || a.shape != result.shape)
    return args.fail("addend " + describe(a) + " must match the result " + describe(result));
  addend = &a;
  return Status();
}

/// RMSNorm over `rows` rows of D elements; the input gradient's addend, if
/// any (rms_norm_grad).
struct NormShape {
  int64_t rows = 0, D = 0;
  const TensorView *addend = nullptr;
};

/// rms_norm: x, weight → result (`eps` read).
inline Status checkRmsNorm(const KernelArgs &args, double &eps, NormShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkNormOperands(args, x, w));
  G3RT_RETURN_IF_ERROR(checkFloat(args, y, "result"));
  G3RT_RETURN_IF_ERROR(args.requireFloat("eps", eps));
  s = {leadingRows(x), x.dim(-1)};
  return checkRowsCols(args, y, "result", s.rows, s.D);
}

/// add_rms_norm: lhs, rhs, weight → sum, result (`eps` read); all four
/// activations of one shape.
inline Status checkAddRmsNorm(const KernelArgs &args, double &eps, NormShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 2));
  const TensorView &a = args.inputs[0], &w = args.inputs[2];
  G3RT_RETURN_IF_ERROR(checkNormOperands(args, a, w));
  G3RT_RETURN_IF_ERROR(checkLike(args, args.inputs[1], "rhs", a));
  G3RT_RETURN_IF_ERROR(checkLike(args, args.outputs[0], "sum", a));
  G3RT_RETURN_IF_ERROR(checkLike(args, args.outputs[1], "result", a));
  G3RT_RETURN_IF_ERROR(args.requireFloat("eps", eps));
  s = {leadingRows(a), a.dim(-1)};
  return Status();
}

/// rms_norm_rope: x [B, T, n, d], weight [d], positions → result shaped like
/// x (`eps`, `theta`, `scaling_factor` read).
inline Status checkRmsNormRope(const KernelArgs &args, double &eps, RopeShape &r) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  const TensorView &x = args.inputs[0];
  G3RT_RETURN_IF_ERROR(checkRopeOperands(args, x, args.inputs[2], r));
  G3RT_RETURN_IF_ERROR(checkNormOperands(args, x, args.inputs[1]));
  G3RT_RETURN_IF_ERROR(checkLike(args, args.outputs[0], "result", x));
  return args.requireFloat("eps", eps);
}

/// rms_norm_rope_grad: x, weight, positions, grad → input_grad, weight_grad.
inline Status checkRmsNormRopeGrad(const KernelArgs &args, double &eps, RopeShape &r) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 4, 2));
  const TensorView &x = args.inputs[0];
  G3RT_RETURN_IF_ERROR(checkRopeOperands(args, x, args.inputs[2], r));
  G3RT_RETURN_IF_ERROR(checkNormOperands(args, x, args.inputs[1]));
  G3RT_RETURN_IF_ERROR(checkLike(args, args.inputs[3], "grad", x));
  G3RT_RETURN_IF_ERROR(checkLike(args, args.outputs[0], "input_grad", x));
  G3RT_RETURN_IF_ERROR(checkFloat(args, args.outputs[1], "weight_grad"));
  if (args.outputs[1].numel() != r.d)
    return args.fail("weight_grad " + shapeString(args.outputs[1].shape) + " does not have " +
                     std::to_string(r.d) + " elements");
  return args.requireFloat("eps", eps);
}

/// rms_norm_grad: x, weight, grad (, addend) → input_grad, weight_grad
/// (`eps` read); the addend is typed and shaped like input_grad.
inline Status checkRmsNormGrad(const KernelArgs &args, double &eps, NormShape &s) {
  G3RT_RETURN_IF_ERROR(checkCountsWithAddend(args, 3, 2));
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &dy = args.inputs[2];
  const TensorView &dx = args.outputs[0], &dw = args.outputs[1];
  G3RT_RETURN_IF_ERROR(checkNormOperands(args, x, w));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dx, "input_grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dw, "weight_grad"));
  G3RT_RETURN_IF_ERROR(args.requireFloat("eps", eps));
  s = {leadingRows(x), x.dim(-1)};
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dy, "grad", s.rows, s.D));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dx, "input_grad", s.rows, s.D));
  if (dw.numel() != s.D)
    return args.fail("weight_grad " + shapeString(dw.shape) + " does not have " +
                     std::to_string(s.D) + " elements");
  return findAddend(args, 3, dx, s.addend);
}

/// A product over M rows between `in` and `out` features; E experts for the
/// expert layers; the addend the product adds to its result, if any.
struct MatmulShape {
  int64_t M = 0, in = 0, out = 0, E = 0;
  const TensorView *addend = nullptr;
  /// An expert product's low-rank term (h [M, rank] and its weight), or
  /// null.
  const TensorView *lowInput = nullptr, *lowWeight = nullptr;
  int64_t rank = 0;
};

/// The optional inputs of an expert product after its `operands` (three,
/// or four for an e4m3 weight and its scales): an addend (one more input),
/// a low-rank pair (two more) or both (three). The pair is `lowrank_input`
/// [M, r] and `lowrank_weight` [E, cols, r] (`rankLast`: the forward's B)
/// or [E, r, cols] (the input gradient's A), cols the result's columns.
inline Status findExpertExtras(const KernelArgs &args, const TensorView &result, bool rankLast,
                               MatmulShape &s, size_t operands = 3) {
  const size_t n = args.inputs.size();
  if (n < operands || n > operands + 3 || args.outputs.size() != 1)
    return args.fail("expected " + std::to_string(operands) + " to " +
                     std::to_string(operands + 3) + " inputs and 1 output, got " +
                     std::to_string(n) + " and " + std::to_string(args.outputs.size()));
  G3RT_RETURN_IF_ERROR(findAddend(args, n == operands + 2 ? n : operands, result, s.addend));
  if (n < operands + 2)
    return Status();
  const TensorView &h = args.inputs[n - 2], &w = args.inputs[n - 1];
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, h, "lowrank_input"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, w, "lowrank_weight", 3));
  const int64_t r = h.dim(1), cols = result.dim(1);
  const std::vector<int64_t> expected =
      rankLast ? std::vector<int64_t>{s.E, cols, r} : std::vector<int64_t>{s.E, r, cols};
  if (h.dim(0) != s.M || w.shape != expected)
    return args.fail("lowrank_input " + describe(h) + " and lowrank_weight " + describe(w) +
                     " do not fit the result " + describe(result) + " and " + std::to_string(s.E) +
                     " experts");
  s.lowInput = &h;
  s.lowWeight = &w;
  s.rank = r;
  return Status();
}

/// The dropout fused into a LoRA product by --g3moe-fuse-dropout: the
/// keep-mask of a dropout_mask (its last input; bit i % 32 of word i / 32
/// keeps element i) and `dropout_p` (a kept element is x · dropoutScale(p),
/// rounded to its type), over the input x (linear, expert_linear and the
/// weight gradients) or the result (the input gradients). `mask` is null
/// for a product without one.
struct ProductDropout {
  const TensorView *mask = nullptr;
  double p = 0;
};

/// A product's call split from its dropout by splitProductDropout.
struct SplitProduct {
  ProductDropout drop;
  /// With a dropout (drop.mask set): the call without the mask input and
  /// `dropout_p`, its attributes in `plainAttrs`.
  KernelArgs plain;
  KernelAttrs plainAttrs;
  /// The call the product runs: `plain` with a dropout, else `call` itself
  /// (nothing is copied then).
  const KernelArgs &args(const KernelArgs &call) const { return drop.mask ? plain : call; }
};

/// Reads a product's dropout (the mask, its last input, and `dropout_p`)
/// into `out`; a call without `dropout_p` has none.
inline Status splitProductDropout(const KernelArgs &args, SplitProduct &out) {
  if (!args.attrs || !args.attrs->find("dropout_p"))
    return Status();
  if (args.inputs.size() < 3)
    return args.fail("a product with dropout needs its operands and the mask as the last input");
  double p;
  G3RT_RETURN_IF_ERROR(args.requireFloat("dropout_p", p));
  if (!(p >= 0 && p < 1))
    return args.fail("dropout_p = " + std::to_string(p) + " is outside [0, 1)");
  const TensorView &mask = args.inputs.back();
  if (mask.dtype != DType::I32 || mask.rank() != 1)
    return args.fail("the dropout mask must be i32 [words], got " +
                     std::string(dtypeName(mask.dtype)) + " " + shapeString(mask.shape));
  for (const auto &[name, value] : args.attrs->entries())
    if (name != "dropout_p")
      out.plainAttrs.set(name, value);
  out.plain = args;
  out.plain.attrs = &out.plainAttrs;
  out.plain.inputs.pop_back();
  out.drop = {&mask, p};
  return Status();
}

/// An input gradient's mask drops its low-rank term when it has one, else
/// its whole result, which then takes no addend.
inline Status checkResultDropout(const KernelArgs &args, const ProductDropout &drop,
                                 const MatmulShape &s) {
  if (drop.mask && s.addend && !s.lowInput)
    return args.fail("a dropout of the result cannot be fused into a product with an addend but "
                     "no lowrank term");
  return Status();
}

/// A product's mask has a bit for each of the `elements` masked elements.
inline Status checkMaskCovers(const KernelArgs &args, const ProductDropout &drop,
                              int64_t elements) {
  if (drop.mask && drop.mask->numel() * 32 < elements)
    return args.fail("the dropout mask of " + std::to_string(drop.mask->numel()) +
                     " words does not cover the " + std::to_string(elements) + " masked elements");
  return Status();
}

/// linear: input [..., in], weight [out, in] (, addend) → result [..., out].
inline Status checkLinearProduct(const KernelArgs &args, MatmulShape &s) {
  G3RT_RETURN_IF_ERROR(checkCountsWithAddend(args, 2));
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkLinear(args, x, w, "weight", y, "result", s.M, s.in, s.out));
  return findAddend(args, 2, y, s.addend);
}

/// linear_grad_input: grad [M, out], weight [out, in] (, addend) → result [M, in].
inline Status checkLinearGradInput(const KernelArgs &args, MatmulShape &s) {
  G3RT_RETURN_IF_ERROR(checkCountsWithAddend(args, 2));
  const TensorView &dy = args.inputs[0], &w = args.inputs[1], &dx = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, w, "weight", 2));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dx, "result"));
  if (w.rank() != 2)
    return args.fail("weight must be [out, in], got " + describe(w));
  s.out = w.dim(0);
  s.in = w.dim(1);
  s.M = leadingRows(dy);
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dy, "grad", s.M, s.out));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dx, "result", s.M, s.in));
  return findAddend(args, 2, dx, s.addend);
}

/// linear_grad_weight: grad [M, out], input [M, in] → result [out, in].
inline Status checkLinearGradWeight(const KernelArgs &args, MatmulShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &dy = args.inputs[0], &x = args.inputs[1], &dw = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dw, "result", 2));
  s.M = leadingRows(x);
  s.in = x.dim(-1);
  s.out = dy.dim(-1);
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dy, "grad", s.M, s.out));
  return checkShape(args, dw, "result", {s.out, s.in});
}

/// lm_head_grad: x [M, H], table [V, H], grad [M, V] → input_grad,
/// table_grad (s.in = H, s.out = V; `softcap` read).
inline Status checkLmHeadGrad(const KernelArgs &args, std::optional<float> &softcap,
                              MatmulShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 2));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &dl = args.inputs[2];
  const TensorView &dx = args.outputs[0], &dtable = args.outputs[1];
  G3RT_RETURN_IF_ERROR(checkLinear(args, x, table, "table", dl, "grad", s.M, s.in, s.out));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dx, "input_grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dtable, "table_grad"));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dx, "input_grad", s.M, s.in));
  G3RT_RETURN_IF_ERROR(checkShape(args, dtable, "table_grad", {s.out, s.in}));
  return readSoftcap(args, softcap);
}

/// The counts of the fused LM head + cross-entropy: x, table, targets,
/// num_items (, grad for the backward) → loss (, lse) forward; → input_grad
/// (, table_grad) backward, which may also take the forward's lse.
inline Status checkHeadLossCounts(const KernelArgs &args, bool backward) {
  const size_t in = args.inputs.size(), out = args.outputs.size();
  const bool ok =
      backward ? (in == 5 || in == 6) && (out == 1 || out == 2) : in == 4 && (out == 1 || out == 2);
  if (ok)
    return Status();
  return args.fail(std::string(backward ? "expected 5 or 6 inputs" : "expected 4 inputs") +
                   " and 1 or 2 outputs, got " + std::to_string(in) + " and " +
                   std::to_string(out));
}

/// lm_head_cross_entropy_and_grad: x, table, targets, num_items, grad → loss,
/// input_grad (shaped like x); what the forward and backward kernels check
/// besides.
inline Status checkHeadLossAndGrad(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 5, 2));
  const TensorView &x = args.inputs[0], &table = args.inputs[1];
  G3RT_RETURN_IF_ERROR(checkFloat(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, table, "table"));
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.inputs[4], "grad"));
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.outputs[0], "result"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, args.outputs[1], "input_grad"));
  return checkRowsCols(args, args.outputs[1], "input_grad", leadingRows(x), table.dim(1));
}

/// token_accuracy: float logits [..., V] and one index target per row in,
/// two scalar counts out; reads `ignore_index`.
inline Status checkTokenAccuracy(const KernelArgs &args, int64_t &ignoreIndex, int64_t &rows,
                                 int64_t &V) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 2));
  const TensorView &logits = args.inputs[0], &tv = args.inputs[1];
  G3RT_RETURN_IF_ERROR(args.requireInt("ignore_index", ignoreIndex));
  G3RT_RETURN_IF_ERROR(checkFloat(args, logits, "logits"));
  G3RT_RETURN_IF_ERROR(checkIndex(args, tv, "targets"));
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.outputs[0], "correct"));
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.outputs[1], "total"));
  V = logits.dim(-1);
  rows = leadingRows(logits);
  if (tv.numel() != rows)
    return args.fail("targets " + shapeString(tv.shape) + " do not match the rows of logits " +
                     shapeString(logits.shape));
  return Status();
}

/// The fused head's per-row logsumexp: f32, one entry per row.
inline Status checkHeadLse(const KernelArgs &args, const TensorView &lse, int64_t rows) {
  if (lse.dtype != DType::F32 || lse.numel() != rows)
    return args.fail("lse must be f32 with one entry per row of the input (" +
                     std::to_string(rows) + "), got " + describe(lse));
  return Status();
}

/// The expert offsets of an expert layer: an index tensor of experts + 1
/// entries (their values are checked where they are read).
inline Status checkExpertOffsets(const KernelArgs &args, const TensorView &t, int64_t experts) {
  G3RT_RETURN_IF_ERROR(checkIndex(args, t, "expert_offsets"));
  if (t.numel() != experts + 1)
    return args.fail("expert_offsets has " + std::to_string(t.numel()) + " elements, expected " +
                     std::to_string(experts + 1) + " (experts + 1)");
  return Status();
}

/// Expert offsets read from the device or the host: they start at 0, never
/// decrease and end at most at `rows` (the data check both backends make
/// once the values are on the host).
inline Status checkExpertOffsetValues(const KernelArgs &args, const std::vector<int64_t> &offsets,
                                      int64_t rows) {
  const int64_t experts = int64_t(offsets.size()) - 1;
  if (offsets[0] != 0)
    return args.fail("expert offset " + std::to_string(offsets[0]) + " at position 0 must be 0");
  for (int64_t e = 1; e <= experts; ++e)
    if (offsets[size_t(e)] < offsets[size_t(e - 1)])
      return args.fail("expert offset " + std::to_string(offsets[size_t(e)]) + " at position " +
                       std::to_string(e) + " is below the previous offset " +
                       std::to_string(offsets[size_t(e - 1)]));
  if (offsets[size_t(experts)] > rows)
    return args.fail("expert offset " + std::to_string(offsets[size_t(experts)]) + " at position " +
                     std::to_string(experts) + " exceeds the row count " + std::to_string(rows));
  return Status();
}

/// expert_linear: x [M, in], expert_offsets, weight [E, out, in] (, addend)
/// (, lowrank_input [M, r], lowrank_weight [E, out, r]) → [M, out].
inline Status checkExpertLinear(const KernelArgs &args, MatmulShape &s) {
  if (args.inputs.size() < 3 || args.outputs.size() != 1)
    return checkCounts(args, 3, 1);
  const TensorView &x = args.inputs[0], &w = args.inputs[2], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, y, "result"));
  s = {x.dim(0), x.dim(1), y.dim(1), 0};
  G3RT_RETURN_IF_ERROR(checkExpertWeight(args, w, s.out, s.in, "weight"));
  G3RT_RETURN_IF_ERROR(checkShape(args, y, "result", {s.M, s.out}));
  s.E = w.dim(0);
  G3RT_RETURN_IF_ERROR(checkExpertOffsets(args, args.inputs[1], s.E));
  return findExpertExtras(args, y, /*rankLast=*/true, s);
}

/// expert_linear_grad_input: grad [M, out], expert_offsets, weight
/// [E, out, in] (, addend) (, lowrank_input [M, r], lowrank_weight
/// [E, r, in]) → [M, in].
inline Status checkExpertLinearGradInput(const KernelArgs &args, MatmulShape &s) {
  if (args.inputs.size() < 3 || args.outputs.size() != 1)
    return checkCounts(args, 3, 1);
  const TensorView &dy = args.inputs[0], &w = args.inputs[2], &dx = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, dx, "result"));
  s = {dy.dim(0), dx.dim(1), dy.dim(1), 0};
  G3RT_RETURN_IF_ERROR(checkExpertWeight(args, w, s.out, s.in, "weight"));
  G3RT_RETURN_IF_ERROR(checkShape(args, dx, "result", {s.M, s.in}));
  s.E = w.dim(0);
  G3RT_RETURN_IF_ERROR(checkExpertOffsets(args, args.inputs[1], s.E));
  return findExpertExtras(args, dx, /*rankLast=*/false, s);
}

/// expert_linear_grad_weight: grad [M, out], expert_offsets, x [M, in] →
/// [E, out, in].
inline Status checkExpertLinearGradWeight(const KernelArgs &args, MatmulShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  const TensorView &dy = args.inputs[0], &x = args.inputs[2], &dw = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, dy, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, x, "input"));
  s = {x.dim(0), x.dim(1), dy.dim(1), 0};
  G3RT_RETURN_IF_ERROR(checkShape(args, dy, "grad", {s.M, s.out}));
  G3RT_RETURN_IF_ERROR(checkExpertWeight(args, dw, s.out, s.in, "result"));
  s.E = dw.dim(0);
  return checkExpertOffsets(args, args.inputs[1], s.E);
}

} // namespace g3rt::checks

#endif // G3MOE_RUNTIME_KERNELS_DENSE_CHECKS_H
