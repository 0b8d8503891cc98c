//===- run_main.h - the g3moe-run command -----------------------*- C++ -*-===//
//
// g3moe-run's whole behaviour, in the runtime library so that the tool is a
// one-line main.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TOOLS_RUN_MAIN_H
#define G3MOE_RUNTIME_TOOLS_RUN_MAIN_H

namespace g3rt {

/// Parses the command line, loads and verifies step.bin, trains. Returns the
/// exit code: 0 on success, 1 on any error (printed on stderr), 2 on a bad
/// command line.
int runMain(int argc, char **argv);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TOOLS_RUN_MAIN_H
