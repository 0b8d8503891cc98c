//===- kernels_moe.cu - CUDA kernels -----------------------------------------===//

#include "runtime/cuda/cuda_context.h"

namespace g3rt::cuda {

void registerCudaMoEKernels(KernelTable &table) { (void)table; }

} // namespace g3rt::cuda
