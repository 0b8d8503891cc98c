//===- kernel_names.h - the names of all kernels ----------------*- C++ -*-===//
//
// The list of kernel_names.def as data: what tests and tools compare the
// backends' tables and the compiler's ops with.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_KERNELS_KERNEL_NAMES_H
#define G3MOE_RUNTIME_KERNELS_KERNEL_NAMES_H

#include <string_view>

namespace g3rt {

/// Every kernel name, in kernel_names.def's order (grouped by family).
inline constexpr std::string_view kKernelNames[] = {
#define G3RT_KERNEL(name, function) #name,
#include "runtime/kernels/kernel_names.def"
};

/// Whether `name` is in kernel_names.def: a kernel some backend may run.
inline bool isKernelName(std::string_view name) {
  for (std::string_view known : kKernelNames)
    if (known == name)
      return true;
  return false;
}

} // namespace g3rt

#endif // G3MOE_RUNTIME_KERNELS_KERNEL_NAMES_H
