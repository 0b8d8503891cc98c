//===- DeviceQuery.h - the GPU visible to g3moe-compile ---------*- C++ -*-===//
//
// The one CUDA call site of the compiler: reads the name and total memory of
// the GPU g3moe-run would use (CUDA device 0 among the visible ones). It is
// a library of its own (G3MoEDeviceQuery) that only the g3moe-compile tool
// and the GPU tests link; without CUDA in the build it finds no device.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_COMPILER_DRIVER_DEVICEQUERY_H
#define G3MOE_COMPILER_DRIVER_DEVICEQUERY_H

#include "compiler/Driver/DeviceBudget.h"

namespace g3moe::compiler {

/// CUDA device 0's name and cudaMemGetInfo total, or why there is none (no
/// driver, no device, CUDA_VISIBLE_DEVICES hiding them all, a build without
/// CUDA). Reading the total makes a CUDA context; the query destroys it
/// again (cudaDeviceReset), so that the compile does not hold device memory,
/// which means it must run before any other CUDA work of the process.
VisibleDevice queryVisibleDevice();

} // namespace g3moe::compiler

#endif // G3MOE_COMPILER_DRIVER_DEVICEQUERY_H
