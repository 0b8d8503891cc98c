//===- init.h - parameter initialisation from a seed ------------*- C++ -*-===//
//
// Fills parameters the way HF initialises weights a checkpoint lacks, from
// the counter-based generator, so that a seed gives the same weights on every
// machine and backend.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_INIT_H
#define G3MOE_RUNTIME_TRAIN_INIT_H

#include "runtime/exec/state.h"

namespace g3rt {

/// Initialises every parameter of the host state's program under `seed`:
/// N(0, std) for Normal, with row `padTokenId` zeroed for the embedding,
/// zeros, and U(-1/sqrt(fan_in), +1/sqrt(fan_in)) for KaimingUniform
/// (PEFT's LoRA A); then, with `derive`, the derived parameters from theirs
/// (deriveParameters: a run that loads weights next derives them there).
Status initializeParameters(HostState &host, uint64_t seed, int64_t padTokenId, bool derive = true);

/// A 32-bit FNV-1a hash of `s`: the random stream of a named tensor.
uint32_t streamOf(const std::string &s);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_INIT_H
