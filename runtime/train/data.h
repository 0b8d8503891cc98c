//===- data.h - training data: JSONL to rows to micro-batches ---*- C++ -*-===//
//
// Reads JSONL training data (pre-tokenized ids, chat messages through the
// Gemma-3 template, text, or prompt/completion; runtime/data/formats.h),
// right-truncates every example to the step's sequence length, holds out a
// seeded eval split, optionally packs examples into rows, and fills the
// step's fixed [B, T] micro-batches with the label shift, positions and
// document ids the step expects (docs/architecture.md).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_DATA_H
#define G3MOE_RUNTIME_TRAIN_DATA_H

#include "runtime/base/labels.h"
#include "runtime/base/status.h"
#include "runtime/step/config.h"

#include <cstdint>
#include <string>
#include <vector>

namespace g3rt {

/// One row of a micro-batch before padding: a single example, or several
/// packed ones. `labels` are unshifted (the label of position t is the token
/// at t; -100 takes no loss), `segmentIds` number the row's documents from 1,
/// `positions` restart at 0 in every document.
struct Row {
  std::vector<int32_t> inputIds;
  std::vector<int32_t> labels;
  std::vector<int32_t> segmentIds;
  std::vector<int32_t> positions;

  /// A row holding one document.
  static Row single(std::vector<int32_t> ids, std::vector<int32_t> labels);
  size_t size() const { return inputIds.size(); }
};

/// What to read and how to turn it into rows (g3moe-run's data options).
struct DataSpec {
  std::string path;
  /// "auto", "tokenized" ({"input_ids", "labels"}), "messages", "text",
  /// "prompt_completion".
  std::string format = "auto";
  /// SentencePiece model for text formats (tokenizer.model or its folder).
  std::string tokenizerPath;
  int64_t seqLen = 0;
  int64_t vocabSize = 0;
  int32_t padId = 0;
  bool packing = false;
  bool assistantOnlyLoss = false;
  /// Image parts of chat samples: "drop" the sample or "mask" the placeholders.
  std::string images = "drop";
  /// Fraction of the examples held out for evaluation (seeded split).
  double testSize = 0;
  uint64_t seed = 42;
  bool skipBadLines = false;
  /// A longer line is a bad line (an error, or skipped with skipBadLines)
  /// and is never held in memory whole.
  int64_t maxLineBytes = kDefaultMaxLineBytes;
};

struct DataStats {
  int64_t lines = 0;
  int64_t skipped = 0;
  int64_t truncated = 0;
  /// Samples dropped or masked because they hold images.
  int64_t imageSamples = 0;
  /// Examples in the train and eval splits (before packing).
  int64_t trainExamples = 0, evalExamples = 0;
  /// Text lines trained in full although assistant-only loss was asked for.
  int64_t fullTextLines = 0;
};

/// Training and evaluation rows.
struct DataSplit {
  std::vector<Row> train, eval;
  DataStats stats;
  std::vector<std::string> warnings;
};

/// Reads `spec.path` into rows. A malformed line, or one longer than
/// maxLineBytes, is an error "path:line: ..." (or, with skipBadLines, a
/// warning); no examples at all is an error. Text is tokenised only as far as
/// the row can use (seqLen + 1 tokens), so a long line costs little more than
/// its bytes. A
/// bad spec (unknown format or image policy, test size outside [0, 1), a
/// tokenizer that cannot be loaded or is larger than the vocabulary) is an
/// error whatever skipBadLines says.
Status loadTrainingData(const DataSpec &spec, DataSplit &out);

/// The seeded train/eval split of `n` examples: ceil(testSize * n) of them,
/// drawn by a seeded shuffle, go to `eval` (as HF's train_test_split counts
/// them); both lists are in file order. The same (n, testSize, seed) always
/// gives the same split.
void splitExamples(size_t n, double testSize, uint64_t seed, std::vector<size_t> &train,
                   std::vector<size_t> &eval);

/// Packs single-document rows, in order, into rows of at most `seqLen`
/// tokens: an example goes into the current row while it fits, else starts
/// the next. Segment ids number a row's documents from 1 and positions
/// restart at 0 in each. Examples must already be at most `seqLen` long.
std::vector<Row> packRows(const std::vector<Row> &examples, int64_t seqLen);

/// Writes `rows` as JSONL {"input_ids", "labels", "segment_ids",
/// "positions"}, one row per line, atomically (g3moe-run --dump-data).
Status writeRowsJsonl(const std::string &path, const std::vector<Row> &rows);

/// `name` ("shifted" or "unshifted") as a LossDenominator; `origin` names
/// where it came from in the error.
Status parseLossDenominator(const std::string &name, const std::string &origin,
                            LossDenominator &out);

/// One micro-batch as the step's inputs want it.
struct MicroBatch {
  std::vector<int32_t> inputIds, targets, positions, segmentIds;
  /// Targets other than -100: the cross-entropy terms, counted after the
  /// shift.
  int64_t targetCount = 0;
  /// Labels other than -100 in the rows, counted before the shift.
  int64_t labelCount = 0;
  /// Real (non-padding) tokens.
  int64_t tokens = 0;

  /// The micro-batch's share of the window's loss denominator.
  int64_t lossItems(LossDenominator d) const {
    return d == LossDenominator::Shifted ? targetCount : labelCount;
  }
};

/// Fills `out` ([batchRows, seqLen]) from `rows[indices[i]]`; rows past the
/// given indices are padding. Targets are the labels shifted left by one,
/// -100 where the next position belongs to another document or is padding.
void assembleMicroBatch(const std::vector<Row> &rows, const std::vector<size_t> &indices,
                        int64_t batchRows, int64_t seqLen, int32_t padId, MicroBatch &out);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_DATA_H
