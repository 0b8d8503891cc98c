//===- safetensors.cpp - the safetensors file format ----------------------===//

#include "runtime/io/safetensors.h"

#include "runtime/schemas/container.h"

#include <nlohmann/json.hpp>

#include <cstring>

namespace g3rt {

Status writeSafetensors(const std::string &path, const std::vector<NamedTensor> &tensors,
                        const std::map<std::string, std::string> &metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty())
    header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const NamedTensor &t : tensors) {
    if (header.contains(t.name))
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
  std::vector<uint8_t> out(8 + text.size() + offset);
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i)
    out[size_t(i)] = uint8_t(n >> (8 * i));
  std::memcpy(out.data() + 8, text.data(), text.size());
  uint8_t *data = out.data() + 8 + text.size();
  for (const NamedTensor &t : tensors) {
    std::memcpy(data, t.view.data, t.view.bytes());
    data += t.view.bytes();
  }
  return writeFileAtomically(path, out);
}

} // namespace g3rt
