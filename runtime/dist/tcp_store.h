//===- tcp_store.h - the job's rendezvous key-value store -------*- C++ -*-===//
//
// Before the processes of a job can talk to each other they must find each
// other: rank 0 serves a small key-value store on MASTER_ADDR:MASTER_PORT,
// and every rank (rank 0 too) connects to it as a client. Gloo's rendezvous
// publishes each rank's transport address there (the NCCL unique id then
// travels by Gloo's broadcast). A get waits until the key is set, up to the
// timeout. Jobs on one machine take their port from freeLocalPort.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_DIST_TCP_STORE_H
#define G3MOE_RUNTIME_DIST_TCP_STORE_H

#include "runtime/base/status.h"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace g3rt {

class TcpStore {
public:
  /// Connects to the store at `host`:`port`, retrying until `timeout`; with
  /// `serve`, first starts serving it there (rank 0). An error names the
  /// address and what failed.
  static Status open(const std::string &host, int port, bool serve,
                     std::chrono::milliseconds timeout, std::unique_ptr<TcpStore> &out);
  ~TcpStore();

  Status set(const std::string &key, const std::vector<char> &value);
  /// The value of `key`, waiting up to the timeout for some rank to set it.
  Status get(const std::string &key, std::vector<char> &value);

  /// Whether the other end of the store has gone while the job runs: on
  /// rank 0, which serves it, another process closed its connection; on
  /// the others, rank 0 closed theirs. A process that dies closes its
  /// sockets, so this tells its peers (CollectiveWatchdog).
  bool peerLeft() const;

private:
  TcpStore() = default;
  struct Server;
  std::unique_ptr<Server> server_;
  int fd_ = -1;
  std::chrono::milliseconds timeout_{0};
  std::string address_;
};

/// A port of 127.0.0.1 the kernel hands out, free once this returns (for a
/// job started on this machine); -1 when there is none, with errno set.
int freeLocalPort();

} // namespace g3rt

#endif // G3MOE_RUNTIME_DIST_TCP_STORE_H
