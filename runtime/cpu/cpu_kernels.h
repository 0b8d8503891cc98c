//===- cpu_kernels.h - the CPU reference kernels ----------------*- C++ -*-===//
//
// One function per kernel of runtime/kernels/kernel_names.def, defined in
// the kernels_<family>.cpp file of its family; cpu_kernels.cpp builds the
// CPU kernel table (findCpuKernel) from the same list.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CPU_CPU_KERNELS_H
#define G3MOE_RUNTIME_CPU_CPU_KERNELS_H

#include "runtime/kernels/kernel.h"

namespace g3rt::cpu {

#define G3RT_KERNEL(name, function) Status function(const KernelArgs &args);
#include "runtime/kernels/kernel_names.def"

/// The CPU reference kernel called `name`, or null.
KernelFn findCpuKernel(std::string_view name);
/// Every CPU kernel name, sorted.
std::vector<std::string> cpuKernelNames();

} // namespace g3rt::cpu

#endif // G3MOE_RUNTIME_CPU_CPU_KERNELS_H
