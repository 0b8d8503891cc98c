//===- kernels_optimizer.cu - CUDA kernels -----------------------------------------===//

#include "runtime/cuda/cuda_context.h"

namespace g3rt::cuda {

void registerCudaOptimizerKernels(KernelTable &table) { (void)table; }

} // namespace g3rt::cuda
