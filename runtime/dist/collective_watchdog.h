//===- collective_watchdog.h - ends a collective its peer left --*- C++ -*-===//
//
// A process of the job that dies closes its sockets, and Gloo fails the
// collective that waits on it, except in one race (Debian's Gloo of 2022):
// when the peer dies while a message to this rank is half received, that
// receive is never told, and it waits for the whole timeout. The watchdog
// covers it: while a collective runs, a thread asks `peerLeft` (the
// rendezvous store's connections, TcpStore::peerLeft) every 100 ms, and when
// a peer has left and the collective has still not ended `grace` later, it
// calls `onStuck` with a message naming the collective and the rank, once.
// Nothing can wake the blocked collective, so onStuck ends the process.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_DIST_COLLECTIVE_WATCHDOG_H
#define G3MOE_RUNTIME_DIST_COLLECTIVE_WATCHDOG_H

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace g3rt {

class CollectiveWatchdog {
public:
  /// Starts the watching thread of rank `rank` of `size`.
  CollectiveWatchdog(int rank, int size, std::function<bool()> peerLeft,
                     std::function<void(const std::string &)> onStuck,
                     std::chrono::milliseconds grace = std::chrono::seconds(2));
  /// Stops and joins the thread.
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog &) = delete;
  CollectiveWatchdog &operator=(const CollectiveWatchdog &) = delete;

  /// The collective `what` ("all-reduce", a string literal) runs from
  /// begin to end.
  void begin(const char *what) {
    runs_.fetch_add(1);
    running_.store(what);
  }
  void end() { running_.store(nullptr); }

private:
  void watch();

  const int rank_, size_;
  const std::function<bool()> peerLeft_;
  const std::function<void(const std::string &)> onStuck_;
  const std::chrono::milliseconds grace_;
  std::atomic<const char *> running_{nullptr};
  std::atomic<uint64_t> runs_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

} // namespace g3rt

#endif // G3MOE_RUNTIME_DIST_COLLECTIVE_WATCHDOG_H
