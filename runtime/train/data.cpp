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

Status parseTokenizedLine(const std::string &line, const DataSpec &spec, Row &row,
                          bool &truncated) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return Status::error("not valid JSON");
  if (!j.is_object())
    return Status::error("expected a JSON object");
  if (!j.contains("input_ids"))
    return Status::error("field 'input_ids' is missing");
  std::vector<int32_t> ids, labels;
  G3RT_RETURN_IF_ERROR(readIds(j["input_ids"], "input_ids", spec.vocabSize, false, ids));
  if (ids.empty())
    return Status::error("field 'input_ids' is empty");
  if (j.contains("labels")) {
    G3RT_RETURN_IF_ERROR(readIds(j["labels"], "labels", spec.vocabSize, true, labels));
    if (labels.size() != ids.size())
      return Status::error("field 'labels' has " + std::to_string(labels.size()) +
                           " entries, 'input_ids' " + std::to_string(ids.size()));
  } else {
    labels = ids;
  }
  truncated = int64_t(ids.size()) > spec.seqLen;
  if (truncated) {
    ids.resize(size_t(spec.seqLen));
    labels.resize(size_t(spec.seqLen));
  }
  row = Row::single(std::move(ids), std::move(labels));
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

Status loadTrainingData(const DataSpec &spec, DataSplit &out) {
  if (spec.format != "auto" && spec.format != "tokenized")
    return Status::error("data format '" + spec.format + "' is not supported");
  std::ifstream in(spec.path);
  if (!in)
    return Status::error("cannot open data file " + spec.path);
  std::string line;
  DataStats &stats = out.stats;
  while (std::getline(in, line)) {
    ++stats.lines;
    if (line.find_first_not_of(" \t\r") == std::string::npos)
      continue;
    Row row;
    bool truncated = false;
    Status s = parseTokenizedLine(line, spec, row, truncated);
    if (!s.ok()) {
      std::string where = spec.path + ":" + std::to_string(stats.lines) + ": " + s.message();
      if (!spec.skipBadLines)
        return Status::error(where + " (use --skip-bad-lines to skip such lines)");
      out.warnings.push_back(where + "; line skipped");
      ++stats.skipped;
      continue;
    }
    stats.truncated += truncated;
    out.train.push_back(std::move(row));
  }
  if (out.train.empty())
    return Status::error(spec.path + ": no training examples");
  return Status();
}

void assembleMicroBatch(const std::vector<Row> &rows, const std::vector<size_t> &indices,
                        int64_t batchRows, int64_t seqLen, int32_t padId, MicroBatch &out) {
  size_t cells = size_t(batchRows * seqLen);
  out.inputIds.assign(cells, padId);
  out.targets.assign(cells, kIgnoreIndex);
  out.segmentIds.assign(cells, 0);
  out.positions.resize(cells);
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
      out.labelCount += row.labels[at] != kIgnoreIndex;
    }
    out.tokens += len;
  }
}

} // namespace g3rt
