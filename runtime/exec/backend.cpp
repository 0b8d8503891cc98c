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

std::vector<std::string> missingKernels(const StepProgram &program,
                                        KernelFn (*find)(std::string_view)) {
  std::vector<std::string> missing;
  std::set<std::string> seen;
  for (const FunctionDesc &fn : program.functions)
    for (const InstrDesc &in : fn.instrs)
      if (!find(in.kernel) && seen.insert(in.kernel).second)
        missing.push_back(in.kernel + " (used by " + fn.name + ")");
  return missing;
}

Status kernelsMissingError(const std::string &backend, const std::vector<std::string> &missing) {
  if (missing.empty())
    return Status();
  std::string list;
  for (const std::string &m : missing)
    list += (list.empty() ? "" : ", ") + m;
  return Status::error("the " + backend + " backend has no kernel " + list);
}

void registerCudaBackendProvider(const BackendProvider *provider) { cudaProvider = provider; }

const BackendProvider *cudaBackendProvider() { return cudaProvider; }

} // namespace g3rt
