//===- TaskQueueTest.cpp - tasks in order on a thread of their own ---------===//

#include "runtime/base/task_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

using namespace g3rt;

namespace {

/// Tasks run in the order queued, off the caller's thread, and waitFor(id)
/// returns once that task and every one before it ran.
TEST(TaskQueue, RunsInOrderAndWaitsForOne) {
  TaskQueue q;
  std::vector<int> order;
  std::atomic<bool> release{false};
  const std::thread::id caller = std::this_thread::get_id();
  bool elsewhere = true;
  q.push([&] {
    while (!release)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    elsewhere = std::this_thread::get_id() != caller;
    order.push_back(0);
    return Status();
  });
  const uint64_t second = q.push([&] {
    order.push_back(1);
    return Status();
  });
  q.push([&] {
    order.push_back(2);
    return Status();
  });
  EXPECT_EQ(second, 1u);
  EXPECT_EQ(q.done(), 0u) << "the first task is still held";
  release = true;
  EXPECT_TRUE(q.waitFor(second).ok());
  EXPECT_GE(q.done(), 2u);
  EXPECT_TRUE(q.drain().ok());
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2}));
  EXPECT_TRUE(elsewhere);
}

/// After a failed task the later ones are skipped, and every wait returns
/// the first error.
TEST(TaskQueue, SkipsWhatFollowsAFailure) {
  TaskQueue q;
  int ran = 0;
  q.push([&] {
    ++ran;
    return Status::error("the first exchange failed");
  });
  const uint64_t later = q.push([&] {
    ++ran;
    return Status::error("never seen");
  });
  Status s = q.waitFor(later);
  EXPECT_EQ(s.message(), "the first exchange failed");
  EXPECT_EQ(q.drain().message(), "the first exchange failed");
  EXPECT_EQ(q.failure().message(), "the first exchange failed");
  EXPECT_EQ(ran, 1);
  EXPECT_EQ(q.done(), 2u);
}

} // namespace
