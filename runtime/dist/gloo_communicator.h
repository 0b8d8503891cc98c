//===- gloo_communicator.h - collectives over Gloo (CPU) --------*- C++ -*-===//
//
// The CPU backend's communicator: Gloo (Debian's libgloo-dev, the library
// PyTorch uses for CPU collectives) over TCP, after a rendezvous through the
// TcpStore that rank 0 serves at MASTER_ADDR:MASTER_PORT.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_DIST_GLOO_COMMUNICATOR_H
#define G3MOE_RUNTIME_DIST_GLOO_COMMUNICATOR_H

#include "runtime/dist/communicator.h"
#include "runtime/dist/world.h"

#include <chrono>
#include <functional>
#include <string>

namespace g3rt {

struct GlooOptions {
  /// How long the rendezvous and each collective may wait for the other
  /// ranks before failing.
  std::chrono::milliseconds timeout = std::chrono::seconds(60);
  /// The address this rank's transport binds to; empty: the address the
  /// machine's hostname resolves to (Gloo's default).
  std::string host;
  /// Where set, a CollectiveWatchdog calls it with the error when a process
  /// of the job left and a collective still waits on it 2 s later (a Gloo
  /// race that would otherwise wait the whole timeout); it must end the
  /// process, as nothing can wake that collective.
  std::function<void(const std::string &)> onStuck;
};

/// Joins the job `world` describes and connects every pair of ranks. Fails,
/// naming the store's address or the rank, when a rank does not arrive
/// within the timeout.
Status makeGlooCommunicator(const World &world, const GlooOptions &options,
                            std::unique_ptr<Communicator> &out);

} // namespace g3rt

#endif // G3MOE_RUNTIME_DIST_GLOO_COMMUNICATOR_H
