//===- run_options.h - a run's settings from flags and the step -*- C++ -*-===//
//
// g3moe-run's flags override the training configuration compiled into the
// step; the trainer and the inspection commands resolve them the same way.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_RUN_OPTIONS_H
#define G3MOE_RUNTIME_TRAIN_RUN_OPTIONS_H

#include "runtime/step/config.h"
#include "runtime/train/data.h"
#include "runtime/train/trainer.h"

#include <filesystem>
#include <string>

namespace g3rt {

/// The data to read: the flags in `options` over the step's `model` and
/// `training` configuration; `seqLen`, `padId` and `seed` are the run's. The
/// path is empty where neither --data nor the configuration names one.
inline DataSpec dataSpecFor(const TrainOptions &options, const ModelConfig &model,
                            const TrainingConfig &training, int64_t seqLen, int32_t padId,
                            uint64_t seed) {
  DataSpec spec;
  spec.path = options.dataPath.empty() ? training.dataset : options.dataPath;
  spec.seqLen = seqLen;
  spec.vocabSize = model.vocabSize;
  spec.padId = padId;
  spec.seed = seed;
  spec.skipBadLines = options.skipBadLines;
  spec.format = options.dataFormat;
  spec.tokenizerPath = options.tokenizerPath;
  if (spec.tokenizerPath.empty() && !options.weightsDir.empty() &&
      std::filesystem::exists(std::filesystem::path(options.weightsDir) / "tokenizer.model"))
    spec.tokenizerPath = options.weightsDir;
  spec.packing = options.packing.value_or(training.packing);
  spec.assistantOnlyLoss = options.assistantOnlyLoss.value_or(training.assistantOnlyLoss);
  spec.images = options.images;
  spec.testSize = options.testSize.value_or(training.testSize);
  spec.maxLineBytes = options.maxLineBytes.value_or(training.maxLineBytes);
  return spec;
}

/// The loss denominator: --loss-denominator over the step's
/// `loss_denominator`.
inline Status lossDenominatorFor(const TrainOptions &options, const TrainingConfig &training,
                                 LossDenominator &out) {
  if (options.lossDenominator)
    return parseLossDenominator(*options.lossDenominator, "--loss-denominator", out);
  out = training.lossDenominator;
  return Status();
}

/// The output folder: --output-dir over the step's `output_dir`, else
/// "g3moe-output".
inline std::string outputDirFor(const TrainOptions &options, const TrainingConfig &training) {
  std::string dir = options.outputDir.empty() ? training.outputDir : options.outputDir;
  return dir.empty() ? "g3moe-output" : dir;
}

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_RUN_OPTIONS_H
