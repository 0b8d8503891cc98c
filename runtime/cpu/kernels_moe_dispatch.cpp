//===- kernels_moe_dispatch.cpp - MoE dispatch and combine CPU kernels ----===//
//
// The fp32 reference of the permutations around the expert layers
// (docs/kernels.md, "Dispatch and combine"): moe_dispatch groups the tokens'
// rows by expert, moe_combine adds the experts' rows back weighted, each with
// its gradient.
//
// Routers and losses compute in double, dispatch / combine accumulate in
// fp32 (as the op descriptions say); either way values are rounded once on
// store. Work is split over tokens (over permuted rows for the scattering
// gradient), each parallel chunk writes only its own rows, and reductions over
// tokens sum per-row terms in row order, so results do not depend on the
// thread count.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/parallel.h"
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/cpu/moe_rows.h"

#include <algorithm>
#include <string>
#include <vector>

namespace g3rt::cpu {

using namespace checks;

//===----------------------------------------------------------------------===//
// Dispatch and combine
//===----------------------------------------------------------------------===//

namespace {

/// Copies row `from` of `src` to row `to` of `dst`, converting if needed.
void copyRow(const TensorView &src, int64_t from, const TensorView &dst, int64_t to, int64_t H,
             std::vector<float> &scratch) {
  if (src.dtype == dst.dtype) {
    const size_t bytes = size_t(H) * dtypeSize(src.dtype);
    std::memcpy(static_cast<char *>(dst.data) + size_t(to) * bytes,
                static_cast<const char *>(src.data) + size_t(from) * bytes, bytes);
    return;
  }
  loadRow(src, from, H, scratch.data());
  storeRow(dst, to, H, scratch.data());
}

/// out[n] = Σ_j w[n, j] · rows[slots[n, j]] over each token's k slots, in
/// slot order (w = 1 without `weights`, which adds each row as it is): the
/// combine and the dispatch's gradient.
void gatherRows(const TensorView &rows, const TensorView &slots, const TensorView *weights,
                int64_t N, int64_t k, int64_t H, const TensorView &out) {
  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<float> row(H), acc(H);
        for (int64_t n = begin; n < end; ++n) {
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t j = 0; j < k; ++j) {
            const float w = weights ? weights->load(n * k + j) : 1.0f;
            loadRow(rows, slots.i32()[n * k + j], H, row.data());
            for (int64_t h = 0; h < H; ++h)
              acc[h] += w * row[h];
          }
          storeRow(out, n, H, acc.data());
        }
      },
      kTokenGrain);
}

} // namespace

Status moeDispatchKernel(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoEDispatch(args, perm));
  const int64_t E = perm.E, H = perm.H, N = perm.N, k = perm.k;
  const TensorView &x = args.inputs[0], &indices = args.inputs[1], &permuted = args.outputs[0],
                   &offsets = args.outputs[1], &slots = args.outputs[2];
  G3RT_RETURN_IF_ERROR(checkIndexRange(args, indices, N, k, E, "expert index"));

  // A counting sort in (n, j) order: stable, so each expert's rows follow
  // token order and the layout is a pure function of the indices.
  const int32_t *idx = indices.i32();
  std::vector<int64_t> cursor(E + 1, 0);
  for (int64_t i = 0; i < N * k; ++i)
    ++cursor[idx[i] + 1];
  for (int64_t e = 0; e < E; ++e)
    cursor[e + 1] += cursor[e];
  for (int64_t e = 0; e <= E; ++e)
    offsets.i32()[e] = int32_t(cursor[e]);
  for (int64_t i = 0; i < N * k; ++i)
    slots.i32()[i] = int32_t(cursor[idx[i]]++);

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<float> scratch(H);
        for (int64_t n = begin; n < end; ++n)
          for (int64_t j = 0; j < k; ++j)
            copyRow(x, n, permuted, slots.i32()[n * k + j], H, scratch);
      },
      kTokenGrain);
  return Status();
}

Status moeDispatchGradKernel(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoEDispatchGrad(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &dp = args.inputs[0], &slots = args.inputs[1], &dx = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIndexRange(args, slots, N, k, M, "slot"));

  gatherRows(dp, slots, nullptr, N, k, H, dx);
  return Status();
}

Status moeCombineKernel(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoECombine(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &y = args.inputs[0], &slots = args.inputs[1], &weights = args.inputs[2],
                   &out = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIndexRange(args, slots, N, k, M, "slot"));

  gatherRows(y, slots, &weights, N, k, H, out);
  return Status();
}

Status moeCombineGradKernel(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoECombineGrad(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &y = args.inputs[0], &slots = args.inputs[1], &weights = args.inputs[2],
                   &dout = args.inputs[3];
  const TensorView &dy = args.outputs[0], &dweights = args.outputs[1];
  G3RT_RETURN_IF_ERROR(checkIndexRange(args, slots, N, k, M, "slot"));

  // The inverse of `slots` as a CSR list in (n, j) order, so that dy is
  // written one row at a time (rows no slot names get 0; a row named twice
  // sums in a fixed order).
  const int32_t *sl = slots.i32();
  std::vector<int64_t> start(M + 1, 0), users(N * k);
  for (int64_t i = 0; i < N * k; ++i)
    ++start[sl[i] + 1];
  for (int64_t m = 0; m < M; ++m)
    start[m + 1] += start[m];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < N * k; ++i)
      users[fill[sl[i]]++] = i;
  }

  parallelFor(
      M,
      [&](int64_t begin, int64_t end) {
        std::vector<float> row(H), acc(H);
        for (int64_t m = begin; m < end; ++m) {
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t u = start[m]; u < start[m + 1]; ++u) {
            const int64_t i = users[u];
            const float w = weights.load(i);
            loadRow(dout, i / k, H, row.data());
            for (int64_t h = 0; h < H; ++h)
              acc[h] += w * row[h];
          }
          storeRow(dy, m, H, acc.data());
        }
      },
      kTokenGrain);

  parallelFor(
      N,
      [&](int64_t begin, int64_t end) {
        std::vector<float> g(H), row(H);
        for (int64_t n = begin; n < end; ++n) {
          loadRow(dout, n, H, g.data());
          for (int64_t j = 0; j < k; ++j) {
            loadRow(y, sl[n * k + j], H, row.data());
            double d = 0;
            for (int64_t h = 0; h < H; ++h)
              d += double(g[h]) * row[h];
            dweights.store(n * k + j, float(d));
          }
        }
      },
      kTokenGrain);
  return Status();
}

} // namespace g3rt::cpu
