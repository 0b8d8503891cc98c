//===- safetensors.h - the safetensors file format --------------*- C++ -*-===//
//
// safetensors: an 8-byte little-endian header length, a JSON header mapping
// tensor names to dtype, shape and byte range, then the raw data. This is the
// format HF checkpoints and PEFT adapters use; g3moe reads and writes it
// itself.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_IO_SAFETENSORS_H
#define G3MOE_RUNTIME_IO_SAFETENSORS_H

#include "runtime/base/tensor.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace g3rt {

/// A tensor to write: its name and a view of its elements.
struct NamedTensor {
  std::string name;
  TensorView view;
};

/// Writes `tensors` (and `metadata` as the header's __metadata__) to `path`
/// atomically: a crash leaves either the old file or the complete new one.
Status writeSafetensors(const std::string &path, const std::vector<NamedTensor> &tensors,
                        const std::map<std::string, std::string> &metadata = {});

/// One tensor of a safetensors file, as its header describes it.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  /// Byte range in the file (absolute, past the header).
  uint64_t begin = 0, end = 0;

  int64_t numel() const;
};

/// An opened, validated safetensors file. Opening reads only the header; the
/// data is read tensor by tensor, so a checkpoint larger than memory can be
/// loaded into parameters without a second copy.
class SafetensorsFile {
public:
  /// Reads and validates the header of `path`: a sane header length, valid
  /// JSON, every entry with a supported dtype (F32, BF16, F16, I32, I64), a
  /// shape whose element count times the dtype size is its byte range, ranges
  /// inside the file and not overlapping. Errors name the file and the tensor.
  static Status open(const std::string &path, SafetensorsFile &out);

  const std::string &path() const { return path_; }
  /// Entries in file order of their data.
  const std::vector<SafetensorsEntry> &entries() const { return entries_; }
  /// The entry called `name`, or null.
  const SafetensorsEntry *find(const std::string &name) const;
  /// The header's __metadata__ (string values only, as the format requires).
  const std::map<std::string, std::string> &metadata() const { return metadata_; }

  /// Reads tensor `entry` into `dst`, which must hold as many elements.
  /// Float tensors convert between F32, BF16 and F16 (rounding to nearest
  /// even); integer tensors must match `dst`'s dtype exactly.
  Status read(const SafetensorsEntry &entry, const TensorView &dst) const;
  /// Reads tensor `name` as fp32 values (float tensors only).
  Status readFloats(const std::string &name, std::vector<float> &out) const;

private:
  std::string path_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> byName_;
  std::map<std::string, std::string> metadata_;
};

/// Parses a dtype name of a safetensors header ("BF16"); false for names
/// g3moe does not read.
bool parseSafetensorsDType(const std::string &name, DType &out);

/// Copies `count` elements from `src` (of `srcType`) to `dst` (of `dstType`):
/// a byte copy for equal types, else a float conversion. False when one of the
/// types is an integer type and they differ.
bool convertElements(const void *src, DType srcType, void *dst, DType dstType, int64_t count);

} // namespace g3rt

#endif // G3MOE_RUNTIME_IO_SAFETENSORS_H
