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

/// The outputs start as the inputs (a no-op where they alias).
void copyInputs(const KernelArgs &args) {
  for (size_t i = 0; i < args.inputs.size(); ++i)
    if (args.outputs[i].data != args.inputs[i].data)
      std::memcpy(args.outputs[i].data, args.inputs[i].data, args.inputs[i].bytes());
}

} // namespace

Status allReduceKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCollective(args, processesOf(args), nullptr));
  copyInputs(args);
  for (size_t i = 0; args.communicator && i < args.outputs.size(); ++i)
    G3RT_RETURN_IF_ERROR(
        args.communicator->allReduceSum(args.outputs[i].f32(), size_t(args.outputs[i].numel()))
            .withContext(std::string(args.name)));
  return Status();
}

Status reduceKernel(const KernelArgs &args) {
  int64_t root = 0;
  G3RT_RETURN_IF_ERROR(checkCollective(args, processesOf(args), &root));
  copyInputs(args);
  for (size_t i = 0; args.communicator && i < args.outputs.size(); ++i)
    G3RT_RETURN_IF_ERROR(
        args.communicator->allReduceSum(args.outputs[i].f32(), size_t(args.outputs[i].numel()))
            .withContext(std::string(args.name) + " to process " + std::to_string(root)));
  return Status();
}

Status broadcastKernel(const KernelArgs &args) {
  int64_t root = 0;
  G3RT_RETURN_IF_ERROR(checkCollective(args, processesOf(args), &root));
  copyInputs(args);
  for (size_t i = 0; args.communicator && i < args.outputs.size(); ++i)
    G3RT_RETURN_IF_ERROR(
        args.communicator->broadcast(args.outputs[i].data, args.outputs[i].bytes(), int(root))
            .withContext(std::string(args.name) + " from process " + std::to_string(root)));
  return Status();
}

} // namespace g3rt::cpu
