//===- Passes.td - g3moe conversion passes -----------------*- tablegen -*-===//

#ifndef G3MOE_CONVERSION_PASSES_TD
#define G3MOE_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

def G3MoELowerToG3RTPass : Pass<"g3moe-lower-to-g3rt", "mlir::ModuleOp"> {
  let summary = "lower the tensor-level step to kernel launches on buffers";
  let description = [{
    Rewrites every function of the module (calls inlined beforehand) from
    g3moe ops on tensors into `g3rt` launches on buffers:
    * function arguments become persistent buffers bound by their tag
      (`g3moe.input`, `g3moe.param`, `g3moe.grad_acc`, `g3moe.exp_avg`,
      `g3moe.exp_avg_sq`), `g3moe.param` ops become `param` buffers;
    * every other result gets an arena buffer, except that an `add` or `adamw`
      whose result is returned into the persistent buffer it reads (gradient
      accumulation, optimizer state) writes it in place;
    * `reshape` and `stop_gradient` become views, splat constants `fill`
      launches, the other ops launches of the kernel of the same name;
    * returned values become `g3rt.output`s (`loss`, `grad_norm`,
      `learning_rate`, `grad:<param>`) or copies into their persistent buffer.
  }];
  let dependentDialects = ["::g3moe::lowered::G3RTDialect", "::mlir::func::FuncDialect"];
}

#endif // G3MOE_CONVERSION_PASSES_TD
