//===- task_queue.h - tasks run in order on a thread of their own -*- C++ -*-===//
//
// Work a step hands off so that its kernels go on meanwhile: the gradient
// sums of a finished pack, a collective instruction. The tasks run one at a
// time in the order queued (every process of a job queues its exchanges in
// the same order), and the caller waits for a task only where it needs it.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_TASK_QUEUE_H
#define G3MOE_RUNTIME_BASE_TASK_QUEUE_H

#include "runtime/base/status.h"

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace g3rt {

/// Runs the tasks queued with push() in order on one thread. After a task
/// fails the later ones are skipped: their work depends on what came before
/// (the processes of a job would disagree on what was exchanged), and the
/// first error is what the caller reports. The destructor waits for every
/// task queued.
class TaskQueue {
public:
  using Task = std::function<Status()>;

  TaskQueue();
  ~TaskQueue();
  TaskQueue(const TaskQueue &) = delete;
  TaskQueue &operator=(const TaskQueue &) = delete;

  /// Queues `task`; returns its number (0, 1, ... in queueing order).
  uint64_t push(Task task);
  /// Waits until task `id` has run (or been skipped); the first error, if any.
  Status waitFor(uint64_t id);
  /// Waits until every task queued has run; the first error, if any.
  Status drain();
  /// How many tasks have run (or been skipped): tasks below that number.
  uint64_t done();
  /// The first error of a task so far, without waiting.
  Status failure();

private:
  void work();

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Task> queue_; // the front runs, and leaves when done
  bool closed_ = false;
  uint64_t queued_ = 0, done_ = 0;
  Status failure_;
  std::thread worker_;
};

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_TASK_QUEUE_H
