//===- Passes.h - g3moe conversion passes -----------------------*- C++ -*-===//

#ifndef G3MOE_COMPILER_CONVERSION_PASSES_H
#define G3MOE_COMPILER_CONVERSION_PASSES_H

#include "dialects/G3RT/IR/G3RTDialect.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Pass/Pass.h"

namespace g3moe {

#define GEN_PASS_DECL
#include "compiler/Conversion/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "compiler/Conversion/Passes.h.inc"

} // namespace g3moe

#endif // G3MOE_COMPILER_CONVERSION_PASSES_H
