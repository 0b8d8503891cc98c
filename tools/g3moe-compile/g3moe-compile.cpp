//===- g3moe-compile.cpp - model.json to a training step ------------------===//
//
// Thin main over the compiler driver library. It hands the driver the GPU
// query, from which memory_budget_gb defaults (compiler/Driver/DeviceBudget.h).
//
//===----------------------------------------------------------------------===//

#include "compiler/Driver/CompileMain.h"
#include "compiler/Driver/DeviceQuery.h"

int main(int argc, char **argv) {
  return g3moe::compiler::runCompileMain(argc, argv, g3moe::compiler::queryVisibleDevice);
}
