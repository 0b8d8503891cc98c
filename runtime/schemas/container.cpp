//===- container.cpp - the step.bin container -----------------------------===//

#include "runtime/schemas/container.h"

#include <cstring>

namespace g3rt {

namespace {

constexpr char kMagic[8] = {'G', '3', 'M', 'O', 'E', 'S', 'T', 'P'};

void putU32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; ++i)
    p[i] = uint8_t(v >> (8 * i));
}
void putU64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; ++i)
    p[i] = uint8_t(v >> (8 * i));
}
uint32_t getU32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= uint32_t(p[i]) << (8 * i);
  return v;
}
uint64_t getU64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v |= uint64_t(p[i]) << (8 * i);
  return v;
}

} // namespace

uint64_t checksum64(const uint8_t *bytes, size_t size) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; ++i) {
    h ^= bytes[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

// Layout: magic[8] | version u32 | reserved u32 | payload size u64 | checksum u64.
std::vector<uint8_t> wrapStepPayload(const uint8_t *payload, size_t size) {
  std::vector<uint8_t> out(kStepHeaderBytes + size);
  std::memcpy(out.data(), kMagic, 8);
  putU32(out.data() + 8, kStepFormatVersion);
  putU32(out.data() + 12, 0);
  putU64(out.data() + 16, size);
  putU64(out.data() + 24, checksum64(payload, size));
  std::memcpy(out.data() + kStepHeaderBytes, payload, size);
  return out;
}

Status unwrapStepPayload(const std::vector<uint8_t> &file, size_t &payloadOffset,
                         size_t &payloadSize) {
  if (file.size() < kStepHeaderBytes || std::memcmp(file.data(), kMagic, 8) != 0)
    return Status::error("not a step.bin file (bad magic number)");
  uint32_t version = getU32(file.data() + 8);
  if (version != kStepFormatVersion)
    return Status::error("step.bin format version " + std::to_string(version) +
                         " is not supported (this runtime reads version " +
                         std::to_string(kStepFormatVersion) + "): it was written by " +
                         (version < kStepFormatVersion ? "an older" : "a newer") +
                         " g3moe-compile; recompile it with this g3moe-compile");
  uint64_t size = getU64(file.data() + 16);
  if (size != file.size() - kStepHeaderBytes)
    return Status::error("step.bin is truncated or has trailing bytes: the header "
                         "says " +
                         std::to_string(size) + " payload bytes, the file has " +
                         std::to_string(file.size() - kStepHeaderBytes));
  if (checksum64(file.data() + kStepHeaderBytes, size) != getU64(file.data() + 24))
    return Status::error("step.bin is corrupt: the payload checksum does not match");
  payloadOffset = kStepHeaderBytes;
  payloadSize = size_t(size);
  return Status();
}

} // namespace g3rt
