//===- cuda_kernels.cpp - the CUDA kernel table ---------------------------===//

#include "runtime/cuda/cuda_kernels.h"

#include <string>

namespace g3rt::cuda {

Status cudaFailure(const KernelArgs &args, cudaError_t error, const char *what) {
  return args.fail(std::string(what) + ": " + cudaGetErrorString(error));
}

Status cublasFailure(const KernelArgs &args, cublasStatus_t status, const char *what) {
  return args.fail(std::string(what) + ": cuBLAS status " + std::to_string(int(status)));
}

static const KernelTable &table() {
  static const KernelTable t({
#define G3RT_KERNEL(name, function) {#name, &function},
#include "runtime/kernels/kernel_names.def"
  });
  return t;
}

KernelFn findCudaKernel(std::string_view name) { return table().find(name); }

std::vector<std::string> cudaKernelNames() { return table().names(); }

} // namespace g3rt::cuda
