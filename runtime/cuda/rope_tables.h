//===- rope_tables.h - RoPE frequencies shared by the CUDA kernels -*- C++ -*-===//
//
// rope and the fused QK-norm + RoPE kernels must rotate by the very same
// angles: the inverse frequencies are built on the host with the pow() the
// CPU reference uses (large positions multiply any difference) and travel as
// a kernel parameter; the angle of pair i at position p is p * inv_freq[i],
// turned into cos and sin on the device the same way by both.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_ROPE_TABLES_H
#define G3MOE_RUNTIME_CUDA_ROPE_TABLES_H

#include <cmath>
#include <cstdint>

namespace g3rt::cuda {

/// Head dimensions up to 2 * kRopeMaxHalf take their frequencies from the host.
constexpr int kRopeMaxHalf = 256;

/// HF's fp32 steps: 1 / theta^(float(2i) / d), then divided by the linear
/// scaling factor.
struct RopeFreqs {
  float inv[kRopeMaxHalf];
  bool fromHost;
  float theta, factor;
  int d;
};

/// The frequencies of head dimension d (host side).
inline RopeFreqs makeRopeFreqs(int64_t d, double theta, double factor) {
  RopeFreqs f{};
  f.theta = float(theta);
  f.factor = float(factor);
  f.d = int(d);
  f.fromHost = d / 2 <= kRopeMaxHalf;
  if (f.fromHost)
    for (int64_t i = 0; i < d / 2; ++i)
      f.inv[i] = (1.0f / std::pow(f.theta, float(2 * i) / float(d))) / f.factor;
  return f;
}

#if defined(__CUDACC__)
/// cos and sign * sin of pair i's angle at position p.
__device__ __forceinline__ void ropeAngle(const RopeFreqs &f, float p, int i, float sign, float &c,
                                          float &s) {
  float inv = f.fromHost ? f.inv[i] : (1.0f / powf(f.theta, float(2 * i) / float(f.d))) / f.factor;
  float phi = p * inv;
  c = cosf(phi);
  s = sign * sinf(phi);
}
#endif

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_ROPE_TABLES_H
