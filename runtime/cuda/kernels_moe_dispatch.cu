//===- kernels_moe_dispatch.cu - MoE dispatch and combine CUDA kernels ----===//
//
// The CUDA versions of the permutations around the expert layers
// (docs/kernels.md, "Dispatch and combine"), with the checks and messages of
// runtime/cpu/kernels_moe_dispatch.cpp. Dispatch is a stable counting sort in
// three steps (per-chunk expert counts, a scan over chunks and experts, a
// warp per chunk ranking equal experts with __match_any_sync), so slots and
// offsets equal the CPU's exactly. Combine and both gradients gather through
// the slots (combine_grad through the inverse slot lists, sorted into (n, j)
// order), so every output element has one writer and all results are
// deterministic.
//
// Indices and slots are range-checked on the device (device_checks.h):
// kernels skip a bad entry and record the first one, and the call fails with
// the CPU's message once the record is read.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_kernels.h"
#include "runtime/cuda/device_checks.h"
#include "runtime/cuda/moe_warp.cuh"
#include "runtime/kernels/moe_checks.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace g3rt::cuda {

using namespace checks;

namespace {

constexpr int kRowThreads = 256; // row copies and gathers: threads over H

//===----------------------------------------------------------------------===//
// Dispatch
//===----------------------------------------------------------------------===//

// Items (n, j) are cut into chunks; a chunk's experts are counted, the counts
// scanned over chunks (per expert) and experts, and a warp then walks each
// chunk in order handing out consecutive rows per expert.
constexpr int kDispatchChunk = 2048;
constexpr int kCountThreads = 256;

__global__ void dispatchCount(const int32_t *idx, int64_t items, int E, int32_t *chunkCounts,
                              BadWord *bad) {
  extern __shared__ int32_t hist[];
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    hist[e] = 0;
  __syncthreads();
  const int64_t begin = int64_t(blockIdx.x) * kDispatchChunk;
  const int64_t end = items < begin + kDispatchChunk ? items : begin + kDispatchChunk;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int32_t e = idx[i];
    if (e < 0 || e >= E)
      reportBad(bad, i, e);
    else
      atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    chunkCounts[int64_t(blockIdx.x) * E + e] = hist[e];
}

// One block: per expert, the exclusive scan of its chunk counts (in place),
// then the exclusive scan over experts into offsets.
__global__ void dispatchScan(int32_t *chunkCounts, int64_t chunks, int E, int32_t *totals,
                             int32_t *offsets) {
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int32_t run = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const int32_t t = chunkCounts[c * E + e];
      chunkCounts[c * E + e] = run;
      run += t;
    }
    totals[e] = run;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t off = 0;
    for (int e = 0; e < E; ++e) {
      offsets[e] = off;
      off += totals[e];
    }
    offsets[E] = off;
  }
}

// One warp per chunk: equal experts among 32 consecutive items are ranked
// with __match_any_sync, the leader then advances that expert's cursor.
__global__ void dispatchSlots(const int32_t *idx, int64_t items, int E, const int32_t *chunkCounts,
                              const int32_t *offsets, int32_t *slots) {
  extern __shared__ int32_t cursor[];
  const int lane = threadIdx.x;
  for (int e = lane; e < E; e += 32)
    cursor[e] = offsets[e] + chunkCounts[int64_t(blockIdx.x) * E + e];
  __syncwarp();
  const int64_t begin = int64_t(blockIdx.x) * kDispatchChunk;
  const int64_t end = items < begin + kDispatchChunk ? items : begin + kDispatchChunk;
  const unsigned below = (1u << lane) - 1u;
  for (int64_t i0 = begin; i0 < end; i0 += 32) {
    const int64_t i = i0 + lane;
    int32_t e = i < end ? idx[i] : -1;
    if (e >= E) // reported by dispatchCount; given no slot
      e = -1;
    const unsigned peers = __match_any_sync(kFull, e);
    int32_t slot = 0;
    if (e >= 0)
      slot = cursor[e] + __popc(peers & below);
    __syncwarp();
    if (e >= 0) {
      slots[i] = slot;
      if (lane == __ffs(peers) - 1)
        cursor[e] += __popc(peers);
    }
    __syncwarp();
  }
}

// V consecutive elements from element i (a multiple of V), as floats: one
// access per four for V = 4 (loadFloat4), element by element for V = 1.
template <int V>
__device__ __forceinline__ void loadVec(const void *p, DType t, int64_t i, float (&v)[V]) {
  if constexpr (V == 4) {
    float4 f = loadFloat4(p, t, i / 4);
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  } else {
    for (int c = 0; c < V; ++c)
      v[c] = loadFloat(p, t, i + c);
  }
}
template <int V>
__device__ __forceinline__ void storeVec(void *p, DType t, int64_t i, const float (&v)[V]) {
  if constexpr (V == 4)
    storeFloat4(p, t, i / 4, make_float4(v[0], v[1], v[2], v[3]));
  else
    for (int c = 0; c < V; ++c)
      storeFloat(p, t, i + c, v[c]);
}

/// Elements per thread of the row kernels: four where rows allow it.
int vecWidth(int64_t H) { return H % 4 == 0 ? 4 : 1; }

// One block per token: its row, read once in pieces of V elements, copied
// to each of its k slots.
template <int V>
__global__ void dispatchRows(const void *x, DType xt, const int32_t *slots, void *permuted,
                             DType pt, int64_t H, int k, int64_t M) {
  const int64_t n = blockIdx.x;
  for (int64_t h = int64_t(threadIdx.x) * V; h < H; h += int64_t(blockDim.x) * V) {
    float v[V];
    loadVec<V>(x, xt, n * H + h, v);
    for (int j = 0; j < k; ++j) {
      const int32_t slot = slots[n * k + j];
      if (slot >= 0 && slot < M) // else an item of a bad expert index
        storeVec<V>(permuted, pt, int64_t(slot) * H + h, v);
    }
  }
}

} // namespace

Status moeDispatchKernel(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoEDispatch(args, perm));
  const int64_t E = perm.E, H = perm.H, N = perm.N, k = perm.k;
  const TensorView &x = args.inputs[0], &indices = args.inputs[1], &permuted = args.outputs[0],
                   &offsets = args.outputs[1], &slots = args.outputs[2];
  if (size_t(E) * sizeof(int32_t) > 48 * 1024)
    return args.fail("num_experts " + str(E) + " is too large for the CUDA kernel");

  CudaContext &ctx = contextOf(args);
  const int64_t items = N * k;
  if (items == 0) {
    cudaError_t e = cudaMemsetAsync(offsets.data, 0, offsets.bytes(), ctx.stream);
    if (e != cudaSuccess)
      return cudaFailure(args, e, "zeroing expert_offsets");
    return Status();
  }
  const int64_t chunks = (items + kDispatchChunk - 1) / kDispatchChunk;
  ScratchArrays scratch(ctx);
  int32_t *chunkCounts = scratch.take<int32_t>(chunks * E);
  int32_t *totals = scratch.take<int32_t>(E);
  const size_t histBytes = size_t(E) * sizeof(int32_t);
  G3RT_RETURN_IF_ERROR(checkedLaunch(args, scratch, k, E, "expert index", [&](BadWord *bad) {
    dispatchCount<<<unsigned(chunks), kCountThreads, histBytes, ctx.stream>>>(
        indices.i32(), items, int(E), chunkCounts, bad);
    G3RT_CUDA_CHECK_LAUNCH(args, "moe_dispatch (counting)");
    return Status();
  }));
  dispatchScan<<<1, 256, 0, ctx.stream>>>(chunkCounts, chunks, int(E), totals, offsets.i32());
  G3RT_CUDA_CHECK_LAUNCH(args, "moe_dispatch (offsets)");
  dispatchSlots<<<unsigned(chunks), 32, histBytes, ctx.stream>>>(
      indices.i32(), items, int(E), chunkCounts, offsets.i32(), slots.i32());
  G3RT_CUDA_CHECK_LAUNCH(args, "moe_dispatch (slots)");
  if (H > 0) {
    (vecWidth(H) == 4 ? dispatchRows<4>
                      : dispatchRows<1>)<<<unsigned(N), kRowThreads, 0, ctx.stream>>>(
        x.data, x.dtype, slots.i32(), permuted.data, permuted.dtype, H, int(k), items);
    G3RT_CUDA_CHECK_LAUNCH(args, "moe_dispatch (rows)");
  }
  return Status();
}

//===----------------------------------------------------------------------===//
// Dispatch gradient, combine and its gradient
//===----------------------------------------------------------------------===//

namespace {

// Every [N, k] slot in [0, M); the first bad one is recorded. One thread per
// slot, run before the gathers so that they may trust the slots.
__global__ void checkSlots(const int32_t *slots, int64_t items, int64_t M, BadWord *bad) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < items && (slots[i] < 0 || slots[i] >= M))
    reportBad(bad, i, slots[i]);
}

Status validateSlots(const KernelArgs &args, ScratchArrays &scratch, const TensorView &slots,
                     int64_t items, int64_t k, int64_t M) {
  if (items == 0)
    return Status();
  return checkedLaunch(args, scratch, std::max<int64_t>(k, 1), M, "slot", [&](BadWord *bad) {
    checkSlots<<<blocksFor(items, 256), 256, 0, contextOf(args).stream>>>(slots.i32(), items, M,
                                                                          bad);
    G3RT_CUDA_CHECK_LAUNCH(args, "checking slots");
    return Status();
  });
}

// dst[n] = sum_j (w ? w[n, j] : 1) * src[slots[n, j]], fp32, j in order;
// each thread takes V adjacent elements of the row. Slots outside [0, M)
// (reported by validateSlots) are skipped.
template <int V>
__global__ void gatherRows(const void *src, DType st, const int32_t *slots, const void *w, DType wt,
                           void *dst, DType dt, int64_t H, int k, int64_t M) {
  const int64_t n = blockIdx.y;
  const int64_t h = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (h >= H)
    return;
  float acc[V] = {};
  for (int j = 0; j < k; ++j) {
    const int32_t slot = slots[n * k + j];
    if (slot < 0 || slot >= M)
      continue;
    float v[V];
    loadVec<V>(src, st, int64_t(slot) * H + h, v);
    const float wj = w ? loadFloat(w, wt, n * k + j) : 1.0f;
    // Explicit roundings (no fused multiply-add): the CPU's exact sums.
    for (int c = 0; c < V; ++c)
      acc[c] = __fadd_rn(acc[c], w ? __fmul_rn(wj, v[c]) : v[c]);
  }
  storeVec<V>(dst, dt, n * H + h, acc);
}

// Rows go to grid.y, in pieces of at most 65535.
Status launchGather(const KernelArgs &args, const TensorView &src, const TensorView &slots,
                    const TensorView *w, const TensorView &dst, int64_t N, int64_t H, int64_t k,
                    int64_t M, const char *what) {
  if (N == 0 || H == 0)
    return Status();
  const int V = vecWidth(H);
  for (int64_t n0 = 0; n0 < N; n0 += 65535) {
    const int64_t rows = std::min<int64_t>(65535, N - n0);
    const void *wPart =
        w ? static_cast<const char *>(w->data) + n0 * k * int64_t(dtypeSize(w->dtype)) : nullptr;
    void *dPart = static_cast<char *>(dst.data) + n0 * H * int64_t(dtypeSize(dst.dtype));
    dim3 grid(blocksFor(H / V, kRowThreads), unsigned(rows));
    (V == 4 ? gatherRows<4> : gatherRows<1>)<<<grid, kRowThreads, 0, contextOf(args).stream>>>(
        src.data, src.dtype, slots.i32() + n0 * k, wPart, w ? w->dtype : DType::F32, dPart,
        dst.dtype, H, int(k), M);
    G3RT_CUDA_CHECK_LAUNCH(args, what);
  }
  return Status();
}

} // namespace

Status moeDispatchGradKernel(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoEDispatchGrad(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &dp = args.inputs[0], &slots = args.inputs[1], &dx = args.outputs[0];
  ScratchArrays scratch(contextOf(args));
  G3RT_RETURN_IF_ERROR(validateSlots(args, scratch, slots, N * k, k, M));
  return launchGather(args, dp, slots, nullptr, dx, N, H, k, M, "moe_dispatch_grad");
}

Status moeCombineKernel(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoECombine(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &y = args.inputs[0], &slots = args.inputs[1], &weights = args.inputs[2],
                   &out = args.outputs[0];
  ScratchArrays scratch(contextOf(args));
  G3RT_RETURN_IF_ERROR(validateSlots(args, scratch, slots, N * k, k, M));
  return launchGather(args, y, slots, &weights, out, N, H, k, M, "moe_combine");
}

namespace {

// The inverse of the slots as CSR lists: count users per row, scan, fill,
// then sort each list into (n, j) order (lists are short: one entry per row
// for slots from moe_dispatch). Slots outside [0, M) have no user.
__global__ void countUsers(const int32_t *slots, int64_t items, int64_t M, int32_t *counts) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < items && slots[i] >= 0 && slots[i] < M)
    atomicAdd(&counts[slots[i]], 1);
}

__global__ void fillUsers(const int32_t *slots, int64_t items, int64_t M, int32_t *cursor,
                          int32_t *users) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < items && slots[i] >= 0 && slots[i] < M)
    users[atomicAdd(&cursor[slots[i]], 1)] = int32_t(i);
}

__global__ void sortUsers(const int32_t *start, int64_t M, int32_t *users) {
  const int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (m >= M)
    return;
  const int32_t lo = start[m], hi = start[m + 1];
  for (int32_t a = lo + 1; a < hi; ++a) {
    const int32_t v = users[a];
    int32_t b = a - 1;
    while (b >= lo && users[b] > v) {
      users[b + 1] = users[b];
      --b;
    }
    users[b + 1] = v;
  }
}

// Exclusive scan of n ints into out[0..n], out[n] = total. Three launches:
// per-block scans, a scan of the block totals, the block offsets added.
constexpr int kScanThreads = 1024;

__device__ __forceinline__ int32_t warpInclusiveScan(int32_t v, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int32_t o = __shfl_up_sync(kFull, v, off);
    if (lane >= off)
      v += o;
  }
  return v;
}

__global__ void scanBlocks(const int32_t *in, int64_t n, int32_t *out, int32_t *blockTotals) {
  __shared__ int32_t warpTotals[kScanThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t i = int64_t(blockIdx.x) * kScanThreads + threadIdx.x;
  const int32_t v = i < n ? in[i] : 0;
  const int32_t inc = warpInclusiveScan(v, lane);
  if (lane == 31)
    warpTotals[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    const int32_t t = warpInclusiveScan(warpTotals[lane], lane);
    warpTotals[lane] = t;
  }
  __syncthreads();
  const int32_t before = warp > 0 ? warpTotals[warp - 1] : 0;
  if (i < n)
    out[i] = before + inc - v;
  if (threadIdx.x == kScanThreads - 1)
    blockTotals[blockIdx.x] = before + inc;
}

__global__ void scanTotals(int32_t *blockTotals, int64_t blocks, int32_t *out, int64_t n) {
  if (threadIdx.x != 0)
    return;
  int32_t run = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int32_t t = blockTotals[b];
    blockTotals[b] = run;
    run += t;
  }
  out[n] = run;
}

__global__ void addBlockOffsets(const int32_t *blockTotals, int64_t n, int32_t *out) {
  const int64_t i = int64_t(blockIdx.x) * kScanThreads + threadIdx.x;
  if (i < n)
    out[i] += blockTotals[blockIdx.x];
}

Status exclusiveScan(const KernelArgs &args, ScratchArrays &scratch, const int32_t *in, int64_t n,
                     int32_t *out) {
  const int64_t blocks = std::max<int64_t>(1, (n + kScanThreads - 1) / kScanThreads);
  int32_t *totals = scratch.take<int32_t>(blocks);
  G3RT_RETURN_IF_ERROR(scratch.check(args));
  cudaStream_t stream = contextOf(args).stream;
  scanBlocks<<<unsigned(blocks), kScanThreads, 0, stream>>>(in, n, out, totals);
  G3RT_CUDA_CHECK_LAUNCH(args, "scan (blocks)");
  scanTotals<<<1, 32, 0, stream>>>(totals, blocks, out, n);
  G3RT_CUDA_CHECK_LAUNCH(args, "scan (totals)");
  addBlockOffsets<<<unsigned(blocks), kScanThreads, 0, stream>>>(totals, n, out);
  G3RT_CUDA_CHECK_LAUNCH(args, "scan (offsets)");
  return Status();
}

// dy[m] = sum over the users i = (n, j) of row m, in (n, j) order, of
// w[i] * dout[n]; rows nobody uses get 0. V adjacent elements per thread.
// Rows of exactly one user (every row, for moe_dispatch's slots) are
// combineGradItems'.
template <int V>
__global__ void combineGradRows(const int32_t *start, const int32_t *users, const void *w, DType wt,
                                const void *dout, DType dt, void *dy, DType yt, int64_t H, int k,
                                int64_t m0) {
  const int64_t m = m0 + blockIdx.y;
  const int64_t h = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (h >= H || start[m + 1] - start[m] == 1)
    return;
  float acc[V] = {};
  for (int32_t u = start[m]; u < start[m + 1]; ++u) {
    const int64_t i = users[u];
    const float wi = loadFloat(w, wt, i);
    float v[V];
    loadVec<V>(dout, dt, (i / k) * H + h, v);
    for (int c = 0; c < V; ++c)
      acc[c] = __fadd_rn(acc[c], __fmul_rn(wi, v[c]));
  }
  storeVec<V>(dy, yt, m * H + h, acc);
}

// Per item i = (n, j) with a slot in [0, M), one warp: dweights[i] =
// <dout[n], y[slot]> in double and, when the item is its row's one user
// (`start`, the users' CSR offsets), dy[slot] = w[i] * dout[n] from the same
// reads of dout, as combineGradRows would sum it. V adjacent elements per
// lane.
template <int V>
__global__ void combineGradItems(const void *y, DType yt, const int32_t *slots,
                                 const int32_t *start, const void *w, DType wt, const void *dout,
                                 DType dt, void *dy, DType dyt, void *dw, DType dwt, int64_t items,
                                 int64_t H, int k, int64_t M) {
  const int lane = threadIdx.x % 32;
  const int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (i >= items || slots[i] < 0 || slots[i] >= M)
    return;
  const int64_t n = i / k, row = slots[i];
  const bool sole = start[row + 1] - start[row] == 1;
  const float wi = loadFloat(w, wt, i);
  double d = 0;
  for (int64_t h = V * lane; h < H; h += 32 * V) {
    float a[V], b[V], g[V];
    loadVec<V>(dout, dt, n * H + h, a);
    loadVec<V>(y, yt, row * H + h, b);
    for (int c = 0; c < V; ++c) {
      d += double(a[c]) * double(b[c]);
      g[c] = __fadd_rn(0.0f, __fmul_rn(wi, a[c]));
    }
    if (sole)
      storeVec<V>(dy, dyt, row * H + h, g);
  }
  d = butterflySum(d);
  if (lane == 0)
    storeFloat(dw, dwt, i, float(d));
}

} // namespace

Status moeCombineGradKernel(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoECombineGrad(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &y = args.inputs[0], &slots = args.inputs[1], &weights = args.inputs[2],
                   &dout = args.inputs[3];
  const TensorView &dy = args.outputs[0], &dweights = args.outputs[1];
  CudaContext &ctx = contextOf(args);
  ScratchArrays scratch(ctx);
  const int64_t items = N * k;
  G3RT_RETURN_IF_ERROR(validateSlots(args, scratch, slots, items, k, M));
  if (M == 0 || H == 0) { // dy is empty; each weight's gradient is a sum of nothing
    cudaError_t e = cudaMemsetAsync(dweights.data, 0, dweights.bytes(), ctx.stream);
    return e == cudaSuccess ? Status() : cudaFailure(args, e, "zeroing the weights' gradient");
  }
  int32_t *counts = scratch.take<int32_t>(M);
  int32_t *start = scratch.take<int32_t>(M + 1);
  int32_t *cursor = scratch.take<int32_t>(M);
  int32_t *users = scratch.take<int32_t>(items);
  G3RT_RETURN_IF_ERROR(scratch.check(args));
  cudaError_t e = cudaMemsetAsync(counts, 0, size_t(M) * sizeof(int32_t), ctx.stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "clearing the slot counts");
  if (items > 0) {
    countUsers<<<blocksFor(items, 256), 256, 0, ctx.stream>>>(slots.i32(), items, M, counts);
    G3RT_CUDA_CHECK_LAUNCH(args, "moe_combine_grad (counting)");
  }
  G3RT_RETURN_IF_ERROR(exclusiveScan(args, scratch, counts, M, start));
  e = cudaMemcpyAsync(cursor, start, size_t(M) * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                      ctx.stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "copying the slot offsets");
  if (items > 0) {
    fillUsers<<<blocksFor(items, 256), 256, 0, ctx.stream>>>(slots.i32(), items, M, cursor, users);
    G3RT_CUDA_CHECK_LAUNCH(args, "moe_combine_grad (inverting slots)");
  }
  sortUsers<<<blocksFor(M, 256), 256, 0, ctx.stream>>>(start, M, users);
  G3RT_CUDA_CHECK_LAUNCH(args, "moe_combine_grad (ordering)");
  const int V = vecWidth(H);
  if (items > 0) {
    (V == 4 ? combineGradItems<4>
            : combineGradItems<
                  1>)<<<blocksFor(items, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, ctx.stream>>>(
        y.data, y.dtype, slots.i32(), start, weights.data, weights.dtype, dout.data, dout.dtype,
        dy.data, dy.dtype, dweights.data, dweights.dtype, items, H, int(k), M);
    G3RT_CUDA_CHECK_LAUNCH(args, "moe_combine_grad (items)");
  }
  for (int64_t m0 = 0; m0 < M; m0 += 65535) {
    const int64_t rows = std::min<int64_t>(65535, M - m0);
    dim3 grid(blocksFor(H / V, kRowThreads), unsigned(rows));
    (V == 4 ? combineGradRows<4> : combineGradRows<1>)<<<grid, kRowThreads, 0, ctx.stream>>>(
        start, users, weights.data, weights.dtype, dout.data, dout.dtype, dy.data, dy.dtype, H,
        int(k), m0);
    G3RT_CUDA_CHECK_LAUNCH(args, "moe_combine_grad (input grad)");
  }
  return Status();
}

} // namespace g3rt::cuda
