//===- MemoryPlan.h - liveness and peak of arena buffers --------*- C++ -*-===//
//
// The liveness analysis the memory planner uses, exposed so that
// g3moe-compile can report what is live at the peak.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_DIALECTS_G3RT_TRANSFORMS_MEMORYPLAN_H
#define G3MOE_DIALECTS_G3RT_TRANSFORMS_MEMORYPLAN_H

#include "dialects/G3RT/IR/G3RTDialect.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"

#include <vector>

namespace g3moe::lowered {

/// One arena buffer and the launches it is live across.
struct BufferLife {
  BufferOp buffer;
  int64_t bytes = 0;
  /// Index of the first and last launch touching the buffer (the launch count
  /// for buffers named by g3rt.output).
  int64_t first = 0, last = 0;
  /// The launch that first writes it (null when none does).
  LaunchOp producer;
};

/// Live ranges of the buffers of `kind` (the device arena, or the host
/// buffers of --g3rt-offload-to-host) of `func` that some launch touches, in
/// program order of their first use.
std::vector<BufferLife> analyzeArenaLiveness(mlir::func::FuncOp func,
                                             llvm::StringRef kind = kArena);

/// Where memory peaks in `func`.
struct MemoryReport {
  /// Largest offset + size over the placed buffers (0 before planning).
  int64_t arenaBytes = 0;
  /// Largest sum of live buffer sizes over the launches, and where.
  int64_t peakLiveBytes = 0;
  int64_t peakLaunch = 0;
  /// The buffers live at that launch, largest first.
  std::vector<BufferLife> liveAtPeak;
};
MemoryReport reportMemory(mlir::func::FuncOp func);

/// Bytes of a static memref.
int64_t bufferBytes(mlir::MemRefType type);

} // namespace g3moe::lowered

#endif // G3MOE_DIALECTS_G3RT_TRANSFORMS_MEMORYPLAN_H
