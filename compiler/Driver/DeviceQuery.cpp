//===- DeviceQuery.cpp - the GPU visible to g3moe-compile -----------------===//
//
// Compiled with G3MOE_HAVE_CUDA where the build has CUDA (linking cudart, as
// g3moe-run's main does); otherwise every query finds no device.
//
//===----------------------------------------------------------------------===//

#include "compiler/Driver/DeviceQuery.h"

#if defined(G3MOE_HAVE_CUDA)
#include <cuda_runtime.h>
#endif

namespace g3moe::compiler {

#if defined(G3MOE_HAVE_CUDA)

namespace {

/// A device that could not be read, with CUDA's message for `error`.
VisibleDevice unreadable(cudaError_t error, const char *what) {
  VisibleDevice device;
  device.why = std::string(what) + ": " + cudaGetErrorString(error);
  // Clear the sticky error so that no later call is blamed for it.
  cudaGetLastError();
  return device;
}

} // namespace

VisibleDevice queryVisibleDevice() {
  int count = 0;
  // Without a driver or a device this is an error rather than 0
  // (cudaErrorNoDevice, cudaErrorInsufficientDriver), as g3moe-run sees it.
  // The CUDA backend's countDevices (runtime/cuda/cuda_backend.cpp) reads
  // the same way; it is not called here because the compiler does not link
  // the runtime's CUDA library. Keep the two alike.
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess)
    return unreadable(e, "cudaGetDeviceCount");
  if (count == 0) {
    VisibleDevice none;
    none.why = "cudaGetDeviceCount found none";
    return none;
  }
  cudaDeviceProp prop{};
  if ((e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess)
    return unreadable(e, "cudaGetDeviceProperties");
  if ((e = cudaSetDevice(0)) != cudaSuccess)
    return unreadable(e, "cudaSetDevice");
  size_t free = 0, total = 0;
  e = cudaMemGetInfo(&free, &total);
  // The context exists now: give its memory back before the compile.
  cudaDeviceReset();
  if (e != cudaSuccess)
    return unreadable(e, "cudaMemGetInfo");
  VisibleDevice device;
  device.found = true;
  device.name = prop.name;
  device.totalBytes = static_cast<int64_t>(total);
  return device;
}

#else

VisibleDevice queryVisibleDevice() {
  VisibleDevice none;
  none.why = "this g3moe-compile was built without CUDA";
  return none;
}

#endif

} // namespace g3moe::compiler
