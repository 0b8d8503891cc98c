//===- kernels_fused.cpp - CPU reference of the fused norm kernels --------===//
//
// add_rms_norm, rms_norm_rope and rms_norm_rope_grad (docs/kernels.md,
// "Fused norms") are defined as the ops they fuse, with the intermediate
// rounded to its element type in between. The reference runs exactly those
// kernels on an intermediate buffer, so a fused step computes what the
// unfused one did, to the bit.
//
//===----------------------------------------------------------------------===//

#include "runtime/kernels/dense_checks.h"
#include "runtime/kernels/kernel.h"

#include <string>
#include <vector>

namespace g3rt {
namespace {

using namespace checks;

/// A scratch tensor shaped and typed like `like`.
struct Scratch {
  std::vector<uint64_t> storage;
  TensorView view;
  explicit Scratch(const TensorView &like)
      : storage((like.bytes() + 7) / 8), view{storage.data(), like.dtype, like.shape} {}
};

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

} // namespace

void registerFusedKernels(KernelTable &table) {
  table.emplace_back("add_rms_norm", addRmsNormKernel);
  table.emplace_back("rms_norm_rope", rmsNormRopeKernel);
  table.emplace_back("rms_norm_rope_grad", rmsNormRopeGradKernel);
}

} // namespace g3rt
