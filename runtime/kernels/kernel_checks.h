//===- kernel_checks.h - argument checks shared by all kernels --*- C++ -*-===//
//
// Every backend validates a kernel's arguments the same way before touching
// memory (host-side checks on shapes, element types and counts; values on the
// device are another matter), so the checks and their messages live here once.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_KERNELS_KERNEL_CHECKS_H
#define G3MOE_RUNTIME_KERNELS_KERNEL_CHECKS_H

#include "runtime/base/random.h"
#include "runtime/kernels/kernel.h"

#include <algorithm>
#include <string>
#include <vector>

namespace g3rt::checks {

/// `std::to_string`, short.
inline std::string str(int64_t v) { return std::to_string(v); }

/// "BF16 [2, 16, 64]".
inline std::string describe(const TensorView &t) {
  return std::string(dtypeName(t.dtype)) + " " + shapeString(t.shape);
}

/// Product of all dimensions but the last (TensorView::rows divides by the
/// last dimension, which may be 0).
inline int64_t leadingRows(const TensorView &t) {
  int64_t n = 1;
  for (size_t d = 0; d + 1 < t.shape.size(); ++d)
    n *= t.shape[d];
  return n;
}

/// Exactly `inputs` inputs and `outputs` outputs.
inline Status checkCounts(const KernelArgs &args, size_t inputs, size_t outputs) {
  if (args.inputs.size() != inputs || args.outputs.size() != outputs)
    return args.fail("expected " + str(int64_t(inputs)) + " inputs and " + str(int64_t(outputs)) +
                     " outputs, got " + str(int64_t(args.inputs.size())) + " and " +
                     str(int64_t(args.outputs.size())));
  return Status();
}

/// A float tensor of rank at least `minRank`.
inline Status checkFloat(const KernelArgs &args, const TensorView &t, const char *what,
                         int64_t minRank = 1) {
  if (!isFloat(t.dtype))
    return args.fail(std::string(what) + " must be a float tensor, got " + describe(t));
  if (t.rank() < minRank)
    return args.fail(std::string(what) + " must have rank >= " + str(minRank) + ", got " +
                     describe(t));
  return Status();
}

/// i32 or i64.
inline bool isIndexType(DType t) { return t == DType::I32 || t == DType::I64; }

/// An i32 or i64 tensor.
inline Status checkIndex(const KernelArgs &args, const TensorView &t, const char *what) {
  if (t.dtype != DType::I32 && t.dtype != DType::I64)
    return args.fail(std::string(what) + " must be an integer tensor, got " + describe(t));
  return Status();
}

/// An i32 tensor.
inline Status checkI32(const KernelArgs &args, const TensorView &t, const char *what) {
  if (t.dtype != DType::I32)
    return args.fail(std::string(what) + " must be i32, got " + describe(t));
  return Status();
}

/// Exactly shape `want`.
inline Status checkShape(const KernelArgs &args, const TensorView &t, const char *what,
                         const std::vector<int64_t> &want) {
  if (t.shape != want)
    return args.fail(std::string(what) + " has shape " + shapeString(t.shape) + ", expected " +
                     shapeString(want));
  return Status();
}

/// `t` is [rows, cols] up to how its leading dimensions are split.
inline Status checkRowsCols(const KernelArgs &args, const TensorView &t, const char *what,
                            int64_t rows, int64_t cols) {
  if (t.rank() < 1 || t.dim(-1) != cols || leadingRows(t) != rows)
    return args.fail(std::string(what) + " has shape " + shapeString(t.shape) + ", expected " +
                     str(rows) + " rows of " + str(cols));
  return Status();
}

/// A float tensor of one element.
inline Status checkScalar(const KernelArgs &args, const TensorView &t, const char *what) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, t, what, 0));
  if (t.numel() != 1)
    return args.fail(std::string(what) + " must be a scalar, got " + describe(t));
  return Status();
}

/// The inputs `views`, float tensors with as many elements as output 0.
inline Status checkFloatOperands(const KernelArgs &args,
                                 std::initializer_list<const TensorView *> views) {
  int64_t n = args.outputs[0].numel();
  for (const TensorView *t : views) {
    if (!isFloat(t->dtype))
      return args.fail("expected a float tensor, got " + std::string(dtypeName(t->dtype)) + " " +
                       shapeString(t->shape));
    if (t->numel() != n)
      return args.fail("element count mismatch: " + shapeString(t->shape) + " vs output " +
                       shapeString(args.outputs[0].shape));
  }
  return Status();
}

/// A random draw's key (i64 [2]: seed, counter) and its `stream` attribute,
/// for `elements` draws of that one stream.
inline Status checkRandomStream(const KernelArgs &args, const TensorView &key, int64_t elements,
                                uint32_t &stream) {
  if (key.dtype != DType::I64 || key.numel() != 2)
    return args.fail("key must be i64 [2] (seed, counter), got " +
                     std::string(dtypeName(key.dtype)) + " " + shapeString(key.shape));
  int64_t s;
  G3RT_RETURN_IF_ERROR(args.requireInt("stream", s));
  if (s < 0 || s > int64_t(UINT32_MAX))
    return args.fail("stream " + std::to_string(s) + " is outside [0, 2^32)");
  if (uint64_t(elements) > kMaxStreamElements)
    return args.fail("output of " + std::to_string(elements) +
                     " elements exceeds one random stream");
  stream = uint32_t(s);
  return Status();
}

/// random_uniform: key (i64 [2]) → a float output of one random stream;
/// reads `stream`, `low` and `high`.
inline Status checkRandomUniform(const KernelArgs &args, uint32_t &stream, double &low,
                                 double &high) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 1, 1));
  const TensorView &key = args.inputs[0], &y = args.outputs[0];
  if (!isFloat(y.dtype))
    return args.fail("output must be a float tensor, got " + std::string(dtypeName(y.dtype)));
  G3RT_RETURN_IF_ERROR(checkRandomStream(args, key, y.numel(), stream));
  G3RT_RETURN_IF_ERROR(args.requireFloat("low", low));
  return args.requireFloat("high", high);
}

/// The inverted-dropout factor 1 / (1 - p), rounded once to fp32: a kept
/// element is x · scale in fp32, as torch's dropout computes it. Never
/// applied with p = 1, where nothing is kept.
inline float dropoutScale(double p) { return float(1.0 / (1.0 - p)); }

/// dropout: x, uniform draws → result, all float of one size; reads `p`.
inline Status checkDropout(const KernelArgs &args, double &p) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  G3RT_RETURN_IF_ERROR(
      checkFloatOperands(args, {&args.inputs[0], &args.inputs[1], &args.outputs[0]}));
  G3RT_RETURN_IF_ERROR(args.requireFloat("p", p));
  if (!(p >= 0 && p <= 1))
    return args.fail("p = " + std::to_string(p) + " is outside [0, 1]");
  return Status();
}

/// keyed_dropout: a float input and output of one size, an i64 [2] key, a
/// stream and p in [0, 1].
inline Status checkKeyedDropout(const KernelArgs &args, uint32_t &stream, double &p) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &x = args.inputs[0], &key = args.inputs[1], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloatOperands(args, {&x, &y}));
  if (x.numel() != y.numel())
    return args.fail("input " + shapeString(x.shape) + " and output " + shapeString(y.shape) +
                     " differ in size");
  G3RT_RETURN_IF_ERROR(checkRandomStream(args, key, y.numel(), stream));
  G3RT_RETURN_IF_ERROR(args.requireFloat("p", p));
  if (!(p >= 0 && p <= 1))
    return args.fail("p = " + std::to_string(p) + " is outside [0, 1]");
  return Status();
}

/// keyed_jitter: a float input and output of one type and size, an i64 [2]
/// key, a stream and low < high.
inline Status checkKeyedJitter(const KernelArgs &args, uint32_t &stream, double &low,
                               double &high) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &x = args.inputs[0], &key = args.inputs[1], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloatOperands(args, {&x, &y}));
  if (x.dtype != y.dtype || x.numel() != y.numel())
    return args.fail("input " + std::string(dtypeName(x.dtype)) + " " + shapeString(x.shape) +
                     " and output " + std::string(dtypeName(y.dtype)) + " " + shapeString(y.shape) +
                     " differ");
  G3RT_RETURN_IF_ERROR(checkRandomStream(args, key, y.numel(), stream));
  G3RT_RETURN_IF_ERROR(args.requireFloat("low", low));
  G3RT_RETURN_IF_ERROR(args.requireFloat("high", high));
  if (!(low < high))
    return args.fail("requires low < high, got [" + std::to_string(low) + ", " +
                     std::to_string(high) + ")");
  return Status();
}

/// dropout_mask: an i64 [2] key in, an i32 [words] mask out, one bit per
/// element of one random stream; a stream and p in [0, 1).
inline Status checkDropoutMask(const KernelArgs &args, uint32_t &stream, double &p) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 1, 1));
  const TensorView &y = args.outputs[0];
  if (y.dtype != DType::I32 || y.rank() != 1)
    return args.fail("mask must be i32 [words], got " + std::string(dtypeName(y.dtype)) + " " +
                     shapeString(y.shape));
  G3RT_RETURN_IF_ERROR(checkRandomStream(args, args.inputs[0], y.numel() * 32, stream));
  G3RT_RETURN_IF_ERROR(args.requireFloat("p", p));
  if (!(p >= 0 && p < 1))
    return args.fail("p = " + std::to_string(p) + " is outside [0, 1)");
  return Status();
}

/// The options and sizes of rope.
struct RopeShape {
  int64_t B = 0, T = 0, n = 0, d = 0;
  double theta = 0, factor = 0;
  bool transpose = false;
};

/// The rope part of rope and the fused QK-norm: x [B, T, n, d] with an
/// even d, positions [B, T], `theta` and `scaling_factor` read.
inline Status checkRopeOperands(const KernelArgs &args, const TensorView &x, const TensorView &pos,
                                RopeShape &r) {
  G3RT_RETURN_IF_ERROR(args.requireFloat("theta", r.theta));
  G3RT_RETURN_IF_ERROR(args.requireFloat("scaling_factor", r.factor));
  if (!(r.theta > 0) || !(r.factor > 0))
    return args.fail("theta and scaling_factor must be positive");
  r.transpose = args.attrs && args.attrs->getFlag("transpose");
  if (x.rank() != 4 || !isFloat(x.dtype))
    return args.fail("x must be a float [B, T, n, d] tensor, got " + describe(x));
  r.B = x.dim(0);
  r.T = x.dim(1);
  r.n = x.dim(2);
  r.d = x.dim(3);
  if (r.d % 2 != 0)
    return args.fail("head dimension must be even, got " + std::to_string(r.d));
  if (!isIndexType(pos.dtype) || pos.shape != std::vector<int64_t>{r.B, r.T})
    return args.fail("positions must be an integer [B, T] tensor matching x " +
                     shapeString(x.shape) + ", got " + describe(pos));
  return Status();
}

/// split_rows / concat_rows: `parts` are consecutive blocks of `whole`'s
/// leading rows (same dtype and trailing dimensions, first dimensions that
/// add up), so that each is one contiguous byte range of `whole`.
inline Status checkRowBlocks(const KernelArgs &args, const TensorView &whole,
                             const std::vector<TensorView> &parts) {
  if (whole.rank() < 1 || parts.empty())
    return args.fail("needs a tensor of rank >= 1 and at least one part, got " + describe(whole) +
                     " and " + str(int64_t(parts.size())) + " parts");
  int64_t rows = 0;
  for (const TensorView &p : parts) {
    if (p.dtype != whole.dtype || p.rank() != whole.rank() ||
        !std::equal(p.shape.begin() + 1, p.shape.end(), whole.shape.begin() + 1))
      return args.fail("part " + describe(p) + " is not a block of rows of " + describe(whole));
    rows += p.dim(0);
  }
  if (rows != whole.dim(0))
    return args.fail("parts have " + str(rows) + " rows in all, the whole " + describe(whole) +
                     " has " + str(whole.dim(0)));
  return Status();
}

/// split_rows: one input cut into the outputs, its consecutive row blocks.
inline Status checkSplitRows(const KernelArgs &args) {
  if (args.inputs.size() != 1)
    return args.fail("expects 1 input, got " + str(int64_t(args.inputs.size())));
  return checkRowBlocks(args, args.inputs[0], args.outputs);
}

/// concat_rows: the inputs, consecutive row blocks of the one output.
inline Status checkConcatRows(const KernelArgs &args) {
  if (args.outputs.size() != 1)
    return args.fail("expects 1 output, got " + str(int64_t(args.outputs.size())));
  return checkRowBlocks(args, args.outputs[0], args.inputs);
}

/// A float tensor `what` shaped like x.
inline Status checkLike(const KernelArgs &args, const TensorView &t, const char *what,
                        const TensorView &x) {
  if (!isFloat(t.dtype) || t.shape != x.shape)
    return args.fail(std::string(what) + " must be a float tensor of shape " +
                     shapeString(x.shape) + ", got " + describe(t));
  return Status();
}

/// rope: x [B, T, n, d], positions [B, T] → output shaped like x.
inline Status checkRope(const KernelArgs &args, RopeShape &r) {
  if (args.inputs.size() != 2 || args.outputs.size() != 1)
    return args.fail("expects 2 inputs (x, positions) and 1 output, got " +
                     std::to_string(args.inputs.size()) + " and " +
                     std::to_string(args.outputs.size()));
  G3RT_RETURN_IF_ERROR(checkRopeOperands(args, args.inputs[0], args.inputs[1], r));
  return checkLike(args, args.outputs[0], "output", args.inputs[0]);
}

/// A float tensor of one element (a scalar the device keeps).
inline Status checkFloatScalar(const KernelArgs &args, const TensorView &t, const char *what) {
  if (!isFloat(t.dtype) || t.numel() != 1)
    return args.fail(std::string(what) + " must be a float scalar, got " + describe(t));
  return Status();
}

/// global_norm: any float tensors in, one float scalar out.
inline Status checkGlobalNorm(const KernelArgs &args) {
  if (args.outputs.size() != 1)
    return args.fail("expects 1 output, got " + std::to_string(args.outputs.size()));
  G3RT_RETURN_IF_ERROR(checkFloatScalar(args, args.outputs[0], "output"));
  for (size_t t = 0; t < args.inputs.size(); ++t)
    if (!isFloat(args.inputs[t].dtype))
      return args.fail("input " + std::to_string(t) + " must be a float tensor, got " +
                       describe(args.inputs[t]));
  return Status();
}

/// A counter: one i64 element by contract; i32 is accepted so that a
/// hand-built call needs no widening pass.
inline Status checkCount(const KernelArgs &args, const TensorView &t, const char *what) {
  if (t.numel() != 1 || (t.dtype != DType::I64 && t.dtype != DType::I32))
    return args.fail(std::string(what) + " must be an integer scalar, got " + describe(t));
  return Status();
}

/// AdamW's attributes.
struct AdamHyper {
  double beta1 = 0, beta2 = 0, eps = 0, wd = 0;
};

/// adamw over n tensors: p0..pn-1, g.., m.., v.. (F32, per tensor one
/// shape), step, lr, grad_scale → p'.., m'.., v'... Returns n and the
/// attributes.
inline Status checkAdamW(const KernelArgs &args, size_t &n, AdamHyper &h) {
  n = args.inputs.size() >= 7 ? (args.inputs.size() - 3) / 4 : 0;
  if (n == 0 || args.inputs.size() != 4 * n + 3 || args.outputs.size() != 3 * n)
    return args.fail("expects 4n + 3 inputs (params, grads, exp_avgs, exp_avg_sqs, step, lr, "
                     "grad_scale) and 3n outputs for some n >= 1, got " +
                     std::to_string(args.inputs.size()) + " and " +
                     std::to_string(args.outputs.size()));
  const char *names[] = {"p", "g", "m", "v"};
  for (size_t t = 0; t < n; ++t) {
    const TensorView &p = args.inputs[t];
    auto suffix = [&] { return n == 1 ? std::string() : " of tensor " + std::to_string(t); };
    for (size_t role = 0; role < 4; ++role) {
      const TensorView &x = args.inputs[role * n + t];
      if (x.dtype != DType::F32 || x.shape != p.shape)
        return args.fail(std::string(names[role]) + suffix() + " must be an F32 tensor of shape " +
                         shapeString(p.shape) + ", got " + describe(x));
    }
    for (size_t role = 0; role < 3; ++role) {
      const TensorView &y = args.outputs[role * n + t];
      if (y.dtype != DType::F32 || y.shape != p.shape)
        return args.fail("output " + std::to_string(role * n + t) +
                         " must be an F32 tensor of shape " + shapeString(p.shape) + ", got " +
                         describe(y));
    }
  }
  G3RT_RETURN_IF_ERROR(checkCount(args, args.inputs[4 * n], "step"));
  G3RT_RETURN_IF_ERROR(checkFloatScalar(args, args.inputs[4 * n + 1], "lr"));
  G3RT_RETURN_IF_ERROR(checkFloatScalar(args, args.inputs[4 * n + 2], "grad_scale"));
  G3RT_RETURN_IF_ERROR(args.requireFloat("beta1", h.beta1));
  G3RT_RETURN_IF_ERROR(args.requireFloat("beta2", h.beta2));
  G3RT_RETURN_IF_ERROR(args.requireFloat("epsilon", h.eps));
  return args.requireFloat("weight_decay", h.wd);
}

/// The sizes and options of an attention launch (docs/kernels.md).
struct AttentionShape {
  int64_t B = 0, T = 0, nh = 0, nkv = 0, d = 0, group = 0;
  float scale = 1;
  int64_t window = 0; // 0: no sliding window
  bool capped = false;
  float cap = 0;
  /// The forward's `lse` output (index 1), or the backward's saved output
  /// and lse inputs (indices 5 and 6), are present.
  bool withLse = false;
};

/// The checks of attention (q, k, v, segment_ids → output (, lse)) or, with
/// `grad`, attention_grad (q, k, v, segment_ids, do (, o, lse) → dq, dk,
/// dv); fills `p`. An lse is fp32 [B, nh, T].
inline Status checkAttention(const KernelArgs &args, bool grad, AttentionShape &p) {
  size_t nIn = grad ? 5 : 4, nOut = grad ? 3 : 1;
  p.withLse = grad ? args.inputs.size() == nIn + 2 : args.outputs.size() == nOut + 1;
  if (p.withLse && grad)
    nIn += 2;
  else if (p.withLse)
    nOut += 1;
  if (args.inputs.size() != nIn || args.outputs.size() != nOut)
    return args.fail(std::string("expects ") + std::to_string(nIn) +
                     " inputs (q, k, v, segment_ids" + (grad ? ", do (, o, lse)" : "") + ") and " +
                     std::to_string(nOut) + " output(s)" + (grad ? "" : " (output (, lse))") +
                     ", got " + std::to_string(args.inputs.size()) + " and " +
                     std::to_string(args.outputs.size()));
  const TensorView &q = args.inputs[0], &k = args.inputs[1], &v = args.inputs[2],
                   &seg = args.inputs[3];
  if (q.rank() != 4 || !isFloat(q.dtype))
    return args.fail("q must be a float [B, T, nh, d] tensor, got " + describe(q));
  p.B = q.dim(0);
  p.T = q.dim(1);
  p.nh = q.dim(2);
  p.d = q.dim(3);
  if (k.rank() != 4 || !isFloat(k.dtype) || k.dim(0) != p.B || k.dim(1) != p.T || k.dim(3) != p.d)
    return args.fail("k must be a float [B, T, nkv, d] tensor matching q " + shapeString(q.shape) +
                     ", got " + describe(k));
  p.nkv = k.dim(2);
  if (p.nkv <= 0 || p.nh % p.nkv != 0)
    return args.fail("query heads (" + std::to_string(p.nh) +
                     ") must be a multiple of key/value heads (" + std::to_string(p.nkv) + ")");
  p.group = p.nh / p.nkv;
  if (!isFloat(v.dtype) || v.shape != k.shape)
    return args.fail("v must be a float tensor shaped like k " + shapeString(k.shape) + ", got " +
                     describe(v));
  if (!isIndexType(seg.dtype) || seg.shape != std::vector<int64_t>{p.B, p.T})
    return args.fail("segment_ids must be an integer [B, T] tensor, got " + describe(seg));
  if (grad) {
    const TensorView &dout = args.inputs[4];
    if (!isFloat(dout.dtype) || dout.shape != q.shape)
      return args.fail("do must be a float tensor shaped like q " + shapeString(q.shape) +
                       ", got " + describe(dout));
    const TensorView &dq = args.outputs[0], &dk = args.outputs[1], &dv = args.outputs[2];
    if (!isFloat(dq.dtype) || dq.shape != q.shape)
      return args.fail("dq must be a float tensor shaped like q " + shapeString(q.shape) +
                       ", got " + describe(dq));
    if (!isFloat(dk.dtype) || dk.shape != k.shape || !isFloat(dv.dtype) || dv.shape != k.shape)
      return args.fail("dk and dv must be float tensors shaped like k " + shapeString(k.shape) +
                       ", got " + describe(dk) + " and " + describe(dv));
  }
  const TensorView *o = grad ? (p.withLse ? &args.inputs[5] : nullptr) : &args.outputs[0];
  if (o && (!isFloat(o->dtype) || o->shape != q.shape))
    return args.fail(std::string(grad ? "saved output" : "output") +
                     " must be a float tensor shaped like q " + shapeString(q.shape) + ", got " +
                     describe(*o));
  if (p.withLse) {
    const TensorView &lse = grad ? args.inputs[6] : args.outputs[1];
    if (lse.dtype != DType::F32 || lse.shape != std::vector<int64_t>{p.B, p.nh, p.T})
      return args.fail("lse must be an f32 [B, nh, T] tensor " + shapeString({p.B, p.nh, p.T}) +
                       ", got " + describe(lse));
  }

  double scale = 0;
  G3RT_RETURN_IF_ERROR(args.requireFloat("scale", scale));
  p.scale = float(scale);
  if (auto w = args.attrs ? args.attrs->getInt("sliding_window") : std::nullopt) {
    if (*w < 1)
      return args.fail("sliding_window must be at least 1, got " + std::to_string(*w));
    p.window = *w;
  }
  if (auto c = args.attrs ? args.attrs->getFloat("softcap") : std::nullopt) {
    if (!(*c > 0))
      return args.fail("softcap must be positive, got " + std::to_string(*c));
    p.capped = true;
    p.cap = float(*c);
  }
  return Status();
}

/// The checks of x [..., in]·W[out, in]ᵀ → y [..., out]; sets M, in, out.
inline Status checkLinear(const KernelArgs &args, const TensorView &x, const TensorView &w,
                          const char *wName, const TensorView &y, const char *yName, int64_t &M,
                          int64_t &in, int64_t &out) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, w, wName, 2));
  G3RT_RETURN_IF_ERROR(checkFloat(args, y, yName));
  if (w.rank() != 2)
    return args.fail(std::string(wName) + " must be a matrix, got " + describe(w));
  out = w.dim(0);
  in = w.dim(1);
  M = leadingRows(x);
  if (x.dim(-1) != in)
    return args.fail("input " + shapeString(x.shape) + " does not contract with " + wName + " " +
                     shapeString(w.shape));
  return checkRowsCols(args, y, yName, M, out);
}

/// A collective (all_reduce, broadcast) of `processes` processes: one or
/// more f32 tensors, each output shaped like its input; broadcast's `root`
/// (read when asked for) one of the processes.
inline Status checkCollective(const KernelArgs &args, int processes, int64_t *root) {
  if (args.inputs.empty() || args.inputs.size() != args.outputs.size())
    return args.fail("expected as many outputs as inputs (at least one), got " +
                     str(int64_t(args.inputs.size())) + " and " +
                     str(int64_t(args.outputs.size())));
  for (size_t i = 0; i < args.inputs.size(); ++i) {
    const TensorView &in = args.inputs[i], &out = args.outputs[i];
    if (in.dtype != DType::F32 || out.dtype != DType::F32 || in.shape != out.shape)
      return args.fail("tensor " + str(int64_t(i)) +
                       " must be f32 and shaped alike in and out, got " + describe(in) + " and " +
                       describe(out));
  }
  if (!root)
    return Status();
  G3RT_RETURN_IF_ERROR(args.requireInt("root", *root));
  if (*root < 0 || *root >= processes)
    return args.fail("root " + str(*root) + " is not a process of this job of " +
                     str(int64_t(processes)));
  return Status();
}

} // namespace g3rt::checks

#endif // G3MOE_RUNTIME_KERNELS_KERNEL_CHECKS_H
