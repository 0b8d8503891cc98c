//===- kernels_moe_routers.cu - MoE router CUDA kernels -------------------===//
//
// The CUDA versions of the routers of a MoE layer and their gradients
// (docs/kernels.md, "Routers"): SparseMixer-v2, softmax top-k and the grouped
// sigmoid router, with the checks and messages of
// runtime/cpu/kernels_moe_routers.cpp. A warp per token (moe_warp.cuh); top-k
// needs no "taken" set: the j-th pick is the best element that comes after
// pick j-1 in the CPU's strict order.
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

//===----------------------------------------------------------------------===//
// SparseMixer-v2
//===----------------------------------------------------------------------===//

namespace {

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
  st.z = butterflySum(z);
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

} // namespace

Status sparseMixerRouterKernel(const KernelArgs &args) {
  double epsilon;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSparseMixerRouter(args, epsilon, shape));
  const int64_t E = shape.E, N = shape.N;
  const bool training = args.inputs.size() == 2;
  const TensorView &logits = args.inputs[0], &weights = args.outputs[0], &indices = args.outputs[1];
  if (N == 0)
    return Status();
  const TensorView *noise = training ? &args.inputs[1] : nullptr;
  sparseMixerForward<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                       contextOf(args).stream>>>(
      logits.data, logits.dtype, noise ? noise->data : nullptr, noise ? noise->dtype : DType::F32,
      weights.data, weights.dtype, indices.i32(), N, int(E), 2 * epsilon);
  G3RT_CUDA_CHECK_LAUNCH(args, "sparsemixer_router");
  return Status();
}

Status sparseMixerRouterGradKernel(const KernelArgs &args) {
  double epsilon;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSparseMixerRouterGrad(args, epsilon, shape));
  const int64_t E = shape.E, N = shape.N;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1], &dweights = args.inputs[2],
                   &dlogits = args.outputs[0];
  if (N == 0 || E == 0)
    return Status();
  ScratchArrays scratch(contextOf(args));
  return checkedLaunch(args, scratch, 2, E, "expert index", [&](BadWord *bad) {
    sparseMixerBackward<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                          contextOf(args).stream>>>(logits.data, logits.dtype, indices.i32(),
                                                    dweights.data, dweights.dtype, dlogits.data,
                                                    dlogits.dtype, N, int(E), 2 * epsilon, bad);
    G3RT_CUDA_CHECK_LAUNCH(args, "sparsemixer_router_grad");
    return Status();
  });
}

//===----------------------------------------------------------------------===//
// Softmax top-k router
//===----------------------------------------------------------------------===//

namespace {

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

// Whether token n's k expert indices `idx` lie in [0, E); the bad ones are
// recorded (by lane 0).
__device__ __forceinline__ bool indicesInRange(const int32_t *idx, int64_t n, int k, int E,
                                               int lane, BadWord *bad) {
  bool ok = true;
  for (int j = 0; j < k; ++j)
    if (idx[j] < 0 || idx[j] >= E) {
      ok = false;
      if (lane == 0)
        reportBad(bad, n * k + j, idx[j]);
    }
  return ok;
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
  if (!indicesInRange(idx, n, k, E, lane, bad))
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

} // namespace

Status softmaxTopKRouterKernel(const KernelArgs &args) {
  bool norm;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSoftmaxTopKRouter(args, norm, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &weights = args.outputs[0], &indices = args.outputs[1];
  if (N == 0)
    return Status();
  softmaxTopKForward<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                       contextOf(args).stream>>>(logits.data, logits.dtype, weights.data,
                                                 weights.dtype, indices.i32(), N, int(E), int(k),
                                                 norm);
  G3RT_CUDA_CHECK_LAUNCH(args, "softmax_topk_router");
  return Status();
}

Status softmaxTopKRouterGradKernel(const KernelArgs &args) {
  bool norm;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSoftmaxTopKRouterGrad(args, norm, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1], &dweights = args.inputs[2],
                   &dlogits = args.outputs[0];
  if (N == 0 || E == 0)
    return Status();
  ScratchArrays scratch(contextOf(args));
  return checkedLaunch(
      args, scratch, std::max<int64_t>(k, 1), E, "expert index", [&](BadWord *bad) {
        softmaxTopKBackward<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                              contextOf(args).stream>>>(
            logits.data, logits.dtype, indices.i32(), dweights.data, dweights.dtype, dlogits.data,
            dlogits.dtype, N, int(E), int(k), norm, bad);
        G3RT_CUDA_CHECK_LAUNCH(args, "softmax_topk_router_grad");
        return Status();
      });
}

//===----------------------------------------------------------------------===//
// Grouped sigmoid router
//===----------------------------------------------------------------------===//

namespace {

constexpr double kSigmoidNormEps = 1e-20;

__device__ __forceinline__ double sigmoid(double x) { return 1 / (1 + exp(-x)); }

// Shared memory per warp: the group scores (double) and the kept flags.
__global__ void sigmoidGroupedForward(const void *logits, DType lt, const void *bias, DType bt,
                                      void *weights, DType wt, int32_t *indices, int64_t N, int E,
                                      int k, int nGroup, int topkGroup, double scaling, bool norm) {
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
  if (!indicesInRange(idx, n, k, E, lane, bad))
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

} // namespace

Status sigmoidGroupedRouterKernel(const KernelArgs &args) {
  SigmoidGroups groups;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSigmoidGroupedRouter(args, groups, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k, nGroup = groups.nGroup,
                topkGroup = groups.topkGroup;
  const double scaling = groups.scaling;
  const bool norm = groups.norm;
  const TensorView &logits = args.inputs[0], &bias = args.inputs[1], &weights = args.outputs[0],
                   &indices = args.outputs[1];
  const size_t smem = size_t(kWarpsPerBlock) * size_t(nGroup) * (sizeof(double) + 1);
  if (smem > 48 * 1024)
    return args.fail("n_group " + str(nGroup) + " is too large for the CUDA kernel");
  if (N == 0)
    return Status();
  sigmoidGroupedForward<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, smem,
                          contextOf(args).stream>>>(
      logits.data, logits.dtype, bias.data, bias.dtype, weights.data, weights.dtype, indices.i32(),
      N, int(E), int(k), int(nGroup), int(topkGroup), scaling, norm);
  G3RT_CUDA_CHECK_LAUNCH(args, "sigmoid_grouped_router");
  return Status();
}

Status sigmoidGroupedRouterGradKernel(const KernelArgs &args) {
  double scaling;
  bool norm;
  RouterShape shape;
  G3RT_RETURN_IF_ERROR(checkSigmoidGroupedRouterGrad(args, scaling, norm, shape));
  const int64_t E = shape.E, N = shape.N, k = shape.k;
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1], &dweights = args.inputs[2],
                   &dlogits = args.outputs[0];
  if (N == 0 || E == 0)
    return Status();
  ScratchArrays scratch(contextOf(args));
  return checkedLaunch(
      args, scratch, std::max<int64_t>(k, 1), E, "expert index", [&](BadWord *bad) {
        sigmoidGroupedBackward<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                                 contextOf(args).stream>>>(
            logits.data, logits.dtype, indices.i32(), dweights.data, dweights.dtype, dlogits.data,
            dlogits.dtype, N, int(E), int(k), scaling, norm, bad);
        G3RT_CUDA_CHECK_LAUNCH(args, "sigmoid_grouped_router_grad");
        return Status();
      });
}

} // namespace g3rt::cuda
