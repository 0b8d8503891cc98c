//===- cuda_context.h - what CUDA kernels run with --------------*- C++ -*-===//
//
// The CUDA backend's kernels share the CPU kernels' calling convention
// (kernel.h); KernelArgs::backend points at this context, and every
// TensorView's data is a device pointer. Kernels enqueue work on `stream` and
// never synchronise unless they must read device data on the host: range
// checks read their records back only when the executor does not collect them
// (DeviceChecks), and the per-expert cuBLAS products (expert weight gradients,
// or all of them with G3MOE_EXPERT_GEMM=cublas) read the expert offsets. Dense
// products run on cuBLASLt (lt_matmul.h), with cuBLAS as the fallback for
// problems cuBLASLt has no algorithm for.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_CUDA_CONTEXT_H
#define G3MOE_RUNTIME_CUDA_CUDA_CONTEXT_H

#include "runtime/kernels/kernel.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace g3rt::cuda {

/// Which attention kernels run (cudnn_attention.h).
enum class AttentionImpl { Auto, Own, Cudnn };

/// cuDNN's handle, plans and scratch memory for attention (cudnn_attention.cu).
struct CudnnAttentionState;
/// cuBLASLt's descriptors and algorithms of the products run (lt_matmul.h).
class LtMatmuls;

/// Range checks whose records kernels fill on the device (device_checks.h): a
/// record stays all ones until a kernel writes the first bad (position,
/// value) it found into it.
struct DeviceChecks {
  /// A check's records and what they mean: `verdict` turns them (host
  /// copies) into the kernel's error, or an ok Status.
  struct Pending {
    size_t first = 0, count = 0;
    std::function<Status(const unsigned long long *)> verdict;
  };
  /// Set while the executor runs a whole entry point: checks take records
  /// from `records` and return at once, and the executor reads them all
  /// after the entry point ran (so that no kernel waits and the entry point
  /// can be captured as a CUDA graph). Unset, or when `records` is full, a
  /// check waits for its kernel and reads its record itself.
  bool deferred = false;
  unsigned long long *records = nullptr; // device memory, `capacity` records
  size_t capacity = 0;
  std::vector<Pending> pending; // taken records: [0, pending.back() end)
  size_t used() const { return pending.empty() ? 0 : pending.back().first + pending.back().count; }
};

/// The collectives of a data-parallel job on device tensors (NCCL), which
/// the all_reduce and broadcast kernels use; the backend provides it when
/// several processes train together.
class DeviceJob {
public:
  virtual ~DeviceJob() = default;
  virtual int processes() const = 0;
  /// This process's place among them.
  virtual int rank() const = 0;
  /// Each f32 tensor replaced by its sum over the processes, after the work
  /// on `stream`; waits for it.
  virtual Status allReduceSum(const std::vector<TensorView> &tensors, cudaStream_t stream) = 0;
  /// Each f32 tensor of process `root` replaced by its sum over the
  /// processes (the others' are left unspecified), after the work on
  /// `stream`; waits for it.
  virtual Status reduceSum(const std::vector<TensorView> &tensors, int root,
                           cudaStream_t stream) = 0;
  /// Each f32 tensor replaced by process `root`'s, after the work on
  /// `stream`; waits for it.
  virtual Status broadcast(const std::vector<TensorView> &tensors, int root,
                           cudaStream_t stream) = 0;
};

struct CudaContext {
  /// The job the collectives exchange through; null when the process runs
  /// alone.
  DeviceJob *job = nullptr;
  cudaStream_t stream = nullptr;
  /// Copies between the arena and the pinned host arena (kernels_offload.cpp)
  /// run on this stream, beside the kernels on `stream`. Per copy id i,
  /// copyEvents[2i] marks on `stream` where copy i may start, and
  /// copyEvents[2i + 1] on `copyStream` where it ends.
  cudaStream_t copyStream = nullptr;
  std::vector<cudaEvent_t> copyEvents;
  cublasHandle_t cublas = nullptr;
  cublasLtHandle_t cublasLt = nullptr;
  /// The dense products' plans; its workspace is the lower half of `workspace`.
  std::shared_ptr<LtMatmuls> matmuls;
  /// Scratch device memory kernels may use freely during one launch.
  void *workspace = nullptr;
  size_t workspaceBytes = 0;
  AttentionImpl attention = AttentionImpl::Auto;
  /// Created on the first attention call cuDNN serves.
  std::shared_ptr<CudnnAttentionState> cudnn;
  /// What every batch row holds, when the caller knows (the data pipeline
  /// does): one document then padding, or packed documents. Attention then
  /// picks its kernels without reading the segment ids back to the host.
  enum class RowDocuments { Unknown, One, Packed } rowDocuments = RowDocuments::Unknown;
  /// Counts reallocations of device memory kernels keep between launches
  /// (cuDNN's scratch): a captured CUDA graph that still points at the old
  /// memory must be captured again.
  uint64_t reallocations = 0;
  DeviceChecks checks;
  /// Whether the expert products run as one grouped kernel per call
  /// (grouped_gemm.h; the default on Hopper, G3MOE_EXPERT_GEMM=grouped)
  /// rather than one cuBLAS product per expert, which must read the expert
  /// offsets back.
  bool groupedExperts = false;
};

/// The context of a kernel call.
inline CudaContext &contextOf(const KernelArgs &args) {
  return *static_cast<CudaContext *>(args.backend);
}

/// An error Status for a failed CUDA runtime call, naming the kernel.
Status cudaFailure(const KernelArgs &args, cudaError_t error, const char *what);
/// An error Status for a failed cuBLAS call.
Status cublasFailure(const KernelArgs &args, cublasStatus_t status, const char *what);

/// Returns from the kernel when the last launch failed.
#define G3RT_CUDA_CHECK_LAUNCH(args, what)                                                         \
  do {                                                                                             \
    cudaError_t g3rt_err_ = cudaGetLastError();                                                    \
    if (g3rt_err_ != cudaSuccess)                                                                  \
      return ::g3rt::cuda::cudaFailure(args, g3rt_err_, what);                                     \
  } while (0)

/// Blocks of `threads` threads for `n` items, at most 8192: grid-stride
/// kernels loop over the rest, and more blocks only add scheduling work
/// once every SM is full.
inline unsigned cappedGrid(int64_t n, int threads = 256) {
  int64_t blocks = (n + threads - 1) / threads;
  return unsigned(blocks < 1 ? 1 : blocks > 8192 ? 8192 : blocks);
}
/// Whether `t` starts on a 16-byte boundary (for 16-byte vector accesses).
inline bool aligned16(const TensorView &t) { return reinterpret_cast<uintptr_t>(t.data) % 16 == 0; }
/// The CUDA kernel called `name`, or null (cuda_kernels.h).
KernelFn findCudaKernel(std::string_view name);

} // namespace g3rt::cuda

#if defined(__CUDACC__)
#include "runtime/cuda/cuda_device_util.h"
#endif

#endif // G3MOE_RUNTIME_CUDA_CUDA_CONTEXT_H
