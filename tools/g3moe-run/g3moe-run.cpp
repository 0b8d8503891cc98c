//===- g3moe-run.cpp - train a compiled step ------------------------------===//
//
// Thin main over the runtime library; builds without LLVM or MLIR. Where the
// build has CUDA, the main registers the CUDA backend so that --device can
// choose it; the training library does not link CUDA itself.
//
//===----------------------------------------------------------------------===//

#include "runtime/tools/run_main.h"

#if defined(G3MOE_HAVE_CUDA)
#include "runtime/cuda/cuda_backend.h"
#endif

int main(int argc, char **argv) {
#if defined(G3MOE_HAVE_CUDA)
  g3rt::cuda::registerCudaBackend();
#endif
  return g3rt::runMain(argc, argv);
}
