//===- Passes.h - g3rt passes -----------------------------------*- C++ -*-===//

#ifndef G3MOE_DIALECTS_G3RT_TRANSFORMS_PASSES_H
#define G3MOE_DIALECTS_G3RT_TRANSFORMS_PASSES_H

#include "dialects/G3RT/IR/G3RTDialect.h"
#include "mlir/Pass/Pass.h"

namespace g3moe::lowered {

#define GEN_PASS_DECL
#include "dialects/G3RT/Transforms/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "dialects/G3RT/Transforms/Passes.h.inc"

} // namespace g3moe::lowered

#endif // G3MOE_DIALECTS_G3RT_TRANSFORMS_PASSES_H
