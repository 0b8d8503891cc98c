//===- kernels_elementwise.cu - CUDA kernels -----------------------------------------===//

#include "runtime/cuda/cuda_context.h"

namespace g3rt::cuda {

void registerCudaElementwiseKernels(KernelTable &table) { (void)table; }

} // namespace g3rt::cuda
