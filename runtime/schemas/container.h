//===- container.h - the step.bin container ---------------------*- C++ -*-===//
//
// step.bin = a fixed 32-byte header + the FlatBuffer payload (step.fbs). The
// header carries what a FlatBuffer cannot: a magic number, the format version,
// the payload length (so truncation is detected) and a checksum of the
// payload (so corruption is detected before the FlatBuffer is parsed).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_SCHEMAS_CONTAINER_H
#define G3MOE_RUNTIME_SCHEMAS_CONTAINER_H

#include "runtime/base/status.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace g3rt {

/// The step.bin format this build reads and writes; raised with every change
/// to step.fbs. 2: the configuration as typed tables (1 held it as JSON).
inline constexpr uint32_t kStepFormatVersion = 4;
/// Bytes of the container header.
inline constexpr size_t kStepHeaderBytes = 32;

/// FNV-1a, 64-bit, over `bytes`.
uint64_t checksum64(const uint8_t *bytes, size_t size);

/// Header + payload, ready to write.
std::vector<uint8_t> wrapStepPayload(const uint8_t *payload, size_t size);

/// Checks the header of `file` (all bytes of a step.bin) and returns the
/// payload's position in `payloadOffset`/`payloadSize`. Errors say what is
/// wrong: not a step.bin, another format version (older or newer, and to
/// recompile it with this g3moe-compile), truncated, corrupt.
Status unwrapStepPayload(const std::vector<uint8_t> &file, size_t &payloadOffset,
                         size_t &payloadSize);

} // namespace g3rt

#endif // G3MOE_RUNTIME_SCHEMAS_CONTAINER_H
