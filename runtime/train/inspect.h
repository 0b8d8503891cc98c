//===- inspect.h - g3moe-run's one-shot inspection modes --------*- C++ -*-===//
//
// Instead of training: write the initialised (or checkpoint-loaded) base
// model as an HF checkpoint, or run one micro-batch of the training data
// through forward_backward / eval_logits and write loss, gradients or logits
// as safetensors, for comparisons with transformers.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_INSPECT_H
#define G3MOE_RUNTIME_TRAIN_INSPECT_H

#include "runtime/step/program.h"
#include "runtime/train/trainer.h"

#include <iosfwd>
#include <string>

namespace g3rt {

/// The inspection flags of g3moe-run; at most one is meant to be set.
struct InspectOptions {
  /// Write the base model (seeded, or loaded with --weights) as an HF
  /// checkpoint into this folder.
  std::string saveInitialWeights;
  /// Write "loss" ([1]) and "grad/<HF name>" for every trainable parameter
  /// (stacked experts split) of forward_backward on the first micro-batch.
  std::string dumpGradients;
  /// Write "logits" ([B, T, V] f32) of eval_logits on the first micro-batch.
  std::string dumpLogits;

  bool any() const {
    return !saveInitialWeights.empty() || !dumpGradients.empty() || !dumpLogits.empty();
  }
};

/// Runs the inspection `what` asks for. Parameters are initialised from the
/// seed as training would, then loaded from `options.weightsDir` when set,
/// then the trained ones from the checkpoint `options.resume` names (empty:
/// the latest in the output folder) when set.
/// The micro-batch is the first `micro_batch` training examples in file
/// order, assembled as training assembles one (label shift, padding,
/// positions, segments), with num_items = its own label count and the rng key
/// (seed, 0). Dump files also hold "inputs/input_ids", "inputs/targets"
/// ([B, T] i32) and "inputs/num_items" ([1] f32), so that rows can be matched.
Status runInspection(const StepProgram &program, const TrainOptions &options,
                     const InspectOptions &what, std::ostream &log);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_INSPECT_H
