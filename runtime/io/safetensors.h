//===- safetensors.h - the safetensors file format --------------*- C++ -*-===//
//
// safetensors: an 8-byte little-endian header length, a JSON header mapping
// tensor names to dtype, shape and byte range, then the raw data. This is the
// format HF checkpoints and PEFT adapters use; g3moe writes it itself.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_IO_SAFETENSORS_H
#define G3MOE_RUNTIME_IO_SAFETENSORS_H

#include "runtime/base/tensor.h"

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

} // namespace g3rt

#endif // G3MOE_RUNTIME_IO_SAFETENSORS_H
