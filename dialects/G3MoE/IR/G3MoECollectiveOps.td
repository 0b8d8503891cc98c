//===- G3MoECollectiveOps.td - collectives between processes -*- tablegen -*-===//
//
// Ops that exchange tensors between the processes of a data-parallel job
// (docs/architecture.md, "Many processes"), put into the step by
// --g3moe-shard. In a job of one process they are the identity. They have
// effects (they wait for the other processes), so no pass moves, merges or
// erases them.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_COLLECTIVE_OPS_TD
#define G3MOE_COLLECTIVE_OPS_TD

def G3MoE_AllReduceOp : G3MoE_Op<"all_reduce"> {
  let summary = "sum of each tensor over the data-parallel processes";
  let description = [{
    Every process passes its tensors and receives, for each, the elementwise
    sum over the processes, in the same order on every process.

    ```mlir
    %s0, %s1 = g3moe.all_reduce %a, %b : (tensor<4x64xf32>, tensor<f32>) -> (tensor<4x64xf32>, tensor<f32>)
    ```
  }];
  let arguments = (ins Variadic<RankedTensorOf<[F32]>>:$inputs);
  let results = (outs Variadic<RankedTensorOf<[F32]>>:$results);
  let assemblyFormat = "$inputs attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_ReduceOp : G3MoE_Op<"reduce"> {
  let summary = "sum of each tensor over the processes, delivered to process `root`";
  let description = [{
    Process `root` receives, for each tensor, the elementwise sum over the
    processes (ZeRO stage 2: a micro-batch's gradient, summed into the
    accumulator of the process that owns it); what the other processes
    receive is unspecified, and nothing there may read it.

    ```mlir
    %s = g3moe.reduce %g {root = 1 : i64} : (tensor<4x64xf32>) -> tensor<4x64xf32>
    ```
  }];
  let arguments = (ins Variadic<RankedTensorOf<[F32]>>:$inputs, I64Attr:$root);
  let results = (outs Variadic<RankedTensorOf<[F32]>>:$results);
  let assemblyFormat = "$inputs attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_BroadcastOp : G3MoE_Op<"broadcast"> {
  let summary = "tensors from process `root` to every process";
  let description = [{
    Every process passes the tensors and receives process `root`'s values
    (ZeRO stage 1: the parameters that process's shard of the optimizer step
    updated). What the other processes pass is ignored.

    ```mlir
    %p0, %p1 = g3moe.broadcast %a, %b {root = 1 : i64}
        : (tensor<4x64xf32>, tensor<64x4xf32>) -> (tensor<4x64xf32>, tensor<64x4xf32>)
    ```
  }];
  let arguments = (ins Variadic<RankedTensorOf<[F32]>>:$inputs, I64Attr:$root);
  let results = (outs Variadic<RankedTensorOf<[F32]>>:$results);
  let assemblyFormat = "$inputs attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_AllToAllOp : G3MoE_Op<"all_to_all"> {
  let summary = "each process's rows dealt out to the processes (expert parallelism)";
  let description = [{
    Declared for expert parallelism, which no pass makes yet, and without a
    kernel: the runtime refuses a step holding one. Each of the `processes`
    processes splits each tensor along its first dimension into `processes`
    equal blocks and sends block j to process j; each result is the blocks
    received, in the order of the senders' ranks.
    ```mlir
    %r = g3moe.all_to_all %x {processes = 2 : i64} : (tensor<8x64xbf16>) -> tensor<8x64xbf16>
    ```
  }];
  let arguments = (ins Variadic<RankedTensorOf<[F32, BF16]>>:$inputs, I64Attr:$processes);
  let results = (outs Variadic<RankedTensorOf<[F32, BF16]>>:$results);
  let assemblyFormat = "$inputs attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

#endif // G3MOE_COLLECTIVE_OPS_TD
