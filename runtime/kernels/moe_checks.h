//===- moe_checks.h - argument checks of the MoE kernels --------*- C++ -*-===//
//
// The host-side checks of the routers, their gradients and the dispatch /
// combine permutations and the auxiliary losses (docs/kernels.md,
// "Routers", "Dispatch and combine", "Auxiliary losses"), shared by the CPU
// and CUDA backends so that both accept the same calls with the same
// messages. Index values (expert ids, slots) are checked
// by each backend where the data lives.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_KERNELS_MOE_CHECKS_H
#define G3MOE_RUNTIME_KERNELS_MOE_CHECKS_H

#include "runtime/kernels/kernel_checks.h"

namespace g3rt::checks {

/// `t` read as a [rows, cols] matrix: rank >= 1, cols in its last
/// dimension, rows in the others.
inline Status checkMatrixShape(const KernelArgs &args, const TensorView &t, const char *what,
                               int64_t rows, int64_t cols) {
  if (t.rank() < 1 || t.dim(-1) != cols || leadingRows(t) != rows)
    return args.fail(std::string(what) + " has shape " + shapeString(t.shape) + ", expected [" +
                     str(rows) + ", " + str(cols) + "]");
  return Status();
}

/// A float tensor read as a [rows, cols] matrix.
inline Status checkMatrix(const KernelArgs &args, const TensorView &t, const char *what,
                          int64_t rows, int64_t cols) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, t, what));
  return checkMatrixShape(args, t, what, rows, cols);
}

/// An i32 tensor read as a [rows, cols] matrix.
inline Status checkIndexMatrix(const KernelArgs &args, const TensorView &t, const char *what,
                               int64_t rows, int64_t cols) {
  G3RT_RETURN_IF_ERROR(checkI32(args, t, what));
  return checkMatrixShape(args, t, what, rows, cols);
}

/// A boolean attribute, false when absent.
inline bool flag(const KernelArgs &args, const char *name) {
  return args.attrs && args.attrs->getFlag(name);
}

/// A router call: N tokens, E experts, k experts chosen per token.
struct RouterShape {
  int64_t N = 0, E = 0, k = 0;
};

/// logits [..., E], a float tensor of rank >= 1; sets s.N and s.E.
inline Status checkRouterLogits(const KernelArgs &args, RouterShape &s) {
  const TensorView &logits = args.inputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, logits, "logits"));
  if (logits.rank() < 1)
    return args.fail("logits must have rank >= 1");
  s.E = logits.dim(-1);
  s.N = leadingRows(logits);
  return Status();
}

/// A router's outputs: weights [N, k] (float) and indices [N, k] (i32).
inline Status checkRouterOutputs(const KernelArgs &args, const RouterShape &s) {
  G3RT_RETURN_IF_ERROR(checkMatrix(args, args.outputs[0], "weights", s.N, s.k));
  return checkIndexMatrix(args, args.outputs[1], "indices", s.N, s.k);
}

/// sparsemixer_router: logits [, noise] → weights, indices (top-2).
inline Status checkSparseMixerRouter(const KernelArgs &args, double &epsilon, RouterShape &s) {
  if ((args.inputs.size() != 1 && args.inputs.size() != 2) || args.outputs.size() != 2)
    return args.fail("expected 1 or 2 inputs (logits [, noise]) and 2 outputs, got " +
                     std::to_string(args.inputs.size()) + " and " +
                     std::to_string(args.outputs.size()));
  G3RT_RETURN_IF_ERROR(args.requireFloat("epsilon", epsilon));
  G3RT_RETURN_IF_ERROR(checkRouterLogits(args, s));
  if (s.E < 2)
    return args.fail("SparseMixer needs at least 2 experts, got " + str(s.E));
  if (args.inputs.size() == 2) {
    G3RT_RETURN_IF_ERROR(checkFloat(args, args.inputs[1], "noise"));
    if (args.inputs[1].numel() != s.N * 2 * (s.E + 1))
      return args.fail("noise has shape " + shapeString(args.inputs[1].shape) + ", expected [" +
                       str(s.N) + ", 2, " + str(s.E + 1) + "]");
  }
  s.k = 2;
  return checkRouterOutputs(args, s);
}

/// softmax_topk_router: logits → weights, indices.
inline Status checkSoftmaxTopKRouter(const KernelArgs &args, bool &norm, RouterShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 1, 2));
  G3RT_RETURN_IF_ERROR(args.requireInt("top_k", s.k));
  norm = flag(args, "norm_topk_prob");
  G3RT_RETURN_IF_ERROR(checkRouterLogits(args, s));
  if (s.k < 1 || s.k > s.E)
    return args.fail("top_k " + str(s.k) + " is outside [1, " + str(s.E) + "]");
  return checkRouterOutputs(args, s);
}

/// The options of sigmoid_grouped_router.
struct SigmoidGroups {
  int64_t nGroup = 0, topkGroup = 0, groupSize = 0;
  double scaling = 1;
  bool norm = false;
};

/// sigmoid_grouped_router: logits, bias → weights, indices.
inline Status checkSigmoidGroupedRouter(const KernelArgs &args, SigmoidGroups &g, RouterShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 2));
  G3RT_RETURN_IF_ERROR(args.requireInt("top_k", s.k));
  G3RT_RETURN_IF_ERROR(args.requireInt("n_group", g.nGroup));
  G3RT_RETURN_IF_ERROR(args.requireInt("topk_group", g.topkGroup));
  G3RT_RETURN_IF_ERROR(args.requireFloat("routed_scaling_factor", g.scaling));
  g.norm = flag(args, "norm_topk_prob");
  const TensorView &bias = args.inputs[1];
  G3RT_RETURN_IF_ERROR(checkFloat(args, args.inputs[0], "logits"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, bias, "bias"));
  G3RT_RETURN_IF_ERROR(checkRouterLogits(args, s));
  if (bias.numel() != s.E)
    return args.fail("bias has shape " + shapeString(bias.shape) + ", expected [" + str(s.E) + "]");
  if (g.nGroup < 1 || s.E % g.nGroup != 0)
    return args.fail("n_group " + str(g.nGroup) + " does not divide " + str(s.E) + " experts");
  g.groupSize = s.E / g.nGroup;
  if (g.topkGroup < 1 || g.topkGroup > g.nGroup)
    return args.fail("topk_group " + str(g.topkGroup) + " is outside [1, " + str(g.nGroup) + "]");
  if (s.k < 1 || s.k > g.topkGroup * g.groupSize)
    return args.fail("top_k " + str(s.k) + " is outside [1, " + str(g.topkGroup * g.groupSize) +
                     "] (experts in the kept groups)");
  return checkRouterOutputs(args, s);
}

/// The tensors of a router gradient (logits, indices, grad → result), after
/// the caller checked the counts and read the attributes: indices [N, k]
/// with k = `fixedK` when positive, else read from indices; grad [N, k];
/// result [N, E].
inline Status checkRouterGrad(const KernelArgs &args, int64_t fixedK, RouterShape &s) {
  const TensorView &logits = args.inputs[0], &indices = args.inputs[1];
  G3RT_RETURN_IF_ERROR(checkFloat(args, logits, "logits"));
  if (fixedK > 0 ? logits.rank() < 1 : logits.rank() < 1 || indices.rank() < 1)
    return args.fail(fixedK > 0 ? "logits must have rank >= 1"
                                : "logits and indices must have rank >= 1");
  s.E = logits.dim(-1);
  s.N = leadingRows(logits);
  s.k = fixedK > 0 ? fixedK : indices.dim(-1);
  G3RT_RETURN_IF_ERROR(checkIndexMatrix(args, indices, "indices", s.N, s.k));
  G3RT_RETURN_IF_ERROR(checkMatrix(args, args.inputs[2], "grad", s.N, s.k));
  return checkMatrix(args, args.outputs[0], "result", s.N, s.E);
}

/// sparsemixer_router_grad: 3 inputs, 1 output, `epsilon`, the tensors.
inline Status checkSparseMixerRouterGrad(const KernelArgs &args, double &epsilon, RouterShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  G3RT_RETURN_IF_ERROR(args.requireFloat("epsilon", epsilon));
  return checkRouterGrad(args, 2, s);
}

/// softmax_topk_router_grad: 3 inputs, 1 output, `norm_topk_prob`, the
/// tensors.
inline Status checkSoftmaxTopKRouterGrad(const KernelArgs &args, bool &norm, RouterShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  norm = flag(args, "norm_topk_prob");
  return checkRouterGrad(args, 0, s);
}

/// sigmoid_grouped_router_grad: 3 inputs, 1 output, `routed_scaling_factor`,
/// `norm_topk_prob`, the tensors.
inline Status checkSigmoidGroupedRouterGrad(const KernelArgs &args, double &scaling, bool &norm,
                                            RouterShape &s) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  G3RT_RETURN_IF_ERROR(args.requireFloat("routed_scaling_factor", scaling));
  norm = flag(args, "norm_topk_prob");
  return checkRouterGrad(args, 0, s);
}

/// A permutation between N tokens × k choices and M = N·k expert rows of
/// width H, over E experts (dispatch only).
struct PermuteShape {
  int64_t N = 0, k = 0, M = 0, H = 0, E = 0;
};

/// moe_dispatch: x, indices → permuted, expert_offsets, slots.
inline Status checkMoEDispatch(const KernelArgs &args, PermuteShape &p) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 3));
  G3RT_RETURN_IF_ERROR(args.requireInt("num_experts", p.E));
  if (p.E < 1)
    return args.fail("num_experts must be positive, got " + str(p.E));
  const TensorView &x = args.inputs[0], &indices = args.inputs[1];
  G3RT_RETURN_IF_ERROR(checkFloat(args, x, "input"));
  if (x.rank() < 1 || indices.rank() < 1)
    return args.fail("input and indices must have rank >= 1");
  p.H = x.dim(-1);
  p.N = leadingRows(x);
  p.k = indices.dim(-1);
  p.M = p.N * p.k;
  G3RT_RETURN_IF_ERROR(checkIndexMatrix(args, indices, "indices", p.N, p.k));
  const TensorView &offsets = args.outputs[1];
  G3RT_RETURN_IF_ERROR(checkMatrix(args, args.outputs[0], "permuted", p.M, p.H));
  G3RT_RETURN_IF_ERROR(checkI32(args, offsets, "expert_offsets"));
  if (offsets.numel() != p.E + 1)
    return args.fail("expert_offsets has shape " + shapeString(offsets.shape) + ", expected [" +
                     str(p.E + 1) + "]");
  return checkIndexMatrix(args, args.outputs[2], "slots", p.N, p.k);
}

/// The gather of rows `from` [M, H] into [N, H] through slots [N, k] (the
/// shared part of moe_dispatch_grad, moe_combine and moe_combine_grad):
/// `from` and `to` (the tensor that fixes N and H) are floats, `fromWhat`
/// names `from` in messages.
inline Status checkGather(const KernelArgs &args, const TensorView &from, const char *fromWhat,
                          const TensorView &to, PermuteShape &p) {
  const TensorView &slots = args.inputs[1];
  if (from.rank() < 1 || to.rank() < 1 || slots.rank() < 1)
    return args.fail("operands must have rank >= 1");
  p.H = to.dim(-1);
  p.N = leadingRows(to);
  p.M = leadingRows(from);
  p.k = slots.dim(-1);
  if (from.dim(-1) != p.H)
    return args.fail(std::string(fromWhat) + " has shape " + shapeString(from.shape) +
                     ", expected rows of " + str(p.H));
  return checkIndexMatrix(args, slots, "slots", p.N, p.k);
}

/// moe_dispatch_grad: grad [M, H], slots → result [N, H].
inline Status checkMoEDispatchGrad(const KernelArgs &args, PermuteShape &p) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &dp = args.inputs[0], &dx = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, dp, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dx, "result"));
  return checkGather(args, dp, "grad", dx, p);
}

/// moe_combine: y [M, H], slots, weights [N, k] → result [N, H].
inline Status checkMoECombine(const KernelArgs &args, PermuteShape &p) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  const TensorView &y = args.inputs[0], &out = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, y, "input"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, out, "result"));
  G3RT_RETURN_IF_ERROR(checkGather(args, y, "input", out, p));
  return checkMatrix(args, args.inputs[2], "weights", p.N, p.k);
}

/// moe_combine_grad: y, slots, weights, grad [N, H] → input_grad [M, H],
/// weights_grad [N, k].
inline Status checkMoECombineGrad(const KernelArgs &args, PermuteShape &p) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 4, 2));
  const TensorView &y = args.inputs[0], &dout = args.inputs[3];
  G3RT_RETURN_IF_ERROR(checkFloat(args, y, "input"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dout, "grad"));
  G3RT_RETURN_IF_ERROR(checkGather(args, y, "input", dout, p));
  G3RT_RETURN_IF_ERROR(checkMatrix(args, args.inputs[2], "weights", p.N, p.k));
  G3RT_RETURN_IF_ERROR(checkMatrix(args, args.outputs[0], "input_grad", p.M, p.H));
  return checkMatrix(args, args.outputs[1], "weights_grad", p.N, p.k);
}

/// The first L inputs, one layer's router logits each: float, [N, E] for
/// one N, and E columns when E > 0.
inline Status checkLayerLogits(const KernelArgs &args, int64_t L, int64_t E, int64_t &N) {
  const TensorView &first = args.inputs[0];
  G3RT_RETURN_IF_ERROR(checkFloat(args, first, "logits"));
  if (first.rank() < 1)
    return args.fail("logits must have rank >= 1");
  N = first.rows();
  for (int64_t l = 0; l < L; ++l) {
    const TensorView &t = args.inputs[l];
    G3RT_RETURN_IF_ERROR(checkFloat(args, t, "logits"));
    if (t.rank() < 1 || t.rows() != N || (E > 0 && t.dim(-1) != E))
      return args.fail("logits of layer " + str(l) + " have shape " + shapeString(t.shape) +
                       ", expected [" + str(N) + ", " + (E > 0 ? str(E) : std::string("E")) + "]");
  }
  return Status();
}

/// The segment ids of a loss: i32, one per row of the layers' logits.
inline Status checkSegments(const KernelArgs &args, const TensorView &seg, int64_t N) {
  G3RT_RETURN_IF_ERROR(checkI32(args, seg, "segment_ids"));
  if (seg.numel() != N)
    return args.fail("segment_ids has shape " + shapeString(seg.shape) + " (" + str(seg.numel()) +
                     " tokens), but the logits have " + str(N) + " rows");
  return Status();
}

/// load_balancing_loss(_grad)'s layers: L logits, L indices and `trailing`
/// inputs (segment_ids, and grad for the gradient), `num_experts` E >= 1, the
/// logits [N, E].
inline Status checkBalanceLayers(const KernelArgs &args, int64_t trailing, int64_t &L, int64_t &E,
                                 int64_t &N) {
  const int64_t count = int64_t(args.inputs.size()) - trailing;
  if (count < 2 || count % 2 != 0)
    return args.fail("expected L logits, L indices and " +
                     std::string(trailing == 1 ? "segment_ids" : "segment_ids, grad") +
                     " with L >= 1, got " + std::to_string(args.inputs.size()) + " inputs");
  L = count / 2;
  G3RT_RETURN_IF_ERROR(args.requireInt("num_experts", E));
  if (E < 1)
    return args.fail("num_experts must be positive, got " + str(E));
  return checkLayerLogits(args, L, E, N);
}

} // namespace g3rt::checks

#endif // G3MOE_RUNTIME_KERNELS_MOE_CHECKS_H
