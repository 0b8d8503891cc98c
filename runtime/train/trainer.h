//===- trainer.h - the training loop of g3moe-run ---------------*- C++ -*-===//
//
// Epochs of shuffled examples, micro-batches accumulated into optimizer
// steps with HF's loss normalisation, a log line per step, and the trained
// parameters written at the end.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_TRAINER_H
#define G3MOE_RUNTIME_TRAIN_TRAINER_H

#include "runtime/step/program.h"

#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

namespace g3rt {

/// Run-time options; unset ones come from the step's compiled defaults.
struct TrainOptions {
  std::string dataPath;
  std::string outputDir;
  std::optional<double> epochs;
  std::optional<int64_t> maxSteps;
  std::optional<int64_t> gradientAccumulationSteps;
  std::optional<double> learningRate;
  std::optional<std::string> lrSchedulerType;
  std::optional<double> warmupRatio;
  std::optional<int64_t> warmupSteps;
  std::optional<int64_t> seed;
  std::optional<int64_t> loggingSteps;
  bool skipBadLines = false;
  /// Skip writing the trained parameters (for tests that only want losses).
  bool noSave = false;
};

/// What a run did, for callers and tests.
struct TrainResult {
  int64_t optimizerSteps = 0;
  /// The loss of every optimizer step (the window's summed micro-batch losses).
  std::vector<double> losses;
  std::vector<double> gradNorms, learningRates;
  uint64_t arenaHighWater = 0;
  std::vector<std::string> savedFiles;
};

/// Trains the step in `program` and reports on `log`.
Status train(const StepProgram &program, const TrainOptions &options, std::ostream &log,
             TrainResult &result);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_TRAINER_H
