//===- kernels_optimizer.cpp - clipping, schedule and AdamW CPU kernels ---===//
//
// The fp32 reference of global_norm, clip_scale, lr_schedule and adamw
// (docs/kernels.md, "Optimizer"), following what HF Trainer + torch do for the
// SFT recipe: torch's clip_grad_norm_ coefficient, HF's warmup schedules
// (evaluated in double like their Python lambdas) and torch.optim.AdamW with
// its scalar bias corrections computed in double and applied in fp32.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/parallel.h"
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/kernels/kernel_checks.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace g3rt::cpu {

using namespace checks;

namespace {

Status readCount(const KernelArgs &args, const TensorView &t, const char *what, int64_t &out) {
  G3RT_RETURN_IF_ERROR(checkCount(args, t, what));
  out = t.dtype == DType::I64 ? t.i64()[0] : int64_t(t.i32()[0]);
  return Status();
}

//===----------------------------------------------------------------------===//
// global_norm, clip_scale
//===----------------------------------------------------------------------===//

// Partial sums over blocks of this many elements, fixed independently of the
// thread count and added in block order, keep the norm bit-reproducible.
constexpr int64_t kNormBlock = 1 << 16;

} // namespace

Status globalNormKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkGlobalNorm(args));

  double total = 0;
  for (const TensorView &g : args.inputs) {
    int64_t n = g.numel(), blocks = (n + kNormBlock - 1) / kNormBlock;
    std::vector<double> partial(size_t(blocks), 0.0);
    parallelFor(blocks, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        double s = 0;
        for (int64_t i = blk * kNormBlock, e = std::min(n, (blk + 1) * kNormBlock); i < e; ++i) {
          double x = g.load(i);
          s += x * x;
        }
        partial[size_t(blk)] = s;
      }
    });
    for (double s : partial)
      total += s;
  }
  args.outputs[0].store(0, float(std::sqrt(total)));
  return Status();
}

Status clipScaleKernel(const KernelArgs &args) {
  if (args.inputs.size() != 1 || args.outputs.size() != 1)
    return args.fail("expects 1 input (norm) and 1 output");
  G3RT_RETURN_IF_ERROR(checkFloatScalar(args, args.inputs[0], "norm"));
  G3RT_RETURN_IF_ERROR(checkFloatScalar(args, args.outputs[0], "output"));
  double maxNorm = 0;
  G3RT_RETURN_IF_ERROR(args.requireFloat("max_norm", maxNorm));
  float c = 1.0f;
  if (maxNorm > 0) {
    // torch divides fp32 tensors: max_norm / (total_norm + 1e-6), clamped to 1.
    float norm = args.inputs[0].load(0);
    c = std::min(1.0f, float(maxNorm) / (norm + 1e-6f));
  }
  args.outputs[0].store(0, c);
  return Status();
}

//===----------------------------------------------------------------------===//
// lr_schedule
//===----------------------------------------------------------------------===//

Status lrScheduleKernel(const KernelArgs &args) {
  if (args.inputs.size() != 3 || args.outputs.size() != 1)
    return args.fail("expects 3 inputs (step, total_steps, warmup_steps) and 1 output");
  int64_t t = 0, S = 0, w = 0;
  G3RT_RETURN_IF_ERROR(readCount(args, args.inputs[0], "step", t));
  G3RT_RETURN_IF_ERROR(readCount(args, args.inputs[1], "total_steps", S));
  G3RT_RETURN_IF_ERROR(readCount(args, args.inputs[2], "warmup_steps", w));
  G3RT_RETURN_IF_ERROR(checkFloatScalar(args, args.outputs[0], "output"));
  double lr = 0;
  G3RT_RETURN_IF_ERROR(args.requireFloat("learning_rate", lr));
  auto kind = args.attrs ? args.attrs->getString("kind") : std::nullopt;
  if (!kind)
    return args.fail("missing string attribute 'kind'");

  // `step` counts updates already taken, so step 0 inside the warmup gives
  // factor 0: HF's scheduler.step() runs after optimizer.step().
  double f = 1;
  if (*kind == "constant") {
    f = 1;
  } else if (*kind == "cosine" || *kind == "linear" || *kind == "constant_with_warmup") {
    if (t < w) {
      f = double(t) / double(std::max<int64_t>(1, w));
    } else if (*kind == "cosine") {
      const double pi = 3.14159265358979323846;
      double progress = double(t - w) / double(std::max<int64_t>(1, S - w));
      f = std::max(0.0, 0.5 * (1.0 + std::cos(pi * progress)));
    } else if (*kind == "linear") {
      f = std::max(0.0, double(S - t) / double(std::max<int64_t>(1, S - w)));
    } else {
      f = 1;
    }
  } else {
    return args.fail("unknown schedule kind '" + std::string(*kind) +
                     "' (expected cosine, linear, constant or constant_with_warmup)");
  }
  args.outputs[0].store(0, float(lr * f));
  return Status();
}

//===----------------------------------------------------------------------===//
// adamw
//===----------------------------------------------------------------------===//

Status adamwKernel(const KernelArgs &args) {
  size_t n = 0;
  AdamHyper h;
  G3RT_RETURN_IF_ERROR(checkAdamW(args, n, h));
  const size_t scalars = 4 * n;
  int64_t step = 0;
  G3RT_RETURN_IF_ERROR(readCount(args, args.inputs[scalars], "step", step));
  if (step < 0)
    return args.fail("step must not be negative, got " + std::to_string(step));

  // Scalar factors in double (torch computes them on Python floats), each
  // rounded once to fp32 where torch hands it to an fp32 tensor op.
  const double lr = args.inputs[scalars + 1].load(0);
  const double t = double(step + 1);
  const double bc1 = 1.0 - std::pow(h.beta1, t), bc2 = 1.0 - std::pow(h.beta2, t);
  const float decay = float(1.0 - lr * h.wd);
  const float stepSize = float(lr / bc1);
  const float bc2Sqrt = float(std::sqrt(bc2));
  const float b1 = float(h.beta1), b2 = float(h.beta2), c1 = float(1.0 - h.beta1),
              c2 = float(1.0 - h.beta2), epsF = float(h.eps);
  const float gradScale = args.inputs[scalars + 2].load(0);

  for (size_t k = 0; k < n; ++k) {
    const float *P = args.inputs[k].f32(), *G = args.inputs[n + k].f32(),
                *M = args.inputs[2 * n + k].f32(), *Vv = args.inputs[3 * n + k].f32();
    float *P1 = args.outputs[k].f32(), *M1 = args.outputs[n + k].f32(),
          *V1 = args.outputs[2 * n + k].f32();
    // Outputs may alias p, m, v: every element is read completely before
    // any of its outputs is written, and elements are independent.
    parallelFor(
        args.inputs[k].numel(),
        [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            float g = G[i] * gradScale;
            float pi = P[i] * decay;
            float mi = b1 * M[i] + c1 * g;
            float vi = b2 * Vv[i] + c2 * (g * g);
            float denom = std::sqrt(vi) / bc2Sqrt + epsF;
            pi = pi - stepSize * (mi / denom);
            P1[i] = pi;
            M1[i] = mi;
            V1[i] = vi;
          }
        },
        /*grain=*/4096);
  }
  return Status();
}

} // namespace g3rt::cpu
