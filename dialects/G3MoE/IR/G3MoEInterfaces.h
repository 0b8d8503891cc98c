//===- G3MoEInterfaces.h - g3moe op interfaces ------------------*- C++ -*-===//
//
// DifferentiableOpInterface, generated from G3MoEInterfaces.td.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_DIALECTS_G3MOE_IR_G3MOEINTERFACES_H
#define G3MOE_DIALECTS_G3MOE_IR_G3MOEINTERFACES_H

#include "mlir/IR/Builders.h"
#include "mlir/IR/OpDefinition.h"

#include "dialects/G3MoE/IR/G3MoEInterfaces.h.inc"

#endif // G3MOE_DIALECTS_G3MOE_IR_G3MOEINTERFACES_H
