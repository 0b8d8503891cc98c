//===- file.cpp - opening input files or saying why not -------------------===//

#include "runtime/base/file.h"

#include <cerrno>
#include <cstring>

#include <sys/stat.h>

namespace g3rt {

Status openForReading(const std::string &path, std::ifstream &in, std::ios::openmode mode,
                      const std::string &what, uint64_t *regularSize) {
  std::string named = what.empty() ? path : what + " " + path;
  in.close();
  in.clear();
  in.open(path, mode | std::ios::in);
  if (!in)
    return Status::error("cannot open " + named + ": " + std::strerror(errno));
  // Opening a folder succeeds on Linux; only its reads fail, and a seek to its
  // end gives a meaningless size. So look at what was opened.
  struct stat info;
  if (::stat(path.c_str(), &info) != 0) {
    std::string why = std::strerror(errno);
    in.close();
    return Status::error("cannot read " + named + ": " + why);
  }
  if (S_ISDIR(info.st_mode)) {
    in.close();
    return Status::error(named + " is a directory");
  }
  if (regularSize) {
    if (!S_ISREG(info.st_mode)) {
      in.close();
      return Status::error(named + " is not a regular file");
    }
    *regularSize = uint64_t(info.st_size);
  }
  return Status();
}

} // namespace g3rt
