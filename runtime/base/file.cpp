//===- file.cpp - opening, reading and writing files ----------------------===//

#include "runtime/base/file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <sys/stat.h>
#include <unistd.h>

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

Status readFile(const std::string &path, std::vector<uint8_t> &bytes, const std::string &what) {
  std::ifstream in;
  uint64_t size = 0;
  G3RT_RETURN_IF_ERROR(openForReading(path, in, std::ios::binary, what, &size));
  bytes.resize(size_t(size));
  if (size > 0 && !in.read(reinterpret_cast<char *>(bytes.data()), std::streamsize(size)))
    return Status::error(
        "cannot read " + path + ": " +
        (in.eof() ? std::string("the file shrank while read") : std::string(std::strerror(errno))));
  return Status();
}

Status writeFileAtomically(const std::string &path, const std::vector<uint8_t> &bytes) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out)
      return Status::error("cannot write " + tmp + ": " + std::strerror(errno));
    out.write(reinterpret_cast<const char *>(bytes.data()), std::streamsize(bytes.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      return Status::error("cannot write " + tmp + ": " + std::strerror(errno));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    return Status::error("cannot rename " + tmp + " to " + path + ": " + why);
  }
  return Status();
}

} // namespace g3rt
