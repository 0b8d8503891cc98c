//===- file.h - opening input files or saying why not -----------*- C++ -*-===//
//
// Every reader of the runtime (step.bin, safetensors, JSON, data, tokenizer)
// opens its file through openForReading, so that a folder, a missing file or
// an unreadable one becomes an error naming the file instead of a crash or a
// misleading message further on.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_FILE_H
#define G3MOE_RUNTIME_BASE_FILE_H

#include "runtime/base/status.h"

#include <cstdint>
#include <fstream>
#include <string>

namespace g3rt {

/// Opens `path` for reading into `in` (with `mode`, to which std::ios::in is
/// added). Errors name the file, after `what` where given ("data file"):
/// "cannot open <what> <path>: <reason>" when it cannot be opened,
/// "<what> <path> is a directory" for a folder. With `regularSize`, the file
/// must also be a regular file (a reader that seeks or needs the size; a pipe
/// or device is "not a regular file"), whose size in bytes it receives.
Status openForReading(const std::string &path, std::ifstream &in,
                      std::ios::openmode mode = std::ios::in, const std::string &what = "",
                      uint64_t *regularSize = nullptr);

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_FILE_H
