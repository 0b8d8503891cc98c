//===- load_communicator.cpp - a job's communicator, loaded on demand -----===//

#include "runtime/dist/load_communicator.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace g3rt {

namespace {

using MakeFn = void (*)(const World *, const GlooOptions *, std::unique_ptr<Communicator> *,
                        Status *);

/// Where libg3rt_gloo.so is: $G3MOE_GLOO_PLUGIN, else beside the executable.
std::string glooLibraryPath() {
  if (const char *p = std::getenv("G3MOE_GLOO_PLUGIN"); p && *p)
    return p;
  std::string exe(4096, '\0');
  ssize_t n = readlink("/proc/self/exe", exe.data(), exe.size() - 1);
  exe.resize(n > 0 ? size_t(n) : 0);
  size_t slash = exe.rfind('/');
  return (slash == std::string::npos ? std::string(".") : exe.substr(0, slash)) +
         "/libg3rt_gloo.so";
}

} // namespace

Status loadGlooCommunicator(const World &world, const GlooOptions &options,
                            std::unique_ptr<Communicator> &out) {
  const std::string path = glooLibraryPath();
  // Kept loaded for the life of the process: the communicator's code is in it.
  void *library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library)
    return Status::error("cannot load the Gloo communicator " + path + ": " + dlerror() +
                         " (a job of several processes needs it; set G3MOE_GLOO_PLUGIN to "
                         "its path)");
  auto make = reinterpret_cast<MakeFn>(dlsym(library, "g3rt_make_gloo_communicator"));
  if (!make)
    return Status::error(path + " has no g3rt_make_gloo_communicator");
  Status status;
  make(&world, &options, &out, &status);
  return status;
}

} // namespace g3rt
