//===- device_checks.h - range checks read after the kernels ----*- C++ -*-===//
//
// Indices and slots of the MoE kernels are range-checked on the device:
// kernels skip a bad entry (no out-of-bounds access) and record the first
// one in a record of the context's DeviceChecks; the host reads the records
// back (at once, or after the entry point when the executor collects them)
// and fails the call with the CPU's message.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_DEVICE_CHECKS_H
#define G3MOE_RUNTIME_CUDA_DEVICE_CHECKS_H

#include "runtime/cuda/scratch.h"

#include <functional>
#include <string>
#include <vector>

namespace g3rt::cuda {

/// A range-check record: the first bad (position, value) as one 64-bit word,
/// position in the high half so that atomicMin keeps the earliest. All ones
/// means "nothing found".
using BadWord = unsigned long long;
constexpr BadWord kNoBad = ~BadWord(0);

#if defined(__CUDACC__)
__device__ __forceinline__ void reportBad(BadWord *bad, int64_t pos, int32_t value) {
  atomicMin(bad, (BadWord(pos) << 32) | BadWord(uint32_t(value)));
}
#endif

/// A record's position and value (reportBad's packing).
inline int64_t badPosition(BadWord word) { return int64_t(word >> 32); }
inline int32_t badValue(BadWord word) { return int32_t(uint32_t(word & 0xffffffffu)); }

/// The CPU's checkIndexRange message for a record of a [rows, k] tensor.
std::string badIndexMessage(BadWord word, int64_t k, int64_t limit, const char *what);

/// The cleared records of one check: in the context's deferred store
/// (DeviceChecks) when the executor collects them and there is room, else in
/// kernel scratch.
struct CheckRecords {
  BadWord *at = nullptr;
  size_t first = 0, count = 0;
  bool deferred = false;
};

/// Clears `count` records for one check: in the deferred store when there is
/// room, else in `scratch`.
Status takeRecords(const KernelArgs &args, ScratchArrays &scratch, int64_t count, CheckRecords &r);

/// Runs `verdict` (an error for bad records, else ok) on the records once the
/// kernels that fill them ran: after the entry point when they are
/// deferred, else now, waiting for the stream.
Status settle(const KernelArgs &args, const CheckRecords &r,
              std::function<Status(const BadWord *)> verdict);

/// One record for a whole [rows, k] index tensor: take it, `launch`, settle.
/// The kernels `launch` runs, and those after it, must stay in bounds for
/// bad indices, which a deferred check reports only later.
template <typename Launch>
Status checkedLaunch(const KernelArgs &args, ScratchArrays &scratch, int64_t k, int64_t limit,
                     const char *what, const Launch &launch) {
  CheckRecords r;
  G3RT_RETURN_IF_ERROR(takeRecords(args, scratch, 1, r));
  G3RT_RETURN_IF_ERROR(launch(r.at));
  return settle(args, r, [name = std::string(args.name), k, limit, what](const BadWord *w) {
    return w[0] == kNoBad ? Status()
                          : Status::error(name + ": " + badIndexMessage(w[0], k, limit, what));
  });
}

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_DEVICE_CHECKS_H
