//===- InitAll.cpp - register g3moe dialects and passes -------------------===//

#include "compiler/Driver/InitAll.h"

#include "dialects/G3MoE/IR/G3MoEDialect.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Transforms/Passes.h"

void g3moe::registerAllDialects(mlir::DialectRegistry &registry) {
  registry.insert<g3moe::G3MoEDialect, mlir::func::FuncDialect>();
}

void g3moe::registerAllPasses() {
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
}
