//===- dtype.h - element types and bf16 rounding ----------------*- C++ -*-===//
//
// The element types a step's buffers hold, their sizes, and the fp32 <-> bf16
// conversions every backend must agree on (round to nearest even, NaN kept).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_DTYPE_H
#define G3MOE_RUNTIME_BASE_DTYPE_H

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace g3rt {

/// Element type of a buffer. The values are part of the step.bin format.
enum class DType : uint8_t { F32 = 0, BF16 = 1, F16 = 2, I32 = 3, I64 = 4 };

/// Bytes per element.
inline size_t dtypeSize(DType t) {
  switch (t) {
  case DType::F32:
  case DType::I32:
    return 4;
  case DType::BF16:
  case DType::F16:
    return 2;
  case DType::I64:
    return 8;
  }
  return 0;
}

/// The name used in messages and in safetensors headers ("F32", "BF16", ...).
inline std::string_view dtypeName(DType t) {
  switch (t) {
  case DType::F32:
    return "F32";
  case DType::BF16:
    return "BF16";
  case DType::F16:
    return "F16";
  case DType::I32:
    return "I32";
  case DType::I64:
    return "I64";
  }
  return "?";
}

inline bool isFloat(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

/// fp32 -> bf16, round to nearest, ties to even; NaN stays a (quiet) NaN.
inline uint16_t floatToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u)
    return uint16_t((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t((bits + rounding) >> 16);
}

inline float bf16ToFloat(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// fp32 rounded through bf16 and back.
inline float roundToBF16(float f) { return bf16ToFloat(floatToBF16(f)); }

/// IEEE half <-> fp32 (for completeness of F16 buffers).
float halfToFloat(uint16_t h);
uint16_t floatToHalf(float f);

/// fp32 rounded to `type` (bf16 or f16) and back; other types unchanged.
inline float roundedAs(DType type, float f) {
  if (type == DType::BF16)
    return roundToBF16(f);
  return type == DType::F16 ? halfToFloat(floatToHalf(f)) : f;
}

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_DTYPE_H
