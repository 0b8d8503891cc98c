//===- run_options.h - a run's settings from flags and the step -*- C++ -*-===//
//
// g3moe-run's flags override the training configuration compiled into the
// step; the trainer and the inspection commands resolve them the same way.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_RUN_OPTIONS_H
#define G3MOE_RUNTIME_TRAIN_RUN_OPTIONS_H

#include "runtime/train/data.h"
#include "runtime/train/trainer.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <type_traits>

namespace g3rt {

/// `j[key]` as a T, or `fallback` where it is absent, null or of another kind.
template <typename T>
T option(const nlohmann::json &j, const char *key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null())
    return fallback;
  if constexpr (std::is_same_v<T, std::string>)
    return it->is_string() ? it->get<std::string>() : fallback;
  else
    return it->is_number() || it->is_boolean() ? it->get<T>() : fallback;
}

/// The data to read: the flags in `options` over the step's `model` and
/// `training` configuration; `seqLen`, `padId` and `seed` are the run's. The
/// path is empty where neither --data nor the configuration names one.
inline DataSpec dataSpecFor(const TrainOptions &options, const nlohmann::json &model,
                            const nlohmann::json &training, int64_t seqLen, int32_t padId,
                            uint64_t seed) {
  DataSpec spec;
  spec.path = options.dataPath.empty() ? option<std::string>(training, "dataset", "")
                                       : options.dataPath;
  spec.seqLen = seqLen;
  spec.vocabSize = option<int64_t>(model, "vocab_size", 0);
  spec.padId = padId;
  spec.seed = seed;
  spec.skipBadLines = options.skipBadLines;
  spec.format = options.dataFormat;
  spec.tokenizerPath = options.tokenizerPath;
  if (spec.tokenizerPath.empty() && !options.weightsDir.empty() &&
      std::filesystem::exists(std::filesystem::path(options.weightsDir) / "tokenizer.model"))
    spec.tokenizerPath = options.weightsDir;
  spec.packing = options.packing.value_or(option<bool>(training, "packing", false));
  spec.assistantOnlyLoss =
      options.assistantOnlyLoss.value_or(option<bool>(training, "assistant_only_loss", false));
  spec.images = options.images;
  spec.testSize = options.testSize.value_or(option<double>(training, "test_size", 0.0));
  spec.maxLineBytes = options.maxLineBytes.value_or(
      option<int64_t>(training, "max_line_bytes", kDefaultMaxLineBytes));
  return spec;
}

/// The loss denominator: --loss-denominator over the step's
/// `loss_denominator`, shifted where neither says.
inline Status lossDenominatorFor(const TrainOptions &options, const nlohmann::json &training,
                                 LossDenominator &out) {
  if (options.lossDenominator)
    return parseLossDenominator(*options.lossDenominator, "--loss-denominator", out);
  return parseLossDenominator(option<std::string>(training, "loss_denominator", "shifted"),
                              "the step's loss_denominator", out);
}

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_RUN_OPTIONS_H
