//===- G3MoETrainOps.td - training-step ops ----------------*- tablegen -*-===//
//
// Ops the training passes add around the forward graph: LoRA's scale and
// dropout, and the optimizer (global norm, clipping, schedule, AdamW).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_TRAIN_OPS_TD
#define G3MOE_TRAIN_OPS_TD

def G3MoE_Count : 0DTensorOf<[I64]>;

def G3MoE_ScaleOp : G3MoE_Op<"scale", [Pure, SameOperandsAndResultType,
    G3MoE_Differentiable]> {
  let summary = "multiply by a compile-time constant (LoRA's alpha / r)";
  let description = [{
    ```mlir
    %y = g3moe.scale %x {factor = 4.0 : f64} : tensor<32x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, F64Attr:$factor);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($result)";
}

def G3MoE_StopGradientOp : G3MoE_Op<"stop_gradient", [Pure, SameOperandsAndResultType,
    G3MoE_Differentiable]> {
  let summary = "identity forward, no gradient backward";
  let description = [{
    Blocks gradient flow, as `torch.no_grad()` around a module does. Used for
    the R1 parity option that evaluates dense-layer FFNs without gradients
    (G3MOE_SPEC.md 3.10, C1).

    ```mlir
    %y = g3moe.stop_gradient %x : tensor<2x16x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($result)";
}

def G3MoE_DropoutOp : G3MoE_Op<"dropout", [Pure,
    G3MoE_Differentiable]> {
  let summary = "inverted dropout with an explicit uniform draw";
  let description = [{
    `result = input * (uniform >= p) * s`, with `s = 1 / (1 - p)` rounded to
    f32 as torch does. The draw is an operand
    (a `g3moe.random_uniform`), so the backward, which is the same op applied to
    the gradient, reuses the keep-mask exactly.

    ```mlir
    %y = g3moe.dropout %x, %u {p = 0.05 : f64}
        : (tensor<32x64xbf16>, tensor<32x64xf32>) -> tensor<32x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, RankedTensorOf<[F32]>:$uniform,
                       F64Attr:$p);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$input `,` $uniform attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_KeyedDropoutOp : G3MoE_Op<"keyed_dropout", [Pure]> {
  let summary = "inverted dropout that draws its own keep-mask";
  let description = [{
    `dropout(input, random_uniform(key) {stream, low = 0, high = 1}, p)`, with
    each element's draw made inside the kernel instead of read from a buffer:
    the same values, bit for bit, without the fp32 draw as large as the
    input. Made by --g3moe-fuse-dropout after differentiation (the forward and
    the backward each draw the mask again); never differentiated itself.

    ```mlir
    %y = g3moe.keyed_dropout %x, %key {stream = 3 : i64, p = 0.05 : f64}
        : (tensor<32x64xbf16>, tensor<2xi64>) -> tensor<32x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_RandomKey:$key, I64Attr:$stream,
                       F64Attr:$p);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$input `,` $key attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_KeyedJitterOp : G3MoE_Op<"keyed_jitter", [Pure]> {
  let summary = "multiplicative noise that draws its own factors";
  let description = [{
    `mul(input, convert(random_uniform(key) {stream, low, high}))`, the
    router's input jitter, with each element's factor drawn inside the
    kernel, rounded to the input's element type and multiplied there: the
    same values, bit for bit, without the fp32 draws or their conversion.
    Linear in `input`, so the backward's product with the same factors is a
    keyed_jitter of the incoming gradient. Made by --g3moe-fuse-dropout
    after differentiation; never differentiated itself.

    ```mlir
    %y = g3moe.keyed_jitter %x, %key {stream = 0 : i64, low = 0.99 : f64, high = 1.01 : f64}
        : (tensor<32x64xbf16>, tensor<2xi64>) -> tensor<32x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_RandomKey:$key, I64Attr:$stream,
                       F64Attr:$low, F64Attr:$high);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$input `,` $key attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_DropoutMaskOp : G3MoE_Op<"dropout_mask", [Pure]> {
  let summary = "the keep-mask of a keyed_dropout, one bit per element";
  let description = [{
    Bit `i % 32` of word `i / 32` is 1 when keyed_dropout with this key,
    stream and p keeps element i: its draw `uniformAt(key, stream, i)` is at
    least p. The products with `dropout %m` read these bits where a
    keyed_dropout would write, and the backward would keep, the dropped
    tensor itself: 1/16 of a bf16 tensor's bytes, drawn once. Made by
    --g3moe-fuse-dropout; never differentiated.

    ```mlir
    %m = g3moe.dropout_mask %key {stream = 3 : i64, p = 0.05 : f64}
        : (tensor<2xi64>) -> tensor<64xi32>
    ```
  }];
  let arguments = (ins G3MoE_RandomKey:$key, I64Attr:$stream, F64Attr:$p);
  let results = (outs G3MoE_DropoutMask:$result);
  let assemblyFormat = "$key attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_GlobalNormOp : G3MoE_Op<"global_norm", [Pure]> {
  let summary = "L2 norm over all given gradients";
  let description = [{
    ```mlir
    %n = g3moe.global_norm %g0, %g1 : (tensor<4x64xf32>, tensor<128x4xf32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins Variadic<RankedTensorOf<[F32]>>:$inputs);
  let results = (outs G3MoE_Scalar:$result);
  let assemblyFormat = "$inputs attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_ClipScaleOp : G3MoE_Op<"clip_scale", [Pure]> {
  let summary = "gradient-clipping coefficient min(1, max_norm / (norm + 1e-6))";
  let description = [{
    torch's `clip_grad_norm_` coefficient; 1 when `max_norm` is not positive
    (clipping off).

    ```mlir
    %c = g3moe.clip_scale %n {max_norm = 1.0 : f64} : (tensor<f32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins G3MoE_Scalar:$norm, F64Attr:$max_norm);
  let results = (outs G3MoE_Scalar:$result);
  let assemblyFormat = "$norm attr-dict `:` functional-type(operands, results)";
}

def G3MoE_LRScheduleOp : G3MoE_Op<"lr_schedule", [Pure]> {
  let summary = "learning rate of an optimizer step, HF schedules with warmup";
  let description = [{
    `step` counts the optimizer steps already taken (0 for the first update),
    `total_steps` is the schedule's horizon S and `warmup_steps` w, both
    run-time values. With f the schedule's factor, the result is
    `learning_rate * f`:
    * warmup (all kinds but `constant`): f = step / w for step < w, so the
      first update uses lr 0 as in HF;
    * `cosine`: 0.5 (1 + cos(pi (step - w) / (S - w)));
    * `linear`: (S - step) / (S - w), not below 0;
    * `constant`, `constant_with_warmup`: 1.

    ```mlir
    %lr = g3moe.lr_schedule %t, %s, %w {kind = "cosine", learning_rate = 1.0e-04 : f64}
        : (tensor<i64>, tensor<i64>, tensor<i64>) -> tensor<f32>
    ```
  }];
  let arguments = (ins G3MoE_Count:$step, G3MoE_Count:$total_steps,
                       G3MoE_Count:$warmup_steps, StrAttr:$kind, F64Attr:$learning_rate);
  let results = (outs G3MoE_Scalar:$result);
  let assemblyFormat = "$step `,` $total_steps `,` $warmup_steps attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_AdamWOp : G3MoE_Op<"adamw", [Pure]> {
  let summary = "one AdamW update of n tensors, with torch semantics";
  let description = [{
    Operands: n parameters, their n gradients, n first and n second moments,
    then the step counter, the learning rate and the gradient scale; results:
    the n new parameters, n new first and n new second moments. Per tensor,
    with g = grad * grad_scale and t = step + 1 (the update's 1-based count):
    p ← p (1 - lr wd); m ← β1 m + (1 - β1) g; v ← β2 v + (1 - β2) g²;
    p ← p - lr / (1 - β1^t) · m / (sqrt(v) / sqrt(1 - β2^t) + ε).
    Parameters and moments are fp32. Updating many tensors in one op is
    torch's multi-tensor ("foreach") AdamW: one launch instead of one per
    tensor. With `owner` (set by --g3moe-shard, ZeRO stage 1), only that
    data-parallel process runs the update and holds its moments; a
    `g3moe.broadcast` from it then brings the new parameters to every process.

    ```mlir
    %p1, %m1, %v1 = g3moe.adamw %p, %g, %m, %v, %t, %lr, %c
        {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.01 : f64}
        : (tensor<4x64xf32>, tensor<4x64xf32>, tensor<4x64xf32>, tensor<4x64xf32>,
           tensor<i64>, tensor<f32>, tensor<f32>)
        -> (tensor<4x64xf32>, tensor<4x64xf32>, tensor<4x64xf32>)
    ```
  }];
  let arguments = (ins Variadic<RankedTensorOf<[F32]>>:$state,
                       G3MoE_Count:$step, G3MoE_Scalar:$lr, G3MoE_Scalar:$grad_scale,
                       F64Attr:$beta1, F64Attr:$beta2, F64Attr:$epsilon,
                       F64Attr:$weight_decay, OptionalAttr<I64Attr>:$owner);
  let results = (outs Variadic<RankedTensorOf<[F32]>>:$new_state);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    /// n, the number of tensors updated.
    unsigned getNumTensors() { return getState().size() / 4; }
    /// Operand `role` (0 param, 1 grad, 2 exp_avg, 3 exp_avg_sq) of tensor i.
    ::mlir::Value getStateOf(unsigned role, unsigned i) {
      return getState()[role * getNumTensors() + i];
    }
    /// Result `role` (0 param, 1 exp_avg, 2 exp_avg_sq) of tensor i.
    ::mlir::Value getNewStateOf(unsigned role, unsigned i) {
      return getNewState()[role * getNumTensors() + i];
    }
  }];
}

#endif // G3MOE_TRAIN_OPS_TD
