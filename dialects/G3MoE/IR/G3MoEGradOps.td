//===- G3MoEGradOps.td - backward ops of the g3moe graph ---*- tablegen -*-===//
//
// The vector-Jacobian products the autodiff pass emits. Each names the
// forward op it differentiates; formulas are those of G3MOE_SPEC.md. Forward
// ops whose backward is another forward op (add, mul, reshape, convert, scale,
// dropout) have no op here.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_GRAD_OPS_TD
#define G3MOE_GRAD_OPS_TD

class G3MoE_GradOp<string mnemonic, list<Trait> traits = []>
    : G3MoE_Op<mnemonic, !listconcat([Pure], traits)> {
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_LinearGradInputOp
    : G3MoE_GradOp<"linear_grad_input", [AttrSizedOperandSegments]> {
  let summary = "input gradient of g3moe.linear: dx = dy·W";
  let description = [{
    `result[..., in] = sum_out grad[..., out] * weight[out, in]`, fp32
    accumulation, returned in the forward input's element type; plus the
    optional `addend` (fused by --g3moe-fuse-linear-add) before rounding.

    With `dropout %m {dropout_p}` (made by --g3moe-fuse-dropout; not with an
    addend) the result is the rounded product dropped by the keep-mask `m`
    of a `g3moe.dropout_mask`, as linear's input is: the input gradient
    through a LoRA A, masked as it is written.

    ```mlir
    %dx = g3moe.linear_grad_input %dy, %w
        : (tensor<2x16x128xbf16>, tensor<128x64xbf16>) -> tensor<2x16x64xbf16>
    %dm = g3moe.linear_grad_input %dh, %a dropout %m {dropout_p = 0.05 : f64}
        : (tensor<2x16x16xbf16>, tensor<16x64xbf16>, tensor<64xi32>) -> tensor<2x16x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$grad, G3MoE_FloatTensor:$weight,
                       Optional<G3MoE_FloatTensor>:$addend,
                       Optional<G3MoE_DropoutMask>:$dropout_mask,
                       OptionalAttr<F64Attr>:$dropout_p);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $grad `,` $weight (`plus` $addend^)? (`dropout` $dropout_mask^)? attr-dict `:`
    functional-type(operands, results)
  }];
}

def G3MoE_LinearGradWeightOp : G3MoE_GradOp<"linear_grad_weight"> {
  let summary = "weight gradient of g3moe.linear: dW = dyᵀ·x over all tokens";
  let description = [{
    `result[out, in] = sum over the leading dims of grad[.., out] * input[.., in]`,
    accumulated and returned in fp32.

    With `dropout %m {dropout_p}` (made by --g3moe-fuse-dropout) the input
    is x dropped by the keep-mask `m`, as for linear.

    ```mlir
    %dw = g3moe.linear_grad_weight %dy, %x
        : (tensor<2x16x4xbf16>, tensor<2x16x64xbf16>) -> tensor<4x64xf32>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$grad, G3MoE_FloatTensor:$input,
                       Optional<G3MoE_DropoutMask>:$dropout_mask,
                       OptionalAttr<F64Attr>:$dropout_p);
  let results = (outs RankedTensorOf<[F32]>:$result);
  let assemblyFormat = [{
    $grad `,` $input (`dropout` $dropout_mask^)? attr-dict `:` functional-type(operands, results)
  }];
}

def G3MoE_ExpertLinearGradInputOp
    : G3MoE_GradOp<"expert_linear_grad_input", [AttrSizedOperandSegments]> {
  let summary = "input gradient of g3moe.expert_linear";
  let description = [{
    Rows of expert e: `result[m, :] = grad[m, :]·weight[e]`; plus the
    optional `addend` (fused by --g3moe-fuse-linear-add) before rounding.
    With `lowrank %dh, %a` (fused by --g3moe-fuse-linear-add) the rows of
    expert e also get `dh·a[e]`, `dh` [M, r] and `a` [E, r, in], in the same
    fp32 accumulation. With `dropout %m {dropout_p}` the mask drops LoRA's
    term: without `lowrank` (and then without an addend) the whole product,
    rounded, as for `linear_grad_input`; with `lowrank` (fused by
    --g3moe-fuse-linear-add after --g3moe-fuse-dropout) only `dh·a[e]`,
    rounded to the result's type and dropped the same way before it joins
    the sum, so that the product is the masked rank-r product added to the
    plain one.

    ```mlir
    %dx = g3moe.expert_linear_grad_input %dy, %off, %w
        : (tensor<64x128xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>) -> tensor<64x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$grad, G3MoE_IndexTensor:$expert_offsets,
                       G3MoE_FloatTensor:$weight, Optional<G3MoE_FloatTensor>:$addend,
                       Optional<G3MoE_FloatTensor>:$lowrank_input,
                       Optional<G3MoE_FloatTensor>:$lowrank_weight,
                       Optional<G3MoE_DropoutMask>:$dropout_mask,
                       OptionalAttr<F64Attr>:$dropout_p);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $grad `,` $expert_offsets `,` $weight (`,` $addend^)?
    (`lowrank` $lowrank_input^ `,` $lowrank_weight)? (`dropout` $dropout_mask^)? attr-dict `:`
    functional-type(operands, results)
  }];
}

def G3MoE_ExpertLinearGradWeightOp : G3MoE_GradOp<"expert_linear_grad_weight"> {
  let summary = "weight gradient of g3moe.expert_linear, per expert";
  let description = [{
    `result[e] = sum over the rows m of expert e of grad[m]ᵀ·input[m]`, fp32.
    With `dropout %m {dropout_p}` (as for `linear_grad_weight`) the input
    is dropped by the mask.

    ```mlir
    %dw = g3moe.expert_linear_grad_weight %dy, %off, %x
        : (tensor<64x128xbf16>, tensor<5xi32>, tensor<64x64xbf16>) -> tensor<4x128x64xf32>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$grad, G3MoE_IndexTensor:$expert_offsets,
                       G3MoE_FloatTensor:$input, Optional<G3MoE_DropoutMask>:$dropout_mask,
                       OptionalAttr<F64Attr>:$dropout_p);
  let results = (outs RankedTensorOf<[F32]>:$result);
  let assemblyFormat = [{
    $grad `,` $expert_offsets `,` $input (`dropout` $dropout_mask^)? attr-dict `:`
    functional-type(operands, results)
  }];
}

def G3MoE_EmbeddingGradOp : G3MoE_GradOp<"embedding_grad"> {
  let summary = "table gradient of g3moe.embedding";
  let description = [{
    Scatter-adds `grad * scale` into the rows named by `ids`; the row
    `padding_idx` stays zero. Result [V, H] in fp32.

    ```mlir
    %dt = g3moe.embedding_grad %dy, %ids {scale = 8.0 : f64, padding_idx = 0 : i64}
        : (tensor<2x16x64xbf16>, tensor<2x16xi32>) -> tensor<512x64xf32>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$grad, G3MoE_IndexTensor:$ids,
                       F64Attr:$scale, I64Attr:$padding_idx);
  let results = (outs RankedTensorOf<[F32]>:$result);
}

def G3MoE_RMSNormGradOp : G3MoE_GradOp<"rms_norm_grad"> {
  let summary = "gradients of g3moe.rms_norm";
  let description = [{
    With x̂ = x / rms and g' = grad ⊙ (1 + w): `input_grad = (g' - x̂ ·
    mean(g' ⊙ x̂)) / rms` in the input's element type, and `weight_grad =
    sum over tokens of grad ⊙ x̂` in fp32.

    ```mlir
    %dx, %dw = g3moe.rms_norm_grad %x, %w, %dy {eps = 1.0e-06 : f64}
        : (tensor<2x16x64xbf16>, tensor<64xbf16>, tensor<2x16x64xbf16>)
        -> (tensor<2x16x64xbf16>, tensor<64xf32>)
    ```

    With the optional fourth operand `addend` (made by --g3moe-fuse-norms,
    never by autodiff) `input_grad` is `addend` plus the above, added in fp32
    before the one rounding: the residual stream's gradient joins the
    norm's without an `add` of its own.
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_FloatTensor:$weight,
                       G3MoE_FloatTensor:$grad, Optional<G3MoE_FloatTensor>:$addend,
                       F64Attr:$eps);
  let results = (outs G3MoE_FloatTensor:$input_grad,
                      RankedTensorOf<[F32]>:$weight_grad);
}

def G3MoE_RMSNormRoPEGradOp : G3MoE_GradOp<"rms_norm_rope_grad"> {
  let summary = "gradients of g3moe.rms_norm_rope";
  let description = [{
    `rms_norm_grad(input, weight, rope(grad, positions, transpose))`: the
    incoming gradient is rotated back (rounded to its element type, as the
    `rope` op would) and then goes through the norm's backward, in one pass.

    ```mlir
    %dx, %dw = g3moe.rms_norm_rope_grad %x, %w, %pos, %dy {eps = 1.0e-06 : f64, theta = 1.0e+06 : f64, scaling_factor = 1.0 : f64}
        : (tensor<2x16x4x16xbf16>, tensor<16xbf16>, tensor<2x16xi32>, tensor<2x16x4x16xbf16>)
        -> (tensor<2x16x4x16xbf16>, tensor<16xf32>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_FloatTensor:$weight,
                       G3MoE_IndexTensor:$positions, G3MoE_FloatTensor:$grad,
                       F64Attr:$eps, F64Attr:$theta, F64Attr:$scaling_factor);
  let results = (outs G3MoE_FloatTensor:$input_grad,
                      RankedTensorOf<[F32]>:$weight_grad);
}

def G3MoE_AttentionGradOp : G3MoE_GradOp<"attention_grad"> {
  let summary = "gradients of g3moe.attention with respect to q, k and v";
  let description = [{
    Same masks, scale and softcap as the forward op, whose softmax it
    recomputes. `key_grad` and `value_grad` sum over the query heads that
    share a kv head. The optional `saved` operands are the forward's output
    and `lse` result (--g3moe-save-attention-stats), none or both: a backend
    may take the statistics from them instead of recomputing the forward.

    ```mlir
    %dq, %dk, %dv = g3moe.attention_grad %q, %k, %v, %seg, %do {scale = 0.25 : f64}
        : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>,
           tensor<2x16xi32>, tensor<2x16x4x16xbf16>)
        -> (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>)
    %dq2, %dk2, %dv2 = g3moe.attention_grad %q, %k, %v, %seg, %do, %o, %lse {scale = 0.25 : f64}
        : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>,
           tensor<2x16xi32>, tensor<2x16x4x16xbf16>, tensor<2x16x4x16xbf16>, tensor<2x4x16xf32>)
        -> (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$query, G3MoE_FloatTensor:$key,
                       G3MoE_FloatTensor:$value, G3MoE_IndexTensor:$segment_ids,
                       G3MoE_FloatTensor:$grad, Variadic<G3MoE_FloatTensor>:$saved,
                       F64Attr:$scale, OptionalAttr<I64Attr>:$sliding_window,
                       OptionalAttr<F64Attr>:$softcap);
  let results = (outs G3MoE_FloatTensor:$query_grad, G3MoE_FloatTensor:$key_grad,
                      G3MoE_FloatTensor:$value_grad);
}

def G3MoE_GeluTanhMulGradOp : G3MoE_GradOp<"gelu_tanh_mul_grad"> {
  let summary = "gradients of g3moe.gelu_tanh_mul";
  let description = [{
    `gate_grad = grad * up * gelu_tanh'(gate)`, `up_grad = grad * gelu_tanh(gate)`.

    ```mlir
    %dg, %du = g3moe.gelu_tanh_mul_grad %g, %u, %dy
        : (tensor<64x128xbf16>, tensor<64x128xbf16>, tensor<64x128xbf16>)
        -> (tensor<64x128xbf16>, tensor<64x128xbf16>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$gate, G3MoE_FloatTensor:$up,
                       G3MoE_FloatTensor:$grad);
  let results = (outs G3MoE_FloatTensor:$gate_grad, G3MoE_FloatTensor:$up_grad);
}

def G3MoE_LMHeadGradOp : G3MoE_GradOp<"lm_head_grad"> {
  let summary = "gradients of g3moe.lm_head";
  let description = [{
    With the softcap's derivative `1 - tanh²(l / c)` applied to `grad` first:
    `input_grad = grad'·table` (input element type), `table_grad = grad'ᵀ·input`
    (fp32).

    ```mlir
    %dx, %dt = g3moe.lm_head_grad %h, %emb, %dl
        : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16x512xf32>)
        -> (tensor<2x16x64xbf16>, tensor<512x64xf32>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_FloatTensor:$table,
                       RankedTensorOf<[F32]>:$grad, OptionalAttr<F64Attr>:$softcap);
  let results = (outs G3MoE_FloatTensor:$input_grad, RankedTensorOf<[F32]>:$table_grad);
}

def G3MoE_CrossEntropyGradOp : G3MoE_GradOp<"cross_entropy_grad"> {
  let summary = "logits gradient of g3moe.cross_entropy";
  let description = [{
    `(softmax(logits) - onehot(target)) * grad / num_items` on rows whose
    target is not `ignore_index`, 0 elsewhere.

    ```mlir
    %dl = g3moe.cross_entropy_grad %logits, %t, %n, %g {ignore_index = -100 : i64}
        : (tensor<2x16x512xf32>, tensor<2x16xi32>, tensor<f32>, tensor<f32>)
        -> tensor<2x16x512xf32>
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$logits, G3MoE_IndexTensor:$targets,
                       G3MoE_Scalar:$num_items, G3MoE_Scalar:$grad,
                       I64Attr:$ignore_index);
  let results = (outs RankedTensorOf<[F32]>:$result);
}

def G3MoE_SparseMixerRouterGradOp : G3MoE_GradOp<"sparsemixer_router_grad"> {
  let summary = "SparseMixer-v2's custom router gradient";
  let description = [{
    For each stage j with chosen expert i_j, stage softmax P_j over the
    surviving experts (recomputed from `logits` and `indices`) and
    w_j_raw = P_j[i_j]: `dlogits[e] += grad[j] * w_j_raw * (δ(e, i_j) - P_j[e])`
    (G3MOE_SPEC.md 3.5). The 1/3 coin factor, the masks and the draws get no
    gradient.

    ```mlir
    %dl = g3moe.sparsemixer_router_grad %logits, %idx, %dw {epsilon = 0.01 : f64}
        : (tensor<32x4xf32>, tensor<32x2xi32>, tensor<32x2xf32>) -> tensor<32x4xf32>
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$logits, G3MoE_IndexTensor:$indices,
                       RankedTensorOf<[F32]>:$grad, F64Attr:$epsilon);
  let results = (outs RankedTensorOf<[F32]>:$result);
}

def G3MoE_SoftmaxTopKRouterGradOp : G3MoE_GradOp<"softmax_topk_router_grad"> {
  let summary = "router gradient of g3moe.softmax_topk_router";
  let description = [{
    The exact gradient of the chosen (optionally renormalised) softmax
    probabilities with respect to the logits; the choice is constant.

    ```mlir
    %dl = g3moe.softmax_topk_router_grad %logits, %idx, %dw {norm_topk_prob = true}
        : (tensor<32x4xf32>, tensor<32x2xi32>, tensor<32x2xf32>) -> tensor<32x4xf32>
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$logits, G3MoE_IndexTensor:$indices,
                       RankedTensorOf<[F32]>:$grad, BoolAttr:$norm_topk_prob);
  let results = (outs RankedTensorOf<[F32]>:$result);
}

def G3MoE_SigmoidGroupedRouterGradOp : G3MoE_GradOp<"sigmoid_grouped_router_grad"> {
  let summary = "router gradient of g3moe.sigmoid_grouped_router";
  let description = [{
    The exact gradient of the chosen weights (sigmoid scores, optionally
    renormalised, times `routed_scaling_factor`) with respect to the logits;
    the choice and the correction bias are constant.

    ```mlir
    %dl = g3moe.sigmoid_grouped_router_grad %logits, %idx, %dw
        {norm_topk_prob = true, routed_scaling_factor = 2.5 : f64}
        : (tensor<32x4xf32>, tensor<32x2xi32>, tensor<32x2xf32>) -> tensor<32x4xf32>
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$logits, G3MoE_IndexTensor:$indices,
                       RankedTensorOf<[F32]>:$grad, BoolAttr:$norm_topk_prob,
                       F64Attr:$routed_scaling_factor);
  let results = (outs RankedTensorOf<[F32]>:$result);
}

def G3MoE_MoEDispatchGradOp : G3MoE_GradOp<"moe_dispatch_grad"> {
  let summary = "input gradient of g3moe.moe_dispatch";
  let description = [{
    `result[n] = sum_j grad[slots[n, j]]`: every copy of a token sends its
    gradient back, fp32 accumulation.

    ```mlir
    %dx = g3moe.moe_dispatch_grad %dp, %slots
        : (tensor<64x64xbf16>, tensor<32x2xi32>) -> tensor<32x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$grad, G3MoE_IndexTensor:$slots);
  let results = (outs G3MoE_FloatTensor:$result);
}

def G3MoE_MoECombineGradOp : G3MoE_GradOp<"moe_combine_grad"> {
  let summary = "gradients of g3moe.moe_combine";
  let description = [{
    `input_grad[slots[n, j]] = weights[n, j] * grad[n]` and
    `weights_grad[n, j] = <grad[n], input[slots[n, j]]>` (fp32).

    ```mlir
    %dy, %dw = g3moe.moe_combine_grad %e, %slots, %w, %g
        : (tensor<64x64xbf16>, tensor<32x2xi32>, tensor<32x2xf32>, tensor<32x64xbf16>)
        -> (tensor<64x64xbf16>, tensor<32x2xf32>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_IndexTensor:$slots,
                       RankedTensorOf<[F32]>:$weights, G3MoE_FloatTensor:$grad);
  let results = (outs G3MoE_FloatTensor:$input_grad,
                      RankedTensorOf<[F32]>:$weights_grad);
}

def G3MoE_LoadBalancingLossGradOp : G3MoE_GradOp<"load_balancing_loss_grad",
    [AttrSizedOperandSegments]> {
  let summary = "logits gradients of g3moe.load_balancing_loss";
  let description = [{
    One gradient per layer's logits, through the mean probabilities P only.

    ```mlir
    %d2 = g3moe.load_balancing_loss_grad (%l2) indices (%i2) mask %seg grad %g {num_experts = 4 : i64}
        : (tensor<32x4xf32>, tensor<32x2xi32>, tensor<2x16xi32>, tensor<f32>) -> tensor<32x4xf32>
    ```
  }];
  let arguments = (ins Variadic<RankedTensorOf<[F32]>>:$logits,
                       Variadic<G3MoE_IndexTensor>:$indices,
                       G3MoE_IndexTensor:$segment_ids, G3MoE_Scalar:$grad,
                       I64Attr:$num_experts);
  let results = (outs Variadic<RankedTensorOf<[F32]>>:$results);
  let assemblyFormat = [{
    `(` $logits `)` `indices` `(` $indices `)` `mask` $segment_ids `grad` $grad attr-dict
    `:` functional-type(operands, results)
  }];
}

def G3MoE_RouterZLossGradOp : G3MoE_GradOp<"router_z_loss_grad"> {
  let summary = "logits gradients of g3moe.router_z_loss";
  let description = [{
    `2 * lse * softmax(logits) * grad / count` on real tokens, per layer.

    ```mlir
    %d2 = g3moe.router_z_loss_grad (%l2) mask %seg grad %g
        : (tensor<32x4xf32>, tensor<2x16xi32>, tensor<f32>) -> tensor<32x4xf32>
    ```
  }];
  let arguments = (ins Variadic<RankedTensorOf<[F32]>>:$logits,
                       G3MoE_IndexTensor:$segment_ids, G3MoE_Scalar:$grad);
  let results = (outs Variadic<RankedTensorOf<[F32]>>:$results);
  let assemblyFormat = [{
    `(` $logits `)` `mask` $segment_ids `grad` $grad attr-dict `:` functional-type(operands, results)
  }];
}

def G3MoE_LMHeadCrossEntropyGradOp : G3MoE_GradOp<"lm_head_cross_entropy_grad"> {
  let summary = "fused, chunked gradient of g3moe.lm_head_cross_entropy";
  let description = [{
    The gradients of `lm_head_cross_entropy` with respect to `input` and,
    when the `table_grad` result is present, the table, computed over chunks
    of rows so that the [tokens, vocab] logits and their gradient never exist
    in full: per chunk the logits are recomputed, turned into
    `(softmax - onehot) * grad / num_items` (through the softcap's
    derivative when set) and multiplied back. The rows' logsumexp comes from
    the optional `lse` operand (the forward op's `lse` result) when given;
    without it the kernels compute it in a sweep of their own.

    ```mlir
    %dx, %dt = g3moe.lm_head_cross_entropy_grad %h, %emb, %t, %n, %g {ignore_index = -100 : i64}
        : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>, tensor<f32>)
        -> (tensor<2x16x64xbf16>, tensor<512x64xf32>)
    %dx2 = g3moe.lm_head_cross_entropy_grad %h, %emb, %t, %n, %g, %lse {ignore_index = -100 : i64}
        : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>, tensor<f32>,
           tensor<2x16xf32>) -> tensor<2x16x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_FloatTensor:$table,
                       G3MoE_IndexTensor:$targets, G3MoE_Scalar:$num_items,
                       G3MoE_Scalar:$grad, Optional<RankedTensorOf<[F32]>>:$lse,
                       OptionalAttr<F64Attr>:$softcap, I64Attr:$ignore_index);
  let results = (outs G3MoE_FloatTensor:$input_grad,
                      Optional<RankedTensorOf<[F32]>>:$table_grad);
}

#endif // G3MOE_GRAD_OPS_TD
