//===- kernels_optimizer.cu - clipping, schedule and AdamW CUDA kernels ---===//
//
// The CUDA versions of global_norm, clip_scale, lr_schedule and adamw, with
// the math of runtime/cpu/kernels_optimizer.cpp. Their scalar operands (the
// norm, step counters, learning rate, gradient scale) stay on the device:
// small kernels read them there, so an optimizer step never waits on the
// host. The per-element AdamW arithmetic uses the _rn intrinsics, which nvcc
// never fuses into FMAs, so it rounds exactly as the (unfused) CPU reference.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_kernels.h"
#include "runtime/kernels/kernel_checks.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace g3rt::cuda {

using namespace checks;

namespace {

constexpr int kThreads = 256;

/// The part of the workspace kernels may use: the executor hands the lower
/// half to cuBLAS (cublasSetWorkspace), so the upper half is ours.
struct Scratch {
  char *ptr;
  size_t bytes;
};
Scratch scratchOf(const CudaContext &ctx) {
  size_t half = (ctx.workspaceBytes / 2) & ~size_t(255);
  return {static_cast<char *>(ctx.workspace) + half, ctx.workspaceBytes - half};
}

//===----------------------------------------------------------------------===//
// global_norm
//===----------------------------------------------------------------------===//

/// Tensors per launch of the partial-sum kernel; their descriptors travel as
/// a kernel parameter (well under the 4 KB limit).
constexpr int kNormGroup = 64;

struct NormGroup {
  const void *data[kNormGroup];
  int64_t numel[kNormGroup];
  /// The chunks of tensor i are firstChunk[i] .. firstChunk[i + 1] - 1 of
  /// this launch's grid.
  int64_t firstChunk[kNormGroup + 1];
  DType dtype[kNormGroup];
  int count;
};

__device__ double blockSumDouble(double v) {
  __shared__ double warpSums[32];
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_down_sync(0xffffffffu, v, o);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0)
    warpSums[warp] = v;
  __syncthreads();
  int warps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < warps ? warpSums[threadIdx.x] : 0.0;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1)
      v += __shfl_down_sync(0xffffffffu, v, o);
  __syncthreads();
  return v; // valid in thread 0
}

// One block per chunk of a fixed size: the partial sums depend only on the
// shapes, never on scheduling, so the norm is reproducible run to run.
__global__ void normPartialsDevice(NormGroup g, int64_t chunkElems, double *partials) {
  int64_t chunk = blockIdx.x;
  int t = 0;
  while (t + 1 < g.count && g.firstChunk[t + 1] <= chunk)
    ++t;
  int64_t begin = (chunk - g.firstChunk[t]) * chunkElems;
  int64_t end = min(g.numel[t], begin + chunkElems);
  double s = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    double x = loadFloat(g.data[t], g.dtype[t], i);
    s += x * x;
  }
  s = blockSumDouble(s);
  if (threadIdx.x == 0)
    partials[chunk] = s;
}

__global__ void normFinishDevice(const double *partials, int64_t n, void *out, DType outType) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    s += partials[i];
  s = blockSumDouble(s);
  if (threadIdx.x == 0)
    storeFloat(out, outType, 0, float(sqrt(s)));
}

} // namespace

Status globalNormKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkGlobalNorm(args));
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);

  // Chunks of 64K elements (as on the CPU), larger only if the partial sums
  // would not fit the scratch space.
  int64_t chunkElems = int64_t(1) << 16;
  auto chunksOf = [&](int64_t elems) {
    int64_t c = 0;
    for (const TensorView &g : args.inputs)
      c += (g.numel() + elems - 1) / elems;
    return c;
  };
  while (size_t(chunksOf(chunkElems)) * sizeof(double) > scratch.bytes)
    chunkElems *= 2;
  double *partials = reinterpret_cast<double *>(scratch.ptr);

  // Tensors go to the partial-sum kernel in groups; the partial sums of
  // all groups line up in one array, in tensor and chunk order.
  int64_t totalChunks = 0;
  NormGroup group{};
  auto flush = [&]() -> Status {
    int64_t chunks = group.firstChunk[group.count];
    if (chunks > 0) {
      normPartialsDevice<<<unsigned(chunks), kThreads, 0, ctx.stream>>>(group, chunkElems,
                                                                        partials + totalChunks);
      G3RT_CUDA_CHECK_LAUNCH(args, "global_norm partial sums");
    }
    totalChunks += chunks;
    group = NormGroup{};
    return Status();
  };
  for (const TensorView &g : args.inputs) {
    int64_t chunks = (g.numel() + chunkElems - 1) / chunkElems;
    if (chunks == 0)
      continue;
    // A grid holds at most 2^31 - 1 blocks.
    if (group.count == kNormGroup ||
        (group.count > 0 && group.firstChunk[group.count] + chunks > (int64_t(1) << 30)))
      G3RT_RETURN_IF_ERROR(flush());
    group.data[group.count] = g.data;
    group.numel[group.count] = g.numel();
    group.dtype[group.count] = g.dtype;
    group.firstChunk[group.count + 1] = group.firstChunk[group.count] + chunks;
    ++group.count;
  }
  G3RT_RETURN_IF_ERROR(flush());
  normFinishDevice<<<1, 1024, 0, ctx.stream>>>(partials, totalChunks, args.outputs[0].data,
                                               args.outputs[0].dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "global_norm");
  return Status();
}

//===----------------------------------------------------------------------===//
// clip_scale, lr_schedule
//===----------------------------------------------------------------------===//

namespace {

__global__ void clipScaleDevice(const void *norm, DType normType, float maxNorm, bool clip,
                                void *out, DType outType) {
  float c = 1.0f;
  if (clip) {
    // torch: max_norm / (total_norm + 1e-6), clamped to 1 (std::min(1, q)
    // keeps 1 when q is NaN; so does this comparison).
    float q = __fdiv_rn(maxNorm, __fadd_rn(loadFloat(norm, normType, 0), 1e-6f));
    c = q < 1.0f ? q : 1.0f;
  }
  storeFloat(out, outType, 0, c);
}

} // namespace

Status clipScaleKernel(const KernelArgs &args) {
  if (args.inputs.size() != 1 || args.outputs.size() != 1)
    return args.fail("expects 1 input (norm) and 1 output");
  G3RT_RETURN_IF_ERROR(checkFloatScalar(args, args.inputs[0], "norm"));
  G3RT_RETURN_IF_ERROR(checkFloatScalar(args, args.outputs[0], "output"));
  double maxNorm = 0;
  G3RT_RETURN_IF_ERROR(args.requireFloat("max_norm", maxNorm));
  clipScaleDevice<<<1, 1, 0, contextOf(args).stream>>>(args.inputs[0].data, args.inputs[0].dtype,
                                                       float(maxNorm), maxNorm > 0,
                                                       args.outputs[0].data, args.outputs[0].dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "clip_scale");
  return Status();
}

namespace {

enum class Schedule : int { Constant, Cosine, Linear, ConstantWithWarmup };

// Evaluated in double like HF's Python lambdas; `step` counts updates taken.
__global__ void lrScheduleDevice(const void *stepP, DType stepT, const void *totalP, DType totalT,
                                 const void *warmupP, DType warmupT, Schedule kind, double lr,
                                 void *out, DType outType) {
  int64_t t = loadIndex(stepP, stepT, 0), S = loadIndex(totalP, totalT, 0),
          w = loadIndex(warmupP, warmupT, 0);
  double f = 1;
  if (kind != Schedule::Constant) {
    if (t < w) {
      f = double(t) / double(max(int64_t(1), w));
    } else if (kind == Schedule::Cosine) {
      const double pi = 3.14159265358979323846;
      double progress = double(t - w) / double(max(int64_t(1), S - w));
      f = fmax(0.0, 0.5 * (1.0 + cos(pi * progress)));
    } else if (kind == Schedule::Linear) {
      f = fmax(0.0, double(S - t) / double(max(int64_t(1), S - w)));
    }
  }
  storeFloat(out, outType, 0, float(lr * f));
}

} // namespace

Status lrScheduleKernel(const KernelArgs &args) {
  if (args.inputs.size() != 3 || args.outputs.size() != 1)
    return args.fail("expects 3 inputs (step, total_steps, warmup_steps) and 1 output");
  G3RT_RETURN_IF_ERROR(checkCount(args, args.inputs[0], "step"));
  G3RT_RETURN_IF_ERROR(checkCount(args, args.inputs[1], "total_steps"));
  G3RT_RETURN_IF_ERROR(checkCount(args, args.inputs[2], "warmup_steps"));
  G3RT_RETURN_IF_ERROR(checkFloatScalar(args, args.outputs[0], "output"));
  double lr = 0;
  G3RT_RETURN_IF_ERROR(args.requireFloat("learning_rate", lr));
  auto kindName = args.attrs ? args.attrs->getString("kind") : std::nullopt;
  if (!kindName)
    return args.fail("missing string attribute 'kind'");
  Schedule kind;
  if (*kindName == "constant")
    kind = Schedule::Constant;
  else if (*kindName == "cosine")
    kind = Schedule::Cosine;
  else if (*kindName == "linear")
    kind = Schedule::Linear;
  else if (*kindName == "constant_with_warmup")
    kind = Schedule::ConstantWithWarmup;
  else
    return args.fail("unknown schedule kind '" + std::string(*kindName) +
                     "' (expected cosine, linear, constant or constant_with_warmup)");
  const TensorView &s = args.inputs[0], &S = args.inputs[1], &w = args.inputs[2];
  lrScheduleDevice<<<1, 1, 0, contextOf(args).stream>>>(s.data, s.dtype, S.data, S.dtype, w.data,
                                                        w.dtype, kind, lr, args.outputs[0].data,
                                                        args.outputs[0].dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "lr_schedule");
  return Status();
}

//===----------------------------------------------------------------------===//
// adamw
//===----------------------------------------------------------------------===//

namespace {

/// Tensors per launch of the multi-tensor update; their pointers travel as
/// a kernel parameter (about 3 KB, under the 4 KB limit).
constexpr int kAdamGroup = 40;
/// Elements per block: 16 per thread.
constexpr int64_t kAdamChunk = 16 * kThreads;

struct AdamGroup {
  const float *p[kAdamGroup], *g[kAdamGroup], *m[kAdamGroup], *v[kAdamGroup];
  float *p1[kAdamGroup], *m1[kAdamGroup], *v1[kAdamGroup];
  int64_t numel[kAdamGroup];
  /// The chunks of tensor i are firstChunk[i] .. firstChunk[i + 1] - 1 of
  /// this launch's grid.
  int64_t firstChunk[kAdamGroup + 1];
  int count;
};

// One block per chunk of one tensor. Outputs may alias p, m, v: each
// element's inputs are read before its outputs are written, and elements are
// independent (no __restrict__).
__global__ void adamwDevice(AdamGroup grp, const void *stepP, DType stepT, const void *lrP,
                            DType lrT, const void *scaleP, DType scaleT, AdamHyper h) {
  // The scalar factors, in double and rounded once to fp32 as the CPU (and
  // torch) do, computed by one thread per block from the device scalars.
  __shared__ float sDecay, sStepSize, sBc2Sqrt, sGradScale;
  if (threadIdx.x == 0) {
    int64_t step = loadIndex(stepP, stepT, 0);
    double lr = loadFloat(lrP, lrT, 0);
    double t = double(step + 1);
    double bc1 = 1.0 - pow(h.beta1, t), bc2 = 1.0 - pow(h.beta2, t);
    sDecay = float(1.0 - lr * h.wd);
    sStepSize = float(lr / bc1);
    sBc2Sqrt = float(sqrt(bc2));
    sGradScale = loadFloat(scaleP, scaleT, 0);
  }
  __syncthreads();
  const float decay = sDecay, stepSize = sStepSize, bc2Sqrt = sBc2Sqrt, gradScale = sGradScale;
  const float b1 = float(h.beta1), b2 = float(h.beta2), c1 = float(1.0 - h.beta1),
              c2 = float(1.0 - h.beta2), epsF = float(h.eps);
  const int64_t chunk = blockIdx.x;
  int k = 0;
  while (k + 1 < grp.count && grp.firstChunk[k + 1] <= chunk)
    ++k;
  const float *P = grp.p[k], *G = grp.g[k], *M = grp.m[k], *Vv = grp.v[k];
  float *P1 = grp.p1[k], *M1 = grp.m1[k], *V1 = grp.v1[k];
  const int64_t begin = (chunk - grp.firstChunk[k]) * kAdamChunk;
  const int64_t end = min(grp.numel[k], begin + kAdamChunk);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    float g = __fmul_rn(G[i], gradScale);
    float pi = __fmul_rn(P[i], decay);
    float mi = __fadd_rn(__fmul_rn(b1, M[i]), __fmul_rn(c1, g));
    float vi = __fadd_rn(__fmul_rn(b2, Vv[i]), __fmul_rn(c2, __fmul_rn(g, g)));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2Sqrt), epsF);
    pi = __fsub_rn(pi, __fmul_rn(stepSize, __fdiv_rn(mi, denom)));
    P1[i] = pi;
    M1[i] = mi;
    V1[i] = vi;
  }
}

} // namespace

// torch's multi-tensor ("foreach") AdamW: the n tensors go in groups of
// kAdamGroup per launch instead of one launch each.
Status adamwKernel(const KernelArgs &args) {
  size_t n = 0;
  AdamHyper h;
  // A negative step (an error on the CPU) cannot be seen here without a
  // host round trip; it would give t <= 0 and non-finite bias corrections.
  G3RT_RETURN_IF_ERROR(checkAdamW(args, n, h));
  const size_t scalars = 4 * n;
  const TensorView &step = args.inputs[scalars], &lr = args.inputs[scalars + 1],
                   &scale = args.inputs[scalars + 2];
  cudaStream_t stream = contextOf(args).stream;

  AdamGroup group{};
  auto flush = [&]() -> Status {
    int64_t chunks = group.firstChunk[group.count];
    if (chunks > 0) {
      adamwDevice<<<unsigned(chunks), kThreads, 0, stream>>>(group, step.data, step.dtype, lr.data,
                                                             lr.dtype, scale.data, scale.dtype, h);
      G3RT_CUDA_CHECK_LAUNCH(args, "adamw");
    }
    group = AdamGroup{};
    return Status();
  };
  for (size_t k = 0; k < n; ++k) {
    int64_t numel = args.inputs[k].numel();
    int64_t chunks = (numel + kAdamChunk - 1) / kAdamChunk;
    if (chunks == 0)
      continue;
    // A grid holds at most 2^31 - 1 blocks.
    if (group.count == kAdamGroup ||
        (group.count > 0 && group.firstChunk[group.count] + chunks > (int64_t(1) << 30)))
      G3RT_RETURN_IF_ERROR(flush());
    if (chunks > (int64_t(1) << 30))
      return args.fail("tensor " + std::to_string(k) + " has too many elements");
    int c = group.count;
    group.p[c] = args.inputs[k].f32();
    group.g[c] = args.inputs[n + k].f32();
    group.m[c] = args.inputs[2 * n + k].f32();
    group.v[c] = args.inputs[3 * n + k].f32();
    group.p1[c] = args.outputs[k].f32();
    group.m1[c] = args.outputs[n + k].f32();
    group.v1[c] = args.outputs[2 * n + k].f32();
    group.numel[c] = numel;
    group.firstChunk[c + 1] = group.firstChunk[c] + chunks;
    ++group.count;
  }
  return flush();
}

} // namespace g3rt::cuda
