//===- ownership.h - where a ZeRO-divided tensor lives ----------*- C++ -*-===//
//
// ZeRO sharding (--g3moe-shard) fixes at compile time which process holds
// each divided persistent tensor; the runtime (stateOwners) and the
// compiler's memory report (measureStepMemory) both read it off the
// instructions that touch the tensor, by this one rule. The collectives
// that move such tensors are named here too, for both backends.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_EXEC_OWNERSHIP_H
#define G3MOE_RUNTIME_EXEC_OWNERSHIP_H

#include <cstdint>
#include <optional>
#include <string_view>

namespace g3rt {

/// The one process on which an instruction of `kernel` touches one of its
/// buffers, or -1 for every process: the instruction's `owner`, else the
/// `root` of a broadcast that only reads the buffer (`read`, and not also
/// `written`: what the other processes pass is ignored, so they need not
/// hold it).
inline int64_t soleProcess(std::string_view kernel, std::optional<int64_t> owner,
                           std::optional<int64_t> root, bool read, bool written) {
  if (owner)
    return *owner;
  if (read && !written && kernel == "broadcast" && root)
    return *root;
  return -1;
}

/// Whether `kernel` exchanges tensors with the other processes (the
/// collectives --g3moe-shard inserts): it waits for them on the host.
inline bool isCollectiveKernel(std::string_view kernel) {
  return kernel == "all_reduce" || kernel == "reduce" || kernel == "broadcast";
}

} // namespace g3rt

#endif // G3MOE_RUNTIME_EXEC_OWNERSHIP_H
