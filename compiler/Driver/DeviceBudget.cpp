//===- DeviceBudget.cpp - where g3moe-compile's memory budget comes from --===//
//
// The choice between memory_budget_gb and the visible GPU's memory, and the
// report's line. No CUDA here: the GPU is read by DeviceQuery.cpp, which
// only the g3moe-compile tool links.
//
//===----------------------------------------------------------------------===//

#include "compiler/Driver/DeviceBudget.h"

#include "frontend/Config.h"

#include "runtime/base/units.h"

namespace g3moe::compiler {

int64_t deviceBudgetBytes(int64_t totalBytes) {
  return totalBytes > kDeviceReserveBytes ? totalBytes - kDeviceReserveBytes : 0;
}

MemoryBudget resolveMemoryBudget(const frontend::TrainingOptions &training,
                                 const DeviceQuery &query) {
  MemoryBudget budget;
  if (!training.memoryBudgetOrigin.empty()) {
    budget.bytes = training.memoryBudgetBytes;
    budget.origin = MemoryBudget::Origin::Stated;
    budget.source = training.memoryBudgetOrigin;
    return budget;
  }
  if (!query) {
    budget.source = "no memory_budget_gb";
    return budget;
  }
  VisibleDevice device = query();
  if (!device.found) {
    budget.source = "no memory_budget_gb and no visible GPU (" + device.why + ")";
    return budget;
  }
  const std::string gpu =
      "the visible GPU " + device.name + ", " + g3rt::sizeText(uint64_t(device.totalBytes));
  budget.bytes = deviceBudgetBytes(device.totalBytes);
  if (budget.bytes == 0) {
    budget.source = "no memory_budget_gb, and " + gpu + ", is not larger than the " +
                    g3rt::sizeText(uint64_t(kDeviceReserveBytes)) + " the CUDA backend reserves";
    return budget;
  }
  budget.origin = MemoryBudget::Origin::Device;
  budget.source = gpu + " less a " + g3rt::sizeText(uint64_t(kDeviceReserveBytes)) + " reserve";
  return budget;
}

std::string describeBudget(const MemoryBudget &budget) {
  if (budget.bytes > 0)
    return "memory budget " + g3rt::sizeText(uint64_t(budget.bytes)) + " from " + budget.source;
  if (budget.origin == MemoryBudget::Origin::Stated)
    return "no memory budget: memory_budget_gb is 0 (" + budget.source + ")";
  return "no memory budget: " + budget.source;
}

} // namespace g3moe::compiler
