//===- collective_watchdog.cpp - ends a collective its peer left ----------===//

#include "runtime/dist/collective_watchdog.h"

namespace g3rt {

CollectiveWatchdog::CollectiveWatchdog(int rank, int size, std::function<bool()> peerLeft,
                                       std::function<void(const std::string &)> onStuck,
                                       std::chrono::milliseconds grace)
    : rank_(rank), size_(size), peerLeft_(std::move(peerLeft)), onStuck_(std::move(onStuck)),
      grace_(grace), thread_([this] { watch(); }) {}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void CollectiveWatchdog::watch() {
  using Clock = std::chrono::steady_clock;
  // The collective (by its count) that was running when a peer was first
  // seen gone, and when: only that one, still running `grace_` later, is
  // stuck. One that ends in time was not waiting for the peer.
  uint64_t suspect = 0;
  Clock::time_point since;
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stop_; })) {
    const char *what = running_.load();
    const uint64_t run = runs_.load();
    if (!what || !peerLeft_()) {
      suspect = 0;
      continue;
    }
    if (suspect != run) {
      suspect = run;
      since = Clock::now();
      continue;
    }
    if (Clock::now() - since < grace_)
      continue;
    onStuck_(std::string("the ") + what + " on rank " + std::to_string(rank_) + " of " +
             std::to_string(size_) +
             " failed: a process of the job left (its connection to the rendezvous store "
             "closed) and the " +
             what + " had not ended " + std::to_string(grace_.count()) + " ms later");
    return;
  }
}

} // namespace g3rt
