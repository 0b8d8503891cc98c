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
    `g3rt.arena_bytes` on the module: the maximum over the functions that
    training runs, which leaves out `@forward_backward` where the module has a
    `@train_micro_step` (it returns every gradient at once, for gradient
    dumps and checks; a backend makes its arena larger when it runs it). Host buffers
    (--g3rt-offload-to-host) are placed the same way in a host arena of their
    own: `g3rt.host_bytes` on the function and the module.
  }];
  let dependentDialects = ["::g3moe::lowered::G3RTDialect"];
  let options = [
    Option<"alignment", "alignment", "int64_t", "256",
           "byte alignment of every arena buffer">,
  ];
}

def G3RTOffloadToHostPass : Pass<"g3rt-offload-to-host", "mlir::ModuleOp"> {
  let summary = "keep long-idle arena buffers in host memory between their uses";
  let description = [{
    A buffer the forward writes and only the backward reads again (a layer's
    checkpoint) occupies device memory through the whole gap between the
    two. This pass moves such buffers to host memory for the gap: after the
    last launch that writes the buffer before its longest gap, a
    `copy_to_host` into a new `host` buffer starts; `distance` launches
    later (and not before the buffer's last use before the gap), a
    `wait_copy` ends the device buffer's life. `distance` launches before
    the first use after the gap, a `copy_to_device` into a new arena buffer
    starts, and a `wait_copy` right before that use makes it ready; every
    use after the gap reads the new buffer.

    The copies run beside the kernels (on the GPU, on a stream of their own;
    on the CPU they are plain copies and the waits do nothing). A copy and
    its wait share a `copy` id, unique within the function.

    Candidates are arena buffers of at least `min-bytes` bytes that no
    `g3rt.output` names, whose longest gap between two launches leaves room
    for the four copies `distance` apart. The `count` candidates with the
    longest gaps move (all of them for -1). Run before --g3rt-plan-memory.
  }];
  let dependentDialects = ["::g3moe::lowered::G3RTDialect"];
  let options = [
    Option<"count", "count", "int64_t", "-1",
           "how many buffers to move, longest gaps first (-1: every candidate)">,
    Option<"minBytes", "min-bytes", "int64_t", "1048576",
           "the smallest buffer worth moving, in bytes">,
    Option<"distance", "distance", "int64_t", "16",
           "launches between a copy's start and its wait">,
  ];
}

#endif // G3RT_TRANSFORMS_PASSES_TD
