//===- DeviceBudget.h - the memory budget and its source --------*- C++ -*-===//
//
// g3moe-compile plans a step against memory_budget_gb when the configuration
// or --set gives it (0: no budget). Without it, the budget is the memory of
// the GPU that g3moe-run would use on this machine (CUDA device 0 among the
// visible ones) less what the CUDA backend takes beside the plan. The GPU is
// read by queryVisibleDevice (DeviceQuery.h), which only the g3moe-compile
// tool links; this part is plain arithmetic, so the compiler library stays
// free of CUDA and tests can hand it any device.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_COMPILER_DRIVER_DEVICEBUDGET_H
#define G3MOE_COMPILER_DRIVER_DEVICEBUDGET_H

#include <cstdint>
#include <functional>
#include <string>

namespace g3moe::frontend {
struct TrainingOptions;
} // namespace g3moe::frontend

namespace g3moe::compiler {

/// The GPU g3moe-compile sees, or why it sees none.
struct VisibleDevice {
  /// Whether a device was found and its memory read; when false, `why` says
  /// why not.
  bool found = false;
  /// cudaDeviceProp::name, e.g. `NVIDIA H100 80GB HBM3`.
  std::string name;
  /// cudaMemGetInfo's total, in bytes (not its free memory: the budget is
  /// for the card, not for what other processes leave of it now).
  int64_t totalBytes = 0;
  /// Why none was found: `this g3moe-compile was built without CUDA`, or
  /// CUDA's message (`no CUDA-capable device is detected`).
  std::string why;
};

/// Reads the visible GPU. An empty function means "do not look" (as in a
/// compiler built into another tool).
using DeviceQuery = std::function<VisibleDevice()>;

/// What the CUDA backend holds on the device beside the plan's arena,
/// persistent tensors and attention scratch, which is all that
/// memory_budget_gb bounds. g3moe-run refuses a step whose arena, persistent
/// tensors, attention scratch and 256 MiB workspace exceed the device's
/// *free* memory (runtime/cuda/cuda_executor.cpp, checkDeviceMemory), read
/// after the CUDA context exists. The reserve is:
///   * 0.25 GiB: the workspace that check adds;
///   * about 0.5 GiB: the CUDA context, which the free memory already lacks;
///   * 2.75 GiB: what the backend creates after the check: the cuBLAS,
///     cuBLASLt and cuDNN handles and their lazily loaded kernels, and CUDA
///     graphs. bench/RESULTS.md measured the 128K step of G3MoE-4B, planned
///     under 76 GiB on an H100 before the attention scratch was counted,
///     holding 78.1 GiB besides the context: at least 2.1 GiB above its
///     plan, most of it that scratch.
/// 3.5 GiB in all: an 80 GB H100 (79 to 79.6 GiB total) gets 75.5 to 76 GiB,
/// the budget the benchmarks have run there.
inline constexpr int64_t kDeviceReserveBytes = int64_t(7) << 29;

/// The default budget on a device of `totalBytes`: the total less
/// kDeviceReserveBytes, or 0 (no budget) when that leaves nothing.
int64_t deviceBudgetBytes(int64_t totalBytes);

/// The budget one compile plans against, and where it came from.
struct MemoryBudget {
  enum class Origin {
    /// memory_budget_gb, from the configuration or --set (0 included).
    Stated,
    /// The visible GPU's default.
    Device,
    /// Neither: no budget.
    None,
  };
  /// Bytes the step's arena and persistent tensors may take; 0: no budget.
  int64_t bytes = 0;
  Origin origin = Origin::None;
  /// Where it came from, for the report: `--set memory_budget_gb=76`,
  /// `<file>: field 'memory_budget_gb'`, `the visible GPU <name>, 79.1 GiB
  /// less a 3.5 GiB reserve`, or why there is none.
  std::string source;
};

/// memory_budget_gb where `training` states it (0 is no budget, and no GPU
/// is asked); otherwise, when `query` is set and finds a GPU, the
/// deviceBudgetBytes of its total; otherwise no budget.
MemoryBudget resolveMemoryBudget(const frontend::TrainingOptions &training,
                                 const DeviceQuery &query);

/// The report's line, e.g. `memory budget 75.6 GiB from the visible GPU
/// NVIDIA H100 80GB HBM3, 79.1 GiB less a 3.5 GiB reserve` or `no memory
/// budget: memory_budget_gb is 0 (--set memory_budget_gb=0)`.
std::string describeBudget(const MemoryBudget &budget);

} // namespace g3moe::compiler

#endif // G3MOE_COMPILER_DRIVER_DEVICEBUDGET_H
