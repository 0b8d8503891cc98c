//===- g3moe-opt.cpp - run g3moe passes on IR -----------------------------===//
//
// The mlir-opt style driver: parses IR, runs the passes named on the command
// line, prints the result. Used by the lit tests and for debugging.
//
//===----------------------------------------------------------------------===//

#include "compiler/Driver/InitAll.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::DialectRegistry registry;
  g3moe::registerAllDialects(registry);
  g3moe::registerAllPasses();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "g3moe optimizer driver\n", registry));
}
