//===- nccl_reducer.cpp - gradient sums over NCCL -------------------------===//
//
// NCCL calls return once work is queued; a peer that died leaves the queued
// all-reduce waiting forever. So every wait here polls the stream and
// ncclCommGetAsyncError with a deadline, and aborts the communicator when
// it passes, which unblocks the stream.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/nccl_reducer.h"

#include "runtime/dist/communicator.h"

#include <thread>

#if G3MOE_HAVE_NCCL
#include <nccl.h>
#endif

namespace g3rt::cuda {

#if G3MOE_HAVE_NCCL

bool haveNccl() { return true; }

struct NcclReducer::Impl {
  ncclComm_t comm = nullptr;
  std::chrono::milliseconds timeout{0};
  bool broken = false;
  int rank = 0, size = 1;

  std::string who() const {
    return "NCCL (rank " + std::to_string(rank) + " of " + std::to_string(size) + ")";
  }

  /// Waits until NCCL has no operation in progress and `poll(finished)`
  /// sets `finished`; fails (aborting the communicator) when `poll` or NCCL
  /// reports an error or the deadline passes. NCCL is asked first: once it
  /// says the queued work is launched, the stream `poll` reads holds it.
  template <typename Poll> Status wait(Poll poll, const std::string &what) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      ncclResult_t async = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(comm, &async);
      if (r != ncclSuccess || (async != ncclSuccess && async != ncclInProgress)) {
        ncclResult_t bad = r != ncclSuccess ? r : async;
        abort();
        return Status::error(who() + ": " + what + " failed: " + ncclGetErrorString(bad) +
                             " (a process of the job failed or left)");
      }
      if (async == ncclSuccess) {
        bool finished = false;
        if (Status s = poll(finished); !s.ok()) {
          abort();
          return s;
        }
        if (finished)
          return Status();
      }
      if (std::chrono::steady_clock::now() > deadline) {
        abort();
        return Status::error(who() + ": " + what + " did not finish within " +
                             std::to_string(timeout.count() / 1000) +
                             " s (a process of the job failed or stopped answering; "
                             "G3MOE_DIST_TIMEOUT_S sets the limit)");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  void abort() {
    if (comm && !broken)
      ncclCommAbort(comm);
    broken = true;
    comm = nullptr;
  }
};

NcclReducer::NcclReducer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NcclReducer::~NcclReducer() {
  if (impl_ && impl_->comm && !impl_->broken)
    ncclCommDestroy(impl_->comm);
}

Status NcclReducer::create(Communicator &job, int device, std::chrono::milliseconds timeout,
                           std::unique_ptr<NcclReducer> &out) {
  auto impl = std::make_unique<Impl>();
  impl->timeout = timeout;
  impl->rank = job.rank();
  impl->size = job.size();
  ncclUniqueId id{};
  if (job.rank() == 0) {
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess)
      return Status::error(impl->who() + ": ncclGetUniqueId: " + ncclGetErrorString(r));
  }
  G3RT_RETURN_IF_ERROR(
      job.broadcast(&id, sizeof id, 0).withContext("sending the NCCL id to every process"));
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess)
    return Status::error(impl->who() + ": selecting CUDA device " + std::to_string(device) + ": " +
                         cudaGetErrorString(e));
  // Non-blocking initialisation, so that a rank that never joins ends in the
  // deadline below instead of a hang.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = ncclCommInitRankConfig(&impl->comm, job.size(), id, job.rank(), &config);
  if (r != ncclSuccess && r != ncclInProgress)
    return Status::error(impl->who() + ": ncclCommInitRank: " + ncclGetErrorString(r));
  G3RT_RETURN_IF_ERROR(impl->wait(
      [](bool &finished) {
        finished = true; // NCCL no longer reports the initialisation in progress
        return Status();
      },
      "joining the communicator"));
  out.reset(new NcclReducer(std::move(impl)));
  return Status();
}

Status NcclReducer::allReduceSum(const std::vector<std::pair<std::string, TensorView>> &tensors,
                                 cudaStream_t stream) {
  for (const auto &[name, t] : tensors)
    if (t.dtype != DType::F32)
      return Status::error(impl_->who() + ": gradient accumulator " + name + " is " +
                           std::string(dtypeName(t.dtype)) +
                           "; summing over processes takes f32 ones");
  std::vector<TensorView> views;
  for (const auto &entry : tensors)
    views.push_back(entry.second);
  return collective(Kind::AllReduce, views, 0, stream, "the all-reduce of the gradients");
}

Status NcclReducer::broadcast(const std::vector<TensorView> &tensors, int root,
                              cudaStream_t stream) {
  return collective(Kind::Broadcast, tensors, root, stream,
                    "the broadcast from process " + std::to_string(root));
}

Status NcclReducer::reduceSum(const std::vector<TensorView> &tensors, int root,
                              cudaStream_t stream) {
  return collective(Kind::Reduce, tensors, root, stream,
                    "the reduction to process " + std::to_string(root));
}

Status NcclReducer::collective(Kind kind, const std::vector<TensorView> &tensors, int root,
                               cudaStream_t stream, const std::string &what) {
  Impl &p = *impl_;
  if (p.broken)
    return Status::error(p.who() + ": the communicator was aborted by an earlier failure");
  // One group: NCCL fuses the small tensors (LoRA factors) into few
  // transfers.
  auto queued = [](ncclResult_t r) { return r == ncclSuccess || r == ncclInProgress; };
  ncclResult_t r = ncclGroupStart();
  for (size_t i = 0; queued(r) && i < tensors.size(); ++i) {
    const TensorView &t = tensors[i];
    const size_t n = size_t(t.numel());
    switch (kind) {
    case Kind::AllReduce:
      r = ncclAllReduce(t.data, t.data, n, ncclFloat32, ncclSum, p.comm, stream);
      break;
    case Kind::Reduce:
      r = ncclReduce(t.data, t.data, n, ncclFloat32, ncclSum, root, p.comm, stream);
      break;
    case Kind::Broadcast:
      r = ncclBroadcast(t.data, t.data, n, ncclFloat32, root, p.comm, stream);
      break;
    }
  }
  ncclResult_t end = ncclGroupEnd();
  if (queued(r))
    r = end;
  if (!queued(r)) {
    p.abort();
    return Status::error(p.who() + ": queueing " + what + ": " + ncclGetErrorString(r));
  }
  return p.wait(
      [&](bool &finished) {
        cudaError_t e = cudaStreamQuery(stream);
        finished = e == cudaSuccess;
        if (e == cudaSuccess || e == cudaErrorNotReady)
          return Status();
        return Status::error(p.who() + ": " + what + ": " + cudaGetErrorString(e));
      },
      what);
}

#else // !G3MOE_HAVE_NCCL

bool haveNccl() { return false; }

struct NcclReducer::Impl {};
NcclReducer::NcclReducer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NcclReducer::~NcclReducer() = default;

Status NcclReducer::create(Communicator &, int, std::chrono::milliseconds,
                           std::unique_ptr<NcclReducer> &) {
  return Status::error("this g3moe-run was built without NCCL");
}

Status NcclReducer::allReduceSum(const std::vector<std::pair<std::string, TensorView>> &,
                                 cudaStream_t) {
  return Status::error("this g3moe-run was built without NCCL");
}

Status NcclReducer::broadcast(const std::vector<TensorView> &, int, cudaStream_t) {
  return Status::error("this g3moe-run was built without NCCL");
}

Status NcclReducer::reduceSum(const std::vector<TensorView> &, int, cudaStream_t) {
  return Status::error("this g3moe-run was built without NCCL");
}

Status NcclReducer::collective(Kind, const std::vector<TensorView> &, int, cudaStream_t,
                               const std::string &) {
  return Status::error("this g3moe-run was built without NCCL");
}

#endif

} // namespace g3rt::cuda
