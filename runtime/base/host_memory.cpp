//===- host_memory.cpp - how much host memory a step may take -------------===//

#include "runtime/base/host_memory.h"

#include "runtime/base/file.h"
#include "runtime/base/units.h"

#include <fstream>
#include <sstream>

namespace g3rt {

Status availableHostMemory(uint64_t &bytes, const std::string &meminfo) {
  std::ifstream in;
  G3RT_RETURN_IF_ERROR(openForReading(meminfo, in, std::ios::in, "the host memory table"));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key, unit;
    uint64_t kib = 0;
    if (fields >> key >> kib >> unit && key == "MemAvailable:" && unit == "kB") {
      bytes = kib * 1024;
      return Status();
    }
  }
  return Status::error(meminfo + " has no 'MemAvailable: <n> kB' line");
}

Status checkHostMemory(uint64_t bytes, const std::string &what, const std::string &meminfo) {
  if (bytes == 0)
    return Status();
  uint64_t available = 0;
  G3RT_RETURN_IF_ERROR(availableHostMemory(available, meminfo));
  if (bytes <= available)
    return Status();
  return Status::error("the step keeps " + gibText(bytes) + " of " + what +
                       " in host memory but the machine has " + gibText(available) +
                       " available: compile it with a lower host_memory_budget_gb or a larger "
                       "memory_budget_gb");
}

} // namespace g3rt
