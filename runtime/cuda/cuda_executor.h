//===- cuda_executor.h - runs a verified step on one GPU --------*- C++ -*-===//
//
// The arena and all persistent state of a step in device memory, kernels from
// the CUDA kernel table launched in order on one stream; activations the step
// offloads live in a pinned host arena, copied on a second stream. The HostState of the
// same program is the state's owner: parameters are initialised or loaded
// there and uploaded, results are downloaded into it, so the training loop,
// checkpoints and file formats are shared with the CPU backend.
// cuda_backend.cpp makes it a Backend; tests and benchmarks use it directly.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_CUDA_EXECUTOR_H
#define G3MOE_RUNTIME_CUDA_CUDA_EXECUTOR_H

#include "runtime/exec/backend.h"

#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace g3rt::cuda {

struct CudaContext;
class DeviceJob;

class CudaExecutor {
public:
  /// Resolves every instruction's CUDA kernel (an error names each missing
  /// one) and allocates the device arena and state of `program` on device
  /// `device`. With `rank` >= 0, as process `rank` of a data-parallel job:
  /// of a ZeRO-sharded step it holds and runs only that process's share
  /// (forEachStateBuffer, runsOnProcess).
  static Status create(const StepProgram &program, int device, std::unique_ptr<CudaExecutor> &out,
                       int rank = -1);
  ~CudaExecutor();

  const StepProgram &program() const { return program_; }

  /// Copies every persistent tensor of `host` (same program) to the device.
  Status upload(const HostState &host);
  /// Copies the persistent tensors of `kind` (and inputs) from `host`.
  Status upload(const HostState &host, BufferKind kind);
  /// Copies every persistent tensor back into `host`.
  Status download(HostState &host) const;
  /// Copies the persistent tensors of `kind` back into `host`; with `onlyTrainable`
  /// (for parameters) only the trainable ones, the rest never change here.
  Status download(HostState &host, BufferKind kind, bool onlyTrainable = false) const;

  /// Sets every gradient accumulator on the device to zero.
  Status zeroGradients();

  /// Runs entry point `function` and waits for it. The first call launches
  /// its kernels one by one; the second captures them as a CUDA graph, which
  /// later calls replay with one launch. The kernels' range checks (expert
  /// indices, slots) are read once the entry point ran, so a bad index is
  /// reported then. An entry point whose kernels must wait on the device
  /// (per-expert cuBLAS products, which read their row counts back; see
  /// expertProducts()) cannot be captured: it keeps running kernel by
  /// kernel, and graphStatus() says why. G3MOE_CUDA_GRAPHS=0 turns capture
  /// off.
  Status run(const std::string &function);
  /// How `function` runs now: "graph", "kernels" (not captured yet, or
  /// capture off) or "kernels: <why the capture failed>".
  std::string graphStatus(const std::string &function) const;
  /// How the expert products run, as G3MOE_EXPERT_GEMM chose when the
  /// executor was created: "grouped" (one kernel for all experts, the
  /// default on Hopper; MoE micro-steps can then be captured) or "cublas"
  /// (one cuBLAS product per expert, the default elsewhere).
  std::string expertProducts() const;
  /// What every batch row holds, as the data pipeline guarantees it: one
  /// document then padding (true) or packed documents (false). cuDNN
  /// attention then needs no read-back of the segment ids, so that steps
  /// without MoE layers can be captured.
  void setOneDocumentPerRow(bool one);
  /// Runs the CUDA kernel `name` on device tensors with this executor's
  /// context and waits for it (kernel-level tests).
  Status runKernel(const std::string &name, const KernelAttrs &attrs,
                   const std::vector<TensorView> &inputs, const std::vector<TensorView> &outputs);
  /// Runs instruction `index` of `fn` alone and waits for it; `fn` needs an
  /// arena as large as its plan (reserveArena), else it fails.
  Status runInstruction(const FunctionDesc &fn, size_t index);
  /// Grows the arena to `fn`'s plan where it is larger (forward_backward of
  /// a training step), as run() does; the arena's contents are then lost
  /// and captured graphs are captured anew.
  Status reserveArena(const FunctionDesc &fn);

  /// The device bytes buffer `index` of `fn` refers to.
  TensorView deviceView(const FunctionDesc &fn, uint32_t buffer) const;
  /// Copies between a device view and host memory of the same size.
  Status toDevice(const TensorView &device, const void *host) const;
  Status toHost(const TensorView &device, void *host) const;

  /// Output `name` of the last run of `function`, copied to the host.
  Status output(const std::string &function, const std::string &name,
                std::vector<float> &values) const;

  /// The device tensors of persistent state of `kind`, by name.
  std::vector<std::pair<std::string, TensorView>> stateOf(BufferKind kind) const;
  /// The stream every kernel of this executor runs on.
  cudaStream_t stream() const;
  /// The device it runs on.
  int device() const { return device_; }
  /// The job the step's collectives exchange through (null: alone).
  void setJob(DeviceJob *job);

  /// Device bytes allocated (arena + state).
  uint64_t deviceBytes() const { return deviceBytes_; }

private:
  explicit CudaExecutor(const StepProgram &program);
  /// Allocates the pinned host arena, the copy stream and the copy events
  /// where the program offloads activations.
  Status createHostArena();
  /// Enqueues instruction `i` of `fn` on the stream, without waiting.
  Status launchInstruction(const FunctionDesc &fn, size_t i);
  /// Enqueues every kernel of `fn` on the stream, without waiting.
  Status launchAll(const FunctionDesc &fn);
  /// Launches every kernel of `fn` with its range checks deferred, waits,
  /// then reads the checks.
  Status launchAndWait(const FunctionDesc &fn);
  /// A captured entry point (cuda_executor.cpp).
  struct Graph;

  const StepProgram &program_;
  std::unique_ptr<CudaContext> ctx_;
  void *arena_ = nullptr;
  uint64_t arenaBytes_ = 0;
  /// Pinned host memory for the offloaded activations (host buffers).
  void *hostArena_ = nullptr;
  std::map<std::pair<BufferKind, std::string>, TensorView> state_;
  ResolvedKernels kernels_;
  std::map<std::string, std::unique_ptr<Graph>> graphs_;
  bool graphsEnabled_ = true;
  uint64_t deviceBytes_ = 0;
  int device_ = 0;
  int rank_ = -1;
};

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_CUDA_EXECUTOR_H
