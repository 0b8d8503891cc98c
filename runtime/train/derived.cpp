//===- derived.cpp - parameters computed from other parameters ------------===//
//
// The derivation is the CPU kernel of quantize_fp8 run on the host state, so
// that a derived weight is exactly what the op computes, on every backend.
//
//===----------------------------------------------------------------------===//

#include "runtime/train/derived.h"

#include "runtime/cpu/cpu_kernels.h"

namespace g3rt {

Status deriveParameters(HostState &host) {
  const StepProgram &program = host.program();
  for (const DerivedParamDesc &values : program.derived) {
    if (values.scales())
      continue;
    // loadStep paired every values entry with its scales.
    const DerivedParamDesc *scales = program.partnerOf(values);
    TensorView source = host.param(values.source), q = host.param(values.name);
    TensorView s = scales ? host.param(scales->name) : TensorView{};
    if (!source.data || !q.data || !s.data)
      return Status::error("derived parameter '" + values.name + "' or its source '" +
                           values.source + "' has no storage");
    KernelAttrs attrs;
    attrs.set("transpose", AttrValue::ofBool(values.transposed()));
    KernelArgs args;
    args.inputs = {source};
    args.outputs = {q, s};
    args.attrs = &attrs;
    args.name = "quantize_fp8";
    G3RT_RETURN_IF_ERROR(
        cpu::quantizeFp8Kernel(args).withContext("deriving '" + values.name + "'"));
  }
  return Status();
}

} // namespace g3rt
