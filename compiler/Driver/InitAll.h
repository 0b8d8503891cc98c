//===- InitAll.h - register g3moe dialects and passes -----------*- C++ -*-===//
//
// The one place that lists what the g3moe tools register, so that g3moe-opt
// and g3moe-compile see the same dialects and passes.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_COMPILER_DRIVER_INITALL_H
#define G3MOE_COMPILER_DRIVER_INITALL_H

#include "mlir/IR/DialectRegistry.h"

namespace g3moe {

/// Adds every dialect a g3moe step can contain to `registry`.
void registerAllDialects(mlir::DialectRegistry &registry);

/// Registers the g3moe passes and pipelines, plus the upstream generic passes
/// the tools offer (canonicalize, cse), with the global pass registry.
void registerAllPasses();

} // namespace g3moe

#endif // G3MOE_COMPILER_DRIVER_INITALL_H
