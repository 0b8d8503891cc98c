//===- device_backend.cpp - running a step on an accelerator --------------===//

#include "runtime/exec/device_backend.h"

#include "runtime/base/parallel.h"

namespace g3rt {

namespace {

/// Set once at start-up by the program's main, read afterwards: no locking.
const DeviceBackendProvider *cudaProvider = nullptr;

} // namespace

Status DeviceBackend::readOutput(const std::string &function, const std::string &name,
                                 std::vector<float> &values) {
  std::vector<uint8_t> bytes;
  TensorView view;
  G3RT_RETURN_IF_ERROR(readOutput(function, name, bytes, view));
  values = toFloat(view);
  return Status();
}

void registerCudaBackendProvider(const DeviceBackendProvider *provider) {
  cudaProvider = provider;
}

const DeviceBackendProvider *cudaBackendProvider() { return cudaProvider; }

Status selectBackend(const StepProgram &program, const std::string &device,
                     std::unique_ptr<DeviceBackend> &out, std::string &description) {
  out.reset();
  if (device != "cpu" && device != "cuda" && device != "auto")
    return Status::error("unknown device '" + device + "': use cpu, cuda or auto");
  std::string cpu = "CPU (" + std::to_string(parallelThreads()) + " threads)";
  if (device != "cpu") {
    const DeviceBackendProvider *cuda = cudaBackendProvider();
    std::string why;
    int count = cuda ? cuda->countDevices(why) : 0;
    if (cuda && count > 0) {
      Status s = cuda->create(program, 0, out);
      if (s.ok()) {
        description = out->description();
        return Status();
      }
      out.reset();
      if (device == "cuda")
        return s.withContext("--device cuda");
      // "auto" still trains when the GPU cannot take this step (a kernel the
      // CUDA backend lacks, too little memory), and says why it did not.
      description = cpu + "; CUDA not used: " + s.message();
      return Status();
    }
    // Without CUDA or a GPU, "auto" falls back quietly: a CPU machine is its
    // normal case.
    if (device == "cuda") {
      if (!cuda)
        return Status::error("--device cuda: this g3moe-run was built without CUDA (nvcc was "
                             "not found when it was configured)");
      return Status::error("--device cuda: no CUDA device visible" +
                           (why.empty() ? std::string() : " (cudaGetDeviceCount: " + why + ")"));
    }
  }
  description = cpu;
  return Status();
}

} // namespace g3rt
