//===- kernels_stats.cu - CUDA kernels of training statistics -------------===//
//
// expert_load: routing slots per expert over the real tokens. One thread per
// token counts into shared memory; experts are few, so the counts fit.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_context.h"

namespace g3rt::cuda {

namespace {

__global__ void expertLoadKernel(const int32_t *idx, const int32_t *seg, int64_t tokens,
                                 int64_t k, int64_t experts, float *out) {
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

Status expertLoad(const KernelArgs &args) {
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
  expertLoadKernel<<<1, 1024, shared, contextOf(args).stream>>>(
      idx.i32(), seg.i32(), seg.numel(), idx.dim(-1), *experts, out.f32());
  G3RT_CUDA_CHECK_LAUNCH(args, "expert_load");
  return Status();
}

} // namespace

void registerCudaStatsKernels(KernelTable &table) {
  table.emplace_back("expert_load", &expertLoad);
}

} // namespace g3rt::cuda
