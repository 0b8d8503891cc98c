//===- kernels_norms.cpp - RMSNorm and the fused norm CPU kernels ---------===//
//
// The fp32 reference of Gemma's RMSNorm and its gradient, and of the fused
// norms of --g3moe-fuse-norms (docs/kernels.md, "Norms"): add_rms_norm,
// rms_norm_rope and rms_norm_rope_grad are defined as the ops they fuse, with
// the intermediate rounded to its element type in between. The reference
// runs exactly those kernels on an intermediate buffer, so a fused step
// computes what the unfused one did, to the bit.
//
//===----------------------------------------------------------------------===//

#include "runtime/cpu/cpu_kernels.h"
#include "runtime/cpu/dense_ops.h"
#include "runtime/kernels/dense_checks.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace g3rt::cpu {

using namespace checks;

//===----------------------------------------------------------------------===//
// RMSNorm
//===----------------------------------------------------------------------===//

namespace {

/// 1 / sqrt(mean(x²) + eps) of one row, the sum of squares in double.
inline float inverseRms(const float *x, int64_t D, double eps) {
  double ss = 0;
  for (int64_t d = 0; d < D; ++d)
    ss += double(x[d]) * x[d];
  return float(1.0 / std::sqrt(ss / double(D) + eps));
}

} // namespace

Status rmsNormKernel(const KernelArgs &args) {
  double eps;
  NormShape shape;
  G3RT_RETURN_IF_ERROR(checkRmsNorm(args, eps, shape));
  const int64_t D = shape.D, rows = shape.rows;
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &y = args.outputs[0];
  std::vector<float> X = widen(x), gain = widen(w);
  for (float &g : gain)
    g += 1.0f;
  FloatOutput out(y);
  parallelFor(
      rows,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const float *xr = X.data() + r * D;
          float *yr = out.data() + r * D;
          float inv = inverseRms(xr, D, eps);
          for (int64_t d = 0; d < D; ++d)
            yr[d] = (xr[d] * inv) * gain[size_t(d)];
        }
      },
      std::max<int64_t>(1, kElementGrain / D));
  out.commit();
  return Status();
}

Status rmsNormGradKernel(const KernelArgs &args) {
  double eps;
  NormShape shape;
  G3RT_RETURN_IF_ERROR(checkRmsNormGrad(args, eps, shape));
  const int64_t D = shape.D, rows = shape.rows;
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &dy = args.inputs[2];
  const TensorView &dx = args.outputs[0], &dw = args.outputs[1];
  std::vector<float> X = widen(x), G = widen(dy), gain = widen(w);
  for (float &g : gain)
    g += 1.0f;
  // Read before input_grad is written: the two may share a buffer.
  const std::vector<float> addend = shape.addend ? widen(*shape.addend) : std::vector<float>();

  // The weight gradient sums over rows: each fixed block of rows gets its
  // own partial sum, and the blocks are added in order afterwards, so the
  // result is the same for any thread count.
  const int64_t blockRows = 64;
  int64_t blocks = (rows + blockRows - 1) / blockRows;
  std::vector<double> partial(size_t(blocks * D), 0.0);
  FloatOutput dxOut(dx);
  parallelFor(
      blocks,
      [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          double *dwPart = partial.data() + b * D;
          for (int64_t r = b * blockRows, rEnd = std::min(rows, r + blockRows); r < rEnd; ++r) {
            const float *xr = X.data() + r * D, *gr = G.data() + r * D;
            float *dxr = dxOut.data() + r * D;
            float inv = inverseRms(xr, D, eps);
            double dotGX = 0;
            for (int64_t d = 0; d < D; ++d) {
              float xhat = xr[d] * inv;
              dotGX += double(gr[d] * gain[size_t(d)]) * xhat;
              dwPart[d] += double(gr[d]) * xhat;
            }
            float mean = float(dotGX / double(D));
            for (int64_t d = 0; d < D; ++d) {
              float xhat = xr[d] * inv;
              float v = (gr[d] * gain[size_t(d)] - xhat * mean) * inv;
              dxr[d] = addend.empty() ? v : addend[size_t(r * D + d)] + v;
            }
          }
        }
      },
      std::max<int64_t>(1, kElementGrain / (blockRows * D)));
  dxOut.commit();
  for (int64_t d = 0; d < D; ++d) {
    double sum = 0;
    for (int64_t b = 0; b < blocks; ++b)
      sum += partial[size_t(b * D + d)];
    dw.store(d, float(sum));
  }
  return Status();
}

//===----------------------------------------------------------------------===//
// Fused norms: add_rms_norm, rms_norm_rope, rms_norm_rope_grad
//===----------------------------------------------------------------------===//

namespace {

/// A scratch tensor shaped and typed like `like`.
struct Scratch {
  std::vector<uint64_t> storage;
  TensorView view;
  explicit Scratch(const TensorView &like)
      : storage((like.bytes() + 7) / 8), view{storage.data(), like.dtype, like.shape} {}
};

} // namespace

Status addRmsNormKernel(const KernelArgs &args) {
  double eps;
  NormShape shape;
  G3RT_RETURN_IF_ERROR(checkAddRmsNorm(args, eps, shape));
  const TensorView &sum = args.outputs[0];
  G3RT_RETURN_IF_ERROR(runAsPart(args, findCpuKernel("add"), "add",
                                 {args.inputs[0], args.inputs[1]}, {sum}, nullptr));
  return runAsPart(args, findCpuKernel("rms_norm"), "rms_norm", {sum, args.inputs[2]},
                   {args.outputs[1]}, args.attrs);
}

Status rmsNormRopeKernel(const KernelArgs &args) {
  double eps;
  RopeShape r;
  G3RT_RETURN_IF_ERROR(checkRmsNormRope(args, eps, r));
  Scratch normed(args.inputs[0]);
  G3RT_RETURN_IF_ERROR(runAsPart(args, findCpuKernel("rms_norm"), "rms_norm",
                                 {args.inputs[0], args.inputs[1]}, {normed.view}, args.attrs));
  return runAsPart(args, findCpuKernel("rope"), "rope", {normed.view, args.inputs[2]},
                   {args.outputs[0]}, args.attrs);
}

Status rmsNormRopeGradKernel(const KernelArgs &args) {
  double eps;
  RopeShape r;
  G3RT_RETURN_IF_ERROR(checkRmsNormRopeGrad(args, eps, r));
  KernelAttrs back = *args.attrs;
  back.set("transpose", AttrValue::ofBool(true));
  Scratch rotated(args.inputs[3]);
  G3RT_RETURN_IF_ERROR(runAsPart(args, findCpuKernel("rope"), "rope",
                                 {args.inputs[3], args.inputs[2]}, {rotated.view}, &back));
  return runAsPart(args, findCpuKernel("rms_norm_grad"), "rms_norm_grad",
                   {args.inputs[0], args.inputs[1], rotated.view},
                   {args.outputs[0], args.outputs[1]}, args.attrs);
}

} // namespace g3rt::cpu
