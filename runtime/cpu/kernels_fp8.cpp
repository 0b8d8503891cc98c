//===- kernels_fp8.cpp - e4m3 weights and products on the CPU -------------===//
//
// The reference of fp8_base (docs/kernels.md, "e4m3 products"): a row is
// quantized with scale max|row| / 448, each element rounded to e4m3 after
// multiplying by 448 / max|row|; a product multiplies the e4m3 values of
// both operands in fp32 and scales each result by its row's and its
// column's scale. The CUDA backend quantizes the same way, element for
// element; only the summation order of its products differs.
//
//===----------------------------------------------------------------------===//

#include "runtime/cpu/cpu_kernels.h"
#include "runtime/cpu/dense_ops.h"
#include "runtime/kernels/fp8_checks.h"

#include <cmath>
#include <vector>

namespace g3rt::cpu {

using namespace checks;

namespace {

/// Quantizes the `n` values of `src` into e4m3 codes at codes[0, n);
/// returns the row's scale.
float quantizeRow(const float *src, int64_t n, uint8_t *codes) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i)
    amax = std::max(amax, std::fabs(src[i]));
  if (amax == 0.0f) {
    std::fill(codes, codes + n, uint8_t(0));
    return 1.0f;
  }
  const float inv = kE4M3Max / amax;
  for (int64_t i = 0; i < n; ++i)
    codes[i] = floatToE4M3(src[i] * inv);
  return amax / kE4M3Max;
}

/// Y[rows, N] = (q(X)·Wqᵀ) · s_x[m] · ws[n], X [rows, K] quantized by row
/// here, Wq [N, K] the e4m3 weight's values and ws its scales.
void scaledProduct(const float *X, int64_t rows, int64_t K, const float *Wq, const float *ws,
                   int64_t N, float *Y) {
  if (rows == 0)
    return;
  std::vector<float> Xq(static_cast<size_t>(rows * K)), sx(static_cast<size_t>(rows));
  parallelFor(
      rows,
      [&](int64_t r0, int64_t r1) {
        std::vector<uint8_t> codes(static_cast<size_t>(K));
        for (int64_t m = r0; m < r1; ++m) {
          sx[size_t(m)] = quantizeRow(X + m * K, K, codes.data());
          for (int64_t k = 0; k < K; ++k)
            Xq[size_t(m * K + k)] = e4m3ToFloat(codes[size_t(k)]);
        }
      },
      std::max<int64_t>(1, kElementGrain / std::max<int64_t>(K, 1)));
  gemmNT(Xq.data(), K, Wq, K, Y, N, rows, N, K);
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t n = 0; n < N; ++n)
      Y[m * N + n] = Y[m * N + n] * sx[size_t(m)] * ws[n];
}

} // namespace

Status quantizeFp8Kernel(const KernelArgs &args) {
  QuantizeShape s;
  G3RT_RETURN_IF_ERROR(checkQuantizeFp8(args, s));
  uint8_t *codes = static_cast<uint8_t *>(args.outputs[0].data);
  float *scales = args.outputs[1].f32();
  const TensorView &w = args.inputs[0];
  const int64_t N = s.rows, K = s.cols;
  // Frozen weights are quantized when a run loads them: billions of
  // elements, so rows run in parallel, each widened to fp32 on its own
  // (the whole weight in fp32 would be twice its bytes again).
  if (!s.transpose) {
    parallelFor(
        s.batches * N,
        [&](int64_t r0, int64_t r1) {
          std::vector<float> row(static_cast<size_t>(K));
          for (int64_t r = r0; r < r1; ++r) {
            loadElements(w, r * K, K, row.data());
            scales[r] = quantizeRow(row.data(), K, codes + r * K);
          }
        },
        std::max<int64_t>(1, kElementGrain / std::max<int64_t>(K, 1)));
    return Status();
  }
  // Transposed, row k of a batch's result is column k of its weight: a task
  // gathers kColumns columns (a 64-byte line of bf16) along whole rows of
  // the weight, so that each of its lines is read once, not once a column.
  constexpr int64_t kColumns = 32;
  const int64_t blocks = (K + kColumns - 1) / kColumns;
  parallelFor(s.batches * blocks, [&](int64_t t0, int64_t t1) {
    std::vector<float> piece(kColumns), columns(static_cast<size_t>(kColumns * N));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / blocks, k0 = (t % blocks) * kColumns;
      const int64_t width = std::min(kColumns, K - k0);
      for (int64_t n = 0; n < N; ++n) {
        loadElements(w, (b * N + n) * K + k0, width, piece.data());
        for (int64_t j = 0; j < width; ++j)
          columns[size_t(j * N + n)] = piece[size_t(j)];
      }
      for (int64_t j = 0; j < width; ++j) {
        const int64_t r = b * K + k0 + j;
        scales[r] = quantizeRow(columns.data() + j * N, N, codes + r * N);
      }
    }
  });
  return Status();
}

Status scaledLinearKernel(const KernelArgs &args) {
  ScaledShape s;
  G3RT_RETURN_IF_ERROR(checkScaledLinear(args, s));
  std::vector<float> X = widen(args.inputs[0]), Wq = widen(args.inputs[1]);
  std::vector<float> A = readAddend(s.addend);
  FloatOutput Y(args.outputs[0]);
  scaledProduct(X.data(), s.M, s.K, Wq.data(), args.inputs[2].f32(), s.N, Y.data());
  addAddend(A, Y);
  Y.commit();
  return Status();
}

Status scaledExpertLinearKernel(const KernelArgs &call) {
  SplitProduct split;
  G3RT_RETURN_IF_ERROR(splitProductDropout(call, split));
  const KernelArgs &args = split.args(call);
  ScaledShape s;
  G3RT_RETURN_IF_ERROR(checkScaledExpertLinear(args, s));
  G3RT_RETURN_IF_ERROR(checkScaledTermDropout(args, split.drop, s));
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readExpertOffsets(args, args.inputs[1], s.E, s.M, offsets));
  std::vector<float> X = widen(args.inputs[0]), Wq = widen(args.inputs[2]);
  std::vector<float> A = readAddend(s.addend);
  FloatOutput Y(args.outputs[0]);
  Y.zero();
  const float *ws = args.inputs[3].f32();
  for (int64_t e = 0; e < s.E; ++e) {
    const int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    scaledProduct(X.data() + r0 * s.K, rows, s.K, Wq.data() + e * s.N * s.K, ws + e * s.N, s.N,
                  Y.data() + r0 * s.N);
  }
  addLowRank(s.extras, offsets, !s.lowTransposed, Y, s.N, split.drop, args.outputs[0].dtype);
  addAddend(A, Y);
  Y.commit();
  return Status();
}

} // namespace g3rt::cpu
