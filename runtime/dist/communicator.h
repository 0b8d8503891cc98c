//===- communicator.h - collectives among the training processes -*- C++ -*-===//
//
// The processes of a data-parallel job exchange gradients, loss counts and
// state through a Communicator: Gloo over TCP for the CPU backend
// (gloo_communicator.h); the CUDA backend sums its gradients with NCCL
// (runtime/cuda/nccl_reducer.h) and uses this one for the rest. Every call is a
// collective: each rank makes the same calls in the same order, and a rank
// that fails or stops answering makes the others fail within the timeout,
// with an error naming the collective, instead of hanging.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_DIST_COMMUNICATOR_H
#define G3MOE_RUNTIME_DIST_COMMUNICATOR_H

#include "runtime/base/status.h"
#include "runtime/base/tensor.h"

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace g3rt {

class Communicator {
public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// How long a collective waits for the other ranks before failing.
  virtual std::chrono::milliseconds timeout() const = 0;

  /// Replaces `data[0, count)` on every rank by its sum over the ranks.
  virtual Status allReduceSum(float *data, size_t count) = 0;
  virtual Status allReduceSum(double *data, size_t count) = 0;
  /// Copies rank `root`'s `data[0, bytes)` to every rank.
  virtual Status broadcast(void *data, size_t bytes, int root) = 0;
  /// Returns once every rank has called it.
  virtual Status barrier() = 0;
};

/// The communicator of a job of one process: every collective is the
/// identity.
std::unique_ptr<Communicator> makeSoloCommunicator();

/// Replaces each of `tensors` (f32 host data, the same names and sizes in
/// the same order on every rank) by its sum over the ranks of `comm`. Each
/// collective is a round trip between the processes, so tensors below
/// `bucketFloats` elements travel packed together into buckets of at most
/// that many; a larger one is summed in place on its own. Errors name the
/// tensors of the failed collective.
Status sumInBuckets(Communicator &comm,
                    const std::vector<std::pair<std::string, TensorView>> &tensors,
                    size_t bucketFloats);

} // namespace g3rt

#endif // G3MOE_RUNTIME_DIST_COMMUNICATOR_H
