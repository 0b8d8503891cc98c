//===- backend_choice.cpp - g3moe-run's --device --------------------------===//

#include "runtime/train/backend_choice.h"

#include "runtime/cpu/cpu_backend.h"

namespace g3rt {

Status selectBackend(const StepProgram &program, HostState &host, const std::string &device,
                     const Placement &where, std::unique_ptr<Backend> &out,
                     std::string &description) {
  out.reset();
  if (device != "cpu" && device != "cuda" && device != "auto")
    return Status::error("unknown device '" + device + "': use cpu, cuda or auto");
  std::string cudaNotUsed;
  if (device != "cpu") {
    const BackendProvider *cuda = cudaBackendProvider();
    std::string why;
    int count = cuda ? cuda->countDevices(why) : 0;
    if (cuda && count > 0) {
      // One visible device is this process's own (a launcher that shows each
      // process one card); else the local rank picks it.
      Placement onDevice = where;
      if (count == 1)
        onDevice.device = 0;
      if (onDevice.device >= count)
        return Status::error("--device " + device + ": process " + std::to_string(where.rank) +
                             " wants CUDA device " + std::to_string(where.device) +
                             " (its local rank), but " + std::to_string(count) + " are visible");
      Status s = cuda->create(program, host, onDevice, out);
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
  Placement onCpu = where;
  onCpu.device = 0; // the CPU is one device, whatever the local rank
  G3RT_RETURN_IF_ERROR(cpu::cpuBackendProvider().create(program, host, onCpu, out));
  description = out->description() + cudaNotUsed;
  return Status();
}

} // namespace g3rt
