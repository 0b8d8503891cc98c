//===- dtype.h - element types and bf16 rounding ----------------*- C++ -*-===//
//
// The element types a step's buffers hold, their sizes, and the fp32 <-> bf16
// and fp32 <-> e4m3 conversions every backend must agree on (round to nearest
// even, NaN kept).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_DTYPE_H
#define G3MOE_RUNTIME_BASE_DTYPE_H

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>

namespace g3rt {

/// Element type of a buffer. The values are part of the step.bin format.
enum class DType : uint8_t { F32 = 0, BF16 = 1, F16 = 2, I32 = 3, I64 = 4, F8E4M3 = 5 };

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
  case DType::F8E4M3:
    return 1;
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
  case DType::F8E4M3:
    return "F8_E4M3";
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

/// The largest finite e4m3 value (OCP FP8 E4M3, "fn": no infinities).
constexpr float kE4M3Max = 448.0f;

/// fp32 -> e4m3, round to nearest, ties to even, saturating to ±448 as
/// cvt.satfinite does; NaN becomes the e4m3 NaN (0x7f, signed). On the bits:
/// frozen weights are quantized on the host when a run loads them, billions
/// of values.
inline uint8_t floatToE4M3(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint8_t sign = uint8_t((bits >> 24) & 0x80u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u)
    return uint8_t(sign | 0x7f);
  if (magnitude >= 0x43e00000u) // 448
    return uint8_t(sign | 0x7e);
  if (magnitude < 0x3c800000u) { // below 2^-6: steps of 2^-9, an exact scaling
    float a;
    std::memcpy(&a, &magnitude, 4);
    return uint8_t(sign | uint8_t(std::nearbyint(a * 512.0f)));
  }
  // The 23 mantissa bits rounded to 3, to nearest even (a carry moves into
  // the exponent, as it should), the exponent rebiased from 127 to 7; what
  // rounds up past 448 saturates.
  const uint32_t rounded = (magnitude + 0x7ffffu + ((magnitude >> 20) & 1u)) >> 20;
  return uint8_t(sign | std::min<uint32_t>(rounded - ((127u - 7u) << 3), 0x7eu));
}

inline float e4m3ToFloat(uint8_t v) {
  const uint32_t sign = uint32_t(v & 0x80u) << 24, exponent = (v >> 3) & 0xfu, mantissa = v & 7u;
  if (exponent == 0xf && mantissa == 7)
    return std::numeric_limits<float>::quiet_NaN();
  if (exponent == 0) {
    const float f = float(mantissa) * (1.0f / 512.0f);
    return sign ? -f : f;
  }
  float f;
  const uint32_t bits = sign | (exponent + 127u - 7u) << 23 | mantissa << 20;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// fp32 rounded to `type` (bf16 or f16) and back; other types unchanged.
inline float roundedAs(DType type, float f) {
  if (type == DType::BF16)
    return roundToBF16(f);
  if (type == DType::F8E4M3)
    return e4m3ToFloat(floatToE4M3(f));
  return type == DType::F16 ? halfToFloat(floatToHalf(f)) : f;
}

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_DTYPE_H
