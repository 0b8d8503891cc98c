//===- G3MoEOps.h - g3moe graph ops -----------------------------*- C++ -*-===//
//
// The op classes of the `g3moe` dialect, generated from G3MoEOps.td.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_DIALECTS_G3MOE_IR_G3MOEOPS_H
#define G3MOE_DIALECTS_G3MOE_IR_G3MOEOPS_H

#include "dialects/G3MoE/IR/G3MoEDialect.h"
#include "dialects/G3MoE/IR/G3MoEInterfaces.h"
#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#define GET_OP_CLASSES
#include "dialects/G3MoE/IR/G3MoEOps.h.inc"

#endif // G3MOE_DIALECTS_G3MOE_IR_G3MOEOPS_H
