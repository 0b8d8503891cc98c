//===- backend_choice.h - g3moe-run's --device ------------------*- C++ -*-===//
//
// Which backend a run uses: the CPU backend, always built in, or the CUDA
// backend where the program registered it (runtime/exec/backend.h).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_BACKEND_CHOICE_H
#define G3MOE_RUNTIME_TRAIN_BACKEND_CHOICE_H

#include "runtime/exec/backend.h"

#include <memory>
#include <string>

namespace g3rt {

/// Creates the backend `program` runs on, working on `host`, as --device
/// says: "cpu"; "cuda" (an error when the program was built without CUDA,
/// no device is visible or the backend cannot take the step); or "auto"
/// (CUDA when it is built in, a device is visible and the backend takes the
/// step, else the CPU). The CUDA device is `where.device` (a process's local
/// rank), or 0 where only one device is visible (a launcher that gives each
/// process a card of its own). `description` says what was chosen ("CUDA on
/// <device name>", "CPU (<n> threads)", followed by why CUDA was not used
/// when "auto" saw a device but could not use it).
Status selectBackend(const StepProgram &program, HostState &host, const std::string &device,
                     const Placement &where, std::unique_ptr<Backend> &out,
                     std::string &description);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_BACKEND_CHOICE_H
