//===- cpu_kernels.cpp - the CPU kernel table -----------------------------===//

#include "runtime/cpu/cpu_kernels.h"

namespace g3rt::cpu {

static const KernelTable &table() {
  static const KernelTable t({
#define G3RT_KERNEL(name, function) {#name, &function},
#include "runtime/kernels/kernel_names.def"
  });
  return t;
}

KernelFn findCpuKernel(std::string_view name) { return table().find(name); }

std::vector<std::string> cpuKernelNames() { return table().names(); }

} // namespace g3rt::cpu
