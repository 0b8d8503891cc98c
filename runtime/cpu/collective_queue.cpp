//===- collective_queue.cpp - a run's collectives off the compute thread ---===//

#include "runtime/cpu/collective_queue.h"

namespace g3rt::cpu {

std::vector<ByteRange> rangesOf(const std::vector<TensorView> &tensors) {
  std::vector<ByteRange> out;
  for (const TensorView &t : tensors)
    if (t.data && t.bytes() > 0) {
      const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data);
      out.push_back({begin, begin + t.bytes()});
    }
  return out;
}

namespace {

bool overlap(const std::vector<ByteRange> &a, const std::vector<ByteRange> &b) {
  for (const ByteRange &x : a)
    for (const ByteRange &y : b)
      if (x.begin < y.end && y.begin < x.end)
        return true;
  return false;
}

} // namespace

CollectiveQueue::CollectiveQueue() : worker_([this] { work(); }) {}

CollectiveQueue::~CollectiveQueue() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
  }
  changed_.notify_all();
  worker_.join();
}

void CollectiveQueue::push(KernelFn kernel, KernelArgs args, std::string where) {
  std::vector<ByteRange> ranges = rangesOf(args.inputs);
  for (const ByteRange &r : rangesOf(args.outputs))
    ranges.push_back(r);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back({next_++, kernel, std::move(args), std::move(where), std::move(ranges)});
  }
  changed_.notify_all();
}

Status CollectiveQueue::waitUntilDone(uint64_t id) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return done_ > id; });
  return failure_;
}

Status CollectiveQueue::waitFor(const std::vector<ByteRange> &ranges) {
  uint64_t last = 0;
  bool any = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Call &c : queue_)
      if (overlap(c.ranges, ranges)) {
        last = c.id;
        any = true;
      }
    if (!any)
      return failure_;
  }
  return waitUntilDone(last);
}

size_t CollectiveQueue::pending() {
  std::lock_guard<std::mutex> lock(mutex_);
  return queue_.size();
}

Status CollectiveQueue::drain() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return queue_.empty(); });
  return failure_;
}

void CollectiveQueue::work() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return closed_ || !queue_.empty(); });
    if (queue_.empty())
      return;
    // A reference into the deque stays valid while calls are pushed behind.
    Call &c = queue_.front();
    const bool run = failure_.ok();
    lock.unlock();
    Status s = run ? c.kernel(c.args).withContext(c.where) : Status();
    lock.lock();
    if (failure_.ok() && !s.ok())
      failure_ = s;
    queue_.pop_front();
    ++done_;
    changed_.notify_all();
  }
}

} // namespace g3rt::cpu
