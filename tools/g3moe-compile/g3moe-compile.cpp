//===- g3moe-compile.cpp - model.json to a training step ------------------===//
//
// Thin main over the compiler driver library.
//
//===----------------------------------------------------------------------===//

#include "compiler/Driver/CompileMain.h"

int main(int argc, char **argv) { return g3moe::compiler::runCompileMain(argc, argv); }
