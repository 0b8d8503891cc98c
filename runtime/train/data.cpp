//===- data.cpp - pre-tokenized training data -----------------------------===//

#include "runtime/train/data.h"

#include <nlohmann/json.hpp>

#include <fstream>

namespace g3rt {

namespace {

/// Reads an array of token ids; `allowIgnore` admits -100.
Status readIds(const nlohmann::json &value, const char *field, int64_t vocab,
               bool allowIgnore, std::vector<int32_t> &out) {
  if (!value.is_array())
    return Status::error(std::string("field '") + field + "' must be an array of integers");
  for (size_t i = 0; i < value.size(); ++i) {
    const nlohmann::json &v = value[i];
    if (!v.is_number_integer())
      return Status::error(std::string("field '") + field + "'[" + std::to_string(i) +
                           "] is not an integer");
    int64_t id = v.get<int64_t>();
    bool ok = (id >= 0 && id < vocab) || (allowIgnore && id == kIgnoreIndex);
    if (!ok)
      return Status::error(std::string("field '") + field + "'[" + std::to_string(i) +
                           "] = " + std::to_string(id) + " is outside the vocabulary [0, " +
                           std::to_string(vocab) + ")");
    out.push_back(int32_t(id));
  }
  return Status();
}

Status parseLine(const std::string &line, const DataOptions &options, Example &ex,
                 bool &truncated) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return Status::error("not valid JSON");
  if (!j.is_object())
    return Status::error("expected a JSON object");
  if (!j.contains("input_ids"))
    return Status::error("field 'input_ids' is missing");
  G3RT_RETURN_IF_ERROR(readIds(j["input_ids"], "input_ids", options.vocabSize, false, ex.inputIds));
  if (ex.inputIds.empty())
    return Status::error("field 'input_ids' is empty");
  if (j.contains("labels")) {
    G3RT_RETURN_IF_ERROR(readIds(j["labels"], "labels", options.vocabSize, true, ex.labels));
    if (ex.labels.size() != ex.inputIds.size())
      return Status::error("field 'labels' has " + std::to_string(ex.labels.size()) +
                           " entries, 'input_ids' " + std::to_string(ex.inputIds.size()));
  } else {
    ex.labels = ex.inputIds;
  }
  truncated = int64_t(ex.inputIds.size()) > options.maxLength;
  if (truncated) {
    ex.inputIds.resize(size_t(options.maxLength));
    ex.labels.resize(size_t(options.maxLength));
  }
  return Status();
}

} // namespace

Status readTokenizedJsonl(const std::string &path, const DataOptions &options,
                          std::vector<Example> &out, DataStats &stats,
                          std::vector<std::string> &warnings) {
  std::ifstream in(path);
  if (!in)
    return Status::error("cannot open data file " + path);
  std::string line;
  while (std::getline(in, line)) {
    ++stats.lines;
    if (line.find_first_not_of(" \t\r") == std::string::npos)
      continue;
    Example ex;
    bool truncated = false;
    Status s = parseLine(line, options, ex, truncated);
    if (!s.ok()) {
      std::string where = path + ":" + std::to_string(stats.lines) + ": " + s.message();
      if (!options.skipBadLines)
        return Status::error(where + " (use --skip-bad-lines to skip such lines)");
      warnings.push_back(where + "; line skipped");
      ++stats.skipped;
      continue;
    }
    stats.truncated += truncated;
    out.push_back(std::move(ex));
  }
  if (out.empty())
    return Status::error(path + ": no training examples");
  return Status();
}

void assembleMicroBatch(const std::vector<Example> &examples,
                        const std::vector<size_t> &indices, int64_t rows, int64_t seqLen,
                        int32_t padId, MicroBatch &out) {
  size_t cells = size_t(rows * seqLen);
  out.inputIds.assign(cells, padId);
  out.targets.assign(cells, kIgnoreIndex);
  out.segmentIds.assign(cells, 0);
  out.positions.resize(cells);
  out.labelCount = 0;
  out.tokens = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < seqLen; ++t)
      out.positions[size_t(r * seqLen + t)] = int32_t(t);
    if (size_t(r) >= indices.size())
      continue;
    const Example &ex = examples[indices[size_t(r)]];
    int64_t len = std::min<int64_t>(int64_t(ex.inputIds.size()), seqLen);
    for (int64_t t = 0; t < len; ++t) {
      size_t cell = size_t(r * seqLen + t);
      out.inputIds[cell] = ex.inputIds[size_t(t)];
      out.segmentIds[cell] = 1;
      if (t + 1 < len)
        out.targets[cell] = ex.labels[size_t(t + 1)];
      out.labelCount += ex.labels[size_t(t)] != kIgnoreIndex;
    }
    out.tokens += len;
  }
}

} // namespace g3rt
