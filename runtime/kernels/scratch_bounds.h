//===- scratch_bounds.h - device memory kernels take beside the arena -*- C++ -*-===//
//
// Most kernels work inside the step's arena and the backend's fixed
// workspace. cuDNN attention does not: it keeps a scratch buffer of its own,
// grown to the largest call's need (runtime/cuda/cudnn_attention.cu,
// layOutScratch), which at long context is gigabytes (5.0 GiB for the
// backward at 262,144 tokens of G3MoE-4B). The memory planner counts this
// bound in a step's device memory and the CUDA backend checks it before it
// allocates, so that a step that fits its budget does not run out of memory
// on its first attention backward.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_KERNELS_SCRATCH_BOUNDS_H
#define G3MOE_RUNTIME_KERNELS_SCRATCH_BOUNDS_H

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace g3rt {

/// The parts cuDNN attention lays out in its scratch for queries of
/// [batch, tokens, heads, headDim] (cudnn_attention.cu, layOutScratch),
/// each 256-byte aligned: fp32 statistics per row, a bf16 tensor shaped like
/// q, an fp32 one.
struct AttentionScratchParts {
  uint64_t stats = 0, act = 0, acc = 0;
};
inline AttentionScratchParts attentionScratchParts(int64_t batch, int64_t tokens, int64_t heads,
                                                   int64_t headDim) {
  auto align = [](uint64_t n) { return (n + 255) & ~uint64_t(255); };
  const uint64_t rows = uint64_t(batch * heads * tokens);
  const uint64_t elements = rows * uint64_t(headDim);
  return {align(rows * 4), align(elements * 2), align(elements * 4)};
}

/// An upper bound on cuDNN attention's scratch for one call on queries of
/// [batch, tokens, heads, headDim]: the softmax statistics, and for the
/// backward (`grad`) the masked output gradient, the forward's output
/// unless the step saved it (`saved`), the row sums and the fp32 dq
/// accumulator, each 256-byte aligned; then cuDNN's own workspace, which its
/// plans choose at run time and is bounded here by the size of the dq
/// accumulator (on an H100 with cuDNN 9 at 262,144 tokens the backward's
/// took just under that: 5.0 GiB in all against this bound's 5.0 GiB).
inline uint64_t attentionScratchBound(int64_t batch, int64_t tokens, int64_t heads, int64_t headDim,
                                      bool grad, bool saved) {
  const AttentionScratchParts p = attentionScratchParts(batch, tokens, heads, headDim);
  const uint64_t workspace = p.acc;
  if (!grad)
    return p.stats + workspace;
  return 2 * p.stats + (saved ? 1 : 2) * p.act + p.acc + workspace;
}

/// The bound for one launch of `kernel` with `inputs` inputs, the first of
/// shape `q[0, rank)`: attentionScratchBound for `attention` and
/// `attention_grad` on queries [batch, tokens, heads, headDim] (a backward
/// handed the forward's output and log-sum-exp has seven inputs), 0 for
/// every other kernel.
inline uint64_t launchScratchBound(std::string_view kernel, const int64_t *q, size_t rank,
                                   size_t inputs) {
  const bool grad = kernel == "attention_grad";
  if ((!grad && kernel != "attention") || rank != 4)
    return 0;
  return attentionScratchBound(q[0], q[1], q[2], q[3], grad, inputs >= 7);
}

} // namespace g3rt

#endif // G3MOE_RUNTIME_KERNELS_SCRATCH_BOUNDS_H
