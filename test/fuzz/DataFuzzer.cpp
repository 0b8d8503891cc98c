//===- DataFuzzer.cpp - fuzz target: the JSONL / chat data reader ---------===//
//
// The input is a JSONL data file. It is read the way g3moe-run reads --data,
// with every option on (format detection, the chat template, assistant-only
// labels, image masking, packing, an eval split, skipped lines, truncation to
// short rows), and its rows are assembled into micro-batches. Each line is
// also built into an example directly under the other label and image
// options, with the tokenizer loaded once. Rows and examples must keep the
// invariants the step's inputs rely on.
//
//===----------------------------------------------------------------------===//

#include "FuzzSupport.h"

#include "runtime/data/formats.h"
#include "runtime/data/tokenizer.h"
#include "runtime/train/data.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

namespace {

constexpr int64_t kVocab = 512;

void fail(const char *what) {
  std::fprintf(stderr, "data fuzzer: %s\n", what);
  std::abort();
}

void checkTokens(const std::vector<int32_t> &ids, const std::vector<int32_t> &labels) {
  if (labels.size() != ids.size())
    fail("labels and ids have different lengths");
  for (size_t t = 0; t < ids.size(); ++t) {
    if (ids[t] < 0 || ids[t] >= kVocab)
      fail("a token id is outside the vocabulary");
    if (labels[t] != g3rt::kIgnoreIndex && (labels[t] < 0 || labels[t] >= kVocab))
      fail("a label is outside the vocabulary");
  }
}

void checkRows(const std::vector<g3rt::Row> &rows, int64_t seqLen) {
  for (const g3rt::Row &r : rows) {
    size_t n = r.inputIds.size();
    if (n == 0 || int64_t(n) > seqLen)
      fail("a row is empty or longer than the sequence length");
    if (r.segmentIds.size() != n || r.positions.size() != n)
      fail("a row's fields have different lengths");
    checkTokens(r.inputIds, r.labels);
  }
}

const std::string &tokenizerPath() {
  static const std::string path =
      g3moe::fuzz::setting("G3MOE_FUZZ_TOKENIZER", G3MOE_FUZZ_TOKENIZER);
  return path;
}

/// The whole file through loadTrainingData, as g3moe-run reads it.
void loadFile(const std::string &path, size_t size) {
  g3rt::DataSpec spec;
  spec.path = path;
  spec.tokenizerPath = tokenizerPath();
  spec.vocabSize = kVocab;
  spec.seqLen = 7;
  spec.packing = true;
  spec.assistantOnlyLoss = true;
  spec.images = "mask";
  spec.testSize = 0.3;
  spec.seed = size;
  spec.skipBadLines = true;
  g3rt::DataSplit split;
  if (!g3rt::loadTrainingData(spec, split).ok())
    return;
  if (split.train.empty())
    fail("loadTrainingData succeeded without training rows");
  checkRows(split.train, spec.seqLen);
  checkRows(split.eval, spec.seqLen);
  // Two rows per micro-batch, the last one part padding when the count is odd.
  g3rt::MicroBatch batch;
  for (size_t first = 0; first < split.train.size(); first += 2) {
    std::vector<size_t> indices;
    for (size_t i = first; i < split.train.size() && i < first + 2; ++i)
      indices.push_back(i);
    g3rt::assembleMicroBatch(split.train, indices, 2, spec.seqLen, spec.padId, batch);
    if (batch.targetCount > batch.tokens || batch.labelCount > batch.tokens)
      fail("a micro-batch counts more targets than tokens");
  }
}

/// Each line built directly, labels on everything and images dropped.
void buildLines(std::string_view text) {
  static const g3rt::Tokenizer tokenizer = [] {
    g3rt::Tokenizer t;
    if (!g3rt::Tokenizer::load(tokenizerPath(), t).ok())
      fail("cannot load the tokenizer (G3MOE_FUZZ_TOKENIZER)");
    return t;
  }();
  g3rt::ExampleOptions options;
  options.tokenizer = &tokenizer;
  options.vocabSize = kVocab;
  options.images = g3rt::ImagePolicy::Drop;
  while (!text.empty()) {
    size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    nlohmann::json j =
        nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    g3rt::DataFormat format;
    if (j.is_discarded() || !g3rt::detectDataFormat(j, g3rt::DataFormat::Auto, format).ok())
      continue;
    g3rt::Example ex;
    if (!g3rt::buildExample(j, format, options, ex).ok())
      continue;
    if (ex.dropped ? !ex.ids.empty() : ex.ids.empty())
      fail("an example is empty, or dropped with tokens");
    checkTokens(ex.ids, ex.labels);
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  loadFile(g3moe::fuzz::writeScratch("input.jsonl", data, size), size);
  buildLines(std::string_view(reinterpret_cast<const char *>(data), size));
  return 0;
}
