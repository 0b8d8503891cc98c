//===- G3MoEDialect.cpp - g3moe dialect registration ----------------------===//
//
// Registers the ops of the `g3moe` dialect.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEDialect.h"
#include "dialects/G3MoE/IR/G3MoEOps.h"

using namespace mlir;
using namespace g3moe;

#include "dialects/G3MoE/IR/G3MoEInterfaces.cpp.inc"
#include "dialects/G3MoE/IR/G3MoEOpsDialect.cpp.inc"

void G3MoEDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "dialects/G3MoE/IR/G3MoEOps.cpp.inc"
      >();
}
