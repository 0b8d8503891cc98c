//===- kernels_dense.cpp - embedding and linear CPU kernels ---------------===//
//
// The fp32 reference of the dense layers (docs/kernels.md, "Dense layers"):
// the embedding, the linear layers and the expert (grouped) linear layers,
// each with its gradients. The products are dense_ops.h's C = A·Bᵀ.
//
//===----------------------------------------------------------------------===//

#include "runtime/cpu/cpu_kernels.h"
#include "runtime/cpu/dense_ops.h"
#include "runtime/kernels/dense_checks.h"

#include <algorithm>
#include <string>
#include <vector>

namespace g3rt::cpu {

using namespace checks;

//===----------------------------------------------------------------------===//
// Embedding
//===----------------------------------------------------------------------===//

namespace {

/// Every id lies in [0, V).
Status checkIds(const KernelArgs &args, const TensorView &ids, int64_t vocab) {
  for (int64_t i = 0, n = ids.numel(); i < n; ++i) {
    int64_t id = loadIndex(ids, i);
    if (id < 0 || id >= vocab)
      return args.fail("id " + std::to_string(id) + " at position " + std::to_string(i) +
                       " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  return Status();
}

} // namespace

Status embeddingKernel(const KernelArgs &args) {
  double scale;
  EmbeddingShape shape;
  G3RT_RETURN_IF_ERROR(checkEmbedding(args, scale, shape));
  const int64_t V = shape.V, H = shape.H, N = shape.N;
  const TensorView &ids = args.inputs[0], &table = args.inputs[1], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIds(args, ids, V));
  float s = float(scale);
  // Only the looked-up rows are widened: the table may be far larger than
  // the batch.
  parallelFor(
      N,
      [&](int64_t t0, int64_t t1) {
        std::vector<float> row(static_cast<size_t>(H));
        for (int64_t t = t0; t < t1; ++t) {
          loadElements(table, loadIndex(ids, t) * H, H, row.data());
          for (float &v : row)
            v *= s;
          storeElements(y, t * H, H, row.data());
        }
      },
      std::max<int64_t>(1, kElementGrain / std::max<int64_t>(H, 1)));
  return Status();
}

Status embeddingGradKernel(const KernelArgs &args) {
  double scale;
  int64_t paddingIdx;
  EmbeddingShape shape;
  G3RT_RETURN_IF_ERROR(checkEmbeddingGrad(args, scale, paddingIdx, shape));
  const int64_t V = shape.V, H = shape.H, N = shape.N;
  const TensorView &dy = args.inputs[0], &ids = args.inputs[1], &dtable = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIds(args, ids, V));

  // A counting sort groups the tokens by id, keeping token order within an
  // id, so that each table row is summed by one thread in a fixed order.
  std::vector<int64_t> start(static_cast<size_t>(V + 1), 0);
  std::vector<int64_t> order(static_cast<size_t>(N));
  for (int64_t t = 0; t < N; ++t)
    ++start[size_t(loadIndex(ids, t) + 1)];
  for (int64_t v = 0; v < V; ++v)
    start[size_t(v + 1)] += start[size_t(v)];
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t t = 0; t < N; ++t)
      order[size_t(next[size_t(loadIndex(ids, t))]++)] = t;
  }
  std::vector<float> g = widen(dy);
  FloatOutput out(dtable);
  float s = float(scale);
  parallelFor(
      V,
      [&](int64_t v0, int64_t v1) {
        for (int64_t v = v0; v < v1; ++v) {
          float *row = out.data() + v * H;
          std::fill(row, row + H, 0.0f);
          if (v == paddingIdx)
            continue;
          for (int64_t k = start[size_t(v)]; k < start[size_t(v + 1)]; ++k) {
            const float *src = g.data() + order[size_t(k)] * H;
            for (int64_t h = 0; h < H; ++h)
              row[h] += src[h] * s;
          }
        }
      },
      std::max<int64_t>(1, kElementGrain / std::max<int64_t>(H, 1)));
  out.commit();
  return Status();
}

//===----------------------------------------------------------------------===//
// Linear layers
//===----------------------------------------------------------------------===//

namespace {

/// `t` (or a copy of it, `into`) dropped by a product's keep-mask.
void applyMask(const ProductDropout &drop, const TensorView &t, const TensorView &into) {
  const KeepMask keep(drop);
  for (int64_t i = 0, n = t.numel(); i < n; ++i)
    into.store(i, keep(i, t.load(i), into.dtype));
}

/// A product with a fused dropout, split from its mask (`split`, with one),
/// run as the mask applied and the plain product: to a copy of input
/// `masked` before the product, or to its result after it (`masked` < 0).
Status runDropped(const KernelArgs &args, SplitProduct &split, KernelFn product, int masked) {
  const ProductDropout &drop = split.drop;
  KernelArgs &plain = split.plain;
  if (masked < 0) {
    G3RT_RETURN_IF_ERROR(product(plain));
    const TensorView &y = plain.outputs[0];
    G3RT_RETURN_IF_ERROR(checkMaskCovers(args, drop, y.numel()));
    applyMask(drop, y, y);
    return Status();
  }
  const TensorView &x = plain.inputs[size_t(masked)];
  G3RT_RETURN_IF_ERROR(checkMaskCovers(args, drop, x.numel()));
  std::vector<uint8_t> bytes(x.bytes());
  TensorView dropped = x;
  dropped.data = bytes.data();
  applyMask(drop, x, dropped);
  plain.inputs[size_t(masked)] = dropped;
  return product(plain);
}

/// runDropped for a call with a dropout; `had` says whether it had one (and
/// was run here).
Status runWithDropout(const KernelArgs &args, KernelFn product, int masked, bool &had) {
  SplitProduct split;
  G3RT_RETURN_IF_ERROR(splitProductDropout(args, split));
  if (!(had = split.drop.mask != nullptr))
    return Status();
  return runDropped(args, split, product, masked);
}

} // namespace

Status linearKernel(const KernelArgs &args) {
  bool had;
  G3RT_RETURN_IF_ERROR(runWithDropout(args, linearKernel, /*masked=*/0, had));
  if (had)
    return Status();
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearProduct(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out;
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &y = args.outputs[0];
  std::vector<float> X = widen(x), W = widen(w), A = readAddend(shape.addend);
  FloatOutput Y(y);
  gemmNT(X.data(), in, W.data(), in, Y.data(), out, M, out, in);
  addAddend(A, Y);
  Y.commit();
  return Status();
}

Status linearGradInputKernel(const KernelArgs &call) {
  SplitProduct split;
  G3RT_RETURN_IF_ERROR(splitProductDropout(call, split));
  const KernelArgs &args = split.args(call);
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearGradInput(args, shape));
  G3RT_RETURN_IF_ERROR(checkResultDropout(args, split.drop, shape));
  if (split.drop.mask)
    return runDropped(call, split, linearGradInputKernel, /*masked=*/-1);
  const int64_t out = shape.out, in = shape.in, M = shape.M;
  const TensorView &dy = args.inputs[0], &w = args.inputs[1], &dx = args.outputs[0];
  std::vector<float> G = widen(dy), W = widen(w), A = readAddend(shape.addend);
  std::vector<float> Wt = transpose(W.data(), out, in, in);
  FloatOutput DX(dx);
  gemmNT(G.data(), out, Wt.data(), out, DX.data(), in, M, in, out);
  addAddend(A, DX);
  DX.commit();
  return Status();
}

Status linearGradWeightKernel(const KernelArgs &args) {
  bool had;
  G3RT_RETURN_IF_ERROR(runWithDropout(args, linearGradWeightKernel, /*masked=*/1, had));
  if (had)
    return Status();
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearGradWeight(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out;
  const TensorView &dy = args.inputs[0], &x = args.inputs[1], &dw = args.outputs[0];
  // dW = dyᵀ·x contracts over tokens: transposing both makes every output a
  // contiguous dot product over the token dimension.
  std::vector<float> G = widen(dy), X = widen(x);
  std::vector<float> Gt = transpose(G.data(), M, out, out), Xt = transpose(X.data(), M, in, in);
  FloatOutput DW(dw);
  gemmNT(Gt.data(), M, Xt.data(), M, DW.data(), in, out, in, M);
  DW.commit();
  return Status();
}

//===----------------------------------------------------------------------===//
// Expert (grouped) linear layers
//===----------------------------------------------------------------------===//

Status expertLinearKernel(const KernelArgs &args) {
  bool had;
  G3RT_RETURN_IF_ERROR(runWithDropout(args, expertLinearKernel, /*masked=*/0, had));
  if (had)
    return Status();
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinear(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out, E = shape.E;
  const TensorView &x = args.inputs[0], &off = args.inputs[1], &w = args.inputs[2];
  const TensorView &y = args.outputs[0];
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readExpertOffsets(args, off, E, M, offsets));
  std::vector<float> X = widen(x), W = widen(w), A = readAddend(shape.addend);
  FloatOutput Y(y);
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    gemmNT(X.data() + r0 * in, in, W.data() + e * out * in, in, Y.data() + r0 * out, out, rows, out,
           in);
  }
  std::fill(Y.data() + offsets[size_t(E)] * out, Y.data() + M * out, 0.0f);
  addLowRank(shape, offsets, /*rankLast=*/true, Y, out);
  addAddend(A, Y);
  Y.commit();
  return Status();
}

Status expertLinearGradInputKernel(const KernelArgs &call) {
  SplitProduct split;
  G3RT_RETURN_IF_ERROR(splitProductDropout(call, split));
  const KernelArgs &args = split.args(call);
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinearGradInput(args, shape));
  const ProductDropout &drop = split.drop;
  G3RT_RETURN_IF_ERROR(checkResultDropout(args, drop, shape));
  // Without a low-rank term the mask drops the whole (rank-r) product.
  if (drop.mask && !shape.lowInput)
    return runDropped(call, split, expertLinearGradInputKernel, /*masked=*/-1);
  const int64_t M = shape.M, in = shape.in, out = shape.out, E = shape.E;
  const TensorView &dy = args.inputs[0], &off = args.inputs[1], &w = args.inputs[2];
  const TensorView &dx = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkMaskCovers(args, drop, dx.numel()));
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readExpertOffsets(args, off, E, M, offsets));
  std::vector<float> G = widen(dy), W = widen(w), A = readAddend(shape.addend);
  FloatOutput DX(dx);
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    if (rows == 0)
      continue;
    std::vector<float> Wt = transpose(W.data() + e * out * in, out, in, in);
    gemmNT(G.data() + r0 * out, out, Wt.data(), out, DX.data() + r0 * in, in, rows, in, out);
  }
  std::fill(DX.data() + offsets[size_t(E)] * in, DX.data() + M * in, 0.0f);
  addLowRank(shape, offsets, /*rankLast=*/false, DX, in, drop, dx.dtype);
  addAddend(A, DX);
  DX.commit();
  return Status();
}

Status expertLinearGradWeightKernel(const KernelArgs &args) {
  bool had;
  G3RT_RETURN_IF_ERROR(runWithDropout(args, expertLinearGradWeightKernel, /*masked=*/2, had));
  if (had)
    return Status();
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinearGradWeight(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out, E = shape.E;
  const TensorView &dy = args.inputs[0], &off = args.inputs[1], &x = args.inputs[2];
  const TensorView &dw = args.outputs[0];
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readExpertOffsets(args, off, E, M, offsets));
  // Transposed once for all experts: expert e's rows are then the columns
  // offsets[e]..offsets[e+1] of every row, a contiguous run of each.
  std::vector<float> G = widen(dy), X = widen(x);
  std::vector<float> Gt = transpose(G.data(), M, out, out), Xt = transpose(X.data(), M, in, in);
  FloatOutput DW(dw);
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    gemmNT(Gt.data() + r0, M, Xt.data() + r0, M, DW.data() + e * out * in, in, out, in, rows);
  }
  DW.commit();
  return Status();
}

} // namespace g3rt::cpu
