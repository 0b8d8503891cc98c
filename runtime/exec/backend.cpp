//===- backend.cpp - where a step runs ------------------------------------===//

#include "runtime/exec/backend.h"

#include <set>

namespace g3rt {

namespace {

/// Set once at start-up by the program's main, read afterwards: no locking.
const BackendProvider *cudaProvider = nullptr;

} // namespace

Status Backend::readOutput(const std::string &function, const std::string &name,
                           std::vector<float> &values) {
  std::vector<uint8_t> bytes;
  TensorView view;
  G3RT_RETURN_IF_ERROR(readOutput(function, name, bytes, view));
  values = toFloat(view);
  return Status();
}

Status resolveKernels(const StepProgram &program, const std::string &backend,
                      KernelFn (*find)(std::string_view), ResolvedKernels &out) {
  ResolvedKernels resolved;
  std::set<std::string> missing;
  std::string list;
  for (const FunctionDesc &fn : program.functions) {
    std::vector<KernelFn> &fns = resolved[fn.name];
    for (const InstrDesc &in : fn.instrs) {
      fns.push_back(find(in.kernel));
      if (!fns.back() && missing.insert(in.kernel).second)
        list += (list.empty() ? "" : ", ") + in.kernel + " (used by " + fn.name + ")";
    }
  }
  if (!list.empty())
    return Status::error("the " + backend + " backend has no kernel " + list);
  out = std::move(resolved);
  return Status();
}

void registerCudaBackendProvider(const BackendProvider *provider) { cudaProvider = provider; }

const BackendProvider *cudaBackendProvider() { return cudaProvider; }

} // namespace g3rt
