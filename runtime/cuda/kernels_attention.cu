//===- kernels_attention.cu - CUDA kernels -----------------------------------------===//

#include "runtime/cuda/cuda_context.h"

namespace g3rt::cuda {

void registerCudaAttentionKernels(KernelTable &table) { (void)table; }

} // namespace g3rt::cuda
