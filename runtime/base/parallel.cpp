//===- parallel.cpp - a parallel for over index ranges --------------------===//

#include "runtime/base/parallel.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace g3rt {

static std::atomic<int> threadCount{int(std::max(1u, std::thread::hardware_concurrency()))};

int parallelThreads() { return threadCount.load(); }

void setParallelThreads(int threads) { threadCount = std::max(1, threads); }

void parallelFor(int64_t n, const std::function<void(int64_t, int64_t)> &body, int64_t grain) {
  if (n <= 0)
    return;
  int64_t threads =
      std::min<int64_t>(parallelThreads(), (n + grain - 1) / std::max<int64_t>(grain, 1));
  if (threads <= 1) {
    body(0, n);
    return;
  }
  int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::thread> workers;
  for (int64_t t = 1; t < threads; ++t) {
    int64_t begin = t * chunk, end = std::min(n, begin + chunk);
    if (begin < end)
      workers.emplace_back([&body, begin, end] { body(begin, end); });
  }
  body(0, std::min(n, chunk));
  for (std::thread &w : workers)
    w.join();
}

} // namespace g3rt
