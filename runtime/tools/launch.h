//===- launch.h - g3moe-run --nproc-per-node: the local ranks ---*- C++ -*-===//
//
// What torchrun does for a job on one machine, without Python: start N
// copies of this command with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
// MASTER_PORT set, forward SIGINT and SIGTERM to them, and report the first
// rank that fails.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TOOLS_LAUNCH_H
#define G3MOE_RUNTIME_TOOLS_LAUNCH_H

#include <string>
#include <vector>

namespace g3rt {

/// Runs `args` (the command line without the launcher's own option) as
/// `ranks` processes of this executable on this machine, with a rendezvous
/// at a free port of 127.0.0.1. Once a rank fails the others are stopped.
/// Returns 0 when every rank succeeded, else the first failure's exit code
/// (128 + the signal for a killed rank), after saying which rank it was.
int launchLocalRanks(int ranks, const std::vector<std::string> &args);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TOOLS_LAUNCH_H
