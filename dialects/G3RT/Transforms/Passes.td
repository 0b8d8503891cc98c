//===- Passes.td - g3rt passes -----------------------------*- tablegen -*-===//

#ifndef G3RT_TRANSFORMS_PASSES_TD
#define G3RT_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def G3RTPlanMemoryPass : Pass<"g3rt-plan-memory", "mlir::ModuleOp"> {
  let summary = "place every arena buffer at a byte offset by liveness";
  let description = [{
    For each function, computes the live range of every arena buffer (from the
    first launch that touches it, through views, to the last; buffers named by
    `g3rt.output` live to the end) and assigns offsets so that no two buffers
    whose live ranges intersect share a byte. Buffers are placed largest
    first, each at the lowest aligned offset that fits. Sets `offset` on every
    arena buffer and `g3rt.arena_bytes` on the function, and
    `g3rt.arena_bytes` (the maximum) on the module.
  }];
  let dependentDialects = ["::g3moe::lowered::G3RTDialect"];
  let options = [
    Option<"alignment", "alignment", "int64_t", "256",
           "byte alignment of every arena buffer">,
  ];
}

#endif // G3RT_TRANSFORMS_PASSES_TD
