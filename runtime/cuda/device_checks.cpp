//===- device_checks.cpp - range checks read after the kernels ------------===//

#include "runtime/cuda/device_checks.h"
#include "runtime/kernels/kernel_checks.h"

namespace g3rt::cuda {

using checks::str;

namespace {

Status clearBad(const KernelArgs &args, BadWord *bad, int64_t count) {
  cudaError_t e =
      cudaMemsetAsync(bad, 0xff, size_t(count) * sizeof(BadWord), contextOf(args).stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "clearing the range-check record");
  return Status();
}

/// Reads `count` records back (this waits for the stream).
Status readBad(const KernelArgs &args, const BadWord *bad, int64_t count,
               std::vector<BadWord> &out) {
  out.assign(size_t(count), kNoBad);
  CudaContext &ctx = contextOf(args);
  cudaError_t e = cudaMemcpyAsync(out.data(), bad, size_t(count) * sizeof(BadWord),
                                  cudaMemcpyDeviceToHost, ctx.stream);
  if (e == cudaSuccess)
    e = cudaStreamSynchronize(ctx.stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "reading the range-check record");
  return Status();
}

} // namespace

std::string badIndexMessage(BadWord word, int64_t k, int64_t limit, const char *what) {
  const int64_t pos = badPosition(word);
  const int32_t value = badValue(word);
  return std::string(what) + " " + std::to_string(value) + " at row " + str(pos / k) +
         ", position " + str(pos % k) + " is outside [0, " + str(limit) + ")";
}

Status takeRecords(const KernelArgs &args, ScratchArrays &scratch, int64_t count, CheckRecords &r) {
  DeviceChecks &checks = contextOf(args).checks;
  r.count = size_t(count);
  r.first = checks.used();
  r.deferred = checks.deferred && r.first + r.count <= checks.capacity;
  if (r.deferred) {
    r.at = checks.records + r.first;
  } else {
    r.at = scratch.take<BadWord>(count);
    G3RT_RETURN_IF_ERROR(scratch.check(args));
  }
  return clearBad(args, r.at, count);
}

Status settle(const KernelArgs &args, const CheckRecords &r,
              std::function<Status(const BadWord *)> verdict) {
  if (r.deferred) {
    contextOf(args).checks.pending.push_back({r.first, r.count, std::move(verdict)});
    return Status();
  }
  std::vector<BadWord> host;
  G3RT_RETURN_IF_ERROR(readBad(args, r.at, int64_t(r.count), host));
  return verdict(host.data());
}

} // namespace g3rt::cuda
