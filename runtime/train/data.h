//===- data.h - pre-tokenized training data ---------------------*- C++ -*-===//
//
// Reads JSONL of pre-tokenized examples ({"input_ids": [...], "labels": [...]},
// labels optional and -100 where no loss is taken) and packs them into the
// step's fixed [B, T] micro-batches: one example per row, right-padded, with
// the label shift, positions and document ids the step expects
// (docs/architecture.md).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_DATA_H
#define G3MOE_RUNTIME_TRAIN_DATA_H

#include "runtime/base/status.h"

#include <cstdint>
#include <string>
#include <vector>

namespace g3rt {

/// Label value that takes no loss.
inline constexpr int32_t kIgnoreIndex = -100;

struct Example {
  std::vector<int32_t> inputIds;
  std::vector<int32_t> labels;
};

struct DataOptions {
  int64_t vocabSize = 0;
  /// Rows longer than this are cut (right truncation, as upstream).
  int64_t maxLength = 0;
  /// Skip malformed lines with a warning instead of failing.
  bool skipBadLines = false;
};

struct DataStats {
  int64_t lines = 0;
  int64_t skipped = 0;
  int64_t truncated = 0;
};

/// Reads `path`. A malformed line is an error "path:line: ..." (or, with
/// skipBadLines, a warning); an empty result is an error.
Status readTokenizedJsonl(const std::string &path, const DataOptions &options,
                          std::vector<Example> &out, DataStats &stats,
                          std::vector<std::string> &warnings);

/// One micro-batch as the step's inputs want it.
struct MicroBatch {
  std::vector<int32_t> inputIds, targets, positions, segmentIds;
  /// Labels other than -100 in the rows, counted before the shift (HF's
  /// num_items_in_batch).
  int64_t labelCount = 0;
  /// Real (non-padding) tokens.
  int64_t tokens = 0;
};

/// Fills `out` ([rows, seqLen]) from `examples[indices[i]]`; rows past the
/// given indices are padding. `padId` fills padded input positions.
void assembleMicroBatch(const std::vector<Example> &examples,
                        const std::vector<size_t> &indices, int64_t rows, int64_t seqLen,
                        int32_t padId, MicroBatch &out);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_DATA_H
