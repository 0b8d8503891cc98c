//===- cpu_kernels.cpp - the CPU kernel table -----------------------------===//

#include "runtime/cpu/cpu_kernels.h"

#include <algorithm>

namespace g3rt {

static const KernelTable &table() {
  static const KernelTable t = [] {
    KernelTable t = {
#define G3RT_KERNEL(name, function) {#name, &cpu::function},
#include "runtime/kernels/kernel_names.def"
    };
    std::sort(t.begin(), t.end());
    return t;
  }();
  return t;
}

KernelFn findCpuKernel(std::string_view name) {
  for (const auto &[n, fn] : table())
    if (n == name)
      return fn;
  return nullptr;
}

std::vector<std::string> cpuKernelNames() {
  std::vector<std::string> names;
  for (const auto &e : table())
    names.push_back(e.first);
  return names;
}

} // namespace g3rt
