//===- collective_queue.h - a run's collectives off the compute thread -*- C++ -*-===//
//
// The CPU backend runs a step's collective instructions (all_reduce, reduce,
// broadcast: ZeRO stage 2's gradient reductions, stage 3's parameter
// broadcasts) on a thread of their own, in program order, while the kernels
// after them run: an instruction waits only for the queued collectives whose
// memory it touches, so a broadcast of parameters leaves before the layers
// that read them and a reduction of gradients while the backward goes on.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CPU_COLLECTIVE_QUEUE_H
#define G3MOE_RUNTIME_CPU_COLLECTIVE_QUEUE_H

#include "runtime/kernels/kernel.h"

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace g3rt::cpu {

/// The bytes [begin, end) of a tensor.
struct ByteRange {
  uintptr_t begin = 0, end = 0;
};

/// The byte ranges of `tensors` (empty ones left out).
std::vector<ByteRange> rangesOf(const std::vector<TensorView> &tensors);

/// Collective kernel calls run in the order queued on one thread. The
/// caller keeps the call's tensors (and attributes) alive and waits, with
/// waitFor, before it touches any of their bytes; after a failed call the
/// later ones do not run.
class CollectiveQueue {
public:
  CollectiveQueue();
  ~CollectiveQueue();
  CollectiveQueue(const CollectiveQueue &) = delete;
  CollectiveQueue &operator=(const CollectiveQueue &) = delete;

  /// Queues `kernel` on `args`; `where` names the instruction in errors.
  void push(KernelFn kernel, KernelArgs args, std::string where);
  /// Waits until no queued call touches any of `ranges`; the first error of
  /// a call, if any.
  Status waitFor(const std::vector<ByteRange> &ranges);
  /// Waits for every queued call; the first error, if any.
  Status drain();
  /// The calls queued or running now.
  size_t pending();

private:
  struct Call {
    uint64_t id;
    KernelFn kernel;
    KernelArgs args;
    std::string where;
    std::vector<ByteRange> ranges;
  };
  void work();
  Status waitUntilDone(uint64_t id);

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Call> queue_; // the front runs, and leaves when done
  bool closed_ = false;
  uint64_t next_ = 0, done_ = 0;
  Status failure_;
  std::thread worker_;
};

} // namespace g3rt::cpu

#endif // G3MOE_RUNTIME_CPU_COLLECTIVE_QUEUE_H
