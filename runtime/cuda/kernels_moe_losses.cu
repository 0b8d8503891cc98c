//===- kernels_moe_losses.cu - MoE auxiliary loss CUDA kernels ------------===//
//
// The CUDA versions of the auxiliary losses of the routers (docs/kernels.md,
// "Auxiliary losses"): load balancing and router z-loss with their
// gradients, the weighted loss sum, and the routing statistic expert_load,
// with the checks and messages of runtime/cpu/kernels_moe_losses.cpp.
// Reductions over tokens go through per-row terms and a fixed tree, so the
// losses are reproducible run to run.
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
// Auxiliary losses
//===----------------------------------------------------------------------===//

namespace {

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
__global__ void balanceRowTerms(const void *logits, DType lt, const int32_t *seg, int64_t N, int E,
                                const int32_t *counts, const int32_t *real, int L, double *terms) {
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
  d = butterflySum(d);
  if (lane == 0)
    terms[n] = d;
}

__global__ void balanceGradRows(const void *logits, DType lt, const int32_t *seg, int64_t N, int E,
                                const int32_t *counts, const int32_t *real, int L,
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
  fp = butterflySum(fp);
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

/// The number of real rows, on the device.
Status launchRealRows(const KernelArgs &args, ScratchArrays &scratch, const TensorView &seg,
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

Status balanceSetup(const KernelArgs &args, int64_t trailing, ScratchArrays &scratch,
                    BalanceSetup &b) {
  G3RT_RETURN_IF_ERROR(checkBalanceLayers(args, trailing, b.L, b.E, b.N));
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
    countExperts<<<blocksFor(items, 256), 256, 0, ctx.stream>>>(idx.i32(), seg.i32(), b.N, int(k),
                                                                int(b.E), b.counts, r.at + l);
    G3RT_CUDA_CHECK_LAUNCH(args, "counting routed experts");
  }
  return settle(args, r, [name = std::string(args.name), ks, E = b.E](const BadWord *w) {
    for (size_t l = 0; l < ks.size(); ++l)
      if (w[l] != kNoBad) {
        return Status::error(name + ": expert index " + std::to_string(badValue(w[l])) +
                             " of layer " + str(int64_t(l)) + " at row " +
                             str(badPosition(w[l]) / ks[l]) + " is outside [0, " + str(E) + ")");
      }
    return Status();
  });
}

} // namespace

Status loadBalancingLossKernel(const KernelArgs &args) {
  if (args.outputs.size() != 1)
    return args.fail("expected 1 output, got " + std::to_string(args.outputs.size()));
  ScratchArrays scratch(contextOf(args));
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
  finishLoss<<<1, kReduceThreads, 0, stream>>>(terms, b.L * b.N, b.real, int(b.L), double(b.E),
                                               args.outputs[0].data, args.outputs[0].dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "load_balancing_loss (sum)");
  return Status();
}

Status loadBalancingLossGradKernel(const KernelArgs &args) {
  ScratchArrays scratch(contextOf(args));
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
        logits.data, logits.dtype, seg.i32(), b.N, int(b.E), b.counts, b.real, int(b.L), dloss.data,
        dloss.dtype, out.data, out.dtype);
    G3RT_CUDA_CHECK_LAUNCH(args, "load_balancing_loss_grad");
  }
  return Status();
}

Status routerZLossKernel(const KernelArgs &args) {
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
  ScratchArrays scratch(contextOf(args));
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

Status routerZLossGradKernel(const KernelArgs &args) {
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
    G3RT_RETURN_IF_ERROR(checkMatrix(args, args.outputs[l], "result", N, args.inputs[l].dim(-1)));
  ScratchArrays scratch(contextOf(args));
  int32_t *real;
  G3RT_RETURN_IF_ERROR(launchRealRows(args, scratch, seg, N, real));
  cudaStream_t stream = contextOf(args).stream;
  for (int64_t l = 0; l < L && N > 0; ++l) {
    const TensorView &logits = args.inputs[l], &out = args.outputs[l];
    zGradRows<<<blocksFor(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(
        logits.data, logits.dtype, seg.i32(), N, int(logits.dim(-1)), real, int(L), dloss.data,
        dloss.dtype, out.data, out.dtype);
    G3RT_CUDA_CHECK_LAUNCH(args, "router_z_loss_grad");
  }
  return Status();
}

namespace {

// Up to kSumTerms terms per launch; `acc` carries the running double sum
// between launches so that any number of terms works.
constexpr int kSumTerms = 16;
struct SumTerms {
  const void *term[kSumTerms];
  DType type[kSumTerms];
  double coefficient[kSumTerms];
  int count;
};

__global__ void lossSumDevice(SumTerms terms, double *acc, bool first, bool last, void *out,
                              DType ot) {
  double loss = first ? 0.0 : *acc;
  for (int i = 0; i < terms.count; ++i)
    loss += terms.coefficient[i] * double(loadFloat(terms.term[i], terms.type[i], 0));
  if (last)
    storeFloat(out, ot, 0, float(loss));
  else
    *acc = loss;
}

} // namespace

Status lossSumKernel(const KernelArgs &args) {
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
  ScratchArrays scratch(contextOf(args));
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
    lossSumDevice<<<1, 1, 0, contextOf(args).stream>>>(terms, acc, first, i >= total,
                                                       args.outputs[0].data, args.outputs[0].dtype);
    G3RT_CUDA_CHECK_LAUNCH(args, "loss_sum");
  } while (i < total);
  return Status();
}

//===----------------------------------------------------------------------===//
// expert_load
//===----------------------------------------------------------------------===//

namespace {

// Routing slots per expert over the real tokens. One thread per token counts
// into shared memory; experts are few, so the counts fit.
__global__ void expertLoadDevice(const int32_t *idx, const int32_t *seg, int64_t tokens, int64_t k,
                                 int64_t experts, float *out) {
  extern __shared__ unsigned int counts[];
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x)
    counts[e] = 0;
  __syncthreads();
  for (int64_t n = threadIdx.x; n < tokens; n += blockDim.x) {
    if (seg[n] == 0)
      continue;
    for (int64_t j = 0; j < k; ++j) {
      int32_t e = idx[n * k + j];
      if (e >= 0 && e < experts)
        atomicAdd(&counts[e], 1u);
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x)
    out[e] = float(counts[e]);
}

} // namespace

Status expertLoadKernel(const KernelArgs &args) {
  if (args.inputs.size() != 2 || args.outputs.size() != 1)
    return args.fail("expected 2 inputs and 1 output");
  const TensorView &idx = args.inputs[0], &seg = args.inputs[1], &out = args.outputs[0];
  auto experts = args.attrs ? args.attrs->getInt("num_experts") : std::nullopt;
  if (!experts || *experts < 1 || out.numel() != *experts || out.dtype != DType::F32 ||
      idx.dtype != DType::I32 || seg.dtype != DType::I32 || idx.rank() < 1 ||
      idx.rows() != seg.numel())
    return args.fail("expects indices [N, k] i32, segment_ids with N entries and an f32 "
                     "result of num_experts counts");
  // One block: the counts are tiny and the tokens at most a few hundred thousand.
  size_t shared = size_t(*experts) * sizeof(unsigned int);
  expertLoadDevice<<<1, 1024, shared, contextOf(args).stream>>>(idx.i32(), seg.i32(), seg.numel(),
                                                                idx.dim(-1), *experts, out.f32());
  G3RT_CUDA_CHECK_LAUNCH(args, "expert_load");
  return Status();
}

} // namespace g3rt::cuda
