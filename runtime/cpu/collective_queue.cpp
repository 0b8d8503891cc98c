//===- collective_queue.cpp - a run's collectives off the compute thread ---===//

#include "runtime/cpu/collective_queue.h"

namespace g3rt::cpu {

std::vector<ByteRange> rangesOf(const KernelArgs &args) {
  std::vector<ByteRange> out;
  for (const auto *list : {&args.inputs, &args.outputs})
    for (const TensorView &t : *list)
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

void CollectiveQueue::push(KernelFn kernel, KernelArgs args, std::string where) {
  std::vector<ByteRange> ranges = rangesOf(args);
  const uint64_t id = tasks_.push([kernel, args = std::move(args), where = std::move(where)] {
    return kernel(args).withContext(where);
  });
  touched_.emplace_back(id, std::move(ranges));
}

bool CollectiveQueue::busy() {
  const uint64_t done = tasks_.done();
  while (!touched_.empty() && touched_.front().first < done)
    touched_.pop_front();
  return !touched_.empty();
}

Status CollectiveQueue::waitFor(const std::vector<ByteRange> &ranges) {
  busy(); // forgets the calls known to be done
  // The last call touching `ranges`: the ones before it run first.
  for (auto it = touched_.rbegin(); it != touched_.rend(); ++it)
    if (overlap(it->second, ranges))
      return tasks_.waitFor(it->first);
  return tasks_.failure();
}

} // namespace g3rt::cpu
