//===- cuda_kernels.h - the CUDA kernels ------------------------*- C++ -*-===//
//
// One function per kernel of runtime/kernels/kernel_names.def, defined in
// the kernels_<family>.cu file of its family (the families and file names of
// runtime/cpu/); cuda_kernels.cpp builds the CUDA kernel table
// (findCudaKernel) from the same list.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_CUDA_KERNELS_H
#define G3MOE_RUNTIME_CUDA_CUDA_KERNELS_H

#include "runtime/cuda/cuda_context.h"

namespace g3rt::cuda {

#define G3RT_KERNEL(name, function) Status function(const KernelArgs &args);
#include "runtime/kernels/kernel_names.def"

/// Every CUDA kernel name, sorted.
std::vector<std::string> cudaKernelNames();

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_CUDA_KERNELS_H
