//===- background_sums.h - gradient sums while the step runs ----*- C++ -*-===//
//
// A data-parallel backward finishes its gradients one after another; the
// sums over the processes need not wait for the last. BackgroundSums takes
// lists of host tensors as they become final and sums each over the ranks
// (sumInBuckets) on a thread of its own while the caller computes on.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_DIST_BACKGROUND_SUMS_H
#define G3MOE_RUNTIME_DIST_BACKGROUND_SUMS_H

#include "runtime/dist/communicator.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace g3rt {

/// Sums the lists of f32 host tensors handed to add() over the ranks of a
/// communicator, in order, on one thread. Every rank must hand over the
/// same lists in the same order, and the caller must neither touch a tensor
/// it handed over nor use the communicator until finish() returns. After a
/// failed sum the later lists are not sent.
class BackgroundSums {
public:
  using Tensors = std::vector<std::pair<std::string, TensorView>>;

  /// Sums through `comm`, packing small tensors into buckets of at most
  /// `bucketFloats` floats (sumInBuckets).
  BackgroundSums(Communicator &comm, size_t bucketFloats);
  ~BackgroundSums();
  BackgroundSums(const BackgroundSums &) = delete;
  BackgroundSums &operator=(const BackgroundSums &) = delete;

  /// Queues `tensors`, to be replaced in place by their sums.
  void add(Tensors tensors);
  /// Waits until every list queued is summed; the first error, if any.
  Status finish();

private:
  void work();

  Communicator &comm_;
  const size_t bucketFloats_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Tensors> queue_;
  bool closed_ = false;
  Status failure_;
  std::thread worker_;
};

} // namespace g3rt

#endif // G3MOE_RUNTIME_DIST_BACKGROUND_SUMS_H
