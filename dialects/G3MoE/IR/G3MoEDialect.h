//===- G3MoEDialect.h - the g3moe graph dialect -----------------*- C++ -*-===//
//
// Declares the `g3moe` dialect: graph-level ops of a G3MoE / Gemma-3 training
// step. See G3MoEDialect.td for its documentation.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_DIALECTS_G3MOE_IR_G3MOEDIALECT_H
#define G3MOE_DIALECTS_G3MOE_IR_G3MOEDIALECT_H

#include "mlir/IR/Dialect.h"

#include "dialects/G3MoE/IR/G3MoEOpsDialect.h.inc"

#endif // G3MOE_DIALECTS_G3MOE_IR_G3MOEDIALECT_H
