//===- nccl_reducer.h - gradient sums over NCCL -----------------*- C++ -*-===//
//
// The CUDA backend's collective for data parallelism: the gradient
// accumulators of every rank summed on the devices with NCCL, instead of
// being copied to the host for the job's Gloo communicator. The NCCL
// communicator is made from the job's host communicator (rank 0's unique id
// travels through its broadcast), so it needs no rendezvous of its own.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_NCCL_REDUCER_H
#define G3MOE_RUNTIME_CUDA_NCCL_REDUCER_H

#include "runtime/base/status.h"
#include "runtime/base/tensor.h"

#include <cuda_runtime.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace g3rt {
class Communicator;
}

namespace g3rt::cuda {

/// Whether this build has NCCL (else the CUDA backend sums through the host).
bool haveNccl();

class NcclReducer {
public:
  /// Joins the NCCL communicator of the processes of `job` (every rank calls
  /// this, each with its own device). A rank that does not join within
  /// `timeout` fails the others' call.
  static Status create(Communicator &job, int device, std::chrono::milliseconds timeout,
                       std::unique_ptr<NcclReducer> &out);
  ~NcclReducer();

  /// Replaces each of `tensors` (f32 device data, the same names and sizes
  /// on every rank) by its sum over the ranks, after the work already on
  /// `stream`, and waits for it. A rank that fails or stops answering makes
  /// this fail within the timeout, naming the collective; the communicator
  /// is then aborted and every later call fails too.
  Status allReduceSum(const std::vector<std::pair<std::string, TensorView>> &tensors,
                      cudaStream_t stream);
  /// Replaces each of `tensors` (f32 device data) by rank `root`'s, with
  /// allReduceSum's ordering, waiting and failure handling.
  Status broadcast(const std::vector<TensorView> &tensors, int root, cudaStream_t stream);
  /// Replaces each of rank `root`'s `tensors` by their sum over the ranks
  /// (the others' are left unspecified), likewise.
  Status reduceSum(const std::vector<TensorView> &tensors, int root, cudaStream_t stream);

  struct Impl;

private:
  /// What collective() runs on each tensor.
  enum class Kind { AllReduce, Reduce, Broadcast };

  explicit NcclReducer(std::unique_ptr<Impl> impl);
  /// One group of in-place collectives of `kind` on `tensors` (`root` for
  /// Reduce and Broadcast); `what` names it in errors.
  Status collective(Kind kind, const std::vector<TensorView> &tensors, int root,
                    cudaStream_t stream, const std::string &what);
  std::unique_ptr<Impl> impl_;
};

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_NCCL_REDUCER_H
