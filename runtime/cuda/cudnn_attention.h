//===- cudnn_attention.h - attention on cuDNN's fused kernels ---*- C++ -*-===//
//
// The attention and attention_grad kernels on cuDNN's fused flash-attention
// engines, for the cases they serve: bf16 tensors, head_dim a multiple of 8 up
// to 256, GQA, causal with an optional sliding window, no logit soft-capping,
// and segment ids that make each batch row one document followed by padding.
// Anything else (packed documents, other float types) stays on the own
// flash-attention kernels (flash_attention.cuh).
//
// The choice is the context's AttentionImpl (G3MOE_CUDA_ATTENTION=auto|own|
// cudnn): auto uses cuDNN where it serves and the own kernels elsewhere (also
// for a shape cuDNN has no engine for), own never uses cuDNN, and cudnn fails
// a call it cannot serve (tests use it to pin the path). cuDNN's backward
// accumulates dq with atomics, so unlike the own kernels it is not
// bit-reproducible.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_CUDNN_ATTENTION_H
#define G3MOE_RUNTIME_CUDA_CUDNN_ATTENTION_H

#include "runtime/cuda/cuda_context.h"
#include "runtime/kernels/kernel_checks.h"

namespace g3rt::cuda {

/// Runs attention (or, with `grad`, attention_grad) of `args` on cuDNN when
/// the context's AttentionImpl and the call allow it. Sets `served` when it
/// did; leaves it false (and returns OK) when the own kernels should run.
Status cudnnAttention(const KernelArgs &args, const checks::AttentionShape &shape, bool grad,
                      bool &served);

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_CUDNN_ATTENTION_H
