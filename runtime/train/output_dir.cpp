//===- output_dir.cpp - claiming a run's output folder --------------------===//

#include "runtime/train/output_dir.h"

#include "runtime/train/checkpoint.h"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

namespace g3rt {

namespace fs = std::filesystem;

namespace {

/// "pid <pid> on host <host> since <UTC time>": who holds the lock.
std::string holderLine() {
  char host[256] = "unknown";
  if (::gethostname(host, sizeof(host) - 1) != 0)
    std::strcpy(host, "unknown");
  host[sizeof(host) - 1] = '\0';
  std::time_t now = std::time(nullptr);
  std::tm utc{};
  char since[32] = "";
  if (::gmtime_r(&now, &utc))
    std::strftime(since, sizeof(since), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return "pid " + std::to_string(long(::getpid())) + " on host " + host + " since " + since;
}

/// The holder recorded in the lock file `path` (its first line), or "".
std::string recordedHolder(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return "";
  char buffer[512];
  ssize_t n = ::read(fd, buffer, sizeof(buffer));
  ::close(fd);
  std::string text(buffer, size_t(n > 0 ? n : 0));
  return text.substr(0, text.find('\n'));
}

} // namespace

OutputDirLock::OutputDirLock(OutputDirLock &&other) noexcept : fd_(other.fd_) { other.fd_ = -1; }

OutputDirLock &OutputDirLock::operator=(OutputDirLock &&other) noexcept {
  if (this != &other) {
    release();
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

void OutputDirLock::release() {
  if (fd_ < 0)
    return;
  // Still holding the lock, so no other run is writing its holder line. Should
  // the truncation fail, the line left names a holder whose lock is gone,
  // which the next run overwrites.
  [[maybe_unused]] int truncated = ::ftruncate(fd_, 0);
  ::close(fd_);
  fd_ = -1;
}

Status OutputDirLock::acquire(const std::string &dir, OutputDirLock &out, std::string &warning) {
  out.release();
  warning.clear();
  std::string path = (fs::path(dir) / kOutputDirLockFile).string();
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    return Status::error("cannot open the lock file " + path + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int error = errno;
    ::close(fd);
    if (error == EWOULDBLOCK) {
      std::string holder = recordedHolder(path);
      return Status::error(
          "output dir " + dir + " is in use by another run (" +
          (holder.empty() ? std::string("its holder is not recorded yet") : holder) +
          "; lock file " + path + "): wait for that run to end or choose another --output-dir");
    }
    warning = "cannot lock " + path + " (" + std::strerror(error) +
              "): nothing stops another run from writing into " + dir + " too";
    return Status();
  }
  std::string line = holderLine() + "\n";
  if (::ftruncate(fd, 0) != 0 ||
      ::pwrite(fd, line.data(), line.size(), 0) != ssize_t(line.size())) {
    std::string why = std::strerror(errno);
    ::close(fd);
    return Status::error("cannot write the lock file " + path + ": " + why);
  }
  out.fd_ = fd;
  return Status();
}

Status claimOutputDir(const std::string &dir, OutputDirLock &lock, std::string &warning) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return Status::error("cannot create the output dir " + dir + ": " + ec.message());
  // Creating a file is the test that holds for every cause (permissions, a
  // read-only mount, a file system that takes no new files) and for root as
  // for anyone. Opening the lock file would not do: it may exist already and
  // stay writable in a folder that is not. The name is a temporary's, which
  // removeStaleTemporaries clears should a kill leave it.
  std::string probe =
      (fs::path(dir) / (".g3moe-write-check.tmp." + std::to_string(long(::getpid())))).string();
  ::unlink(probe.c_str());
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    return Status::error("the output dir " + dir + " is not writable: cannot create " + probe +
                         ": " + std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
  G3RT_RETURN_IF_ERROR(OutputDirLock::acquire(dir, lock, warning));
  removeStaleTemporaries(dir);
  removeStaleTemporaries((fs::path(dir) / "merged").string());
  return Status();
}

} // namespace g3rt
