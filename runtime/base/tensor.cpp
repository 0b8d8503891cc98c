//===- tensor.cpp - typed views of buffers --------------------------------===//

#include "runtime/base/tensor.h"

#include <cmath>

namespace g3rt {

float halfToFloat(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ffu,
           bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {
      // Subnormal half: renormalise.
      int e = -1;
      do {
        ++e;
        mantissa <<= 1;
      } while (!(mantissa & 0x400u));
      bits = sign | uint32_t(127 - 15 - e) << 23 | (mantissa & 0x3ffu) << 13;
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | mantissa << 13;
  } else {
    bits = sign | (exponent + 112) << 23 | mantissa << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t floatToHalf(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  if (std::isnan(f))
    return uint16_t(sign | 0x7e00u);
  float a = std::fabs(f);
  if (a >= 65520.0f)
    return uint16_t(sign | 0x7c00u);
  if (a < 6.103515625e-05f) {
    // Subnormal range: scale so the result's mantissa is an integer.
    return uint16_t(sign | uint16_t(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t abs = bits & 0x7fffffffu;
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return uint16_t(sign | ((rounded - (112u << 23)) >> 13));
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

float TensorView::load(int64_t i) const {
  switch (dtype) {
  case DType::F32:
    return static_cast<const float *>(data)[i];
  case DType::BF16:
    return bf16ToFloat(static_cast<const uint16_t *>(data)[i]);
  case DType::F16:
    return halfToFloat(static_cast<const uint16_t *>(data)[i]);
  case DType::I32:
    return float(static_cast<const int32_t *>(data)[i]);
  case DType::I64:
    return float(static_cast<const int64_t *>(data)[i]);
  case DType::F8E4M3:
    return e4m3ToFloat(static_cast<const uint8_t *>(data)[i]);
  }
  return 0;
}

void TensorView::store(int64_t i, float v) const {
  switch (dtype) {
  case DType::F32:
    static_cast<float *>(data)[i] = v;
    return;
  case DType::BF16:
    static_cast<uint16_t *>(data)[i] = floatToBF16(v);
    return;
  case DType::F16:
    static_cast<uint16_t *>(data)[i] = floatToHalf(v);
    return;
  case DType::I32:
    static_cast<int32_t *>(data)[i] = int32_t(v);
    return;
  case DType::I64:
    static_cast<int64_t *>(data)[i] = int64_t(v);
    return;
  case DType::F8E4M3:
    static_cast<uint8_t *>(data)[i] = floatToE4M3(v);
    return;
  }
}

std::vector<float> toFloat(const TensorView &t) {
  std::vector<float> out(size_t(t.numel()));
  if (t.dtype == DType::F32) {
    std::memcpy(out.data(), t.data, out.size() * 4);
    return out;
  }
  for (int64_t i = 0, n = t.numel(); i < n; ++i)
    out[size_t(i)] = t.load(i);
  return out;
}

void fromFloat(const TensorView &t, const std::vector<float> &values) {
  if (t.dtype == DType::F32) {
    std::memcpy(t.data, values.data(), values.size() * 4);
    return;
  }
  for (int64_t i = 0, n = t.numel(); i < n; ++i)
    t.store(i, values[size_t(i)]);
}

std::string shapeString(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

} // namespace g3rt
