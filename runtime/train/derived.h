//===- derived.h - parameters computed from other parameters ----*- C++ -*-===//
//
// fp8_base keeps each frozen weight that an e4m3 product reads as e4m3
// values and scales (StepProgram::derived), computed once from the weight
// when the parameters are in place instead of in every step.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_DERIVED_H
#define G3MOE_RUNTIME_TRAIN_DERIVED_H

#include "runtime/exec/state.h"

namespace g3rt {

/// Computes every derived parameter of the host state's program from its
/// source: the e4m3 values and scales of the source's rows (or of its
/// transpose's), as the CPU's quantize_fp8 makes them, which the CUDA
/// backend's matches bit for bit. loadWeights ends with it, and so does
/// initializeParameters unless told that weights will be loaded; a caller
/// that writes parameters otherwise calls it after.
Status deriveParameters(HostState &host);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_DERIVED_H
