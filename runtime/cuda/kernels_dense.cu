//===- kernels_dense.cu - CUDA kernels -----------------------------------------===//

#include "runtime/cuda/cuda_context.h"

namespace g3rt::cuda {

void registerCudaDenseKernels(KernelTable &table) { (void)table; }

} // namespace g3rt::cuda
