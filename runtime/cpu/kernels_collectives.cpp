//===- kernels_collectives.cpp - exchanges between processes (CPU) --------===//
//
// all_reduce, reduce and broadcast of the CPU backend, through the job's
// communicator (Gloo): the tensors are host memory. In a process that runs
// alone they copy their inputs (a root must then be 0). reduce is an
// all-reduce here: its root gets the sum, the others get it too.
//
//===----------------------------------------------------------------------===//

#include "runtime/cpu/cpu_kernels.h"
#include "runtime/dist/communicator.h"
#include "runtime/kernels/kernel_checks.h"

#include <cstring>

namespace g3rt::cpu {

using namespace checks;

namespace {

int processesOf(const KernelArgs &args) {
  return args.communicator ? args.communicator->size() : 1;
}

/// The outputs start as the inputs (no copy where they alias), except a
/// broadcast's away from its root: what those pass is ignored, and at ZeRO
/// stage 3 they do not hold it (runtime/exec/state.h, stateOwners).
void copyInputs(const KernelArgs &args, bool received) {
  if (received)
    return;
  for (size_t i = 0; i < args.inputs.size(); ++i)
    if (args.outputs[i].data != args.inputs[i].data)
      std::memcpy(args.outputs[i].data, args.inputs[i].data, args.inputs[i].bytes());
}

/// The collective of `kind` on the outputs, each tensor after its copy; a
/// reduce is an all-reduce here (its root gets the sum, the others too).
enum class Kind { AllReduce, Reduce, Broadcast };

Status exchange(const KernelArgs &args, Kind kind) {
  int64_t root = 0;
  G3RT_RETURN_IF_ERROR(
      checkCollective(args, processesOf(args), kind == Kind::AllReduce ? nullptr : &root));
  copyInputs(args,
             kind == Kind::Broadcast && args.communicator && args.communicator->rank() != root);
  const std::string what =
      std::string(args.name) + (kind == Kind::Reduce      ? " to process " + std::to_string(root)
                                : kind == Kind::Broadcast ? " from process " + std::to_string(root)
                                                          : "");
  for (size_t i = 0; args.communicator && i < args.outputs.size(); ++i) {
    const TensorView &t = args.outputs[i];
    Status s = kind == Kind::Broadcast
                   ? args.communicator->broadcast(t.data, t.bytes(), int(root))
                   : args.communicator->allReduceSum(t.f32(), size_t(t.numel()));
    G3RT_RETURN_IF_ERROR(s.withContext(what));
  }
  return Status();
}

} // namespace

Status allReduceKernel(const KernelArgs &args) { return exchange(args, Kind::AllReduce); }

Status reduceKernel(const KernelArgs &args) { return exchange(args, Kind::Reduce); }

Status broadcastKernel(const KernelArgs &args) { return exchange(args, Kind::Broadcast); }

} // namespace g3rt::cpu
