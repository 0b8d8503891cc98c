//===- kernels_moe.cu - routers, dispatch / combine, aux losses (CUDA) -----===//
//
// The CUDA versions of the routing half of a MoE layer (SparseMixer-v2,
// softmax top-k and grouped sigmoid routers with their gradients), the
// dispatch / combine permutations around the expert GEMMs, and the auxiliary
// loss terms. The math is docs/kernels.md ("Routers, experts, auxiliary
// losses"); argument checks, attribute names and messages follow the CPU
// reference (runtime/cpu/kernels_moe.cpp).
//
// Routers work one warp per token, lanes striding over the experts, in double
// like the CPU. Arg-max and top-k reduce (value, index) pairs with the CPU's
// order (larger value first, lower index on ties), which is associative, so
// the chosen experts are the CPU's whatever the reduction tree. Top-k needs no
// "taken" set: the j-th pick is the best element that comes after pick j-1 in
// that strict order.
//
// Dispatch is a stable counting sort in three steps (per-chunk expert counts,
// a scan over chunks and experts, a warp per chunk ranking equal experts with
// __match_any_sync), so slots and offsets equal the CPU's exactly. Combine and
// both gradients gather through the slots (combine_grad through the inverse
// slot lists, sorted into (n, j) order), so every output element has one
// writer and all results are deterministic; reductions over tokens go through
// per-row terms and a fixed tree.
//
// Indices and slots are range-checked on the device: kernels skip a bad entry
// (no out-of-bounds access) and record the first one; the host then reads the
// record back, which synchronises the stream, and fails the call with the
// CPU's message.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_context.h"
#include "runtime/kernels/moe_checks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace g3rt::cuda {
namespace {

using namespace checks;

//===----------------------------------------------------------------------===//
// Argument checking (as the CPU kernels)
//===----------------------------------------------------------------------===//

//===----------------------------------------------------------------------===//
// Launch plumbing: workspace, grids, device-side range checks
//===----------------------------------------------------------------------===//

constexpr int kWarpsPerBlock = 4; // routers and per-row losses: a warp per row
constexpr int kRowThreads = 256;  // row copies and gathers: threads over H
constexpr unsigned kFull = 0xffffffffu;

unsigned blocksFor(int64_t items, int64_t perBlock) {
  return unsigned((items + perBlock - 1) / perBlock);
}

/// Carves the context's workspace into typed arrays for one call.
class Scratch {
public:
  explicit Scratch(CudaContext &ctx)
      : base_(static_cast<char *>(ctx.workspace)), size_(ctx.workspaceBytes) {}
  template <typename T> T *take(int64_t count) {
    size_t bytes = (size_t(std::max<int64_t>(count, 1)) * sizeof(T) + 255) & ~size_t(255);
    if (used_ + bytes > size_) {
      overflow_ = true;
      return nullptr;
    }
    T *p = reinterpret_cast<T *>(base_ + used_);
    used_ += bytes;
    return p;
  }
  Status check(const KernelArgs &args) const {
    if (overflow_)
      return args.fail("the workspace (" + std::to_string(size_) + " bytes) is too small");
    return Status();
  }

private:
  char *base_;
  size_t size_, used_ = 0;
  bool overflow_ = false;
};

// A range-check record: the first bad (position, value) as one 64-bit word,
// position in the high half so that atomicMin keeps the earliest. All ones
// means "nothing found".
using BadWord = unsigned long long;
constexpr BadWord kNoBad = ~BadWord(0);

__device__ __forceinline__ void reportBad(BadWord *bad, int64_t pos, int32_t value) {
  atomicMin(bad, (BadWord(pos) << 32) | BadWord(uint32_t(value)));
}

Status clearBad(const KernelArgs &args, BadWord *bad, int64_t count) {
  cudaError_t e = cudaMemsetAsync(bad, 0xff, size_t(count) * sizeof(BadWord),
                                  contextOf(args).stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "clearing the range-check record");
  return Status();
}

/// Reads `count` records back (this waits for the stream).
Status readBad(const KernelArgs &args, const BadWord *bad, int64_t count,
               std::vector<BadWord> &out) {
  out.assign(size_t(count), kNoBad);
  CudaContext &ctx = contextOf(args);
  cudaError_t e = cudaMemcpyAsync(out.data(), bad, size_t(count) * sizeof(BadWord),
                                  cudaMemcpyDeviceToHost, ctx.stream);
  if (e == cudaSuccess)
    e = cudaStreamSynchronize(ctx.stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "reading the range-check record");
  return Status();
}

/// A record's position and value (reportBad's packing).
int64_t badPosition(BadWord word) { return int64_t(word >> 32); }
int32_t badValue(BadWord word) { return int32_t(uint32_t(word & 0xffffffffu)); }

/// The CPU's checkIndexRange message for a record of a [rows, k] tensor.
std::string badIndexMessage(BadWord word, int64_t k, int64_t limit, const char *what) {
  const int64_t pos = badPosition(word);
  const int32_t value = badValue(word);
  return std::string(what) + " " + std::to_string(value) + " at row " + str(pos / k) +
         ", position " + str(pos % k) + " is outside [0, " + str(limit) + ")";
}

/// The cleared records of one check: in the context's deferred store
/// (DeviceChecks) when the executor collects them and there is room, else in
/// kernel scratch.
struct CheckRecords {
  BadWord *at = nullptr;
  size_t first = 0, count = 0;
  bool deferred = false;
};

Status takeRecords(const KernelArgs &args, Scratch &scratch, int64_t count, CheckRecords &r) {
  DeviceChecks &checks = contextOf(args).checks;
  r.count = size_t(count);
  r.first = checks.used();
  r.deferred = checks.deferred && r.first + r.count <= checks.capacity;
  if (r.deferred) {
    r.at = checks.records + r.first;
  } else {
    r.at = scratch.take<BadWord>(count);
    G3RT_RETURN_IF_ERROR(scratch.check(args));
  }
  return clearBad(args, r.at, count);
}

/// Runs `verdict` (an error for bad records, else ok) on the records once the
/// kernels that fill them ran: after the entry point when they are
/// deferred, else now, waiting for the stream.
Status settle(const KernelArgs &args, const CheckRecords &r,
              std::function<Status(const BadWord *)> verdict) {
  if (r.deferred) {
    contextOf(args).checks.pending.push_back({r.first, r.count, std::move(verdict)});
    return Status();
  }
  std::vector<BadWord> host;
  G3RT_RETURN_IF_ERROR(readBad(args, r.at, int64_t(r.count), host));
  return verdict(host.data());
}

/// One record for a whole [rows, k] index tensor: take it, `launch`, settle.
/// The kernels `launch` runs, and those after it, must stay in bounds for
/// bad indices, which a deferred check reports only later.
template <typename Launch>
Status checkedLaunch(const KernelArgs &args, Scratch &scratch, int64_t k, int64_t limit,
                     const char *what, const Launch &launch) {
  CheckRecords r;
  G3RT_RETURN_IF_ERROR(takeRecords(args, scratch, 1, r));
  G3RT_RETURN_IF_ERROR(launch(r.at));
  return settle(args, r, [name = std::string(args.name), k, limit, what](const BadWord *w) {
    return w[0] == kNoBad ? Status()
                          : Status::error(name + ": " + badIndexMessage(w[0], k, limit, what));
  });
}

//===----------------------------------------------------------------------===//
// Warp helpers
//===----------------------------------------------------------------------===//

__device__ __forceinline__ double loadD(const void *p, DType t, int64_t i) {
  return double(loadFloat(p, t, i));
}

__device__ __forceinline__ double warpSum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    v += __shfl_xor_sync(kFull, v, off);
  return v;
}

__device__ __forceinline__ double warpMax(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    v = fmax(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

// Merges a candidate into (v, i) with the CPU's order: any index beats none,
// then the larger value, then the lower index.
__device__ __forceinline__ void mergeBest(double &v, int &i, double ov, int oi) {
  if (oi < 0)
    return;
  if (i < 0 || ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

// Every lane ends with the same winner (xor butterfly over a commutative,
// associative merge).
__device__ __forceinline__ void warpBest(double &v, int &i) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    double ov = __shfl_xor_sync(kFull, v, off);
    int oi = __shfl_xor_sync(kFull, i, off);
    mergeBest(v, i, ov, oi);
  }
}

// Whether (v, e) comes after (pv, pe) in the top-k order, i.e. is still
// available once (pv, pe) has been picked.
__device__ __forceinline__ bool after(double v, int e, double pv, int pe) {
  return v < pv || (v == pv && e > pe);
}

// A numerically stable softmax's pieces for one row: max and denominator.
struct RowSoftmax {
  double m, z;
};

__device__ __forceinline__ RowSoftmax rowSoftmax(const void *logits, DType t, int64_t row, int E,
                                                 int lane) {
  const int64_t base = row * E;
  double m = -INFINITY;
  for (int e = lane; e < E; e += 32)
    m = fmax(m, loadD(logits, t, base + e));
  m = warpMax(m);
  double z = 0;
  for (int e = lane; e < E; e += 32)
    z += exp(loadD(logits, t, base + e) - m);
  return RowSoftmax{m, warpSum(z)};
}

//===----------------------------------------------------------------------===//
// SparseMixer-v2
//===----------------------------------------------------------------------===//

constexpr double kCoinThreshold = 0.75;
constexpr double kCoinDown = 0.3333;
constexpr double kStage1Clamp = 1e-10;
constexpr double kStage2Clamp = 1e-8;

// One SparseMixer stage of a token's row (see the CPU's sparseMixerStage):
// S' = S with `excluded` at -inf; `best` is the argmax of S' (lowest on
// ties, -1 when all are -inf), m its value, z the survivors' denominator.
struct Stage {
  const void *logits;
  DType t;
  int64_t base;
  int E, excluded, best;
  double eps2, clamp, m, z;

  __device__ double orig(int e) const { return loadD(logits, t, base + e); }
  __device__ double sp(int e) const { return e == excluded ? -INFINITY : orig(e); }
  __device__ bool survives(int e) const {
    if (best < 0)
      return false;
    const double s = sp(e);
    if (s == -INFINITY)
      return false;
    const double o = orig(e);
    // std::max({|o|, |m|, clamp}) keeps the first of equal maxima; NaN gaps
    // compare false and keep the expert, as on the CPU.
    double den = fabs(o);
    if (den < fabs(m))
      den = fabs(m);
    if (den < clamp)
      den = clamp;
    return !((m - o) / den > eps2);
  }
  __device__ double P(int e) const {
    if (e < 0 || e >= E || !survives(e))
      return 0.0;
    return exp(sp(e) - m) / z;
  }
};

__device__ Stage sparseMixerStage(const void *logits, DType t, int64_t row, int E, int excluded,
                                  double eps2, double clamp, int lane) {
  Stage st{logits, t, row * E, E, excluded, -1, eps2, clamp, 0.0, 0.0};
  double v = 0;
  int best = -1;
  for (int e = lane; e < E; e += 32) {
    const double s = st.sp(e);
    if (s != -INFINITY && (best < 0 || s > v)) {
      best = e;
      v = s;
    }
  }
  warpBest(v, best);
  st.best = best;
  if (best < 0)
    return st;
  st.m = v;
  double z = 0;
  for (int e = lane; e < E; e += 32)
    if (st.survives(e))
      z += exp(st.sp(e) - st.m);
  st.z = warpSum(z);
  return st;
}

__global__ void sparseMixerForward(const void *logits, DType lt, const void *noise, DType nt,
                                   void *weights, DType wt, int32_t *indices, int64_t N, int E,
                                   double eps2) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N)
    return;
  int chosen[2] = {-1, -1};
  double w[2];
  for (int stage = 0; stage < 2; ++stage) {
    const Stage st = sparseMixerStage(logits, lt, n, E, stage == 0 ? -1 : chosen[0], eps2,
                                      stage == 0 ? kStage1Clamp : kStage2Clamp, lane);
    int pick = st.best;
    double coin = 1;
    if (noise) {
      // Gumbel-max over the survivors draws from their softmax.
      const int64_t ub = (n * 2 + stage) * int64_t(E + 1);
      int g = -1;
      double gv = 0;
      for (int e = lane; e < E; e += 32) {
        if (!st.survives(e))
          continue;
        const double v = st.sp(e) - log(-log(loadD(noise, nt, ub + e)));
        if (g < 0 || v > gv) {
          g = e;
          gv = v;
        }
      }
      warpBest(gv, g);
      pick = g;
      if (!(pick == st.best || loadD(noise, nt, ub + E) > kCoinThreshold))
        coin = kCoinDown;
    }
    if (pick < 0) // Only when every logit is -inf or NaN.
      pick = stage == 0 ? 0 : (chosen[0] == 0 ? 1 : 0);
    chosen[stage] = pick;
    w[stage] = st.P(pick) * coin;
  }
  if (lane < 2) {
    storeFloat(weights, wt, n * 2 + lane, float(w[lane]));
    indices[n * 2 + lane] = chosen[lane];
  }
}

__global__ void sparseMixerBackward(const void *logits, DType lt, const int32_t *indices,
                                    const void *dweights, DType dwt, void *dlogits, DType dlt,
                                    int64_t N, int E, double eps2, BadWord *bad) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N)
    return;
  const int i0 = indices[n * 2], i1 = indices[n * 2 + 1];
  const bool ok0 = i0 >= 0 && i0 < E, ok1 = i1 >= 0 && i1 < E;
  if (!(ok0 && ok1)) {
    if (lane == 0) {
      if (!ok0)
        reportBad(bad, n * 2, i0);
      if (!ok1)
        reportBad(bad, n * 2 + 1, i1);
    }
    return;
  }
  const Stage s0 = sparseMixerStage(logits, lt, n, E, -1, eps2, kStage1Clamp, lane);
  const Stage s1 = sparseMixerStage(logits, lt, n, E, i0, eps2, kStage2Clamp, lane);
  // The estimator keeps each softmax's Jacobian row scaled by the chosen
  // probability; coins and draws get no gradient. Same operation order as
  // the CPU's accumulation into dS.
  const double a0 = loadD(dweights, dwt, n * 2) * s0.P(i0);
  const double a1 = loadD(dweights, dwt, n * 2 + 1) * s1.P(i1);
  for (int e = lane; e < E; e += 32) {
    double g = 0.0 - a0 * s0.P(e);
    if (e == i0)
      g += a0;
    g -= a1 * s1.P(e);
    if (e == i1)
      g += a1;
    storeFloat(dlogits, dlt, n * E + e, float(g));
  }
}

Status sparseMixerRouter(const KernelArgs &args) {
  double epsilon;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSparseMixerRouter(args, epsilon, shape));
  const int64_t E = shape.E, N = shape.N;
  const bool training = args.inputs.size() == 2;
  const TensorView &logits = args.inputs[0], &weights = args.outputs[0],
                   &indices = args.outputs[1];
  if (N == 0)
    return Status();
  const TensorView *noise = training ? &args.inputs[1] : nullptr;
  sparseMixerForward<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                       contextOf(args).stream>>>(
      logits.data, logits.dtype, noise ? noise->data : nullptr,
      noise ? noise->dtype : DType::F32, weights.data, weights.dtype, indices.i32(), N, int(E),
      2 * epsilon);
  G3RT_CUDA_CHECK_LAUNCH(args, "sparsemixer_router");
  return Status();
}

Status sparseMixerRouterGrad(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  double epsilon;
  G3RT_RETURN_IF_ERROR(args.requireFloat("epsilon", epsilon));
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkRouterGrad(args, 2, shape));
  const int64_t E = shape.E, N = shape.N;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1],
                   &dweights = args.inputs[2], &dlogits = args.outputs[0];
  if (N == 0 || E == 0)
    return Status();
  Scratch scratch(contextOf(args));
  return checkedLaunch(args, scratch, 2, E, "expert index", [&](BadWord *bad) {
    sparseMixerBackward<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                          contextOf(args).stream>>>(
        logits.data, logits.dtype, indices.i32(), dweights.data, dweights.dtype, dlogits.data,
        dlogits.dtype, N, int(E), 2 * epsilon, bad);
    G3RT_CUDA_CHECK_LAUNCH(args, "sparsemixer_router_grad");
    return Status();
  });
}

//===----------------------------------------------------------------------===//
// Softmax top-k router
//===----------------------------------------------------------------------===//

// Picks, in order, the k best of a row's values among the allowed experts,
// calling pickFn(j, e, v) on every lane for each pick.
template <typename Value, typename Allowed, typename PickFn>
__device__ __forceinline__ void warpTopK(int E, int k, int lane, const Value &value,
                                         const Allowed &allowed, const PickFn &pickFn) {
  double pv = 0;
  int pe = -1;
  for (int j = 0; j < k; ++j) {
    double v = 0;
    int best = -1;
    for (int e = lane; e < E; e += 32) {
      if (!allowed(e))
        continue;
      const double x = value(e);
      if (pe >= 0 && !after(x, e, pv, pe))
        continue;
      if (best < 0 || x > v) {
        best = e;
        v = x;
      }
    }
    warpBest(v, best);
    if (best < 0) { // only NaN values get here; stay in bounds
      best = 0;
      v = 0;
    }
    pickFn(j, best, v);
    pv = v;
    pe = best;
  }
}

__global__ void softmaxTopKForward(const void *logits, DType lt, void *weights, DType wt,
                                   int32_t *indices, int64_t N, int E, int k, bool norm) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N)
    return;
  const int64_t base = n * E;
  const RowSoftmax sm = rowSoftmax(logits, lt, n, E, lane);
  // Softmax is monotone, so ranking the logits ranks p without the ties that
  // rounding in p could create.
  double sum = 0;
  warpTopK(
      E, k, lane, [&](int e) { return loadD(logits, lt, base + e); }, [](int) { return true; },
      [&](int j, int e, double v) {
        if (lane == 0) {
          indices[n * k + j] = e;
          sum += exp(v - sm.m) / sm.z;
        }
      });
  if (lane == 0)
    for (int j = 0; j < k; ++j) {
      const double p = exp(loadD(logits, lt, base + indices[n * k + j]) - sm.m) / sm.z;
      storeFloat(weights, wt, n * k + j, float(norm ? p / sum : p));
    }
}

__global__ void softmaxTopKBackward(const void *logits, DType lt, const int32_t *indices,
                                    const void *dweights, DType dwt, void *dlogits, DType dlt,
                                    int64_t N, int E, int k, bool norm, BadWord *bad) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N)
    return;
  const int32_t *idx = indices + n * k;
  bool ok = true;
  for (int j = 0; j < k; ++j)
    if (idx[j] < 0 || idx[j] >= E) {
      ok = false;
      if (lane == 0)
        reportBad(bad, n * k + j, idx[j]);
    }
  if (!ok)
    return;
  const int64_t base = n * E;
  const RowSoftmax sm = rowSoftmax(logits, lt, n, E, lane);
  auto p = [&](int e) { return exp(loadD(logits, lt, base + e) - sm.m) / sm.z; };
  const int64_t wb = n * k;
  if (!norm) {
    // w_j = p[i_j]: the softmax Jacobian, dp_i/dS_c = p_i (delta - p_c).
    double total = 0;
    for (int j = 0; j < k; ++j)
      total += loadD(dweights, dwt, wb + j) * p(idx[j]);
    for (int e = lane; e < E; e += 32) {
      double g = 0;
      for (int j = 0; j < k; ++j)
        if (idx[j] == e)
          g += loadD(dweights, dwt, wb + j) * p(idx[j]);
      g -= total * p(e);
      storeFloat(dlogits, dlt, base + e, float(g));
    }
  } else {
    // Renormalised, the weights are a softmax over the chosen logits alone.
    double sum = 0;
    for (int j = 0; j < k; ++j)
      sum += p(idx[j]);
    double G = 0;
    for (int j = 0; j < k; ++j)
      G += loadD(dweights, dwt, wb + j) * (p(idx[j]) / sum);
    for (int e = lane; e < E; e += 32) {
      double g = 0;
      for (int j = 0; j < k; ++j)
        if (idx[j] == e)
          g += (p(idx[j]) / sum) * (loadD(dweights, dwt, wb + j) - G);
      storeFloat(dlogits, dlt, base + e, float(g));
    }
  }
}

Status softmaxTopKRouter(const KernelArgs &args) {
  bool norm;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSoftmaxTopKRouter(args, norm, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &weights = args.outputs[0],
                   &indices = args.outputs[1];
  if (N == 0)
    return Status();
  softmaxTopKForward<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                       contextOf(args).stream>>>(logits.data, logits.dtype, weights.data,
                                                 weights.dtype, indices.i32(), N, int(E), int(k),
                                                 norm);
  G3RT_CUDA_CHECK_LAUNCH(args, "softmax_topk_router");
  return Status();
}

Status softmaxTopKRouterGrad(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  const bool norm = flag(args, "norm_topk_prob");
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkRouterGrad(args, 0, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1],
                   &dweights = args.inputs[2], &dlogits = args.outputs[0];
  if (N == 0 || E == 0)
    return Status();
  Scratch scratch(contextOf(args));
  return checkedLaunch(args, scratch, std::max<int64_t>(k, 1), E, "expert index",
                       [&](BadWord *bad) {
                         softmaxTopKBackward<<<blocksFor(N, kWarpsPerBlock),
                                               32 * kWarpsPerBlock, 0, contextOf(args).stream>>>(
                             logits.data, logits.dtype, indices.i32(), dweights.data,
                             dweights.dtype, dlogits.data, dlogits.dtype, N, int(E), int(k),
                             norm, bad);
                         G3RT_CUDA_CHECK_LAUNCH(args, "softmax_topk_router_grad");
                         return Status();
                       });
}

//===----------------------------------------------------------------------===//
// Grouped sigmoid router
//===----------------------------------------------------------------------===//

constexpr double kSigmoidNormEps = 1e-20;

__device__ __forceinline__ double sigmoid(double x) { return 1 / (1 + exp(-x)); }

// Shared memory per warp: the group scores (double) and the kept flags.
__global__ void sigmoidGroupedForward(const void *logits, DType lt, const void *bias, DType bt,
                                      void *weights, DType wt, int32_t *indices, int64_t N,
                                      int E, int k, int nGroup, int topkGroup, double scaling,
                                      bool norm) {
  extern __shared__ double groupSmem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  double *groupScore = groupSmem + size_t(warp) * nGroup;
  unsigned char *kept =
      reinterpret_cast<unsigned char *>(groupSmem + size_t(kWarpsPerBlock) * nGroup) +
      size_t(warp) * nGroup;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  if (n >= N)
    return;
  const int64_t base = n * E;
  const int groupSize = E / nGroup;
  auto s = [&](int e) { return sigmoid(loadD(logits, lt, base + e)); };
  auto sel = [&](int e) { return s(e) + loadD(bias, bt, e); };

  for (int g = lane; g < nGroup; g += 32) {
    kept[g] = 0;
    const int e0 = g * groupSize;
    if (groupSize == 1) {
      groupScore[g] = sel(e0);
      continue;
    }
    // The two largest (the CPU's topK of 2, lower index first on ties).
    int b0 = -1, b1 = -1;
    double v0 = 0, v1 = 0;
    for (int e = 0; e < groupSize; ++e) {
      const double v = sel(e0 + e);
      if (b0 < 0 || v > v0) {
        b0 = e;
        v0 = v;
      }
    }
    for (int e = 0; e < groupSize; ++e) {
      if (e == b0)
        continue;
      const double v = sel(e0 + e);
      if (b1 < 0 || v > v1) {
        b1 = e;
        v1 = v;
      }
    }
    groupScore[g] = v0 + v1;
  }
  __syncwarp();
  warpTopK(
      nGroup, topkGroup, lane, [&](int g) { return groupScore[g]; }, [](int) { return true; },
      [&](int, int g, double) {
        if (lane == 0)
          kept[g] = 1;
      });
  __syncwarp();
  double sum = 0;
  warpTopK(
      E, k, lane, sel, [&](int e) { return kept[e / groupSize] != 0; },
      [&](int j, int e, double) {
        if (lane == 0) {
          indices[n * k + j] = e;
          sum += s(e);
        }
      });
  if (lane == 0) {
    const double denom = norm ? sum + kSigmoidNormEps : 1.0;
    for (int j = 0; j < k; ++j)
      storeFloat(weights, wt, n * k + j, float(s(indices[n * k + j]) / denom * scaling));
  }
}

__global__ void sigmoidGroupedBackward(const void *logits, DType lt, const int32_t *indices,
                                       const void *dweights, DType dwt, void *dlogits, DType dlt,
                                       int64_t N, int E, int k, double scaling, bool norm,
                                       BadWord *bad) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N)
    return;
  const int32_t *idx = indices + n * k;
  bool ok = true;
  for (int j = 0; j < k; ++j)
    if (idx[j] < 0 || idx[j] >= E) {
      ok = false;
      if (lane == 0)
        reportBad(bad, n * k + j, idx[j]);
    }
  if (!ok)
    return;
  const int64_t base = n * E, wb = n * k;
  auto s = [&](int e) { return sigmoid(loadD(logits, lt, base + e)); };
  double D = kSigmoidNormEps, gs = 0;
  if (norm) {
    // w_j = r s_j / D with D = sum s + eps: the quotient rule, with the
    // denominator term shared by every chosen expert.
    for (int j = 0; j < k; ++j)
      D += s(idx[j]);
    for (int j = 0; j < k; ++j)
      gs += loadD(dweights, dwt, wb + j) * s(idx[j]);
  }
  for (int e = lane; e < E; e += 32) {
    double ds = 0;
    for (int j = 0; j < k; ++j) {
      if (idx[j] != e)
        continue;
      const double dw = loadD(dweights, dwt, wb + j);
      ds += norm ? scaling * (dw / D - gs / (D * D)) : scaling * dw;
    }
    const double se = s(e);
    storeFloat(dlogits, dlt, base + e, float(ds * se * (1 - se)));
  }
}

Status sigmoidGroupedRouter(const KernelArgs &args) {
  SigmoidGroups groups;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSigmoidGroupedRouter(args, groups, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k, nGroup = groups.nGroup,
                topkGroup = groups.topkGroup;
  const double scaling = groups.scaling;
  const bool norm = groups.norm;
  const TensorView &logits = args.inputs[0], &bias = args.inputs[1],
                   &weights = args.outputs[0], &indices = args.outputs[1];
  const size_t smem = size_t(kWarpsPerBlock) * size_t(nGroup) * (sizeof(double) + 1);
  if (smem > 48 * 1024)
    return args.fail("n_group " + str(nGroup) + " is too large for the CUDA kernel");
  if (N == 0)
    return Status();
  sigmoidGroupedForward<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, smem,
                          contextOf(args).stream>>>(
      logits.data, logits.dtype, bias.data, bias.dtype, weights.data, weights.dtype,
      indices.i32(), N, int(E), int(k), int(nGroup), int(topkGroup), scaling, norm);
  G3RT_CUDA_CHECK_LAUNCH(args, "sigmoid_grouped_router");
  return Status();
}

Status sigmoidGroupedRouterGrad(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  double scaling;
  G3RT_RETURN_IF_ERROR(args.requireFloat("routed_scaling_factor", scaling));
  const bool norm = flag(args, "norm_topk_prob");
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkRouterGrad(args, 0, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1],
                   &dweights = args.inputs[2], &dlogits = args.outputs[0];
  if (N == 0 || E == 0)
    return Status();
  Scratch scratch(contextOf(args));
  return checkedLaunch(args, scratch, std::max<int64_t>(k, 1), E, "expert index",
                       [&](BadWord *bad) {
                         sigmoidGroupedBackward<<<blocksFor(N, kWarpsPerBlock),
                                                  32 * kWarpsPerBlock, 0,
                                                  contextOf(args).stream>>>(
                             logits.data, logits.dtype, indices.i32(), dweights.data,
                             dweights.dtype, dlogits.data, dlogits.dtype, N, int(E), int(k),
                             scaling, norm, bad);
                         G3RT_CUDA_CHECK_LAUNCH(args, "sigmoid_grouped_router_grad");
                         return Status();
                       });
}

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
__global__ void dispatchSlots(const int32_t *idx, int64_t items, int E,
                              const int32_t *chunkCounts, const int32_t *offsets,
                              int32_t *slots) {
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

// One block per token: its row copied to each of its k slots.
__global__ void dispatchRows(const void *x, DType xt, const int32_t *slots, void *permuted,
                             DType pt, int64_t H, int k, int64_t M) {
  const int64_t n = blockIdx.x;
  for (int j = 0; j < k; ++j) {
    const int32_t slot = slots[n * k + j];
    if (slot < 0 || slot >= M) // an item of a bad expert index
      continue;
    const int64_t to = int64_t(slot) * H;
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x)
      storeFloat(permuted, pt, to + h, loadFloat(x, xt, n * H + h));
  }
}

Status moeDispatch(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoEDispatch(args, perm));
  const int64_t E = perm.E, H = perm.H, N = perm.N, k = perm.k;
  const TensorView &x = args.inputs[0], &indices = args.inputs[1],
                   &permuted = args.outputs[0], &offsets = args.outputs[1],
                   &slots = args.outputs[2];
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
  Scratch scratch(ctx);
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
    dispatchRows<<<unsigned(N), kRowThreads, 0, ctx.stream>>>(x.data, x.dtype, slots.i32(),
                                                              permuted.data, permuted.dtype, H,
                                                              int(k), items);
    G3RT_CUDA_CHECK_LAUNCH(args, "moe_dispatch (rows)");
  }
  return Status();
}

//===----------------------------------------------------------------------===//
// Dispatch gradient, combine and its gradient
//===----------------------------------------------------------------------===//

// Every [N, k] slot in [0, M); the first bad one is recorded. One thread per
// slot, run before the gathers so that they may trust the slots.
__global__ void checkSlots(const int32_t *slots, int64_t items, int64_t M, BadWord *bad) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < items && (slots[i] < 0 || slots[i] >= M))
    reportBad(bad, i, slots[i]);
}

Status validateSlots(const KernelArgs &args, Scratch &scratch, const TensorView &slots,
                     int64_t items, int64_t k, int64_t M) {
  if (items == 0)
    return Status();
  return checkedLaunch(args, scratch, std::max<int64_t>(k, 1), M, "slot", [&](BadWord *bad) {
    checkSlots<<<blocksFor(items, 256), 256, 0, contextOf(args).stream>>>(slots.i32(), items,
                                                                          M, bad);
    G3RT_CUDA_CHECK_LAUNCH(args, "checking slots");
    return Status();
  });
}

// V consecutive elements from element i (a multiple of V), as floats: one
// access per four for V = 4 (loadFloat4), element by element for V = 1.
template <int V> __device__ __forceinline__ void loadVec(const void *p, DType t, int64_t i,
                                                         float (&v)[V]) {
  if constexpr (V == 4) {
    float4 f = loadFloat4(p, t, i / 4);
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  } else {
    for (int c = 0; c < V; ++c)
      v[c] = loadFloat(p, t, i + c);
  }
}
template <int V> __device__ __forceinline__ void storeVec(void *p, DType t, int64_t i,
                                                          const float (&v)[V]) {
  if constexpr (V == 4)
    storeFloat4(p, t, i / 4, make_float4(v[0], v[1], v[2], v[3]));
  else
    for (int c = 0; c < V; ++c)
      storeFloat(p, t, i + c, v[c]);
}

/// Elements per thread of the row kernels: four where rows allow it.
int vecWidth(int64_t H) { return H % 4 == 0 ? 4 : 1; }

// dst[n] = sum_j (w ? w[n, j] : 1) * src[slots[n, j]], fp32, j in order;
// each thread takes V adjacent elements of the row. Slots outside [0, M)
// (reported by validateSlots) are skipped.
template <int V>
__global__ void gatherRows(const void *src, DType st, const int32_t *slots, const void *w,
                           DType wt, void *dst, DType dt, int64_t H, int k, int64_t M) {
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

Status moeDispatchGrad(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoEDispatchGrad(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &dp = args.inputs[0], &slots = args.inputs[1], &dx = args.outputs[0];
  Scratch scratch(contextOf(args));
  G3RT_RETURN_IF_ERROR(validateSlots(args, scratch, slots, N * k, k, M));
  return launchGather(args, dp, slots, nullptr, dx, N, H, k, M, "moe_dispatch_grad");
}

Status moeCombine(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoECombine(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &y = args.inputs[0], &slots = args.inputs[1],
                   &weights = args.inputs[2], &out = args.outputs[0];
  Scratch scratch(contextOf(args));
  G3RT_RETURN_IF_ERROR(validateSlots(args, scratch, slots, N * k, k, M));
  return launchGather(args, y, slots, &weights, out, N, H, k, M, "moe_combine");
}

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

Status exclusiveScan(const KernelArgs &args, Scratch &scratch, const int32_t *in, int64_t n,
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
template <int V>
__global__ void combineGradRows(const int32_t *start, const int32_t *users, const void *w,
                                DType wt, const void *dout, DType dt, void *dy, DType yt,
                                int64_t H, int k, int64_t m0) {
  const int64_t m = m0 + blockIdx.y;
  const int64_t h = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (h >= H)
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

// dweights[n, j] = <dout[n], y[slots[n, j]]> in double; one warp per (n, j)
// (none for a slot outside [0, M)).
__global__ void combineGradWeights(const void *y, DType yt, const int32_t *slots,
                                   const void *dout, DType dt, void *dw, DType wt, int64_t items,
                                   int64_t H, int k, int64_t M) {
  const int lane = threadIdx.x % 32;
  const int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (i >= items || slots[i] < 0 || slots[i] >= M)
    return;
  const int64_t n = i / k, row = slots[i];
  double d = 0;
  if (H % 4 == 0) {
    for (int64_t h = 4 * lane; h < H; h += 128) {
      float a[4], b[4];
      loadVec<4>(dout, dt, n * H + h, a);
      loadVec<4>(y, yt, row * H + h, b);
      for (int c = 0; c < 4; ++c)
        d += double(a[c]) * double(b[c]);
    }
  } else {
    for (int64_t h = lane; h < H; h += 32)
      d += double(loadFloat(dout, dt, n * H + h)) * double(loadFloat(y, yt, row * H + h));
  }
  d = warpSum(d);
  if (lane == 0)
    storeFloat(dw, wt, i, float(d));
}

Status moeCombineGrad(const KernelArgs &args) {
  PermuteShape perm;
  G3RT_RETURN_IF_ERROR(checkMoECombineGrad(args, perm));
  const int64_t H = perm.H, N = perm.N, M = perm.M, k = perm.k;
  const TensorView &y = args.inputs[0], &slots = args.inputs[1],
                   &weights = args.inputs[2], &dout = args.inputs[3];
  const TensorView &dy = args.outputs[0], &dweights = args.outputs[1];
  CudaContext &ctx = contextOf(args);
  Scratch scratch(ctx);
  const int64_t items = N * k;
  G3RT_RETURN_IF_ERROR(validateSlots(args, scratch, slots, items, k, M));
  if (M > 0 && H > 0) {
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
      fillUsers<<<blocksFor(items, 256), 256, 0, ctx.stream>>>(slots.i32(), items, M, cursor,
                                                               users);
      G3RT_CUDA_CHECK_LAUNCH(args, "moe_combine_grad (inverting slots)");
    }
    sortUsers<<<blocksFor(M, 256), 256, 0, ctx.stream>>>(start, M, users);
    G3RT_CUDA_CHECK_LAUNCH(args, "moe_combine_grad (ordering)");
    for (int64_t m0 = 0; m0 < M; m0 += 65535) {
      const int64_t rows = std::min<int64_t>(65535, M - m0);
      const int V = vecWidth(H);
      dim3 grid(blocksFor(H / V, kRowThreads), unsigned(rows));
      (V == 4 ? combineGradRows<4> : combineGradRows<1>)<<<grid, kRowThreads, 0, ctx.stream>>>(
          start, users, weights.data, weights.dtype, dout.data, dout.dtype, dy.data, dy.dtype, H,
          int(k), m0);
      G3RT_CUDA_CHECK_LAUNCH(args, "moe_combine_grad (input grad)");
    }
  }
  if (items > 0) {
    combineGradWeights<<<blocksFor(items, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                         ctx.stream>>>(y.data, y.dtype, slots.i32(), dout.data, dout.dtype,
                                       dweights.data, dweights.dtype, items, H, int(k), M);
    G3RT_CUDA_CHECK_LAUNCH(args, "moe_combine_grad (weights grad)");
  }
  return Status();
}

//===----------------------------------------------------------------------===//
// Auxiliary losses
//===----------------------------------------------------------------------===//

__global__ void countRealRows(const int32_t *seg, int64_t N, int32_t *real) {
  __shared__ int32_t partial;
  if (threadIdx.x == 0)
    partial = 0;
  __syncthreads();
  int32_t c = 0;
  for (int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * blockDim.x)
    c += seg[n] != 0;
  atomicAdd(&partial, c);
  __syncthreads();
  if (threadIdx.x == 0)
    atomicAdd(real, partial);
}

// Expert counts over the real rows of one layer (integers: order-free).
__global__ void countExperts(const int32_t *idx, const int32_t *seg, int64_t N, int k, int E,
                             int32_t *counts, BadWord *bad) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * k || seg[i / k] == 0)
    return;
  const int32_t e = idx[i];
  if (e < 0 || e >= E)
    reportBad(bad, i, e);
  else
    atomicAdd(&counts[e], 1);
}

// Per-row term of the load-balancing loss: <f, softmax(row)> on real rows,
// with f_e = counts[e] / R.
__global__ void balanceRowTerms(const void *logits, DType lt, const int32_t *seg, int64_t N,
                                int E, const int32_t *counts, const int32_t *real, int L,
                                double *terms) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N)
    return;
  if (seg[n] == 0) {
    if (lane == 0)
      terms[n] = 0.0;
    return;
  }
  const double R = double(*real) * double(L);
  const RowSoftmax sm = rowSoftmax(logits, lt, n, E, lane);
  double d = 0;
  for (int e = lane; e < E; e += 32)
    d += (double(counts[e]) / R) * (exp(loadD(logits, lt, n * int64_t(E) + e) - sm.m) / sm.z);
  d = warpSum(d);
  if (lane == 0)
    terms[n] = d;
}

__global__ void balanceGradRows(const void *logits, DType lt, const int32_t *seg, int64_t N,
                                int E, const int32_t *counts, const int32_t *real, int L,
                                const void *dloss, DType dlt, void *out, DType ot) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N)
    return;
  const int64_t base = n * E;
  if (seg[n] == 0) {
    for (int e = lane; e < E; e += 32)
      storeFloat(out, ot, base + e, 0.0f);
    return;
  }
  const double R = double(*real) * double(L);
  const double scale = double(loadFloat(dloss, dlt, 0)) * double(E) / R;
  const RowSoftmax sm = rowSoftmax(logits, lt, n, E, lane);
  auto p = [&](int e) { return exp(loadD(logits, lt, base + e) - sm.m) / sm.z; };
  double fp = 0;
  for (int e = lane; e < E; e += 32)
    fp += (double(counts[e]) / R) * p(e);
  fp = warpSum(fp);
  // d<f, p>/dS_c = p_c (f_c - <f, p>), f held constant.
  for (int e = lane; e < E; e += 32)
    storeFloat(out, ot, base + e, float(scale * p(e) * (double(counts[e]) / R - fp)));
}

__global__ void zRowTerms(const void *logits, DType lt, const int32_t *seg, int64_t N, int E,
                          double *terms) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N)
    return;
  double t = 0.0;
  if (seg[n] != 0) {
    const RowSoftmax sm = rowSoftmax(logits, lt, n, E, lane);
    const double lse = sm.m + log(sm.z);
    t = lse * lse;
  }
  if (lane == 0)
    terms[n] = t;
}

__global__ void zGradRows(const void *logits, DType lt, const int32_t *seg, int64_t N, int E,
                          const int32_t *real, int L, const void *dloss, DType dlt, void *out,
                          DType ot) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N)
    return;
  const int64_t base = n * E;
  if (seg[n] == 0) {
    for (int e = lane; e < E; e += 32)
      storeFloat(out, ot, base + e, 0.0f);
    return;
  }
  const double R = double(*real) * double(L);
  const double scale = 2.0 * double(loadFloat(dloss, dlt, 0)) / R;
  const RowSoftmax sm = rowSoftmax(logits, lt, n, E, lane);
  const double lse = sm.m + log(sm.z);
  for (int e = lane; e < E; e += 32)
    storeFloat(out, ot, base + e,
               float(scale * lse * (exp(loadD(logits, lt, base + e) - sm.m) / sm.z)));
}

// out = mul * sum(terms) / R (0 when R = 0), R = real * L: one block, each
// thread sums a strided slice in order, then a fixed tree.
constexpr int kReduceThreads = 256;

__global__ void finishLoss(const double *terms, int64_t count, const int32_t *real, int L,
                           double mul, void *out, DType ot) {
  __shared__ double part[kReduceThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < count; i += kReduceThreads)
    s += terms[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = kReduceThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w)
      part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double R = double(*real) * double(L);
    storeFloat(out, ot, 0, float(R > 0 ? mul * part[0] / R : 0.0));
  }
}

Status checkLayerLogits(const KernelArgs &args, int64_t L, int64_t E, int64_t &N) {
  const TensorView &first = args.inputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, first, "logits"));
  if (first.rank() < 1)
    return args.fail("logits must have rank >= 1");
  N = first.rows();
  for (int64_t l = 0; l < L; ++l) {
    const TensorView &t = args.inputs[l];
    G3RT_RETURN_IF_ERROR(checkFloat(args, t, "logits"));
    if (t.rank() < 1 || t.rows() != N || (E > 0 && t.dim(-1) != E))
      return args.fail("logits of layer " + str(l) + " have shape " +
                       shapeString(t.shape) + ", expected [" + str(N) + ", " +
                       (E > 0 ? str(E) : std::string("E")) + "]");
  }
  return Status();
}

Status checkSegments(const KernelArgs &args, const TensorView &seg, int64_t N) {
  G3RT_RETURN_IF_ERROR(checkI32(args, seg, "segment_ids"));
  if (seg.numel() != N)
    return args.fail("segment_ids has shape " + shapeString(seg.shape) + " (" +
                     str(seg.numel()) + " tokens), but the logits have " + str(N) +
                     " rows");
  return Status();
}

/// The number of real rows, on the device.
Status launchRealRows(const KernelArgs &args, Scratch &scratch, const TensorView &seg,
                      int64_t N, int32_t *&real) {
  real = scratch.take<int32_t>(1);
  G3RT_RETURN_IF_ERROR(scratch.check(args));
  cudaStream_t stream = contextOf(args).stream;
  cudaError_t e = cudaMemsetAsync(real, 0, sizeof(int32_t), stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "clearing the row count");
  if (N > 0) {
    const unsigned blocks = unsigned(std::min<int64_t>(1024, blocksFor(N, 256)));
    countRealRows<<<blocks, 256, 0, stream>>>(seg.i32(), N, real);
    G3RT_CUDA_CHECK_LAUNCH(args, "counting real rows");
  }
  return Status();
}

/// Common part of load_balancing_loss and its gradient: checks, the real-row
/// count and the pooled expert counts, all on the device.
struct BalanceSetup {
  int64_t L = 0, N = 0, E = 0;
  int32_t *real = nullptr, *counts = nullptr;
};

Status balanceSetup(const KernelArgs &args, int64_t trailing, Scratch &scratch,
                    BalanceSetup &b) {
  const int64_t count = int64_t(args.inputs.size()) - trailing;
  if (count < 2 || count % 2 != 0)
    return args.fail("expected L logits, L indices and " +
                     std::string(trailing == 1 ? "segment_ids" : "segment_ids, grad") +
                     " with L >= 1, got " + std::to_string(args.inputs.size()) +
                     " inputs");
  b.L = count / 2;
  G3RT_RETURN_IF_ERROR(args.requireInt("num_experts", b.E));
  if (b.E < 1)
    return args.fail("num_experts must be positive, got " + str(b.E));
  G3RT_RETURN_IF_ERROR(checkLayerLogits(args, b.L, b.E, b.N));
  const TensorView &seg = args.inputs[2 * b.L];
  G3RT_RETURN_IF_ERROR(checkSegments(args, seg, b.N));
  for (int64_t l = 0; l < b.L; ++l) {
    const TensorView &idx = args.inputs[b.L + l];
    if (idx.rank() < 1)
      return args.fail("indices must have rank >= 1");
    G3RT_RETURN_IF_ERROR(checkIndexMatrix(args, idx, "indices", b.N, idx.dim(-1)));
  }
  G3RT_RETURN_IF_ERROR(launchRealRows(args, scratch, seg, b.N, b.real));
  b.counts = scratch.take<int32_t>(b.E);
  G3RT_RETURN_IF_ERROR(scratch.check(args));
  CudaContext &ctx = contextOf(args);
  cudaError_t e = cudaMemsetAsync(b.counts, 0, size_t(b.E) * sizeof(int32_t), ctx.stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "clearing the expert counts");
  CheckRecords r;
  G3RT_RETURN_IF_ERROR(takeRecords(args, scratch, b.L, r));
  std::vector<int64_t> ks(size_t(b.L));
  for (int64_t l = 0; l < b.L; ++l) {
    const TensorView &idx = args.inputs[b.L + l];
    const int64_t k = idx.dim(-1), items = b.N * k;
    ks[size_t(l)] = std::max<int64_t>(k, 1);
    if (items == 0)
      continue;
    countExperts<<<blocksFor(items, 256), 256, 0, ctx.stream>>>(
        idx.i32(), seg.i32(), b.N, int(k), int(b.E), b.counts, r.at + l);
    G3RT_CUDA_CHECK_LAUNCH(args, "counting routed experts");
  }
  return settle(args, r, [name = std::string(args.name), ks, E = b.E](const BadWord *w) {
    for (size_t l = 0; l < ks.size(); ++l)
      if (w[l] != kNoBad) {
        return Status::error(name + ": expert index " + std::to_string(badValue(w[l])) +
                             " of layer " + str(int64_t(l)) + " at row " +
                             str(badPosition(w[l]) / ks[l]) +
                             " is outside [0, " + str(E) + ")");
      }
    return Status();
  });
}

Status loadBalancingLoss(const KernelArgs &args) {
  if (args.outputs.size() != 1)
    return args.fail("expected 1 output, got " + std::to_string(args.outputs.size()));
  Scratch scratch(contextOf(args));
  BalanceSetup b;
  G3RT_RETURN_IF_ERROR(balanceSetup(args, 1, scratch, b));
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.outputs[0], "result"));
  double *terms = scratch.take<double>(b.L * b.N);
  G3RT_RETURN_IF_ERROR(scratch.check(args));
  cudaStream_t stream = contextOf(args).stream;
  const TensorView &seg = args.inputs[2 * b.L];
  for (int64_t l = 0; l < b.L && b.N > 0; ++l) {
    const TensorView &logits = args.inputs[l];
    balanceRowTerms<<<blocksFor(b.N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(
        logits.data, logits.dtype, seg.i32(), b.N, int(b.E), b.counts, b.real, int(b.L),
        terms + l * b.N);
    G3RT_CUDA_CHECK_LAUNCH(args, "load_balancing_loss (rows)");
  }
  // Σ_e f_e · P̄_e = (1/R) Σ_rows <f, p_row>.
  finishLoss<<<1, kReduceThreads, 0, stream>>>(terms, b.L * b.N, b.real, int(b.L),
                                               double(b.E), args.outputs[0].data,
                                               args.outputs[0].dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "load_balancing_loss (sum)");
  return Status();
}

Status loadBalancingLossGrad(const KernelArgs &args) {
  Scratch scratch(contextOf(args));
  BalanceSetup b;
  G3RT_RETURN_IF_ERROR(balanceSetup(args, 2, scratch, b));
  if (int64_t(args.outputs.size()) != b.L)
    return args.fail("expected " + str(b.L) + " outputs (one per layer), got " +
                     std::to_string(args.outputs.size()));
  const TensorView &dloss = args.inputs[2 * b.L + 1];
  G3RT_RETURN_IF_ERROR(checkScalar(args, dloss, "grad"));
  for (int64_t l = 0; l < b.L; ++l)
    G3RT_RETURN_IF_ERROR(checkMatrix(args, args.outputs[l], "result", b.N, b.E));
  cudaStream_t stream = contextOf(args).stream;
  const TensorView &seg = args.inputs[2 * b.L];
  for (int64_t l = 0; l < b.L && b.N > 0; ++l) {
    const TensorView &logits = args.inputs[l], &out = args.outputs[l];
    balanceGradRows<<<blocksFor(b.N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(
        logits.data, logits.dtype, seg.i32(), b.N, int(b.E), b.counts, b.real, int(b.L),
        dloss.data, dloss.dtype, out.data, out.dtype);
    G3RT_CUDA_CHECK_LAUNCH(args, "load_balancing_loss_grad");
  }
  return Status();
}

Status routerZLoss(const KernelArgs &args) {
  if (args.inputs.size() < 2 || args.outputs.size() != 1)
    return args.fail("expected L >= 1 logits and segment_ids, and 1 output, got " +
                     std::to_string(args.inputs.size()) + " inputs and " +
                     std::to_string(args.outputs.size()) + " outputs");
  const int64_t L = int64_t(args.inputs.size()) - 1;
  int64_t N;
  G3RT_RETURN_IF_ERROR(checkLayerLogits(args, L, 0, N));
  const TensorView &seg = args.inputs[L];
  G3RT_RETURN_IF_ERROR(checkSegments(args, seg, N));
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.outputs[0], "result"));
  Scratch scratch(contextOf(args));
  int32_t *real;
  G3RT_RETURN_IF_ERROR(launchRealRows(args, scratch, seg, N, real));
  double *terms = scratch.take<double>(L * N);
  G3RT_RETURN_IF_ERROR(scratch.check(args));
  cudaStream_t stream = contextOf(args).stream;
  for (int64_t l = 0; l < L && N > 0; ++l) {
    const TensorView &logits = args.inputs[l];
    zRowTerms<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(
        logits.data, logits.dtype, seg.i32(), N, int(logits.dim(-1)), terms + l * N);
    G3RT_CUDA_CHECK_LAUNCH(args, "router_z_loss (rows)");
  }
  finishLoss<<<1, kReduceThreads, 0, stream>>>(terms, L * N, real, int(L), 1.0,
                                               args.outputs[0].data, args.outputs[0].dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "router_z_loss (sum)");
  return Status();
}

Status routerZLossGrad(const KernelArgs &args) {
  if (args.inputs.size() < 3)
    return args.fail("expected L >= 1 logits, segment_ids and grad, got " +
                     std::to_string(args.inputs.size()) + " inputs");
  const int64_t L = int64_t(args.inputs.size()) - 2;
  if (int64_t(args.outputs.size()) != L)
    return args.fail("expected " + str(L) + " outputs (one per layer), got " +
                     std::to_string(args.outputs.size()));
  int64_t N;
  G3RT_RETURN_IF_ERROR(checkLayerLogits(args, L, 0, N));
  const TensorView &seg = args.inputs[L];
  G3RT_RETURN_IF_ERROR(checkSegments(args, seg, N));
  const TensorView &dloss = args.inputs[L + 1];
  G3RT_RETURN_IF_ERROR(checkScalar(args, dloss, "grad"));
  for (int64_t l = 0; l < L; ++l)
    G3RT_RETURN_IF_ERROR(
        checkMatrix(args, args.outputs[l], "result", N, args.inputs[l].dim(-1)));
  Scratch scratch(contextOf(args));
  int32_t *real;
  G3RT_RETURN_IF_ERROR(launchRealRows(args, scratch, seg, N, real));
  cudaStream_t stream = contextOf(args).stream;
  for (int64_t l = 0; l < L && N > 0; ++l) {
    const TensorView &logits = args.inputs[l], &out = args.outputs[l];
    zGradRows<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(
        logits.data, logits.dtype, seg.i32(), N, int(logits.dim(-1)), real, int(L),
        dloss.data, dloss.dtype, out.data, out.dtype);
    G3RT_CUDA_CHECK_LAUNCH(args, "router_z_loss_grad");
  }
  return Status();
}

// Up to kSumTerms terms per launch; `acc` carries the running double sum
// between launches so that any number of terms works.
constexpr int kSumTerms = 16;
struct SumTerms {
  const void *term[kSumTerms];
  DType type[kSumTerms];
  double coefficient[kSumTerms];
  int count;
};

__global__ void lossSumKernel(SumTerms terms, double *acc, bool first, bool last, void *out,
                              DType ot) {
  double loss = first ? 0.0 : *acc;
  for (int i = 0; i < terms.count; ++i)
    loss += terms.coefficient[i] * double(loadFloat(terms.term[i], terms.type[i], 0));
  if (last)
    storeFloat(out, ot, 0, float(loss));
  else
    *acc = loss;
}

Status lossSum(const KernelArgs &args) {
  if (args.outputs.size() != 1)
    return args.fail("expected 1 output, got " + std::to_string(args.outputs.size()));
  const std::vector<double> *coefficients =
      args.attrs ? args.attrs->getFloats("coefficients") : nullptr;
  if (!coefficients)
    return args.fail("missing float array attribute 'coefficients'");
  if (coefficients->size() != args.inputs.size())
    return args.fail(std::to_string(coefficients->size()) + " coefficients for " +
                     std::to_string(args.inputs.size()) + " terms");
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.outputs[0], "result"));
  for (const TensorView &t : args.inputs)
    G3RT_RETURN_IF_ERROR(checkScalar(args, t, "term"));
  Scratch scratch(contextOf(args));
  double *acc = scratch.take<double>(1);
  G3RT_RETURN_IF_ERROR(scratch.check(args));
  const size_t total = args.inputs.size();
  size_t i = 0;
  do {
    SumTerms terms{};
    terms.count = int(std::min<size_t>(kSumTerms, total - i));
    for (int t = 0; t < terms.count; ++t) {
      terms.term[t] = args.inputs[i + size_t(t)].data;
      terms.type[t] = args.inputs[i + size_t(t)].dtype;
      terms.coefficient[t] = (*coefficients)[i + size_t(t)];
    }
    const bool first = i == 0;
    i += size_t(terms.count);
    lossSumKernel<<<1, 1, 0, contextOf(args).stream>>>(terms, acc, first, i >= total,
                                                       args.outputs[0].data,
                                                       args.outputs[0].dtype);
    G3RT_CUDA_CHECK_LAUNCH(args, "loss_sum");
  } while (i < total);
  return Status();
}

} // namespace

void registerCudaMoEKernels(KernelTable &table) {
  table.emplace_back("sparsemixer_router", &sparseMixerRouter);
  table.emplace_back("sparsemixer_router_grad", &sparseMixerRouterGrad);
  table.emplace_back("softmax_topk_router", &softmaxTopKRouter);
  table.emplace_back("softmax_topk_router_grad", &softmaxTopKRouterGrad);
  table.emplace_back("sigmoid_grouped_router", &sigmoidGroupedRouter);
  table.emplace_back("sigmoid_grouped_router_grad", &sigmoidGroupedRouterGrad);
  table.emplace_back("moe_dispatch", &moeDispatch);
  table.emplace_back("moe_dispatch_grad", &moeDispatchGrad);
  table.emplace_back("moe_combine", &moeCombine);
  table.emplace_back("moe_combine_grad", &moeCombineGrad);
  table.emplace_back("load_balancing_loss", &loadBalancingLoss);
  table.emplace_back("load_balancing_loss_grad", &loadBalancingLossGrad);
  table.emplace_back("router_z_loss", &routerZLoss);
  table.emplace_back("router_z_loss_grad", &routerZLossGrad);
  table.emplace_back("loss_sum", &lossSum);
}

} // namespace g3rt::cuda
