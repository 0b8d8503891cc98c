//===- cuda_backend.h - the CUDA backend for the training loop --*- C++ -*-===//
//
// Registers the CUDA backend with the runtime (runtime/exec/backend.h)
// so that the training loop, which does not link CUDA, can run on a GPU. No
// CUDA header here: a program's main includes this and calls the one
// function where it is built with CUDA.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_CUDA_BACKEND_H
#define G3MOE_RUNTIME_CUDA_CUDA_BACKEND_H

namespace g3rt::cuda {

/// Makes selectBackend's "cuda" and "auto" find the CUDA backend. Call once
/// at start-up, before anything selects a backend.
void registerCudaBackend();

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_CUDA_BACKEND_H
