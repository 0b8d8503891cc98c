//===- FuzzSupport.h - helpers shared by the fuzz targets -------*- C++ -*-===//
//
// The readers under test take file names, so each target writes its input to
// a scratch file first. Settings a target needs (the tokenizer, the folder
// config paths resolve against) come from the build, and can be overridden
// through the environment when a fuzzer binary is run by hand.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_TEST_FUZZ_FUZZSUPPORT_H
#define G3MOE_TEST_FUZZ_FUZZSUPPORT_H

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

#include <unistd.h>

namespace g3moe::fuzz {

/// `$name`, or `fallback` where it is unset or empty.
inline std::string setting(const char *name, const char *fallback) {
  const char *v = std::getenv(name);
  return v && *v ? std::string(v) : std::string(fallback);
}

/// A folder of this process's own, removed when the process exits normally
/// (a crashing input leaves it behind next to the crash report).
inline const std::string &scratchDir() {
  static const std::string dir = [] {
    std::string base = setting("TMPDIR", "/tmp");
    std::string pattern = base + "/g3moe-fuzz.XXXXXX";
    if (!::mkdtemp(pattern.data())) {
      std::perror("g3moe fuzz: mkdtemp");
      std::abort();
    }
    static std::string removeAtExit;
    removeAtExit = pattern;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(removeAtExit, ec);
    });
    return pattern;
  }();
  return dir;
}

/// Writes `data` to `name` in the scratch folder and returns its path.
inline std::string writeScratch(const char *name, const uint8_t *data, size_t size) {
  std::string path = scratchDir() + "/" + name;
  std::FILE *f = std::fopen(path.c_str(), "wb");
  bool ok = f != nullptr;
  if (ok && size)
    ok = std::fwrite(data, 1, size, f) == size;
  if (f)
    ok = std::fclose(f) == 0 && ok;
  if (!ok) {
    std::perror(("g3moe fuzz: writing " + path).c_str());
    std::abort();
  }
  return path;
}

} // namespace g3moe::fuzz

#endif // G3MOE_TEST_FUZZ_FUZZSUPPORT_H
