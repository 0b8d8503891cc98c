//===- kernels_lm_head.cpp - LM head, cross-entropy and accuracy (CPU) ----===//
//
// The fp32 reference of the output end of a step (docs/kernels.md, "LM head
// and loss"): the tied LM head with Gemma's soft cap, the token
// cross-entropy, the two fused over chunks of rows so that the logits never
// exist in full, each with its gradient, and the token accuracy.
//
//===----------------------------------------------------------------------===//

#include "runtime/cpu/cpu_kernels.h"
#include "runtime/cpu/dense_ops.h"
#include "runtime/kernels/dense_checks.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace g3rt::cpu {

using namespace checks;

//===----------------------------------------------------------------------===//
// LM head
//===----------------------------------------------------------------------===//

Status lmHeadKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &y = args.outputs[0];
  int64_t M, H, V;
  G3RT_RETURN_IF_ERROR(checkLinear(args, x, table, "table", y, "result", M, H, V));
  std::optional<float> softcap;
  G3RT_RETURN_IF_ERROR(readSoftcap(args, softcap));
  std::vector<float> X = widen(x), T = widen(table);
  FloatOutput L(y);
  gemmNT(X.data(), H, T.data(), H, L.data(), V, M, V, H);
  if (softcap) {
    float c = *softcap;
    float *l = L.data();
    parallelFor(
        M * V,
        [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i)
            l[i] = c * std::tanh(l[i] / c);
        },
        kElementGrain);
  }
  L.commit();
  return Status();
}

Status lmHeadGradKernel(const KernelArgs &args) {
  std::optional<float> softcap;
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLmHeadGrad(args, softcap, shape));
  const int64_t M = shape.M, H = shape.in, V = shape.out;
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &dl = args.inputs[2];
  const TensorView &dx = args.outputs[0], &dtable = args.outputs[1];
  std::vector<float> X = widen(x), T = widen(table), G = widen(dl);
  if (softcap) {
    // The capped logits are not an operand, so the pre-cap logits are
    // recomputed for the derivative 1 - tanh²(l / c).
    std::vector<float> L(size_t(M * V));
    gemmNT(X.data(), H, T.data(), H, L.data(), V, M, V, H);
    float c = *softcap;
    parallelFor(
        M * V,
        [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) {
            float t = std::tanh(L[size_t(i)] / c);
            G[size_t(i)] *= 1.0f - t * t;
          }
        },
        kElementGrain);
  }
  std::vector<float> Tt = transpose(T.data(), V, H, H);
  FloatOutput DX(dx);
  gemmNT(G.data(), V, Tt.data(), V, DX.data(), H, M, H, V);
  DX.commit();
  Tt = {};
  std::vector<float> Gt = transpose(G.data(), M, V, V), Xt = transpose(X.data(), M, H, H);
  FloatOutput DT(dtable);
  gemmNT(Gt.data(), M, Xt.data(), M, DT.data(), H, V, H, M);
  DT.commit();
  return Status();
}

//===----------------------------------------------------------------------===//
// Cross-entropy
//===----------------------------------------------------------------------===//

namespace {

/// The checks shared by cross_entropy and its gradient; sets the row count,
/// the vocabulary size, whether each row counts, and num_items.
Status prepareCrossEntropy(const KernelArgs &args, int64_t &rows, int64_t &V,
                           std::vector<int64_t> &targets, double &numItems, bool &anyCounted) {
  const TensorView &logits = args.inputs[0], &tv = args.inputs[1], &n = args.inputs[2];
  G3RT_RETURN_IF_ERROR(checkFloat(args, logits, "logits"));
  G3RT_RETURN_IF_ERROR(checkIndex(args, tv, "targets"));
  G3RT_RETURN_IF_ERROR(checkScalar(args, n, "num_items"));
  int64_t ignoreIndex;
  G3RT_RETURN_IF_ERROR(args.requireInt("ignore_index", ignoreIndex));
  V = logits.dim(-1);
  rows = leadingRows(logits);
  if (tv.numel() != rows)
    return args.fail("targets " + shapeString(tv.shape) + " do not match the rows of logits " +
                     shapeString(logits.shape));
  targets.resize(size_t(rows));
  anyCounted = false;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t t = loadIndex(tv, r);
    if (t == ignoreIndex) {
      t = -1;
    } else if (t < 0 || t >= V) {
      return args.fail("target " + std::to_string(t) + " at position " + std::to_string(r) +
                       " is outside [0, " + std::to_string(V) + ") and is not ignore_index (" +
                       std::to_string(ignoreIndex) + ")");
    } else {
      anyCounted = true;
    }
    targets[size_t(r)] = t;
  }
  numItems = n.load(0);
  // num_items counts the labels of the whole accumulation window, this
  // micro-batch's included, so it is positive whenever a row counts.
  if (anyCounted && !(numItems > 0))
    return args.fail("num_items is " + std::to_string(numItems) +
                     " but the targets hold counted labels");
  return Status();
}

/// logsumexp of one row, in double.
inline double logSumExp(const float *l, int64_t V) {
  float m = -INFINITY;
  for (int64_t v = 0; v < V; ++v)
    m = std::max(m, l[v]);
  double s = 0;
  for (int64_t v = 0; v < V; ++v)
    s += std::exp(double(l[v]) - double(m));
  return double(m) + std::log(s);
}

} // namespace

Status crossEntropyKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  int64_t rows, V;
  std::vector<int64_t> targets;
  double numItems;
  bool anyCounted;
  G3RT_RETURN_IF_ERROR(prepareCrossEntropy(args, rows, V, targets, numItems, anyCounted));
  const TensorView &loss = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkScalar(args, loss, "result"));
  std::vector<float> L = widen(args.inputs[0]);
  std::vector<double> rowLoss(size_t(rows), 0.0);
  parallelFor(
      rows,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          int64_t t = targets[size_t(r)];
          if (t < 0)
            continue;
          const float *l = L.data() + r * V;
          rowLoss[size_t(r)] = logSumExp(l, V) - double(l[t]);
        }
      },
      std::max<int64_t>(1, kElementGrain / std::max<int64_t>(V, 1)));
  // Summed in row order after the parallel part, so independent of threads.
  double sum = 0;
  for (double v : rowLoss)
    sum += v;
  loss.store(0, anyCounted ? float(sum / numItems) : 0.0f);
  return Status();
}

Status crossEntropyGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 4, 1));
  int64_t rows, V;
  std::vector<int64_t> targets;
  double numItems;
  bool anyCounted;
  G3RT_RETURN_IF_ERROR(prepareCrossEntropy(args, rows, V, targets, numItems, anyCounted));
  const TensorView &dloss = args.inputs[3], &dl = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkScalar(args, dloss, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dl, "result"));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dl, "result", rows, V));
  double coef = anyCounted ? double(dloss.load(0)) / numItems : 0.0;
  std::vector<float> L = widen(args.inputs[0]);
  FloatOutput D(dl);
  parallelFor(
      rows,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          float *d = D.data() + r * V;
          int64_t t = targets[size_t(r)];
          if (t < 0) {
            std::fill(d, d + V, 0.0f);
            continue;
          }
          const float *l = L.data() + r * V;
          double lse = logSumExp(l, V);
          for (int64_t v = 0; v < V; ++v) {
            double p = std::exp(double(l[v]) - lse);
            d[v] = float((p - (v == t ? 1.0 : 0.0)) * coef);
          }
        }
      },
      std::max<int64_t>(1, kElementGrain / std::max<int64_t>(V, 1)));
  D.commit();
  return Status();
}

//===----------------------------------------------------------------------===//
// Fused LM head + cross-entropy
//===----------------------------------------------------------------------===//

namespace {

/// Rows of the fused LM-head loss kernels handled at a time: the logits of a
/// chunk are [kHeadChunkRows, vocab] fp32.
constexpr int64_t kHeadChunkRows = 256;

/// Owned fp32 scratch shaped as a TensorView.
struct Scratch {
  std::vector<float> data;
  TensorView view;
  explicit Scratch(std::vector<int64_t> shape) {
    view.shape = std::move(shape);
    view.dtype = DType::F32;
    data.assign(size_t(view.numel()), 0.0f);
    view.data = data.data();
  }
};

/// Rows [begin, begin + count) of a tensor seen as [rows, last dim] (targets:
/// last dim 1).
TensorView rowSlice(const TensorView &t, int64_t begin, int64_t count, bool flat) {
  TensorView v = t;
  int64_t width = flat ? 1 : t.dim(-1);
  v.shape = flat ? std::vector<int64_t>{count} : std::vector<int64_t>{count, width};
  v.data = static_cast<uint8_t *>(t.data) + size_t(begin * width) * dtypeSize(t.dtype);
  return v;
}

} // namespace

/// lm_head + cross_entropy over chunks of rows: the full logits never exist.
/// With a second output, each row's logsumexp (0 on ignored rows) for
/// lm_head_cross_entropy_grad.
Status lmHeadCrossEntropyKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkHeadLossCounts(args, /*backward=*/false));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &targets = args.inputs[2];
  int64_t rows = leadingRows(x), V = table.dim(0);
  if (targets.numel() != rows)
    return args.fail("targets must have one entry per row of the input (" + std::to_string(rows) +
                     ")");
  const bool wantLse = args.outputs.size() == 2;
  int64_t ignoreIndex = 0;
  if (wantLse) {
    G3RT_RETURN_IF_ERROR(checkHeadLse(args, args.outputs[1], rows));
    G3RT_RETURN_IF_ERROR(args.requireInt("ignore_index", ignoreIndex));
  }
  double total = 0;
  Scratch chunkLoss({});
  for (int64_t r0 = 0; r0 < rows; r0 += kHeadChunkRows) {
    int64_t n = std::min(kHeadChunkRows, rows - r0);
    Scratch logits({n, V});
    G3RT_RETURN_IF_ERROR(runAsPart(args, lmHeadKernel, "lm_head",
                                   {rowSlice(x, r0, n, false), table}, {logits.view}, args.attrs));
    G3RT_RETURN_IF_ERROR(runAsPart(args, crossEntropyKernel, "cross_entropy",
                                   {logits.view, rowSlice(targets, r0, n, true), args.inputs[3]},
                                   {chunkLoss.view}, args.attrs));
    total += chunkLoss.data[0];
    for (int64_t r = 0; wantLse && r < n; ++r) {
      int64_t t = loadIndex(targets, r0 + r);
      // (cross_entropy has refused targets out of range.)
      double lse = t == ignoreIndex ? 0.0 : logSumExp(logits.data.data() + r * V, V);
      args.outputs[1].store(r0 + r, float(lse));
    }
  }
  args.outputs[0].store(0, float(total));
  return Status();
}

/// The gradient of lmHeadCrossEntropyKernel, chunk by chunk; the table
/// gradient only when its output is present. The reference recomputes the
/// rows' logsumexp; a sixth input (the forward's lse, which the CUDA kernels
/// use instead) holds the same values and is only checked.
Status lmHeadCrossEntropyGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkHeadLossCounts(args, /*backward=*/true));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &targets = args.inputs[2];
  int64_t rows = leadingRows(x), V = table.dim(0), H = table.dim(1);
  if (targets.numel() != rows)
    return args.fail("targets must have one entry per row of the input (" + std::to_string(rows) +
                     ")");
  if (args.inputs.size() == 6)
    G3RT_RETURN_IF_ERROR(checkHeadLse(args, args.inputs[5], rows));
  bool wantTable = args.outputs.size() == 2;
  Scratch tableGrad({V, H}), chunkTableGrad({V, H});
  for (int64_t r0 = 0; r0 < rows; r0 += kHeadChunkRows) {
    int64_t n = std::min(kHeadChunkRows, rows - r0);
    Scratch logits({n, V}), dlogits({n, V});
    TensorView xs = rowSlice(x, r0, n, false);
    G3RT_RETURN_IF_ERROR(
        runAsPart(args, lmHeadKernel, "lm_head", {xs, table}, {logits.view}, args.attrs));
    G3RT_RETURN_IF_ERROR(
        runAsPart(args, crossEntropyGradKernel, "cross_entropy_grad",
                  {logits.view, rowSlice(targets, r0, n, true), args.inputs[3], args.inputs[4]},
                  {dlogits.view}, args.attrs));
    G3RT_RETURN_IF_ERROR(
        runAsPart(args, lmHeadGradKernel, "lm_head_grad", {xs, table, dlogits.view},
                  {rowSlice(args.outputs[0], r0, n, false), chunkTableGrad.view}, args.attrs));
    if (wantTable)
      for (size_t i = 0; i < tableGrad.data.size(); ++i)
        tableGrad.data[i] += chunkTableGrad.data[i];
  }
  if (wantTable)
    fromFloat(args.outputs[1], tableGrad.data);
  return Status();
}

/// The loss of lmHeadCrossEntropyKernel and the input gradient of
/// lmHeadCrossEntropyGradKernel from one op: the reference runs the two (the
/// CUDA kernel forms both from one sweep over the logits).
Status lmHeadCrossEntropyAndGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkHeadLossAndGrad(args));
  const std::vector<TensorView> &in = args.inputs;
  G3RT_RETURN_IF_ERROR(runAsPart(args, lmHeadCrossEntropyKernel, "lm_head_cross_entropy",
                                 {in[0], in[1], in[2], in[3]}, {args.outputs[0]}, args.attrs));
  return runAsPart(args, lmHeadCrossEntropyGradKernel, "lm_head_cross_entropy_grad", in,
                   {args.outputs[1]}, args.attrs);
}

/// An evaluation's loss and accuracy counts, chunk by chunk: each chunk's
/// logits feed cross_entropy and token_accuracy, as the unfused ops' would.
Status lmHeadEvalKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 4, 3));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &targets = args.inputs[2];
  int64_t rows = leadingRows(x), V = table.dim(0);
  if (targets.numel() != rows)
    return args.fail("targets must have one entry per row of the input (" + std::to_string(rows) +
                     ")");
  double loss = 0, correct = 0, total = 0;
  Scratch chunkLoss({}), chunkCorrect({}), chunkTotal({});
  for (int64_t r0 = 0; r0 < rows; r0 += kHeadChunkRows) {
    int64_t n = std::min(kHeadChunkRows, rows - r0);
    Scratch logits({n, V});
    TensorView chunkTargets = rowSlice(targets, r0, n, true);
    G3RT_RETURN_IF_ERROR(runAsPart(args, lmHeadKernel, "lm_head",
                                   {rowSlice(x, r0, n, false), table}, {logits.view}, args.attrs));
    G3RT_RETURN_IF_ERROR(runAsPart(args, crossEntropyKernel, "cross_entropy",
                                   {logits.view, chunkTargets, args.inputs[3]}, {chunkLoss.view},
                                   args.attrs));
    G3RT_RETURN_IF_ERROR(runAsPart(args, tokenAccuracyKernel, "token_accuracy",
                                   {logits.view, chunkTargets},
                                   {chunkCorrect.view, chunkTotal.view}, args.attrs));
    loss += chunkLoss.data[0];
    correct += chunkCorrect.data[0];
    total += chunkTotal.data[0];
  }
  args.outputs[0].store(0, float(loss));
  args.outputs[1].store(0, float(correct));
  args.outputs[2].store(0, float(total));
  return Status();
}

/// TRL's mean token accuracy, as two counts the caller sums over batches.
Status tokenAccuracyKernel(const KernelArgs &args) {
  int64_t ignoreIndex, rows, V;
  G3RT_RETURN_IF_ERROR(checkTokenAccuracy(args, ignoreIndex, rows, V));
  const TensorView &logits = args.inputs[0], &tv = args.inputs[1];
  std::vector<float> L = widen(logits);
  int64_t correct = 0, total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t t = loadIndex(tv, r);
    if (t == ignoreIndex)
      continue;
    const float *l = L.data() + r * V;
    int64_t best = 0;
    for (int64_t v = 1; v < V; ++v)
      if (l[v] > l[best])
        best = v;
    correct += best == t;
    ++total;
  }
  args.outputs[0].store(0, float(correct));
  args.outputs[1].store(0, float(total));
  return Status();
}

} // namespace g3rt::cpu
