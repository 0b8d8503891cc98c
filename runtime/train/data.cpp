//===- data.cpp - training data: JSONL to rows to micro-batches -----------===//
//
// The split is drawn before packing, so an example is never partly in the
// eval set, and both splits keep file order so that packing (and a dump of
// the rows) does not depend on the seed beyond the choice of eval examples.
//
//===----------------------------------------------------------------------===//

#include "runtime/train/data.h"

#include "runtime/base/file.h"
#include "runtime/base/random.h"
#include "runtime/data/formats.h"
#include "runtime/data/line_reader.h"
#include "runtime/data/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>

namespace g3rt {

namespace {

/// Stream of the train/eval split draws (the per-epoch shuffle uses another).
constexpr uint32_t kSplitStream = 0xffffffe0u;

/// The line buffer keeps at most this capacity from one line to the next.
constexpr size_t kKeptLineCapacity = size_t(1) << 20;

Status validateSpec(const DataSpec &spec, DataFormat &format, ImagePolicy &images) {
  G3RT_RETURN_IF_ERROR(parseDataFormat(spec.format, format));
  G3RT_RETURN_IF_ERROR(parseImagePolicy(spec.images, images));
  if (!(spec.testSize >= 0 && spec.testSize < 1))
    return Status::error("test size " + std::to_string(spec.testSize) + " is outside [0, 1)");
  if (spec.seqLen <= 0)
    return Status::error("the sequence length must be positive");
  if (spec.maxLineBytes <= 0)
    return Status::error("max_line_bytes must be positive, got " +
                         std::to_string(spec.maxLineBytes));
  return Status();
}

void truncate(Example &ex, int64_t seqLen, bool &truncated) {
  truncated = int64_t(ex.ids.size()) > seqLen;
  if (truncated) {
    ex.ids.resize(size_t(seqLen));
    ex.labels.resize(size_t(seqLen));
  }
}

/// A tokenizer for text lines. Ids past the model's vocabulary would index
/// outside the embedding, hence the error; a different <pad> only changes
/// which id fills a row, hence only a warning.
Status loadTokenizer(const DataSpec &spec, Tokenizer &tokenizer,
                     std::vector<std::string> &warnings) {
  G3RT_RETURN_IF_ERROR(Tokenizer::load(spec.tokenizerPath, tokenizer));
  if (spec.vocabSize > 0 && tokenizer.vocabSize() > spec.vocabSize)
    return Status::error(
        tokenizer.modelPath() + ": the tokenizer has " + std::to_string(tokenizer.vocabSize()) +
        " tokens, more than the model's vocab_size " + std::to_string(spec.vocabSize));
  if (tokenizer.special().pad != spec.padId)
    warnings.push_back(tokenizer.modelPath() + ": <pad> is token " +
                       std::to_string(tokenizer.special().pad) +
                       " but the model's pad_token_id is " + std::to_string(spec.padId));
  return Status();
}

/// A non-blank line's JSON and format. An error is the line's fault, one
/// --skip-bad-lines may skip.
Status parseLine(const LineReader &reader, std::string &line, const DataSpec &spec,
                 DataFormat format, nlohmann::json &j, DataFormat &lineFormat) {
  if (reader.tooLong())
    return Status::error("the line has " + std::to_string(reader.lineBytes()) +
                         " bytes, more than max_line_bytes (" + std::to_string(spec.maxLineBytes) +
                         "; --max-line-bytes sets it)");
  j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  // One huge line must not keep its buffer for the rest of the file.
  if (line.capacity() > kKeptLineCapacity)
    std::string().swap(line);
  return j.is_discarded() ? Status::error("not valid JSON")
                          : detectDataFormat(j, format, lineFormat);
}

/// Every kept line of the data file as a row of its own, in file order
/// (the split and packing come later), counted in out.stats.
Status readExamples(const DataSpec &spec, DataFormat format, const ExampleOptions &options,
                    DataSplit &out, std::vector<Row> &examples) {
  std::ifstream in;
  G3RT_RETURN_IF_ERROR(openForReading(spec.path, in, std::ios::in, "data file"));
  std::string line;
  DataStats &stats = out.stats;
  LineReader reader(in, size_t(spec.maxLineBytes));
  while (reader.next(line)) {
    ++stats.lines;
    if (!reader.tooLong() && line.find_first_not_of(" \t\r") == std::string::npos)
      continue;
    std::string where = spec.path + ":" + std::to_string(stats.lines) + ": ";
    Example ex;
    DataFormat lineFormat = format;
    nlohmann::json j;
    Status s = parseLine(reader, line, spec, format, j, lineFormat);
    if (s.ok() && needsTokenizer(lineFormat) && !options.tokenizer)
      // A setup error, not a bad line: skipping would skip every such line.
      return Status::error(where + "a " + std::string(dataFormatName(lineFormat)) +
                           " line needs a tokenizer: pass --tokenizer (a tokenizer.model "
                           "or the model folder holding it)");
    if (s.ok())
      s = buildExample(j, lineFormat, options, ex);
    if (!s.ok()) {
      if (!spec.skipBadLines)
        return Status::error(where + s.message() + " (use --skip-bad-lines to skip such lines)");
      out.warnings.push_back(where + s.message() + "; line skipped");
      ++stats.skipped;
      continue;
    }
    stats.imageSamples += ex.hasImages;
    if (ex.dropped)
      continue;
    stats.fullTextLines += ex.noAssistantPart;
    bool truncated = false;
    truncate(ex, spec.seqLen, truncated);
    stats.truncated += truncated;
    examples.push_back(Row::single(std::move(ex.ids), std::move(ex.labels)));
  }
  return Status();
}

/// The train and eval rows of `examples`: split first, so that packing never
/// puts part of an eval example into a training row.
Status splitAndPack(const DataSpec &spec, std::vector<Row> &examples, DataSplit &out) {
  std::vector<size_t> trainIdx, evalIdx;
  splitExamples(examples.size(), spec.testSize, spec.seed, trainIdx, evalIdx);
  if (trainIdx.empty())
    return Status::error(spec.path + ": test size " + std::to_string(spec.testSize) +
                         " leaves none of the " + std::to_string(examples.size()) +
                         " examples for training");
  std::vector<Row> train, eval;
  for (size_t i : trainIdx)
    train.push_back(std::move(examples[i]));
  for (size_t i : evalIdx)
    eval.push_back(std::move(examples[i]));
  out.stats.trainExamples = int64_t(train.size());
  out.stats.evalExamples = int64_t(eval.size());
  if (spec.packing) {
    out.train = packRows(train, spec.seqLen);
    out.eval = packRows(eval, spec.seqLen);
  } else {
    out.train = std::move(train);
    out.eval = std::move(eval);
  }
  return Status();
}

} // namespace

Row Row::single(std::vector<int32_t> ids, std::vector<int32_t> labels) {
  Row row;
  row.segmentIds.assign(ids.size(), 1);
  row.positions.resize(ids.size());
  for (size_t t = 0; t < ids.size(); ++t)
    row.positions[t] = int32_t(t);
  row.inputIds = std::move(ids);
  row.labels = std::move(labels);
  return row;
}

void splitExamples(size_t n, double testSize, uint64_t seed, std::vector<size_t> &train,
                   std::vector<size_t> &eval) {
  train.clear();
  eval.clear();
  size_t evalCount = testSize > 0 ? size_t(std::ceil(testSize * double(n))) : 0;
  evalCount = std::min(evalCount, n);
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i)
    order[i] = i;
  for (size_t i = n; i > 1; --i) {
    size_t j = size_t(uniformAt(seed, 0, kSplitStream, i) * double(i));
    std::swap(order[i - 1], order[std::min(j, i - 1)]);
  }
  std::vector<bool> isEval(n, false);
  for (size_t i = 0; i < evalCount; ++i)
    isEval[order[i]] = true;
  for (size_t i = 0; i < n; ++i)
    (isEval[i] ? eval : train).push_back(i);
}

std::vector<Row> packRows(const std::vector<Row> &examples, int64_t seqLen) {
  std::vector<Row> rows;
  Row current;
  int32_t documents = 0;
  for (const Row &ex : examples) {
    if (!current.inputIds.empty() && int64_t(current.size() + ex.size()) > seqLen) {
      rows.push_back(std::move(current));
      current = Row();
      documents = 0;
    }
    ++documents;
    for (size_t t = 0; t < ex.size(); ++t) {
      current.inputIds.push_back(ex.inputIds[t]);
      current.labels.push_back(ex.labels[t]);
      current.segmentIds.push_back(documents);
      current.positions.push_back(int32_t(t));
    }
  }
  if (!current.inputIds.empty())
    rows.push_back(std::move(current));
  return rows;
}

Status writeRowsJsonl(const std::string &path, const std::vector<Row> &rows) {
  std::string text;
  for (const Row &r : rows) {
    text += nlohmann::json{{"input_ids", r.inputIds},
                           {"labels", r.labels},
                           {"segment_ids", r.segmentIds},
                           {"positions", r.positions}}
                .dump();
    text += "\n";
  }
  return writeFileAtomically(path, std::vector<uint8_t>(text.begin(), text.end()));
}

Status loadTrainingData(const DataSpec &spec, DataSplit &out) {
  out = DataSplit();
  DataFormat format;
  ExampleOptions options;
  G3RT_RETURN_IF_ERROR(validateSpec(spec, format, options.images));
  options.vocabSize = spec.vocabSize;
  options.assistantOnlyLoss = spec.assistantOnlyLoss;
  // One token more than a row holds tells a truncated example.
  options.maxTokens = size_t(spec.seqLen) + 1;
  Tokenizer tokenizer;
  if (!spec.tokenizerPath.empty()) {
    G3RT_RETURN_IF_ERROR(loadTokenizer(spec, tokenizer, out.warnings));
    options.tokenizer = &tokenizer;
  }

  std::vector<Row> examples;
  G3RT_RETURN_IF_ERROR(readExamples(spec, format, options, out, examples));
  const DataStats &stats = out.stats;
  if (stats.fullTextLines)
    out.warnings.push_back(spec.path + ": " + std::to_string(stats.fullTextLines) +
                           " text line(s) have no assistant part; their whole text is "
                           "trained despite the assistant-only loss");
  if (examples.empty()) {
    std::string why = spec.path + ": no training examples";
    if (stats.imageSamples && options.images == ImagePolicy::Drop)
      why += " (" + std::to_string(stats.imageSamples) +
             " samples with images were dropped; --images mask keeps them)";
    return Status::error(why);
  }
  return splitAndPack(spec, examples, out);
}

Status parseLossDenominator(const std::string &name, const std::string &origin,
                            LossDenominator &out) {
  if (name == "shifted")
    out = LossDenominator::Shifted;
  else if (name == "unshifted")
    out = LossDenominator::Unshifted;
  else
    return Status::error(origin + ": unknown loss denominator '" + name +
                         "'; expected shifted or unshifted");
  return Status();
}

void assembleMicroBatch(const std::vector<Row> &rows, const std::vector<size_t> &indices,
                        int64_t batchRows, int64_t seqLen, int32_t padId, MicroBatch &out) {
  size_t cells = size_t(batchRows * seqLen);
  out.inputIds.assign(cells, padId);
  out.targets.assign(cells, kIgnoreIndex);
  out.segmentIds.assign(cells, 0);
  out.positions.resize(cells);
  out.targetCount = 0;
  out.labelCount = 0;
  out.tokens = 0;
  for (int64_t r = 0; r < batchRows; ++r) {
    for (int64_t t = 0; t < seqLen; ++t)
      out.positions[size_t(r * seqLen + t)] = int32_t(t);
    if (size_t(r) >= indices.size())
      continue;
    const Row &row = rows[indices[size_t(r)]];
    int64_t len = std::min<int64_t>(int64_t(row.size()), seqLen);
    for (int64_t t = 0; t < len; ++t) {
      size_t cell = size_t(r * seqLen + t), at = size_t(t);
      out.inputIds[cell] = row.inputIds[at];
      out.segmentIds[cell] = row.segmentIds[at];
      out.positions[cell] = row.positions[at];
      // No target across a document boundary: the next document's first
      // token is not predicted from this one.
      if (t + 1 < len && row.segmentIds[at + 1] == row.segmentIds[at])
        out.targets[cell] = row.labels[at + 1];
      out.targetCount += out.targets[cell] != kIgnoreIndex;
      out.labelCount += row.labels[at] != kIgnoreIndex;
    }
    out.tokens += len;
  }
}

} // namespace g3rt
