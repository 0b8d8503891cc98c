//===- task_queue.cpp - tasks run in order on a thread of their own -------===//

#include "runtime/base/task_queue.h"

namespace g3rt {

TaskQueue::TaskQueue() : worker_([this] { work(); }) {}

TaskQueue::~TaskQueue() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
  }
  changed_.notify_all();
  worker_.join();
}

uint64_t TaskQueue::push(Task task) {
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    id = queued_++;
    queue_.push_back(std::move(task));
  }
  changed_.notify_all();
  return id;
}

Status TaskQueue::waitFor(uint64_t id) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return done_ > id; });
  return failure_;
}

Status TaskQueue::drain() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return done_ == queued_; });
  return failure_;
}

uint64_t TaskQueue::done() {
  std::lock_guard<std::mutex> lock(mutex_);
  return done_;
}

Status TaskQueue::failure() {
  std::lock_guard<std::mutex> lock(mutex_);
  return failure_;
}

void TaskQueue::work() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return closed_ || !queue_.empty(); });
    if (queue_.empty())
      return;
    // A reference into the deque stays valid while tasks are pushed behind.
    Task &task = queue_.front();
    const bool run = failure_.ok();
    lock.unlock();
    Status s = run ? task() : Status();
    lock.lock();
    if (failure_.ok() && !s.ok())
      failure_ = s;
    queue_.pop_front();
    ++done_;
    changed_.notify_all();
  }
}

} // namespace g3rt
