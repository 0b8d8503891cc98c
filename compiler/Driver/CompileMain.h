//===- CompileMain.h - the g3moe-compile driver -----------------*- C++ -*-===//
//
// Entry point of g3moe-compile, kept in a library so that the tool is a thin
// main and tests can drive the same code.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_COMPILER_DRIVER_COMPILEMAIN_H
#define G3MOE_COMPILER_DRIVER_COMPILEMAIN_H

#include "compiler/Driver/DeviceBudget.h"

namespace g3moe::compiler {

/// Parses the command line, loads the configuration, builds the step and
/// writes what `--emit` asks for. Returns the process exit code: 0 on success,
/// 1 on any error (reported on stderr naming the file and field at fault).
/// `queryDevice` reads the visible GPU when a lowered step is planned without
/// memory_budget_gb (DeviceBudget.h); g3moe-compile passes
/// queryVisibleDevice, and without one the step has no default budget.
int runCompileMain(int argc, char **argv, const DeviceQuery &queryDevice = {});

} // namespace g3moe::compiler

#endif // G3MOE_COMPILER_DRIVER_COMPILEMAIN_H
