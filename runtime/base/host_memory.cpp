//===- host_memory.cpp - how much host memory a step may take -------------===//

#include "runtime/base/host_memory.h"

#include <cstdio>
#include <fstream>
#include <sstream>

namespace g3rt {

Status availableHostMemory(uint64_t &bytes, const std::string &meminfo) {
  std::ifstream in(meminfo);
  if (!in)
    return Status::error("cannot read " + meminfo + " for the available host memory");
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
  auto gib = [](uint64_t b) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f GiB", double(b) / double(uint64_t(1) << 30));
    return std::string(text);
  };
  return Status::error("the step keeps " + gib(bytes) + " of " + what +
                       " in host memory but the machine has " + gib(available) +
                       " available: compile it with a lower host_memory_budget_gb or a larger "
                       "memory_budget_gb");
}

} // namespace g3rt
