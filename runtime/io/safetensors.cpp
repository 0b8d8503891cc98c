//===- safetensors.cpp - the safetensors file format ----------------------===//

#include "runtime/io/safetensors.h"

#include "runtime/base/file.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include <unistd.h>

namespace g3rt {

namespace {

/// The reference implementation refuses headers above 100 MB; a length past
/// that is a corrupt file, not a large checkpoint.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

Status fail(const std::string &path, const std::string &message) {
  return Status::error(path + ": " + message);
}

Status failTensor(const std::string &path, const std::string &tensor, const std::string &message) {
  return Status::error(path + ": tensor '" + tensor + "' " + message);
}

// The JSON header of an opened file of fileSize bytes, after its 8-byte
// little-endian length, checked against the file's size and the reference
// implementation's limit before anything is allocated for it.
Status readHeaderText(const std::string &path, std::ifstream &in, uint64_t fileSize,
                      std::string &text) {
  if (fileSize < 8)
    return fail(path, "truncated: " + std::to_string(fileSize) +
                          " bytes, not even the 8-byte header length");
  uint8_t length[8];
  if (!in.read(reinterpret_cast<char *>(length), 8))
    return fail(path, std::string("cannot read the header length: ") + std::strerror(errno));
  uint64_t headerBytes = 0;
  for (int i = 0; i < 8; ++i)
    headerBytes |= uint64_t(length[i]) << (8 * i);
  if (headerBytes > fileSize - 8)
    return fail(path, "header length " + std::to_string(headerBytes) +
                          " runs past the end of the " + std::to_string(fileSize) +
                          "-byte file (truncated or not safetensors)");
  if (headerBytes > kMaxHeaderBytes)
    return fail(path, "header length " + std::to_string(headerBytes) +
                          " is larger than 100 MB (corrupt or not safetensors)");
  if (headerBytes < 2)
    return fail(path, "header length " + std::to_string(headerBytes) + " is too small");
  text.assign(size_t(headerBytes), '\0');
  in.read(text.data(), std::streamsize(headerBytes));
  if (!in)
    return fail(path, "cannot read the header");
  return Status();
}

// The header's __metadata__ object into `out`.
Status parseMetadata(const std::string &path, const nlohmann::json &v,
                     std::map<std::string, std::string> &out) {
  if (!v.is_object())
    return fail(path, "__metadata__ is not an object");
  for (auto m = v.begin(); m != v.end(); ++m) {
    if (!m.value().is_string())
      return fail(path, "__metadata__ entry '" + m.key() + "' is not a string");
    out[m.key()] = m.value().get<std::string>();
  }
  return Status();
}

// Tensor `name`'s header entry `v` as `e`, its byte range checked against
// its dtype and shape and against the dataBytes data bytes that start at
// dataStart.
Status parseEntry(const std::string &path, const std::string &name, const nlohmann::json &v,
                  uint64_t dataStart, uint64_t dataBytes, SafetensorsEntry &e) {
  if (!v.is_object())
    return failTensor(path, name, "is not described by an object");
  auto dtype = v.find("dtype");
  auto shape = v.find("shape");
  auto offsets = v.find("data_offsets");
  if (dtype == v.end() || !dtype->is_string())
    return failTensor(path, name, "has no dtype");
  if (shape == v.end() || !shape->is_array())
    return failTensor(path, name, "has no shape");
  if (offsets == v.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned())
    return failTensor(path, name, "has no valid data_offsets [begin, end]");
  e.name = name;
  std::string dtypeText = dtype->get<std::string>();
  if (!parseSafetensorsDType(dtypeText, e.dtype))
    return failTensor(path, name,
                      "has dtype " + dtypeText +
                          ", which g3moe does not read (F32, BF16, F16, I32, I64)");
  // Element count with overflow checks: a corrupt shape must not wrap
  // around into a plausible size.
  uint64_t count = 1;
  for (const nlohmann::json &d : *shape) {
    if (!d.is_number_unsigned())
      return failTensor(path, name, "has a shape entry that is not a non-negative integer");
    uint64_t dim = d.get<uint64_t>();
    if (dim > uint64_t(std::numeric_limits<int64_t>::max()) ||
        (dim != 0 && count > uint64_t(std::numeric_limits<int64_t>::max()) / dim))
      return failTensor(path, name, "has a shape too large to address");
    count *= dim;
    e.shape.push_back(int64_t(dim));
  }
  uint64_t begin = (*offsets)[0].get<uint64_t>(), end = (*offsets)[1].get<uint64_t>();
  if (begin > end)
    return failTensor(path, name,
                      "has data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                          "] that end before they begin");
  uint64_t size = dtypeSize(e.dtype);
  if (count > std::numeric_limits<uint64_t>::max() / size || count * size != end - begin)
    return failTensor(path, name,
                      "has shape " + shapeString(e.shape) + " of " + dtypeText + " (" +
                          std::to_string(count) + " elements) but a byte range of " +
                          std::to_string(end - begin) + " bytes");
  if (end > dataBytes)
    return failTensor(path, name,
                      "has data up to byte " + std::to_string(end) + " but the file holds only " +
                          std::to_string(dataBytes) + " data bytes (truncated?)");
  e.begin = dataStart + begin;
  e.end = dataStart + end;
  return Status();
}

// No two non-empty tensors of `entries` (sorted by begin, then end) share a
// byte.
Status checkNoOverlap(const std::string &path, const std::vector<SafetensorsEntry> &entries,
                      uint64_t dataStart) {
  const SafetensorsEntry *previous = nullptr;
  for (const SafetensorsEntry &e : entries) {
    if (e.begin == e.end)
      continue;
    if (previous && e.begin < previous->end)
      return failTensor(path, e.name,
                        "overlaps tensor '" + previous->name + "' (bytes " +
                            std::to_string(e.begin - dataStart) + ".." +
                            std::to_string(e.end - dataStart) + " and " +
                            std::to_string(previous->begin - dataStart) + ".." +
                            std::to_string(previous->end - dataStart) + ")");
    previous = &e;
  }
  return Status();
}

} // namespace

int64_t SafetensorsEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

bool parseSafetensorsDType(const std::string &name, DType &out) {
  static const std::pair<const char *, DType> known[] = {{"F32", DType::F32},
                                                         {"BF16", DType::BF16},
                                                         {"F16", DType::F16},
                                                         {"I32", DType::I32},
                                                         {"I64", DType::I64}};
  for (const auto &[n, t] : known)
    if (name == n) {
      out = t;
      return true;
    }
  return false;
}

bool convertElements(const void *src, DType srcType, void *dst, DType dstType, int64_t count) {
  if (srcType == dstType) {
    std::memcpy(dst, src, size_t(count) * dtypeSize(srcType));
    return true;
  }
  if (!isFloat(srcType) || !isFloat(dstType))
    return false;
  TensorView in{const_cast<void *>(src), srcType, {count}};
  TensorView out{dst, dstType, {count}};
  for (int64_t i = 0; i < count; ++i)
    out.store(i, in.load(i));
  return true;
}

Status writeSafetensors(const std::string &path, const std::vector<NamedTensor> &tensors,
                        const std::map<std::string, std::string> &metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty())
    header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const NamedTensor &t : tensors) {
    if (t.name == "__metadata__" || header.contains(t.name))
      return Status::error(path + ": tensor '" + t.name + "' given twice");
    uint64_t bytes = t.view.bytes();
    header[t.name] = {{"dtype", std::string(dtypeName(t.view.dtype))},
                      {"shape", t.view.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  // The data that follows the header starts 8-byte aligned, as the reference
  // implementation pads it.
  while ((text.size() + 8) % 8)
    text.push_back(' ');
  uint8_t length[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i)
    length[i] = uint8_t(n >> (8 * i));

  // Streamed to a temporary file and renamed, so that a checkpoint is never
  // held twice in memory and a crash never leaves half a file under `path`.
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out)
      return Status::error("cannot write " + tmp + ": " + std::strerror(errno));
    out.write(reinterpret_cast<const char *>(length), 8);
    out.write(text.data(), std::streamsize(text.size()));
    for (const NamedTensor &t : tensors)
      out.write(static_cast<const char *>(t.view.data), std::streamsize(t.view.bytes()));
    out.flush();
    if (!out) {
      std::string why = std::strerror(errno);
      out.close();
      std::remove(tmp.c_str());
      return Status::error("cannot write " + tmp + ": " + why);
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    return Status::error("cannot rename " + tmp + " to " + path + ": " + why);
  }
  return Status();
}

Status SafetensorsFile::open(const std::string &path, SafetensorsFile &out) {
  out = SafetensorsFile();
  out.path_ = path;
  std::ifstream in;
  uint64_t fileSize = 0;
  G3RT_RETURN_IF_ERROR(openForReading(path, in, std::ios::binary, "", &fileSize));
  std::string text;
  G3RT_RETURN_IF_ERROR(readHeaderText(path, in, fileSize, text));

  nlohmann::json header = nlohmann::json::parse(text, nullptr, false);
  if (header.is_discarded())
    return fail(path, "the header is not valid JSON");
  if (!header.is_object())
    return fail(path, "the header is not a JSON object");

  uint64_t dataStart = 8 + text.size(), dataBytes = fileSize - dataStart;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      G3RT_RETURN_IF_ERROR(parseMetadata(path, it.value(), out.metadata_));
      continue;
    }
    SafetensorsEntry e;
    G3RT_RETURN_IF_ERROR(parseEntry(path, it.key(), it.value(), dataStart, dataBytes, e));
    out.entries_.push_back(std::move(e));
  }

  std::sort(out.entries_.begin(), out.entries_.end(),
            [](const SafetensorsEntry &a, const SafetensorsEntry &b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  G3RT_RETURN_IF_ERROR(checkNoOverlap(path, out.entries_, dataStart));
  for (size_t i = 0; i < out.entries_.size(); ++i)
    out.byName_[out.entries_[i].name] = i;
  return Status();
}

const SafetensorsEntry *SafetensorsFile::find(const std::string &name) const {
  auto it = byName_.find(name);
  return it == byName_.end() ? nullptr : &entries_[it->second];
}

Status SafetensorsFile::read(const SafetensorsEntry &entry, const TensorView &dst) const {
  if (dst.numel() != entry.numel())
    return failTensor(path_, entry.name,
                      "has " + std::to_string(entry.numel()) + " elements, the destination " +
                          std::to_string(dst.numel()));
  if (entry.dtype != dst.dtype && (!isFloat(entry.dtype) || !isFloat(dst.dtype)))
    return failTensor(path_, entry.name,
                      "has dtype " + std::string(dtypeName(entry.dtype)) +
                          ", which cannot be converted to " + std::string(dtypeName(dst.dtype)));
  std::ifstream in;
  uint64_t fileSize = 0;
  G3RT_RETURN_IF_ERROR(openForReading(path_, in, std::ios::binary, "", &fileSize));
  if (entry.end > fileSize)
    return failTensor(path_, entry.name, "cannot be read (the file changed or is truncated)");
  in.seekg(std::streamoff(entry.begin));
  uint64_t bytes = entry.end - entry.begin;
  if (entry.dtype == dst.dtype) {
    in.read(static_cast<char *>(dst.data), std::streamsize(bytes));
  } else {
    // Converted in chunks so that a large tensor needs no full-size copy.
    constexpr int64_t kChunk = 1 << 20;
    std::vector<char> buffer;
    size_t srcSize = dtypeSize(entry.dtype), dstSize = dtypeSize(dst.dtype);
    for (int64_t first = 0; first < entry.numel() && in; first += kChunk) {
      int64_t n = std::min(kChunk, entry.numel() - first);
      buffer.resize(size_t(n) * srcSize);
      in.read(buffer.data(), std::streamsize(buffer.size()));
      convertElements(buffer.data(), entry.dtype,
                      static_cast<char *>(dst.data) + size_t(first) * dstSize, dst.dtype, n);
    }
  }
  if (!in)
    return failTensor(path_, entry.name, "cannot be read (the file changed or is truncated)");
  return Status();
}

Status SafetensorsFile::readFloats(const std::string &name, std::vector<float> &out) const {
  const SafetensorsEntry *e = find(name);
  if (!e)
    return fail(path_, "no tensor '" + name + "'");
  if (!isFloat(e->dtype))
    return failTensor(path_, name, "is not a float tensor");
  out.assign(size_t(e->numel()), 0.0f);
  return read(*e, TensorView{out.data(), DType::F32, {e->numel()}});
}

} // namespace g3rt
