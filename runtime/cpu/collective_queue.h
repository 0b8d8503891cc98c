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

#include "runtime/base/task_queue.h"
#include "runtime/kernels/kernel.h"

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

namespace g3rt::cpu {

/// The bytes [begin, end) of a tensor.
struct ByteRange {
  uintptr_t begin = 0, end = 0;
};

/// The byte ranges of a call's inputs and outputs (empty ones left out).
std::vector<ByteRange> rangesOf(const KernelArgs &args);

/// Collective kernel calls run in the order queued on one thread (a
/// TaskQueue). The caller keeps the call's tensors (and attributes) alive
/// and waits, with waitFor, before it touches any of their bytes; after a
/// failed call the later ones do not run. Used from one thread.
class CollectiveQueue {
public:
  /// Queues `kernel` on `args`; `where` names the instruction in errors.
  void push(KernelFn kernel, KernelArgs args, std::string where);
  /// Waits until no queued call touches any of `ranges`; the first error of
  /// a call, if any.
  Status waitFor(const std::vector<ByteRange> &ranges);
  /// Waits for every queued call; the first error, if any.
  Status drain() { return tasks_.drain(); }
  /// Whether calls are queued or running now.
  bool busy();

private:
  /// The bytes of the calls not known to be done, by task number.
  std::deque<std::pair<uint64_t, std::vector<ByteRange>>> touched_;
  TaskQueue tasks_;
};

} // namespace g3rt::cpu

#endif // G3MOE_RUNTIME_CPU_COLLECTIVE_QUEUE_H
