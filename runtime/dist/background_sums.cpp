//===- background_sums.cpp - gradient sums while the step runs ------------===//

#include "runtime/dist/background_sums.h"

namespace g3rt {

BackgroundSums::BackgroundSums(Communicator &comm, size_t bucketFloats)
    : comm_(comm), bucketFloats_(bucketFloats), worker_([this] { work(); }) {}

BackgroundSums::~BackgroundSums() { (void)finish(); }

void BackgroundSums::add(Tensors tensors) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(tensors));
  }
  ready_.notify_one();
}

Status BackgroundSums::finish() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
  }
  ready_.notify_one();
  if (worker_.joinable())
    worker_.join();
  return failure_;
}

void BackgroundSums::work() {
  for (;;) {
    Tensors next;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      ready_.wait(lock, [&] { return closed_ || !queue_.empty(); });
      if (queue_.empty())
        return;
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    // After a failure the ranks disagree on what was summed: the job ends
    // with that error, and sending more would only wait for the timeout.
    if (failure_.ok())
      failure_ = sumInBuckets(comm_, next, bucketFloats_);
  }
}

} // namespace g3rt
