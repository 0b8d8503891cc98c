//===- g3moe-run.cpp - train a compiled step ------------------------------===//
//
// Thin main over the runtime library; builds without LLVM or MLIR.
//
//===----------------------------------------------------------------------===//

#include "runtime/tools/run_main.h"

int main(int argc, char **argv) { return g3rt::runMain(argc, argv); }
