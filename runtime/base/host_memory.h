//===- host_memory.h - how much host memory a step may take ----*- C++ -*-===//
//
// A step that keeps activations in host memory (--g3rt-offload-to-host) needs
// its host arena to exist before the first step: pinned memory cannot be
// paged out, and a machine short of it would fail, or swap, mid-run.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_HOST_MEMORY_H
#define G3MOE_RUNTIME_BASE_HOST_MEMORY_H

#include "runtime/base/status.h"

#include <cstdint>
#include <string>

namespace g3rt {

/// The host memory available to new allocations, in bytes (MemAvailable of
/// `meminfo`, /proc/meminfo by default); an error names the file when it
/// cannot be read or has no such line.
Status availableHostMemory(uint64_t &bytes, const std::string &meminfo = "/proc/meminfo");

/// Refuses a host arena of `bytes` (for `what`, e.g. "offloaded activations")
/// larger than the available host memory, with both sizes in the message.
Status checkHostMemory(uint64_t bytes, const std::string &what,
                       const std::string &meminfo = "/proc/meminfo");

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_HOST_MEMORY_H
