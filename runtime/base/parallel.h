//===- parallel.h - a parallel for over index ranges ------------*- C++ -*-===//
//
// The CPU backend's only threading primitive: split [0, n) into contiguous
// chunks and run them on worker threads. Chunks are fixed by (n, threads), and
// every kernel writes disjoint outputs per index, so results do not depend on
// scheduling.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_PARALLEL_H
#define G3MOE_RUNTIME_BASE_PARALLEL_H

#include <cstdint>
#include <functional>

namespace g3rt {

/// Threads parallelFor uses; defaults to the hardware concurrency.
int parallelThreads();
/// Sets the thread count (values below 1 mean 1).
void setParallelThreads(int threads);

/// Calls `body(begin, end)` on disjoint chunks covering [0, n). Runs inline
/// when n is below `grain` or one thread is configured.
void parallelFor(int64_t n, const std::function<void(int64_t, int64_t)> &body, int64_t grain = 1);

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_PARALLEL_H
