//===- formats.h - JSONL training examples to tokens and labels -*- C++ -*-===//
//
// One JSON line becomes one example: token ids and unshifted labels (-100
// where no loss is taken). The formats are TRL's: pre-tokenized
// {"input_ids", "labels"?}, conversational {"messages"} through the Gemma-3
// chat template, {"text"} and {"prompt", "completion"}. Labels cover the
// whole sequence by default (the seed's recipe); the assistant-only option
// keeps them on assistant turns (or the completion) only.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_DATA_FORMATS_H
#define G3MOE_RUNTIME_DATA_FORMATS_H

#include "runtime/base/status.h"

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace g3rt {

class Tokenizer;

enum class DataFormat { Auto, Tokenized, Messages, Text, PromptCompletion };

/// "auto", "tokenized", "messages", "text" or "prompt_completion".
Status parseDataFormat(const std::string &name, DataFormat &out);
const char *dataFormatName(DataFormat format);

/// The format of one line: `requested`, whose field the line must have, or
/// with Auto the one its fields name. A line with the fields of several
/// formats, or of none, is an error.
Status detectDataFormat(const nlohmann::json &line, DataFormat requested, DataFormat &out);

/// Whether lines of `format` are text that needs a tokenizer.
inline bool needsTokenizer(DataFormat format) {
  return format != DataFormat::Tokenized && format != DataFormat::Auto;
}

/// What to do with a conversation holding image parts (text-only training,
/// G3MOE_SPEC.md D22).
enum class ImagePolicy {
  /// Leave the sample out.
  Drop,
  /// Keep it; the image placeholder tokens take no loss.
  Mask,
};

/// "drop" or "mask".
Status parseImagePolicy(const std::string &name, ImagePolicy &out);

struct ExampleOptions {
  /// Needed for every format but Tokenized.
  const Tokenizer *tokenizer = nullptr;
  /// Pre-tokenized ids must be below it.
  int64_t vocabSize = 0;
  bool assistantOnlyLoss = false;
  ImagePolicy images = ImagePolicy::Drop;
  /// Tokens an example keeps at most: tokenisation (and the copying of
  /// pre-tokenized ids) stops there, so a huge line costs what a row holds.
  /// The loader passes the sequence length + 1, which still tells a longer
  /// example from one that fits.
  size_t maxTokens = SIZE_MAX;
};

/// One example, untruncated up to `ExampleOptions::maxTokens` tokens.
struct Example {
  std::vector<int32_t> ids, labels;
  /// The conversation has image parts.
  bool hasImages = false;
  /// Left out by ImagePolicy::Drop (ids and labels are then empty).
  bool dropped = false;
  /// A text line while assistant-only loss was asked for: it has no
  /// assistant part, so the whole text is trained.
  bool noAssistantPart = false;
};

/// Builds the example of one parsed line of format `format` (not Auto).
/// Errors name the field or message ("messages[1] (user): ...").
Status buildExample(const nlohmann::json &line, DataFormat format, const ExampleOptions &options,
                    Example &out);

} // namespace g3rt

#endif // G3MOE_RUNTIME_DATA_FORMATS_H
