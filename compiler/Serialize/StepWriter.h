//===- StepWriter.h - planned g3rt module to step.bin -----------*- C++ -*-===//
//
// The last stage of the compiler: serialises a memory-planned g3rt module
// into the step.bin format that runtime/schemas/step.fbs defines.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_COMPILER_SERIALIZE_STEPWRITER_H
#define G3MOE_COMPILER_SERIALIZE_STEPWRITER_H

#include "mlir/IR/BuiltinOps.h"

#include <cstdint>
#include <vector>

namespace g3moe {

/// Serialises `module` (after --g3rt-plan-memory) into the bytes of a
/// step.bin, container header included. Emits a diagnostic on the module and
/// fails on anything the format cannot represent.
mlir::LogicalResult writeStep(mlir::ModuleOp module, std::vector<uint8_t> &out);

} // namespace g3moe

#endif // G3MOE_COMPILER_SERIALIZE_STEPWRITER_H
