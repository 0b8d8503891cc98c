//===- kernels_offload.cpp - host-memory copies beside the kernels --------===//
//
// copy_to_host and copy_to_device start a copy between the device arena and
// the pinned host arena on the context's copy stream, after everything
// launched on the kernel stream so far (the copied buffer was just written,
// or the destination's bytes were just freed); wait_copy makes the kernel
// stream wait for the copy's end. The kernels therefore never wait for a
// copy unless the planner placed its wait too early, and a captured CUDA
// graph keeps the copies as a branch beside the kernels.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_kernels.h"
#include "runtime/kernels/kernel_checks.h"

namespace g3rt::cuda {

using namespace checks;

namespace {

/// The events of copy `id` (the instruction's `copy` attribute).
Status copyEvents(const KernelArgs &args, cudaEvent_t &start, cudaEvent_t &end) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 1, 1));
  int64_t id = 0;
  G3RT_RETURN_IF_ERROR(args.requireInt("copy", id));
  const CudaContext &ctx = contextOf(args);
  if (id < 0 || size_t(2 * id + 1) >= ctx.copyEvents.size())
    return args.fail("copy id " + std::to_string(id) + " has no events");
  start = ctx.copyEvents[size_t(2 * id)];
  end = ctx.copyEvents[size_t(2 * id + 1)];
  return Status();
}

Status startCopy(const KernelArgs &args) {
  cudaEvent_t start = nullptr, end = nullptr;
  G3RT_RETURN_IF_ERROR(copyEvents(args, start, end));
  if (args.inputs[0].bytes() != args.outputs[0].bytes())
    return args.fail("copies between buffers of different sizes");
  const CudaContext &ctx = contextOf(args);
  cudaError_t e = cudaEventRecord(start, ctx.stream);
  if (e == cudaSuccess)
    e = cudaStreamWaitEvent(ctx.copyStream, start, 0);
  if (e == cudaSuccess)
    e = cudaMemcpyAsync(args.outputs[0].data, args.inputs[0].data, args.inputs[0].bytes(),
                        cudaMemcpyDefault, ctx.copyStream);
  if (e == cudaSuccess)
    e = cudaEventRecord(end, ctx.copyStream);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "starting the copy");
}

} // namespace

Status copyToHostKernel(const KernelArgs &args) { return startCopy(args); }
Status copyToDeviceKernel(const KernelArgs &args) { return startCopy(args); }

Status waitCopyKernel(const KernelArgs &args) {
  cudaEvent_t start = nullptr, end = nullptr;
  G3RT_RETURN_IF_ERROR(copyEvents(args, start, end));
  cudaError_t e = cudaStreamWaitEvent(contextOf(args).stream, end, 0);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "waiting for the copy");
}

} // namespace g3rt::cuda
