//===- kernels_collectives.cpp - exchanges between processes (CUDA) -------===//
//
// all_reduce, reduce and broadcast of the CUDA backend: the outputs start as the
// inputs (a device copy where they do not alias) and, in a job of several
// processes, go through the context's DeviceJob (NCCL). In a process that
// runs alone they are those copies (a broadcast's root must then be 0). The
// executor runs an entry point holding them kernel by kernel: the wait for
// the other processes cannot be captured into a CUDA graph.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_kernels.h"
#include "runtime/kernels/kernel_checks.h"

namespace g3rt::cuda {

using namespace checks;

namespace {

int processesOf(const CudaContext &ctx) { return ctx.job ? ctx.job->processes() : 1; }

/// The outputs start as the inputs (no copy where they alias), except a
/// broadcast's away from its root: what those pass is ignored, and at ZeRO
/// stage 3 they do not hold it (runtime/exec/state.h, stateOwners).
Status copyInputs(const KernelArgs &args, CudaContext &ctx, bool received) {
  if (received)
    return Status();
  for (size_t i = 0; i < args.inputs.size(); ++i)
    if (args.outputs[i].data != args.inputs[i].data) {
      cudaError_t e = cudaMemcpyAsync(args.outputs[i].data, args.inputs[i].data,
                                      args.inputs[i].bytes(), cudaMemcpyDeviceToDevice, ctx.stream);
      if (e != cudaSuccess)
        return args.fail(std::string("copying tensor ") + std::to_string(i) + ": " +
                         cudaGetErrorString(e));
    }
  return Status();
}

enum class Kind { AllReduce, Reduce, Broadcast };

/// The collective of `kind` on the outputs, after their copies.
Status exchange(const KernelArgs &args, Kind kind) {
  CudaContext &ctx = contextOf(args);
  int64_t root = 0;
  G3RT_RETURN_IF_ERROR(
      checkCollective(args, processesOf(ctx), kind == Kind::AllReduce ? nullptr : &root));
  G3RT_RETURN_IF_ERROR(
      copyInputs(args, ctx, kind == Kind::Broadcast && ctx.job && ctx.job->rank() != root));
  if (!ctx.job)
    return Status();
  switch (kind) {
  case Kind::AllReduce:
    return ctx.job->allReduceSum(args.outputs, ctx.stream).withContext(std::string(args.name));
  case Kind::Reduce:
    return ctx.job->reduceSum(args.outputs, int(root), ctx.stream)
        .withContext(std::string(args.name) + " to process " + std::to_string(root));
  case Kind::Broadcast:
    break;
  }
  return ctx.job->broadcast(args.outputs, int(root), ctx.stream)
      .withContext(std::string(args.name) + " from process " + std::to_string(root));
}

} // namespace

Status allReduceKernel(const KernelArgs &args) { return exchange(args, Kind::AllReduce); }

Status reduceKernel(const KernelArgs &args) { return exchange(args, Kind::Reduce); }

Status broadcastKernel(const KernelArgs &args) { return exchange(args, Kind::Broadcast); }

} // namespace g3rt::cuda
