//===- kernels_elementwise.cpp - elementwise and plumbing CPU kernels -----===//
//
// The fp32 reference for the elementwise ops (add, mul, scale, the GeGLU
// product and its gradient, dropout), the dtype plumbing (convert, copy, fill)
// and the counter-based random_uniform. Operands are widened to fp32 a block
// at a time, computed in fp32 and rounded once on store. Every output element
// depends only on the input elements at its own index, so the way parallelFor
// chunks the range cannot change a result, and an output may alias an input
// of the same dtype (each block is read in full before it is written).
//
//===----------------------------------------------------------------------===//

#include "runtime/base/parallel.h"
#include "runtime/base/random.h"
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/kernels/kernel_checks.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

namespace g3rt::cpu {

using namespace checks;

namespace {

/// Elements staged through the fp32 scratch buffers at a time; small enough
/// that the buffers of a five-operand kernel stay in L1.
constexpr int64_t kBlock = 512;
/// parallelFor starts fresh threads on every call, which costs tens of
/// microseconds; below this many blocks (~32K elements) a kernel runs inline.
constexpr int64_t kGrainBlocks = 64;

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

/// Widens elements [begin, begin + n) of a float tensor into `out`. The
/// per-dtype switch sits outside the loop so that the f32 and bf16 paths are
/// plain inlined loops rather than a call per element.
void loadBlock(const TensorView &t, int64_t begin, int64_t n, float *out) {
  switch (t.dtype) {
  case DType::F32:
    std::memcpy(out, t.f32() + begin, size_t(n) * sizeof(float));
    return;
  case DType::BF16: {
    const uint16_t *p = static_cast<const uint16_t *>(t.data) + begin;
    for (int64_t i = 0; i < n; ++i)
      out[i] = bf16ToFloat(p[i]);
    return;
  }
  default:
    for (int64_t i = 0; i < n; ++i)
      out[i] = t.load(begin + i);
    return;
  }
}

/// Rounds `in` into elements [begin, begin + n) of a float tensor.
void storeBlock(const TensorView &t, int64_t begin, int64_t n, const float *in) {
  switch (t.dtype) {
  case DType::F32:
    std::memcpy(t.f32() + begin, in, size_t(n) * sizeof(float));
    return;
  case DType::BF16: {
    uint16_t *p = static_cast<uint16_t *>(t.data) + begin;
    for (int64_t i = 0; i < n; ++i)
      p[i] = floatToBF16(in[i]);
    return;
  }
  default:
    for (int64_t i = 0; i < n; ++i)
      t.store(begin + i, in[i]);
    return;
  }
}

/// Runs `fn(begin, count, src, dst)` over blocks of the outputs' elements,
/// with `src[k][i]` the fp32 value of input k at element begin + i and
/// `dst[k][i]` to be filled for output k. All outputs have the same count.
template <size_t NIn, size_t NOut, typename Fn>
void mapBlocks(const std::array<TensorView, NIn> &in, const std::array<TensorView, NOut> &out,
               Fn fn) {
  int64_t n = out[0].numel();
  int64_t blocks = (n + kBlock - 1) / kBlock;
  parallelFor(
      blocks,
      [&](int64_t b0, int64_t b1) {
        float src[NIn == 0 ? 1 : NIn][kBlock];
        float dst[NOut][kBlock];
        for (int64_t b = b0; b < b1; ++b) {
          int64_t begin = b * kBlock, count = std::min(kBlock, n - begin);
          for (size_t k = 0; k < NIn; ++k)
            loadBlock(in[k], begin, count, src[k]);
          fn(begin, count, src, dst);
          for (size_t k = 0; k < NOut; ++k)
            storeBlock(out[k], begin, count, dst[k]);
        }
      },
      kGrainBlocks);
}

inline bool isInteger(DType t) { return t == DType::I32 || t == DType::I64; }

inline int64_t loadInt(const TensorView &t, int64_t i) {
  return t.dtype == DType::I64 ? t.i64()[i] : int64_t(t.i32()[i]);
}

/// GELU (tanh approximation) and its derivative at `g`.
inline void geluTanh(float g, float &value, float &slope) {
  float inner = kSqrt2OverPi * (g + kGeluCubic * g * g * g);
  float t = std::tanh(inner);
  value = 0.5f * g * (1.0f + t);
  slope = 0.5f * (1.0f + t) +
          0.5f * g * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * g * g);
}

} // namespace

Status addKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  G3RT_RETURN_IF_ERROR(
      checkFloatOperands(args, {&args.inputs[0], &args.inputs[1], &args.outputs[0]}));
  mapBlocks<2, 1>({args.inputs[0], args.inputs[1]}, {args.outputs[0]},
                  [](int64_t, int64_t n, auto src, auto dst) {
                    for (int64_t i = 0; i < n; ++i)
                      dst[0][i] = src[0][i] + src[1][i];
                  });
  return Status();
}

Status mulKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  G3RT_RETURN_IF_ERROR(
      checkFloatOperands(args, {&args.inputs[0], &args.inputs[1], &args.outputs[0]}));
  mapBlocks<2, 1>({args.inputs[0], args.inputs[1]}, {args.outputs[0]},
                  [](int64_t, int64_t n, auto src, auto dst) {
                    for (int64_t i = 0; i < n; ++i)
                      dst[0][i] = src[0][i] * src[1][i];
                  });
  return Status();
}

Status scaleKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 1, 1));
  G3RT_RETURN_IF_ERROR(checkFloatOperands(args, {&args.inputs[0], &args.outputs[0]}));
  double factor;
  G3RT_RETURN_IF_ERROR(args.requireFloat("factor", factor));
  float f = float(factor);
  mapBlocks<1, 1>({args.inputs[0]}, {args.outputs[0]}, [f](int64_t, int64_t n, auto src, auto dst) {
    for (int64_t i = 0; i < n; ++i)
      dst[0][i] = f * src[0][i];
  });
  return Status();
}

namespace {

/// Element conversion shared by convert and copy. Integer to integer goes
/// through int64 so that i64 values above 2^24 survive; mixing integer and
/// float types is not an op the compiler emits.
Status convertElements(const KernelArgs &args, const TensorView &x, const TensorView &y) {
  if (x.numel() != y.numel())
    return args.fail("element count mismatch: " + shapeString(x.shape) + " vs " +
                     shapeString(y.shape));
  if (x.dtype == y.dtype) {
    if (x.data != y.data && y.bytes() > 0)
      std::memmove(y.data, x.data, y.bytes());
    return Status();
  }
  if (isInteger(x.dtype) && isInteger(y.dtype)) {
    for (int64_t i = 0, n = y.numel(); i < n; ++i) {
      int64_t v = loadInt(x, i);
      if (y.dtype == DType::I64)
        y.i64()[i] = v;
      else
        y.i32()[i] = int32_t(v);
    }
    return Status();
  }
  if (!isFloat(x.dtype) || !isFloat(y.dtype))
    return args.fail("cannot convert " + std::string(dtypeName(x.dtype)) + " to " +
                     std::string(dtypeName(y.dtype)));
  mapBlocks<1, 1>({x}, {y}, [](int64_t, int64_t n, auto src, auto dst) {
    std::memcpy(dst[0], src[0], size_t(n) * sizeof(float));
  });
  return Status();
}

} // namespace

Status convertKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 1, 1));
  return convertElements(args, args.inputs[0], args.outputs[0]);
}

Status copyKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 1, 1));
  return convertElements(args, args.inputs[0], args.outputs[0]);
}

namespace {

/// Copies between `whole` and its consecutive row blocks `parts`.
void copyRowBlocks(const TensorView &whole, const std::vector<TensorView> &parts, bool intoParts) {
  char *base = static_cast<char *>(whole.data);
  for (const TensorView &part : parts) {
    if (intoParts)
      std::memmove(part.data, base, part.bytes());
    else
      std::memmove(base, part.data, part.bytes());
    base += part.bytes();
  }
}

} // namespace

Status splitRowsKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkSplitRows(args));
  copyRowBlocks(args.inputs[0], args.outputs, /*intoParts=*/true);
  return Status();
}

Status concatRowsKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkConcatRows(args));
  copyRowBlocks(args.outputs[0], args.inputs, /*intoParts=*/false);
  return Status();
}

Status fillKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 0, 1));
  double value;
  G3RT_RETURN_IF_ERROR(args.requireFloat("value", value));
  const TensorView &y = args.outputs[0];
  int64_t n = y.numel();
  if (isInteger(y.dtype)) {
    if (value != std::floor(value))
      return args.fail("value " + std::to_string(value) + " is not an integer but the output is " +
                       std::string(dtypeName(y.dtype)));
    for (int64_t i = 0; i < n; ++i) {
      if (y.dtype == DType::I64)
        y.i64()[i] = int64_t(value);
      else
        y.i32()[i] = int32_t(value);
    }
    return Status();
  }
  float v = float(value);
  mapBlocks<0, 1>({}, {y}, [v](int64_t, int64_t count, auto, auto dst) {
    std::fill(dst[0], dst[0] + count, v);
  });
  return Status();
}

Status randomUniformKernel(const KernelArgs &args) {
  uint32_t s;
  double low, high;
  G3RT_RETURN_IF_ERROR(checkRandomUniform(args, s, low, high));
  const TensorView &key = args.inputs[0], &y = args.outputs[0];
  uint64_t seed = uint64_t(key.i64()[0]), counter = uint64_t(key.i64()[1]);
  double span = high - low;
  // The affine map runs in double so that the only rounding is the store.
  mapBlocks<0, 1>({}, {y}, [&](int64_t begin, int64_t count, auto, auto dst) {
    UniformReader u(seed, counter, s);
    for (int64_t i = 0; i < count; ++i)
      dst[0][i] = float(low + span * double(u(uint64_t(begin + i))));
  });
  return Status();
}

Status dropoutKernel(const KernelArgs &args) {
  double p;
  G3RT_RETURN_IF_ERROR(checkDropout(args, p));
  // The threshold is compared in fp32, as the uniform draws are fp32; with
  // p = 1 nothing is kept and the infinite scale is never applied.
  float threshold = float(p), scale = dropoutScale(p);
  mapBlocks<2, 1>({args.inputs[0], args.inputs[1]}, {args.outputs[0]},
                  [=](int64_t, int64_t n, auto src, auto dst) {
                    for (int64_t i = 0; i < n; ++i)
                      dst[0][i] = src[1][i] >= threshold ? src[0][i] * scale : 0.0f;
                  });
  return Status();
}

Status keyedDropoutKernel(const KernelArgs &args) {
  uint32_t s;
  double p;
  G3RT_RETURN_IF_ERROR(checkKeyedDropout(args, s, p));
  const TensorView &key = args.inputs[1];
  uint64_t seed = uint64_t(key.i64()[0]), counter = uint64_t(key.i64()[1]);
  // Element i's draw is random_uniform's on [0, 1) (there low + span * u is
  // u itself), compared and scaled as dropoutKernel does.
  float threshold = float(p), scale = dropoutScale(p);
  mapBlocks<1, 1>({args.inputs[0]}, {args.outputs[0]},
                  [=](int64_t begin, int64_t n, auto src, auto dst) {
                    UniformReader draw(seed, counter, s);
                    for (int64_t i = 0; i < n; ++i) {
                      float u = draw(uint64_t(begin + i));
                      dst[0][i] = u >= threshold ? src[0][i] * scale : 0.0f;
                    }
                  });
  return Status();
}

Status dropoutMaskKernel(const KernelArgs &args) {
  uint32_t s;
  double p;
  G3RT_RETURN_IF_ERROR(checkDropoutMask(args, s, p));
  const TensorView &key = args.inputs[0], &mask = args.outputs[0];
  uint64_t seed = uint64_t(key.i64()[0]), counter = uint64_t(key.i64()[1]);
  // keyed_dropout's comparison, one bit per element.
  const float threshold = float(p);
  UniformReader draw(seed, counter, s);
  auto *words = reinterpret_cast<uint32_t *>(mask.i32());
  for (int64_t w = 0; w < mask.numel(); ++w) {
    uint32_t bits = 0;
    for (uint32_t j = 0; j < 32; ++j)
      bits |= uint32_t(draw(uint64_t(32 * w + j)) >= threshold) << j;
    words[w] = bits;
  }
  return Status();
}

Status keyedJitterKernel(const KernelArgs &args) {
  uint32_t s;
  double low, high;
  G3RT_RETURN_IF_ERROR(checkKeyedJitter(args, s, low, high));
  const TensorView &key = args.inputs[1];
  const DType type = args.inputs[0].dtype;
  uint64_t seed = uint64_t(key.i64()[0]), counter = uint64_t(key.i64()[1]);
  const double span = high - low;
  // random_uniform's value, converted to the input's type as convert does,
  // then mul's product.
  auto factor = [type](float f) { return roundedAs(type, f); };
  mapBlocks<1, 1>(
      {args.inputs[0]}, {args.outputs[0]}, [&](int64_t begin, int64_t n, auto src, auto dst) {
        UniformReader u(seed, counter, s);
        for (int64_t i = 0; i < n; ++i)
          dst[0][i] = src[0][i] * factor(float(low + span * double(u(uint64_t(begin + i)))));
      });
  return Status();
}

Status geluTanhMulKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  G3RT_RETURN_IF_ERROR(
      checkFloatOperands(args, {&args.inputs[0], &args.inputs[1], &args.outputs[0]}));
  mapBlocks<2, 1>({args.inputs[0], args.inputs[1]}, {args.outputs[0]},
                  [](int64_t, int64_t n, auto src, auto dst) {
                    for (int64_t i = 0; i < n; ++i) {
                      float g = src[0][i];
                      float t = std::tanh(kSqrt2OverPi * (g + kGeluCubic * g * g * g));
                      dst[0][i] = 0.5f * g * (1.0f + t) * src[1][i];
                    }
                  });
  return Status();
}

Status geluTanhMulGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 2));
  G3RT_RETURN_IF_ERROR(checkFloatOperands(args, {&args.inputs[0], &args.inputs[1], &args.inputs[2],
                                                 &args.outputs[0], &args.outputs[1]}));
  mapBlocks<3, 2>({args.inputs[0], args.inputs[1], args.inputs[2]},
                  {args.outputs[0], args.outputs[1]}, [](int64_t, int64_t n, auto src, auto dst) {
                    for (int64_t i = 0; i < n; ++i) {
                      float value, slope;
                      geluTanh(src[0][i], value, slope);
                      float dy = src[2][i];
                      dst[0][i] = dy * src[1][i] * slope;
                      dst[1][i] = dy * value;
                    }
                  });
  return Status();
}

} // namespace g3rt::cpu
