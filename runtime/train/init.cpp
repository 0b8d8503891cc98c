//===- init.cpp - parameter initialisation from a seed --------------------===//

#include "runtime/train/init.h"

#include "runtime/base/parallel.h"
#include "runtime/base/random.h"
#include "runtime/train/derived.h"

#include <cmath>

namespace g3rt {

namespace {
/// Counter value reserved for initialisation draws (micro-batch counters
/// count up from 0 and never reach it).
constexpr uint64_t kInitCounter = ~uint64_t(0);
} // namespace

uint32_t streamOf(const std::string &s) {
  uint32_t h = 2166136261u;
  for (unsigned char c : s) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

namespace {

/// Elements [begin, end) of `t`, drawn as `p.init` says. Element i is a pure
/// function of (seed, the parameter's stream, i), so any split of the range
/// gives the same tensor.
void initializeRange(const ParamDesc &p, const TensorView &t, uint64_t seed, int64_t begin,
                     int64_t end) {
  const uint32_t stream = streamOf(p.name);
  UniformReader draw(seed, kInitCounter, stream);
  auto u = [&](int64_t i) { return double(draw(uint64_t(i))); };
  switch (p.init) {
  case InitKind::Zeros:
    for (int64_t i = begin; i < end; ++i)
      t.store(i, 0.0f);
    break;
  case InitKind::KaimingUniform: {
    double bound = 1.0 / std::sqrt(double(t.shape.empty() ? 1 : t.shape.back()));
    for (int64_t i = begin; i < end; ++i)
      t.store(i, float((2 * u(i) - 1) * bound));
    break;
  }
  case InitKind::Normal:
  case InitKind::NormalPaddingRowZero:
    // Box-Muller on two uniforms per element (elements 2i and 2i+1 of the
    // stream), keeping u1 away from 0.
    for (int64_t i = begin; i < end; ++i) {
      double u1 = u(2 * i) + 1.0 / (1 << 25), u2 = u(2 * i + 1);
      double z = std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2);
      t.store(i, float(z * p.initStd));
    }
    break;
  }
}

} // namespace

Status initializeParameters(HostState &host, uint64_t seed, int64_t padTokenId, bool derive) {
  for (const ParamDesc &p : host.program().params) {
    TensorView t = host.param(p.name);
    if (!t.data)
      continue;
    // A 4B model has 8e9 elements, minutes of draws on one core.
    parallelFor(
        t.numel(), [&](int64_t begin, int64_t end) { initializeRange(p, t, seed, begin, end); },
        /*grain=*/1 << 16);
    if (p.init == InitKind::NormalPaddingRowZero && padTokenId >= 0 && t.shape.size() == 2 &&
        padTokenId < t.shape[0])
      for (int64_t j = 0; j < t.shape[1]; ++j)
        t.store(padTokenId * t.shape[1] + j, 0.0f);
  }
  return derive ? deriveParameters(host) : Status();
}

} // namespace g3rt
