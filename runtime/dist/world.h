//===- world.h - where this process stands among the training processes -*- C++ -*-===//
//
// A training job of N processes learns its layout from the environment its
// launcher sets: torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
// MASTER_PORT, or Slurm's SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID (with
// MASTER_ADDR and MASTER_PORT, which sbatch scripts export). Neither set
// means one process alone.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_DIST_WORLD_H
#define G3MOE_RUNTIME_DIST_WORLD_H

#include "runtime/base/status.h"

#include <functional>
#include <optional>
#include <string>

namespace g3rt {

/// This process's place in the job and where rank 0 listens.
struct World {
  int rank = 0;
  int size = 1;
  /// The rank among the processes of this machine (its device index).
  int localRank = 0;
  /// Rank 0's host and the port of its rendezvous store.
  std::string masterAddr = "127.0.0.1";
  int masterPort = 29500;
};

/// Reads an environment variable; nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string &)>;
/// The process environment.
EnvLookup processEnvironment();

/// The world the environment describes: torchrun's variables first, then
/// Slurm's, else one process. An error names the variable that is missing
/// or malformed (a rank outside [0, size), a port outside [1, 65535]).
/// Under torchrun's agent (TORCHELASTIC_USE_AGENT_STORE=True), which serves
/// a store of its own at MASTER_PORT, `masterPort` is MASTER_PORT + 1. Under
/// Slurm without MASTER_ADDR, rank 0's host is the first node of
/// SLURM_JOB_NODELIST and the port MASTER_PORT or 29500.
Status worldFromEnvironment(const EnvLookup &env, World &out);

/// The first host of a Slurm node list: "node[03-05,9],gpu1" -> "node03".
/// None for a list it cannot read.
std::optional<std::string> firstHostOf(const std::string &nodeList);

} // namespace g3rt

#endif // G3MOE_RUNTIME_DIST_WORLD_H
