//===- output_dir.h - claiming a run's output folder ------------*- C++ -*-===//
//
// One run at a time writes into an output folder. Before it writes anything,
// a run checks that it can create files there and takes an exclusive
// flock(2) on `<output-dir>/.g3moe-run.lock`, in which it records its pid,
// host and start time; a second run into the same folder is refused with
// that holder named. The kernel drops the lock when the process ends, however
// it ends, so the file a killed run leaves behind never blocks.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_OUTPUT_DIR_H
#define G3MOE_RUNTIME_TRAIN_OUTPUT_DIR_H

#include "runtime/base/status.h"

#include <string>

namespace g3rt {

/// The lock file's name in the output folder.
inline constexpr const char *kOutputDirLockFile = ".g3moe-run.lock";

/// An exclusive lock on an output folder, held until release() or
/// destruction.
class OutputDirLock {
public:
  OutputDirLock() = default;
  ~OutputDirLock() { release(); }
  OutputDirLock(OutputDirLock &&other) noexcept;
  OutputDirLock &operator=(OutputDirLock &&other) noexcept;
  OutputDirLock(const OutputDirLock &) = delete;
  OutputDirLock &operator=(const OutputDirLock &) = delete;

  /// Locks the existing folder `dir`. Held by another process (or another
  /// lock object of this one): an error naming the holder as its lock file
  /// records it. Where the file system has no locks (flock fails otherwise),
  /// the run goes on unlocked and `warning` says so.
  static Status acquire(const std::string &dir, OutputDirLock &out, std::string &warning);

  /// Whether a lock is held.
  bool held() const { return fd_ >= 0; }
  /// Clears the holder recorded in the file and drops the lock; the file
  /// stays (deleting it would let a waiting opener lock a file no one else
  /// sees).
  void release();

private:
  int fd_ = -1;
};

/// Makes `dir` ready for a run that writes into it, before the run spends
/// any time: creates it, checks that files can be created in it (a read-only
/// or unwritable folder is refused, naming it), locks it into `lock` (see
/// OutputDirLock::acquire, also for `warning`) and removes the temporaries
/// that saves of killed runs left there (removeStaleTemporaries).
Status claimOutputDir(const std::string &dir, OutputDirLock &lock, std::string &warning);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_OUTPUT_DIR_H
