//===- communicator.cpp - the solo communicator, bucketed sums -----------===//

#include "runtime/dist/communicator.h"

#include <algorithm>

namespace g3rt {

namespace {

class SoloCommunicator final : public Communicator {
public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::chrono::milliseconds timeout() const override { return std::chrono::seconds(60); }
  Status allReduceSum(float *, size_t) override { return Status(); }
  Status allReduceSum(double *, size_t) override { return Status(); }
  Status broadcast(void *, size_t, int root) override {
    return root == 0 ? Status()
                     : Status::error("broadcast from rank " + std::to_string(root) +
                                     " in a job of one process");
  }
  Status barrier() override { return Status(); }
};

} // namespace

std::unique_ptr<Communicator> makeSoloCommunicator() {
  return std::make_unique<SoloCommunicator>();
}

Status sumInBuckets(Communicator &comm,
                    const std::vector<std::pair<std::string, TensorView>> &tensors,
                    size_t bucketFloats) {
  std::vector<float> bucket;
  size_t first = 0; // tensors[first, i) are packed in the bucket
  auto flush = [&](size_t end) -> Status {
    if (first == end)
      return Status();
    G3RT_RETURN_IF_ERROR(comm.allReduceSum(bucket.data(), bucket.size())
                             .withContext("summing " + tensors[first].first + " ... " +
                                          tensors[end - 1].first + " over the processes"));
    const float *at = bucket.data();
    for (size_t k = first; k < end; ++k) {
      const TensorView &t = tensors[k].second;
      std::copy_n(at, t.numel(), static_cast<float *>(t.data));
      at += t.numel();
    }
    bucket.clear();
    first = end;
    return Status();
  };
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto &[name, t] = tensors[i];
    if (t.dtype != DType::F32)
      return Status::error(name + " is " + std::string(dtypeName(t.dtype)) +
                           "; summing over processes takes f32 tensors");
    const size_t n = size_t(t.numel());
    if (n >= bucketFloats) {
      G3RT_RETURN_IF_ERROR(flush(i));
      G3RT_RETURN_IF_ERROR(comm.allReduceSum(static_cast<float *>(t.data), n)
                               .withContext("summing " + name + " over the processes"));
      first = i + 1;
      continue;
    }
    if (bucket.size() + n > bucketFloats)
      G3RT_RETURN_IF_ERROR(flush(i));
    const auto *data = static_cast<const float *>(t.data);
    bucket.insert(bucket.end(), data, data + n);
  }
  return flush(tensors.size());
}

} // namespace g3rt
