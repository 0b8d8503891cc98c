//===- kernels_offload.cpp - host-memory copies on the CPU ----------------===//
//
// On the CPU the arena and the host arena are both host memory, so a copy is
// a memcpy done when it is launched and its wait has nothing to wait for.
// The step's verifier has checked the buffer kinds and the copy ids.
//
//===----------------------------------------------------------------------===//

#include "runtime/cpu/cpu_kernels.h"
#include "runtime/kernels/kernel_checks.h"

namespace g3rt::cpu {

using namespace checks;

// A byte copy between buffers of one dtype, as `copy` is.
Status copyToHostKernel(const KernelArgs &args) { return copyKernel(args); }
Status copyToDeviceKernel(const KernelArgs &args) { return copyKernel(args); }
Status waitCopyKernel(const KernelArgs &args) { return checkCounts(args, 1, 1); }

} // namespace g3rt::cpu
