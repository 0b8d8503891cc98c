//===- kernels_offload.cpp - host-memory copies on the CPU ----------------===//
//
// On the CPU the arena and the host arena are both host memory, so a copy is
// a memcpy done when it is launched and its wait has nothing to wait for.
// The step's verifier has checked the buffer kinds and the copy ids.
//
//===----------------------------------------------------------------------===//

#include "runtime/cpu/cpu_kernels.h"
#include "runtime/kernels/kernel_checks.h"

#include <cstring>

namespace g3rt::cpu {

using namespace checks;

namespace {
Status copyBytes(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 1, 1));
  if (args.inputs[0].bytes() != args.outputs[0].bytes())
    return args.fail("copies between buffers of different sizes");
  std::memcpy(args.outputs[0].data, args.inputs[0].data, args.inputs[0].bytes());
  return Status();
}
} // namespace

Status copyToHostKernel(const KernelArgs &args) { return copyBytes(args); }
Status copyToDeviceKernel(const KernelArgs &args) { return copyBytes(args); }
Status waitCopyKernel(const KernelArgs &args) { return checkCounts(args, 1, 1); }

} // namespace g3rt::cpu
