//===- kernels_elementwise.cu - elementwise and plumbing CUDA kernels -----===//
//
// The CUDA versions of the elementwise ops (add, mul, scale, the GeGLU product
// and its gradient, dropout), the dtype plumbing (convert, copy, fill) and the
// counter-based random_uniform, with the math and checks of
// runtime/cpu/kernels_elementwise.cpp. Each thread widens its elements to
// fp32, computes in fp32 and rounds once on store; a thread reads all of an
// element's inputs before writing its outputs, so outputs may alias inputs as
// they may on the CPU.
//
// Products and sums that the CPU evaluates as separate fp32 operations use the
// _rn intrinsics here, which nvcc never fuses into an FMA: the host reference
// is built without FMA contraction, so these kernels then round exactly as it
// does and agree with it bit for bit wherever no libm function is involved.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/random.h"
#include "runtime/cuda/cuda_kernels.h"
#include "runtime/kernels/kernel_checks.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

namespace g3rt::cuda {

using namespace checks;

namespace {

constexpr int kThreads = 256;

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

__device__ __forceinline__ int64_t globalThread() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t gridStride() { return int64_t(gridDim.x) * blockDim.x; }

//===----------------------------------------------------------------------===//
// Checks (as on the CPU)
//===----------------------------------------------------------------------===//

inline bool isInteger(DType t) { return t == DType::I32 || t == DType::I64; }

/// A tensor's data and element type, as kernels take them.
struct Ref {
  const void *data;
  DType dtype;
};
struct MutRef {
  void *data;
  DType dtype;
};
Ref in(const TensorView &t) { return {t.data, t.dtype}; }
MutRef out(const TensorView &t) { return {t.data, t.dtype}; }

//===----------------------------------------------------------------------===//
// Device code
//===----------------------------------------------------------------------===//

enum class Binary { Add, Mul };

template <Binary Op> __device__ __forceinline__ float apply(float x0, float x1) {
  return Op == Binary::Add ? __fadd_rn(x0, x1) : __fmul_rn(x0, x1);
}

template <Binary Op> __global__ void binaryKernel(Ref a, Ref b, MutRef y, int64_t n) {
  for (int64_t i = globalThread(); i < n; i += gridStride())
    storeFloat(y.data, y.dtype, i,
               apply<Op>(loadFloat(a.data, a.dtype, i), loadFloat(b.data, b.dtype, i)));
}

// Four elements per step (n4 = n / 4), for large aligned buffers: the scalar
// loop above reaches a fraction of the memory bandwidth with 2-byte accesses.
template <Binary Op> __global__ void binaryKernel4(Ref a, Ref b, MutRef y, int64_t n4) {
  for (int64_t j = globalThread(); j < n4; j += gridStride()) {
    float4 x0 = loadFloat4(a.data, a.dtype, j), x1 = loadFloat4(b.data, b.dtype, j);
    storeFloat4(y.data, y.dtype, j,
                {apply<Op>(x0.x, x1.x), apply<Op>(x0.y, x1.y), apply<Op>(x0.z, x1.z),
                 apply<Op>(x0.w, x1.w)});
  }
}

__global__ void scaleKernelDevice(Ref x, MutRef y, float factor, int64_t n) {
  for (int64_t i = globalThread(); i < n; i += gridStride())
    storeFloat(y.data, y.dtype, i, __fmul_rn(factor, loadFloat(x.data, x.dtype, i)));
}

__global__ void scaleKernel4(Ref x, MutRef y, float factor, int64_t n4) {
  for (int64_t j = globalThread(); j < n4; j += gridStride()) {
    float4 v = loadFloat4(x.data, x.dtype, j);
    storeFloat4(y.data, y.dtype, j,
                {__fmul_rn(factor, v.x), __fmul_rn(factor, v.y), __fmul_rn(factor, v.z),
                 __fmul_rn(factor, v.w)});
  }
}

// Whether the four-element kernels apply: a multiple of 4 elements and
// 16-byte aligned buffers.
bool byFours(int64_t n, std::initializer_list<const TensorView *> views) {
  if (n % 4 != 0)
    return false;
  for (const TensorView *t : views)
    if (!aligned16(*t))
      return false;
  return true;
}

__global__ void convertFloatKernel(Ref x, MutRef y, int64_t n) {
  for (int64_t i = globalThread(); i < n; i += gridStride())
    storeFloat(y.data, y.dtype, i, loadFloat(x.data, x.dtype, i));
}

__global__ void convertFloatKernel4(Ref x, MutRef y, int64_t n4) {
  for (int64_t j = globalThread(); j < n4; j += gridStride())
    storeFloat4(y.data, y.dtype, j, loadFloat4(x.data, x.dtype, j));
}

// Through int64, so that i64 values above 2^24 survive (loadFloat would not).
__global__ void convertIntKernel(Ref x, MutRef y, int64_t n) {
  for (int64_t i = globalThread(); i < n; i += gridStride()) {
    int64_t v = loadIndex(x.data, x.dtype, i);
    if (y.dtype == DType::I64)
      static_cast<int64_t *>(y.data)[i] = v;
    else
      static_cast<int32_t *>(y.data)[i] = int32_t(v);
  }
}

__global__ void fillFloatKernel(MutRef y, float v, int64_t n) {
  for (int64_t i = globalThread(); i < n; i += gridStride())
    storeFloat(y.data, y.dtype, i, v);
}

__global__ void fillIntKernel(MutRef y, int64_t v, int64_t n) {
  for (int64_t i = globalThread(); i < n; i += gridStride()) {
    if (y.dtype == DType::I64)
      static_cast<int64_t *>(y.data)[i] = v;
    else
      static_cast<int32_t *>(y.data)[i] = int32_t(v);
  }
}

// One Philox block yields the four consecutive elements 4b..4b+3 (uniformAt
// uses word index & 3 of block index >> 2), so each thread draws one block
// instead of evaluating it four times and hands `f` each element's index and
// draw on [0, 1). The key is read here: it is device data of this
// micro-batch.
template <typename F>
__device__ __forceinline__ void forEachDraw(const int64_t *key, uint32_t stream, int64_t n, F f) {
  const uint64_t seed = uint64_t(key[0]), counter = uint64_t(key[1]);
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = globalThread(); b < blocks; b += gridStride()) {
    Philox4x32Block r = randomBlock(seed, counter, stream, uint64_t(b));
    for (int j = 0; j < 4; ++j)
      if (b * 4 + j < n)
        f(b * 4 + j, uniformFromBits(r.v[j]));
  }
}

__global__ void randomUniformDevice(const int64_t *key, uint32_t stream, double low, double span,
                                    MutRef y, int64_t n) {
  // The affine map in double: the store is the only rounding.
  forEachDraw(key, stream, n, [&](int64_t i, float u) {
    storeFloat(y.data, y.dtype, i, float(low + span * double(u)));
  });
}

// randomUniformDevice for an aligned f32 output of 4k elements: a Philox
// block is one 16-byte store.
__global__ void randomUniformDevice4(const int64_t *key, uint32_t stream, double low, double span,
                                     float4 *y, int64_t n4) {
  const uint64_t seed = uint64_t(key[0]), counter = uint64_t(key[1]);
  auto draw = [&](uint32_t bits) { return float(low + span * double(uniformFromBits(bits))); };
  for (int64_t b = globalThread(); b < n4; b += gridStride()) {
    Philox4x32Block r = randomBlock(seed, counter, stream, uint64_t(b));
    y[b] = {draw(r.v[0]), draw(r.v[1]), draw(r.v[2]), draw(r.v[3])};
  }
}

__global__ void dropoutDevice(Ref x, Ref u, MutRef y, float threshold, float scale, int64_t n) {
  for (int64_t i = globalThread(); i < n; i += gridStride()) {
    float xv = loadFloat(x.data, x.dtype, i), uv = loadFloat(u.data, u.dtype, i);
    storeFloat(y.data, y.dtype, i, uv >= threshold ? __fmul_rn(xv, scale) : 0.0f);
  }
}

// randomUniformDevice's draws, each compared and scaled as dropoutDevice
// does, without the draws ever leaving registers.
__global__ void keyedDropoutDevice(Ref x, const int64_t *key, uint32_t stream, MutRef y,
                                   float threshold, float scale, int64_t n) {
  forEachDraw(key, stream, n, [&](int64_t i, float u) {
    float xv = loadFloat(x.data, x.dtype, i);
    storeFloat(y.data, y.dtype, i, u >= threshold ? __fmul_rn(xv, scale) : 0.0f);
  });
}

// For an input and output of one type T (bf16 or f32) whose data are
// 16-byte aligned: y[i] = f(x[i], the Philox bits of element i), the four
// elements of a Philox block moved in one vector access each way with the
// type fixed at compile time. The per-element dispatch and two-byte accesses
// of the generic kernels made the [16384, 10240] dropout masks of an 8K step
// take 2.5x the time of their traffic.
template <DType T, typename F>
__device__ __forceinline__ void keyedMapVec(const void *x, const int64_t *key, uint32_t stream,
                                            void *y, int64_t n, F f) {
  const uint64_t seed = uint64_t(key[0]), counter = uint64_t(key[1]);
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = globalThread(); b < blocks; b += gridStride()) {
    Philox4x32Block r = randomBlock(seed, counter, stream, uint64_t(b));
    if (4 * b + 4 <= n) {
      float4 v = loadFloat4(x, T, b);
      storeFloat4(y, T, b, {f(v.x, r.v[0]), f(v.y, r.v[1]), f(v.z, r.v[2]), f(v.w, r.v[3])});
    } else {
      for (int64_t i = 4 * b; i < n; ++i)
        storeFloat(y, T, i, f(loadFloat(x, T, i), r.v[i & 3]));
    }
  }
}

template <DType T>
__global__ void keyedDropoutVecDevice(const void *x, const int64_t *key, uint32_t stream, void *y,
                                      float threshold, float scale, int64_t n) {
  keyedMapVec<T>(x, key, stream, y, n, [&](float v, uint32_t bits) {
    return uniformFromBits(bits) >= threshold ? __fmul_rn(v, scale) : 0.0f;
  });
}

// random_uniform's value on [low, low + span), rounded to the input's type
// as convert does, times x as mul does.
__device__ __forceinline__ float jitterOf(float v, DType t, double low, double span, float u) {
  return __fmul_rn(v, roundFloat(t, float(low + span * double(u))));
}

__global__ void keyedJitterDevice(Ref x, const int64_t *key, uint32_t stream, MutRef y, double low,
                                  double span, int64_t n) {
  forEachDraw(key, stream, n, [&](int64_t i, float u) {
    storeFloat(y.data, y.dtype, i, jitterOf(loadFloat(x.data, x.dtype, i), x.dtype, low, span, u));
  });
}

template <DType T>
__global__ void keyedJitterVecDevice(const void *x, const int64_t *key, uint32_t stream, void *y,
                                     double low, double span, int64_t n) {
  keyedMapVec<T>(x, key, stream, y, n, [&](float v, uint32_t bits) {
    return jitterOf(v, T, low, span, uniformFromBits(bits));
  });
}

// keyedDropoutDevice's comparisons as bits: each thread draws the eight
// Philox blocks of one 32-element word.
__global__ void dropoutMaskDevice(const int64_t *key, uint32_t stream, uint32_t *mask,
                                  float threshold, int64_t words) {
  const uint64_t seed = uint64_t(key[0]), counter = uint64_t(key[1]);
  for (int64_t w = globalThread(); w < words; w += gridStride()) {
    uint32_t bits = 0;
    for (int b = 0; b < 8; ++b) {
      Philox4x32Block r = randomBlock(seed, counter, stream, uint64_t(8 * w + b));
      for (int j = 0; j < 4; ++j)
        bits |= uint32_t(uniformFromBits(r.v[j]) >= threshold) << (4 * b + j);
    }
    mask[w] = bits;
  }
}

/// tanh(√(2/π)(g + 0.044715 g³)), each product rounded as the CPU rounds it.
__device__ __forceinline__ float geluInnerTanh(float g) {
  float cube = __fmul_rn(__fmul_rn(__fmul_rn(kGeluCubic, g), g), g);
  return tanhf(__fmul_rn(kSqrt2OverPi, __fadd_rn(g, cube)));
}

__device__ __forceinline__ float geluTanhMul(float g, float u) {
  float t = geluInnerTanh(g);
  return __fmul_rn(__fmul_rn(__fmul_rn(0.5f, g), __fadd_rn(1.0f, t)), u);
}

// d/dgate and d/dup of geluTanhMul times the incoming gradient d.
__device__ __forceinline__ float2 geluTanhMulGrad(float g, float u, float d) {
  float t = geluInnerTanh(g);
  float onePlusT = __fadd_rn(1.0f, t);
  float value = __fmul_rn(__fmul_rn(0.5f, g), onePlusT);
  // 0.5(1 + t) + 0.5 g (1 - t²) √(2/π) (1 + 3·0.044715 g²)
  float sech2 = __fsub_rn(1.0f, __fmul_rn(t, t));
  float poly = __fadd_rn(1.0f, __fmul_rn(__fmul_rn(__fmul_rn(3.0f, kGeluCubic), g), g));
  float slope =
      __fadd_rn(__fmul_rn(0.5f, onePlusT),
                __fmul_rn(__fmul_rn(__fmul_rn(__fmul_rn(0.5f, g), sech2), kSqrt2OverPi), poly));
  return {__fmul_rn(__fmul_rn(d, u), slope), __fmul_rn(d, value)};
}

// Wide: four elements per step (n is then a count of fours), see byFours.
template <bool Wide> __global__ void geluTanhMulDevice(Ref gate, Ref up, MutRef y, int64_t n) {
  for (int64_t i = globalThread(); i < n; i += gridStride()) {
    if constexpr (Wide) {
      float4 g = loadFloat4(gate.data, gate.dtype, i), u = loadFloat4(up.data, up.dtype, i);
      storeFloat4(y.data, y.dtype, i,
                  {geluTanhMul(g.x, u.x), geluTanhMul(g.y, u.y), geluTanhMul(g.z, u.z),
                   geluTanhMul(g.w, u.w)});
    } else {
      storeFloat(y.data, y.dtype, i,
                 geluTanhMul(loadFloat(gate.data, gate.dtype, i), loadFloat(up.data, up.dtype, i)));
    }
  }
}

template <bool Wide>
__global__ void geluTanhMulGradDevice(Ref gate, Ref up, Ref dy, MutRef dgate, MutRef dup,
                                      int64_t n) {
  for (int64_t i = globalThread(); i < n; i += gridStride()) {
    if constexpr (Wide) {
      float4 g = loadFloat4(gate.data, gate.dtype, i), u = loadFloat4(up.data, up.dtype, i),
             d = loadFloat4(dy.data, dy.dtype, i);
      float2 a = geluTanhMulGrad(g.x, u.x, d.x), b = geluTanhMulGrad(g.y, u.y, d.y),
             c = geluTanhMulGrad(g.z, u.z, d.z), e = geluTanhMulGrad(g.w, u.w, d.w);
      storeFloat4(dgate.data, dgate.dtype, i, {a.x, b.x, c.x, e.x});
      storeFloat4(dup.data, dup.dtype, i, {a.y, b.y, c.y, e.y});
    } else {
      float2 r = geluTanhMulGrad(loadFloat(gate.data, gate.dtype, i),
                                 loadFloat(up.data, up.dtype, i), loadFloat(dy.data, dy.dtype, i));
      storeFloat(dgate.data, dgate.dtype, i, r.x);
      storeFloat(dup.data, dup.dtype, i, r.y);
    }
  }
}

//===----------------------------------------------------------------------===//
// Kernels
//===----------------------------------------------------------------------===//

template <Binary Op> Status binaryKernelHost(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  G3RT_RETURN_IF_ERROR(
      checkFloatOperands(args, {&args.inputs[0], &args.inputs[1], &args.outputs[0]}));
  int64_t n = args.outputs[0].numel();
  if (n == 0)
    return Status();
  cudaStream_t stream = contextOf(args).stream;
  if (byFours(n, {&args.inputs[0], &args.inputs[1], &args.outputs[0]}))
    binaryKernel4<Op><<<cappedGrid(n / 4), kThreads, 0, stream>>>(
        in(args.inputs[0]), in(args.inputs[1]), out(args.outputs[0]), n / 4);
  else
    binaryKernel<Op><<<cappedGrid(n), kThreads, 0, stream>>>(in(args.inputs[0]), in(args.inputs[1]),
                                                             out(args.outputs[0]), n);
  G3RT_CUDA_CHECK_LAUNCH(args, Op == Binary::Add ? "add" : "mul");
  return Status();
}

} // namespace

Status addKernel(const KernelArgs &args) { return binaryKernelHost<Binary::Add>(args); }

Status mulKernel(const KernelArgs &args) { return binaryKernelHost<Binary::Mul>(args); }

Status scaleKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 1, 1));
  G3RT_RETURN_IF_ERROR(checkFloatOperands(args, {&args.inputs[0], &args.outputs[0]}));
  double factor;
  G3RT_RETURN_IF_ERROR(args.requireFloat("factor", factor));
  int64_t n = args.outputs[0].numel();
  if (n == 0)
    return Status();
  cudaStream_t stream = contextOf(args).stream;
  if (byFours(n, {&args.inputs[0], &args.outputs[0]}))
    scaleKernel4<<<cappedGrid(n / 4), kThreads, 0, stream>>>(
        in(args.inputs[0]), out(args.outputs[0]), float(factor), n / 4);
  else
    scaleKernelDevice<<<cappedGrid(n), kThreads, 0, stream>>>(
        in(args.inputs[0]), out(args.outputs[0]), float(factor), n);
  G3RT_CUDA_CHECK_LAUNCH(args, "scale");
  return Status();
}

namespace {

Status convertElements(const KernelArgs &args, const TensorView &x, const TensorView &y) {
  if (x.numel() != y.numel())
    return args.fail("element count mismatch: " + shapeString(x.shape) + " vs " +
                     shapeString(y.shape));
  cudaStream_t stream = contextOf(args).stream;
  int64_t n = y.numel();
  if (x.dtype == y.dtype) {
    if (x.data != y.data && y.bytes() > 0) {
      cudaError_t e = cudaMemcpyAsync(y.data, x.data, y.bytes(), cudaMemcpyDeviceToDevice, stream);
      if (e != cudaSuccess)
        return cudaFailure(args, e, "copying");
    }
    return Status();
  }
  if (isInteger(x.dtype) && isInteger(y.dtype)) {
    if (n > 0) {
      convertIntKernel<<<cappedGrid(n), kThreads, 0, stream>>>(in(x), out(y), n);
      G3RT_CUDA_CHECK_LAUNCH(args, "converting integers");
    }
    return Status();
  }
  if (!isFloat(x.dtype) || !isFloat(y.dtype))
    return args.fail("cannot convert " + std::string(dtypeName(x.dtype)) + " to " +
                     std::string(dtypeName(y.dtype)));
  if (n > 0 && byFours(n, {&x, &y})) {
    convertFloatKernel4<<<cappedGrid(n / 4), kThreads, 0, stream>>>(in(x), out(y), n / 4);
    G3RT_CUDA_CHECK_LAUNCH(args, "converting");
    return Status();
  }
  if (n > 0) {
    convertFloatKernel<<<cappedGrid(n), kThreads, 0, stream>>>(in(x), out(y), n);
    G3RT_CUDA_CHECK_LAUNCH(args, "converting");
  }
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

/// Device-to-device copies between `whole` and its consecutive row blocks,
/// in stream order.
Status copyRowBlocks(const KernelArgs &args, const TensorView &whole,
                     const std::vector<TensorView> &parts, bool intoParts) {
  char *base = static_cast<char *>(whole.data);
  cudaStream_t stream = contextOf(args).stream;
  for (const TensorView &part : parts) {
    void *dst = intoParts ? part.data : static_cast<void *>(base);
    const void *src = intoParts ? static_cast<const void *>(base) : part.data;
    if (part.bytes() > 0) {
      cudaError_t e = cudaMemcpyAsync(dst, src, part.bytes(), cudaMemcpyDeviceToDevice, stream);
      if (e != cudaSuccess)
        return cudaFailure(args, e, "copying a block of rows");
    }
    base += part.bytes();
  }
  return Status();
}

} // namespace

Status splitRowsKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkSplitRows(args));
  return copyRowBlocks(args, args.inputs[0], args.outputs, /*intoParts=*/true);
}

Status concatRowsKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkConcatRows(args));
  return copyRowBlocks(args, args.outputs[0], args.inputs, /*intoParts=*/false);
}

Status fillKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 0, 1));
  double value;
  G3RT_RETURN_IF_ERROR(args.requireFloat("value", value));
  const TensorView &y = args.outputs[0];
  int64_t n = y.numel();
  cudaStream_t stream = contextOf(args).stream;
  if (isInteger(y.dtype)) {
    if (value != std::floor(value))
      return args.fail("value " + std::to_string(value) + " is not an integer but the output is " +
                       std::string(dtypeName(y.dtype)));
    if (n > 0) {
      fillIntKernel<<<cappedGrid(n), kThreads, 0, stream>>>(out(y), int64_t(value), n);
      G3RT_CUDA_CHECK_LAUNCH(args, "fill");
    }
    return Status();
  }
  if (!isFloat(y.dtype))
    return args.fail("unsupported output type " + std::string(dtypeName(y.dtype)));
  if (n > 0) {
    fillFloatKernel<<<cappedGrid(n), kThreads, 0, stream>>>(out(y), float(value), n);
    G3RT_CUDA_CHECK_LAUNCH(args, "fill");
  }
  return Status();
}

Status randomUniformKernel(const KernelArgs &args) {
  uint32_t stream;
  double low, high;
  G3RT_RETURN_IF_ERROR(checkRandomUniform(args, stream, low, high));
  const TensorView &key = args.inputs[0], &y = args.outputs[0];
  int64_t n = y.numel();
  if (n == 0)
    return Status();
  if (y.dtype == DType::F32 && byFours(n, {&y}))
    randomUniformDevice4<<<cappedGrid(n / 4), kThreads, 0, contextOf(args).stream>>>(
        static_cast<const int64_t *>(key.data), stream, low, high - low,
        static_cast<float4 *>(y.data), n / 4);
  else
    randomUniformDevice<<<cappedGrid((n + 3) / 4), kThreads, 0, contextOf(args).stream>>>(
        static_cast<const int64_t *>(key.data), stream, low, high - low, out(y), n);
  G3RT_CUDA_CHECK_LAUNCH(args, "random_uniform");
  return Status();
}

Status dropoutKernel(const KernelArgs &args) {
  double p;
  G3RT_RETURN_IF_ERROR(checkDropout(args, p));
  int64_t n = args.outputs[0].numel();
  if (n == 0)
    return Status();
  // As on the CPU: the threshold is compared in fp32 and, with p = 1, the
  // infinite scale is never applied (u < 1 always).
  dropoutDevice<<<cappedGrid(n), kThreads, 0, contextOf(args).stream>>>(
      in(args.inputs[0]), in(args.inputs[1]), out(args.outputs[0]), float(p), dropoutScale(p), n);
  G3RT_CUDA_CHECK_LAUNCH(args, "dropout");
  return Status();
}

Status dropoutMaskKernel(const KernelArgs &args) {
  uint32_t stream;
  double p;
  G3RT_RETURN_IF_ERROR(checkDropoutMask(args, stream, p));
  const int64_t words = args.outputs[0].numel();
  if (words == 0)
    return Status();
  dropoutMaskDevice<<<cappedGrid(words), kThreads, 0, contextOf(args).stream>>>(
      static_cast<const int64_t *>(args.inputs[0].data), stream,
      static_cast<uint32_t *>(args.outputs[0].data), float(p), words);
  G3RT_CUDA_CHECK_LAUNCH(args, "dropout_mask");
  return Status();
}

namespace {

/// Launches a keyed elementwise kernel of x -> y over n > 0 elements, a
/// thread per Philox block: `vector(tag)` with `tag::value` the type (bf16
/// or f32) where x and y share it and are 16-byte aligned, else `generic()`;
/// each is given the grid, the stream and the key.
template <typename Vector, typename Generic>
void launchKeyed(const KernelArgs &args, int64_t n, Vector vector, Generic generic) {
  const TensorView &x = args.inputs[0], &y = args.outputs[0];
  const auto *key = static_cast<const int64_t *>(args.inputs[1].data);
  const unsigned grid = cappedGrid((n + 3) / 4);
  cudaStream_t cs = contextOf(args).stream;
  const bool aligned = x.dtype == y.dtype && aligned16(x) && aligned16(y);
  if (aligned && x.dtype == DType::BF16)
    vector(std::integral_constant<DType, DType::BF16>(), grid, cs, key);
  else if (aligned && x.dtype == DType::F32)
    vector(std::integral_constant<DType, DType::F32>(), grid, cs, key);
  else
    generic(grid, cs, key);
}

} // namespace

Status keyedDropoutKernel(const KernelArgs &args) {
  uint32_t stream;
  double p;
  G3RT_RETURN_IF_ERROR(checkKeyedDropout(args, stream, p));
  int64_t n = args.outputs[0].numel();
  if (n == 0)
    return Status();
  const TensorView &x = args.inputs[0], &y = args.outputs[0];
  const float threshold = float(p), scale = dropoutScale(p);
  launchKeyed(
      args, n,
      [&](auto type, unsigned grid, cudaStream_t cs, const int64_t *key) {
        keyedDropoutVecDevice<decltype(type)::value>
            <<<grid, kThreads, 0, cs>>>(x.data, key, stream, y.data, threshold, scale, n);
      },
      [&](unsigned grid, cudaStream_t cs, const int64_t *key) {
        keyedDropoutDevice<<<grid, kThreads, 0, cs>>>(in(x), key, stream, out(y), threshold, scale,
                                                      n);
      });
  G3RT_CUDA_CHECK_LAUNCH(args, "keyed_dropout");
  return Status();
}

Status keyedJitterKernel(const KernelArgs &args) {
  uint32_t stream;
  double low, high;
  G3RT_RETURN_IF_ERROR(checkKeyedJitter(args, stream, low, high));
  int64_t n = args.outputs[0].numel();
  if (n == 0)
    return Status();
  const TensorView &x = args.inputs[0], &y = args.outputs[0];
  launchKeyed(
      args, n,
      [&](auto type, unsigned grid, cudaStream_t cs, const int64_t *key) {
        keyedJitterVecDevice<decltype(type)::value>
            <<<grid, kThreads, 0, cs>>>(x.data, key, stream, y.data, low, high - low, n);
      },
      [&](unsigned grid, cudaStream_t cs, const int64_t *key) {
        keyedJitterDevice<<<grid, kThreads, 0, cs>>>(in(x), key, stream, out(y), low, high - low,
                                                     n);
      });
  G3RT_CUDA_CHECK_LAUNCH(args, "keyed_jitter");
  return Status();
}

Status geluTanhMulKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  G3RT_RETURN_IF_ERROR(
      checkFloatOperands(args, {&args.inputs[0], &args.inputs[1], &args.outputs[0]}));
  int64_t n = args.outputs[0].numel();
  if (n == 0)
    return Status();
  cudaStream_t stream = contextOf(args).stream;
  if (byFours(n, {&args.inputs[0], &args.inputs[1], &args.outputs[0]}))
    geluTanhMulDevice<true><<<cappedGrid(n / 4), kThreads, 0, stream>>>(
        in(args.inputs[0]), in(args.inputs[1]), out(args.outputs[0]), n / 4);
  else
    geluTanhMulDevice<false><<<cappedGrid(n), kThreads, 0, stream>>>(
        in(args.inputs[0]), in(args.inputs[1]), out(args.outputs[0]), n);
  G3RT_CUDA_CHECK_LAUNCH(args, "gelu_tanh_mul");
  return Status();
}

Status geluTanhMulGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 2));
  G3RT_RETURN_IF_ERROR(checkFloatOperands(args, {&args.inputs[0], &args.inputs[1], &args.inputs[2],
                                                 &args.outputs[0], &args.outputs[1]}));
  int64_t n = args.outputs[0].numel();
  if (n == 0)
    return Status();
  cudaStream_t stream = contextOf(args).stream;
  const bool wide = byFours(
      n, {&args.inputs[0], &args.inputs[1], &args.inputs[2], &args.outputs[0], &args.outputs[1]});
  (wide ? geluTanhMulGradDevice<true>
        : geluTanhMulGradDevice<false>)<<<cappedGrid(wide ? n / 4 : n), kThreads, 0, stream>>>(
      in(args.inputs[0]), in(args.inputs[1]), in(args.inputs[2]), out(args.outputs[0]),
      out(args.outputs[1]), wide ? n / 4 : n);
  G3RT_CUDA_CHECK_LAUNCH(args, "gelu_tanh_mul_grad");
  return Status();
}

} // namespace g3rt::cuda
