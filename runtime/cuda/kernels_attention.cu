//===- kernels_attention.cu - RoPE and attention CUDA kernels -------------===//
//
// The CUDA versions of rope, attention and attention_grad. They implement the
// math of docs/kernels.md ("Attention and RoPE") and mirror the CPU reference
// (runtime/cpu/kernels_attention.cpp): the same argument checks, the same
// fp32 formulas in the same order where that is cheap, one rounding on store.
// Calls that cuDNN's fused attention serves go there instead
// (cudnn_attention.h); the kernels below take the rest.
//
// The calls cuDNN does not serve run on the own flash-attention kernels
// (flash_attention.cuh): no T x T matrix exists, a sliding layer only visits
// the key tiles its window can reach, and tiles whose every (query, key)
// pair is masked (other documents, padding) are skipped before their K/V
// are loaded. Two implementations share that structure:
//   * bf16 q, k, v (and do): tensor cores (attention_mma.cu). The
//     probabilities and dS that feed the second product of each pair are
//     split into two bf16 terms, which keeps them to about 16 bits, so
//     results stay within rounding of the fp32 reference.
//   * any other float type: fp32 on CUDA cores, the reference's arithmetic
//     (attention_fp32.cu).
// Both backward passes are deterministic (no atomics).
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_kernels.h"
#include "runtime/cuda/flash_attention.cuh"
#include "runtime/cuda/rope_tables.h"

#if G3MOE_HAVE_CUDNN
#include "runtime/cuda/cudnn_attention.h"
#endif

#include <algorithm>
#include <string>

namespace g3rt::cuda {

using namespace checks;

//===----------------------------------------------------------------------===//
// rope
//===----------------------------------------------------------------------===//

namespace {

// One block per token: the angle table is built once in shared memory and
// shared by the token's heads.
__global__ void ropeDevice(const void *x, DType xt, const void *pos, DType pt, void *y, DType yt,
                           int n, int d, float sign, RopeFreqs freqs) {
  extern __shared__ float ropeTable[];
  const int half = d / 2;
  float *cs = ropeTable, *sn = ropeTable + half;
  const int64_t row = blockIdx.x;
  const float p = float(loadIndex(pos, pt, row));
  for (int i = threadIdx.x; i < half; i += blockDim.x)
    ropeAngle(freqs, p, i, sign, cs[i], sn[i]);
  __syncthreads();
  for (int t = threadIdx.x; t < n * half; t += blockDim.x) {
    const int h = t / half, i = t - h * half;
    const int64_t base = (row * n + h) * int64_t(d);
    const float a = loadFloat(x, xt, base + i), b = loadFloat(x, xt, base + i + half);
    const float c = cs[i], s = sn[i];
    // Explicit roundings: no fused multiply-add, as the CPU computes it.
    storeFloat(y, yt, base + i, __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
    storeFloat(y, yt, base + i + half, __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
  }
}

} // namespace

Status ropeKernel(const KernelArgs &args) {
  RopeShape r;
  G3RT_RETURN_IF_ERROR(checkRope(args, r));
  const int64_t B = r.B, T = r.T, n = r.n, d = r.d;
  const double theta = r.theta, factor = r.factor;
  const bool transpose = r.transpose;
  const TensorView &x = args.inputs[0], &pos = args.inputs[1], &y = args.outputs[0];
  if (B * T == 0 || n == 0 || d == 0)
    return Status();
  if (d > 8192)
    return args.fail("head dimension " + std::to_string(d) + " is too large (at most 8192)");

  CudaContext &ctx = contextOf(args);
  const int threads = 256;
  ropeDevice<<<unsigned(B * T), threads, size_t(d) * sizeof(float), ctx.stream>>>(
      x.data, x.dtype, pos.data, pos.dtype, y.data, y.dtype, int(n), int(d),
      transpose ? -1.0f : 1.0f, makeRopeFreqs(d, theta, factor));
  G3RT_CUDA_CHECK_LAUNCH(args, "rope");
  return Status();
}

//===----------------------------------------------------------------------===//
// attention: host side
//===----------------------------------------------------------------------===//

namespace {

constexpr int64_t kMaxHeadDim = 256;

Status makeArgs(const KernelArgs &args, const AttentionShape &prob, AttnArgs &a) {
  if (prob.d > kMaxHeadDim)
    return args.fail("head dimension " + std::to_string(prob.d) +
                     " is not supported by the CUDA kernel (at most " +
                     std::to_string(kMaxHeadDim) + ")");
  if (prob.T > (int64_t(1) << 30) || prob.nh > 65535 || prob.B > 65535)
    return args.fail("sequence, head or batch count too large for the CUDA kernel");
  const TensorView &q = args.inputs[0], &k = args.inputs[1], &v = args.inputs[2],
                   &seg = args.inputs[3];
  a = AttnArgs{};
  a.q = q.data;
  a.qt = q.dtype;
  a.k = k.data;
  a.kt = k.dtype;
  a.v = v.data;
  a.vt = v.dtype;
  a.seg = seg.data;
  a.segt = seg.dtype;
  a.T = int(prob.T);
  a.nh = int(prob.nh);
  a.nkv = int(prob.nkv);
  a.d = int(prob.d);
  a.group = int(prob.group);
  a.window = prob.window > 0 && prob.window < prob.T ? int(prob.window) : 0;
  a.scale = prob.scale;
  a.capped = prob.capped;
  a.cap = prob.cap;
  return Status();
}

// The tensor-core kernels take bf16 operands only; other float types use the
// fp32 CUDA-core kernels.
bool tensorCoreOperands(const KernelArgs &args, size_t count, const AttentionShape &prob,
                        AttnArgs &a) {
  bool aligned = prob.d % 8 == 0;
  for (size_t i = 0; i < count; ++i) {
    if (i == 3)
      continue; // segment_ids
    const TensorView &t = args.inputs[i];
    if (t.dtype != DType::BF16)
      return false;
    aligned = aligned && aligned16(t);
  }
  a.vec8 = aligned;
  return true;
}

// cuDNN's fused attention where the context allows it and it serves the call
// (cudnn_attention.h); `served` false: the own kernels run.
Status cudnnIfServed(const KernelArgs &args, const AttentionShape &prob, bool grad, bool &served) {
#if G3MOE_HAVE_CUDNN
  return cudnnAttention(args, prob, grad, served);
#else
  served = false;
  if (contextOf(args).attention == AttentionImpl::Cudnn)
    return args.fail("G3MOE_CUDA_ATTENTION=cudnn, but this build has no cuDNN");
  (void)prob;
  (void)grad;
  return Status();
#endif
}

} // namespace

Status attentionKernel(const KernelArgs &args) {
  AttentionShape prob;
  G3RT_RETURN_IF_ERROR(checkAttention(args, /*grad=*/false, prob));
  if (prob.B * prob.T * prob.nh * prob.d == 0)
    return Status();
  bool served = false;
  G3RT_RETURN_IF_ERROR(cudnnIfServed(args, prob, /*grad=*/false, served));
  if (served)
    return Status();
  AttnArgs a;
  G3RT_RETURN_IF_ERROR(makeArgs(args, prob, a));
  a.o = args.outputs[0].data;
  a.ot = args.outputs[0].dtype;
  a.lse = prob.withLse ? args.outputs[1].f32() : nullptr;
  if (tensorCoreOperands(args, 3, prob, a))
    return launchAttentionMma(args, prob, a);
  return launchAttentionFp32(args, prob, a);
}

Status attentionGradKernel(const KernelArgs &args) {
  AttentionShape prob;
  G3RT_RETURN_IF_ERROR(checkAttention(args, /*grad=*/true, prob));
  if (prob.B * prob.T * prob.nh * prob.d == 0)
    return Status();
  bool served = false;
  G3RT_RETURN_IF_ERROR(cudnnIfServed(args, prob, /*grad=*/true, served));
  if (served)
    return Status();
  AttnArgs a;
  G3RT_RETURN_IF_ERROR(makeArgs(args, prob, a));
  a.dout = args.inputs[4].data;
  a.dt = args.inputs[4].dtype;
  a.dq = args.outputs[0].data;
  a.dqt = args.outputs[0].dtype;
  a.dk = args.outputs[1].data;
  a.dkt = args.outputs[1].dtype;
  a.dv = args.outputs[2].data;
  a.dvt = args.outputs[2].dtype;
  CudaContext &ctx = contextOf(args);
  const size_t statsBytes = size_t(prob.B * prob.nh * prob.T) * 3 * sizeof(float);
  if (statsBytes > ctx.workspaceBytes)
    return args.fail("the softmax statistics need " + std::to_string(statsBytes) +
                     " bytes of workspace, only " + std::to_string(ctx.workspaceBytes) +
                     " are available");
  a.stats = static_cast<float *>(ctx.workspace);
  if (tensorCoreOperands(args, 5, prob, a))
    return launchAttentionGradMma(args, prob, a);
  return launchAttentionGradFp32(args, prob, a);
}

} // namespace g3rt::cuda
