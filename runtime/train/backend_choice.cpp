//===- backend_choice.cpp - g3moe-run's --device --------------------------===//

#include "runtime/train/backend_choice.h"

#include "runtime/cpu/cpu_backend.h"

namespace g3rt {

Status selectBackend(const StepProgram &program, HostState &host, const std::string &device,
                     std::unique_ptr<Backend> &out, std::string &description) {
  out.reset();
  if (device != "cpu" && device != "cuda" && device != "auto")
    return Status::error("unknown device '" + device + "': use cpu, cuda or auto");
  std::string cudaNotUsed;
  if (device != "cpu") {
    const BackendProvider *cuda = cudaBackendProvider();
    std::string why;
    int count = cuda ? cuda->countDevices(why) : 0;
    if (cuda && count > 0) {
      Status s = cuda->create(program, host, Placement{}, out);
      if (s.ok()) {
        description = out->description();
        return Status();
      }
      out.reset();
      if (device == "cuda")
        return s.withContext("--device cuda");
      // "auto" still trains when the GPU cannot take this step (a kernel the
      // CUDA backend lacks, too little memory), and says why it did not.
      cudaNotUsed = "; CUDA not used: " + s.message();
    } else if (device == "cuda") {
      if (!cuda)
        return Status::error("--device cuda: this g3moe-run was built without CUDA (nvcc was "
                             "not found when it was configured)");
      return Status::error("--device cuda: no CUDA device visible" +
                           (why.empty() ? std::string() : " (cudaGetDeviceCount: " + why + ")"));
    }
    // Without CUDA or a GPU, "auto" falls back quietly: a CPU machine is its
    // normal case.
  }
  G3RT_RETURN_IF_ERROR(cpu::cpuBackendProvider().create(program, host, Placement{}, out));
  description = out->description() + cudaNotUsed;
  return Status();
}

} // namespace g3rt
