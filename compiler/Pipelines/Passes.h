//===- Passes.h - g3moe pipeline-level passes -------------------*- C++ -*-===//
//
// Declarations generated from Passes.td. The fit pass is created through
// createFitMemoryPass (MemoryFit.h), which hands it the step pipeline's
// options, and is not registered as a flag of its own.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_COMPILER_PIPELINES_PASSES_H
#define G3MOE_COMPILER_PIPELINES_PASSES_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"

namespace g3moe {

#define GEN_PASS_DECL
#include "compiler/Pipelines/Passes.h.inc"

} // namespace g3moe

#endif // G3MOE_COMPILER_PIPELINES_PASSES_H
