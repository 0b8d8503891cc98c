//===- file.h - opening, reading and writing files --------------*- C++ -*-===//
//
// Every reader of the runtime (step.bin, safetensors, JSON, data, tokenizer)
// opens its file through openForReading, so that a folder, a missing file or
// an unreadable one becomes an error naming the file instead of a crash or a
// misleading message further on. Files written whole (step.bin, JSON
// metadata, metrics) go through writeFileAtomically, so that a crash or a
// full disk never leaves a truncated file for the next run to read.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_FILE_H
#define G3MOE_RUNTIME_BASE_FILE_H

#include "runtime/base/status.h"

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

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

/// Reads a whole regular file; a folder, a missing or an unreadable file is
/// an error naming it, after `what` where given (openForReading's).
Status readFile(const std::string &path, std::vector<uint8_t> &bytes, const std::string &what = "");

/// Writes `bytes` to `path` atomically (a temporary file in the same folder,
/// then rename), so a crash never leaves a half-written file behind.
Status writeFileAtomically(const std::string &path, const std::vector<uint8_t> &bytes);

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_FILE_H
