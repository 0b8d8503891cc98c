//===- weights.h - a step's parameters from an HF checkpoint ----*- C++ -*-===//
//
// Fills the base parameters of a step from a Hugging Face checkpoint
// directory, checking every tensor against the step first, and upcycles a
// dense Gemma-3 checkpoint into a G3MoE step (G3MOE_SPEC.md §3.8).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_WEIGHTS_H
#define G3MOE_RUNTIME_TRAIN_WEIGHTS_H

#include "runtime/exec/state.h"

#include <iosfwd>
#include <string>
#include <vector>

namespace g3rt {

/// Loads every non-LoRA parameter of the host state's step from the checkpoint
/// in `dir` (see HFCheckpoint::open for the layouts read), converting dtypes
/// to the parameter's. Stacked "{e}" parameters are filled expert by expert;
/// derived parameters are then derived again from them (deriveParameters).
///
/// Nothing is written unless the whole checkpoint fits: missing tensors,
/// shape mismatches (both shapes named), unreadable dtypes and config.json
/// sizes that disagree with the step are all reported in one error.
///
/// Upcycling: for a G3MoE step and a dense Gemma-3 checkpoint, a layer's
/// `mlp.{gate,up,down}_proj` fills the dense layer's `moe.*_proj`, every
/// expert of an MoE layer and the shared experts (when their width is the
/// MLP's; otherwise an error). Routers (and score-correction biases) the
/// checkpoint lacks keep their seeded initialisation. LoRA adapters are never
/// read from a base checkpoint.
///
/// `notes` receives what the caller should tell the user: ignored vision
/// weights, checkpoint tensors the step does not use, upcycled layers and
/// routers left at their initialisation.
Status loadWeights(HostState &host, const std::string &dir, std::vector<std::string> &notes);

/// The same, reporting "weights: <dir>" and each note on `log` (g3moe-run).
Status loadWeights(HostState &host, const std::string &dir, std::ostream &log);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_WEIGHTS_H
