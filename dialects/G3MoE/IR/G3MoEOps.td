//===- G3MoEOps.td - g3moe graph ops -----------------------*- tablegen -*-===//
//
// The forward ops of a G3MoE / Gemma-3 micro-batch (G3MOE_SPEC.md sections 2-3)
// and its loss terms. The descriptions below are the dialect's documentation.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_OPS_TD
#define G3MOE_OPS_TD

include "dialects/G3MoE/IR/G3MoEDialect.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/Interfaces/InferTypeOpInterface.td"
include "dialects/G3MoE/IR/G3MoEInterfaces.td"

/// Ops whose gradient the autodiff pass asks for through the interface.
def G3MoE_Differentiable : DeclareOpInterfaceMethods<G3MoE_DifferentiableOpInterface>;

//===----------------------------------------------------------------------===//
// Parameters and plumbing
//===----------------------------------------------------------------------===//

def G3MoE_ParamOp : G3MoE_Op<"param", [Pure]> {
  let summary = "a model weight, named after its HF checkpoint tensor";
  let description = [{
    Produces the value of one weight. `name` is the tensor's name in an HF
    checkpoint of the text model (`model.layers.3.self_attn.q_proj.weight`).
    Expert weights are stacked along a leading expert dimension; their name
    holds `{e}` where the expert index goes
    (`model.layers.3.moe.experts.{e}.gate_proj.weight`). `trainable` marks the
    weights that receive gradients; the others are frozen.

    ```mlir
    %w = g3moe.param "model.layers.0.self_attn.q_proj.weight" : tensor<128x64xbf16>
    %r = g3moe.param "model.layers.2.moe.gate.weight" trainable : tensor<4x64xf32>
    ```
  }];
  let arguments = (ins StrAttr:$name, UnitAttr:$trainable);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$name (`trainable` $trainable^)? attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def G3MoE_ReshapeOp : G3MoE_Op<"reshape", [Pure, G3MoE_Differentiable]> {
  let summary = "reinterpret a tensor with another static shape";
  let description = [{
    Same elements, same element type, row-major order kept.

    ```mlir
    %h = g3moe.reshape %x : tensor<2x16x64xbf16> -> tensor<32x64xbf16>
    ```
  }];
  let arguments = (ins AnyRankedTensor:$input);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def G3MoE_SplitRowsOp : G3MoE_Op<"split_rows", [Pure, G3MoE_Differentiable]> {
  let summary = "cut a tensor into consecutive blocks of leading rows";
  let description = [{
    Result `i` is rows `o_i .. o_i + n_i` of `input` along its first
    dimension, where `n_i` is the result's first dimension and `o_i` the sum
    of the earlier results' (the blocks cover the input in order). The other
    dimensions and the element type are the input's. Token tiling
    (`--g3moe-tile-tokens`) cuts a feed-forward block's inputs into its
    chunks with it.

    ```mlir
    %a, %b = g3moe.split_rows %x : tensor<32x64xbf16> -> tensor<16x64xbf16>, tensor<16x64xbf16>
    ```
  }];
  let arguments = (ins AnyRankedTensor:$input);
  let results = (outs Variadic<AnyRankedTensor>:$parts);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($parts)";
  let hasVerifier = 1;
}

def G3MoE_ConcatRowsOp : G3MoE_Op<"concat_rows", [Pure, G3MoE_Differentiable]> {
  let summary = "join tensors along their first dimension";
  let description = [{
    The inverse of `split_rows`: the result holds `parts` one after the
    other along the first dimension; their other dimensions and element
    types agree with the result's.

    ```mlir
    %x = g3moe.concat_rows %a, %b : tensor<16x64xbf16>, tensor<16x64xbf16> -> tensor<32x64xbf16>
    ```
  }];
  let arguments = (ins Variadic<AnyRankedTensor>:$parts);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "$parts attr-dict `:` type($parts) `->` type($result)";
  let hasVerifier = 1;
}

def G3MoE_ConvertOp : G3MoE_Op<"convert", [Pure, G3MoE_Differentiable]> {
  let summary = "change the floating-point element type";
  let description = [{
    Rounds to nearest even when narrowing (fp32 to bf16).

    ```mlir
    %f = g3moe.convert %x : tensor<32x64xbf16> -> tensor<32x64xf32>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def G3MoE_AddOp : G3MoE_Op<"add", [Pure, SameOperandsAndResultType, G3MoE_Differentiable]> {
  let summary = "elementwise sum (the residual connections)";
  let description = [{
    ```mlir
    %h = g3moe.add %x, %y : tensor<2x16x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$lhs, G3MoE_FloatTensor:$rhs);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def G3MoE_MulOp : G3MoE_Op<"mul", [Pure, SameOperandsAndResultType, G3MoE_Differentiable]> {
  let summary = "elementwise product (input jitter)";
  let description = [{
    ```mlir
    %j = g3moe.mul %f, %u : tensor<32x64xf32>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$lhs, G3MoE_FloatTensor:$rhs);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def G3MoE_RandomUniformOp : G3MoE_Op<"random_uniform", [Pure]> {
  let summary = "counter-based uniform random numbers";
  let description = [{
    Element `i` is a uniform draw on [`low`, `high`) from a counter-based
    generator keyed by (`key`[0] = seed, `key`[1] = micro-batch counter,
    `stream`, `i`). The result is a pure function of its key, so forward,
    recomputation and backward see identical values. `stream` is unique per op
    in a step.

    ```mlir
    %u = g3moe.random_uniform %key {stream = 3 : i64, low = 9.900000e-01 : f64,
                                    high = 1.010000e+00 : f64}
        : (tensor<2xi64>) -> tensor<32x64xf32>
    ```
  }];
  let arguments = (ins G3MoE_RandomKey:$key, I64Attr:$stream, F64Attr:$low,
                       F64Attr:$high);
  let results = (outs RankedTensorOf<[F32]>:$result);
  let assemblyFormat = "$key attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Backbone
//===----------------------------------------------------------------------===//

def G3MoE_EmbeddingOp : G3MoE_Op<"embedding", [Pure, G3MoE_Differentiable]> {
  let summary = "token embedding times the (bf16-rounded) scale";
  let description = [{
    `result[..., :] = table[ids[...], :] * scale`. `scale` is √H already
    rounded to the table's element type (50.5 for H = 2560). The row
    `padding_idx` receives no gradient.

    ```mlir
    %x = g3moe.embedding %ids, %table {scale = 8.0 : f64, padding_idx = 0 : i64}
        : (tensor<2x16xi32>, tensor<512x64xbf16>) -> tensor<2x16x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_IndexTensor:$ids, G3MoE_FloatTensor:$table,
                       F64Attr:$scale, I64Attr:$padding_idx);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$ids `,` $table attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_RMSNormOp : G3MoE_Op<"rms_norm", [Pure, G3MoE_Differentiable]> {
  let summary = "Gemma RMSNorm over the last dimension, gain (1 + w)";
  let description = [{
    `x / sqrt(mean(x^2) + eps) * (1 + w)`, evaluated in fp32 and returned in
    the input's element type. Also the QK-norm: applied to [B, T, heads, d]
    with a [d] weight shared by all heads.

    ```mlir
    %y = g3moe.rms_norm %x, %w {eps = 1.0e-06 : f64}
        : (tensor<2x16x64xbf16>, tensor<64xbf16>) -> tensor<2x16x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_FloatTensor:$weight,
                       F64Attr:$eps);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$input `,` $weight attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_AddRMSNormOp : G3MoE_Op<"add_rms_norm", [Pure]> {
  let summary = "residual add followed by rms_norm of the sum, in one pass";
  let description = [{
    `sum = lhs + rhs` in the operands' element type (as `add`) and
    `result = rms_norm(sum, weight)` of that rounded sum (as `rms_norm`),
    from one read of the summands. Made by --g3moe-fuse-norms after
    differentiation; never differentiated itself.

    ```mlir
    %s, %y = g3moe.add_rms_norm %r, %h, %w {eps = 1.0e-06 : f64}
        : (tensor<2x16x64xbf16>, tensor<2x16x64xbf16>, tensor<64xbf16>)
        -> (tensor<2x16x64xbf16>, tensor<2x16x64xbf16>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$lhs, G3MoE_FloatTensor:$rhs,
                       G3MoE_FloatTensor:$weight, F64Attr:$eps);
  let results = (outs G3MoE_FloatTensor:$sum, G3MoE_FloatTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_RMSNormRoPEOp : G3MoE_Op<"rms_norm_rope", [Pure]> {
  let summary = "QK-norm followed by the rotary embedding, in one pass";
  let description = [{
    `rope(rms_norm(input, weight), positions)` on [B, T, heads, d], the
    normalised value rounded to the input's element type before it is
    rotated, exactly as the two ops give it. Made by --g3moe-fuse-norms
    after differentiation; never differentiated itself (its gradient is
    `rms_norm_rope_grad`).

    ```mlir
    %q = g3moe.rms_norm_rope %x, %w, %pos {eps = 1.0e-06 : f64, theta = 1.0e+06 : f64, scaling_factor = 1.0 : f64}
        : (tensor<2x16x4x16xbf16>, tensor<16xbf16>, tensor<2x16xi32>) -> tensor<2x16x4x16xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_FloatTensor:$weight,
                       G3MoE_IndexTensor:$positions, F64Attr:$eps, F64Attr:$theta,
                       F64Attr:$scaling_factor);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_LinearOp : G3MoE_Op<"linear",
    [Pure, G3MoE_Differentiable, AttrSizedOperandSegments]> {
  let summary = "bias-free linear layer y = x·Wᵀ with W stored [out, in]";
  let description = [{
    Contracts the last dimension of `input` with the second dimension of
    `weight`. Accumulation is fp32; the result's element type is chosen by the
    producer (fp32 for the router, the activation type elsewhere).

    With `plus %a` (made by --g3moe-fuse-linear-add after differentiation,
    never differentiated itself) the result is `a + x·Wᵀ`, the fp32 product
    and `a` added before the result is rounded once.

    With `dropout %m {dropout_p}` (made by --g3moe-fuse-dropout, never
    differentiated itself) the input is x dropped by the keep-mask `m` of a
    `g3moe.dropout_mask` (bit i keeps element i of x, times 1 / (1 - p),
    rounded to x's type, as keyed_dropout rounds it): a LoRA A product that
    reads the bits and never writes the dropped input.

    ```mlir
    %q = g3moe.linear %x, %wq
        : (tensor<2x16x64xbf16>, tensor<64x64xbf16>) -> tensor<2x16x64xbf16>
    %r = g3moe.linear %x, %wq plus %q
        : (tensor<2x16x64xbf16>, tensor<64x64xbf16>, tensor<2x16x64xbf16>) -> tensor<2x16x64xbf16>
    %h = g3moe.linear %x, %a dropout %m {dropout_p = 0.05 : f64}
        : (tensor<2x16x64xbf16>, tensor<16x64xbf16>, tensor<64xi32>) -> tensor<2x16x16xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_FloatTensor:$weight,
                       Optional<G3MoE_FloatTensor>:$addend,
                       Optional<G3MoE_DropoutMask>:$dropout_mask,
                       OptionalAttr<F64Attr>:$dropout_p);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight (`plus` $addend^)? (`dropout` $dropout_mask^)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def G3MoE_RoPEOp : G3MoE_Op<"rope", [Pure, G3MoE_Differentiable]> {
  let summary = "rotary position embedding, half-split form";
  let description = [{
    For pair i < d/2, `inv_freq_i = theta^(-2i/d) / scaling_factor` and angle
    `positions[b, t] * inv_freq_i`; `x' = x * cos + rotate_half(x) * sin` on
    [B, T, heads, d]. `scaling_factor` is the linear RoPE scaling factor
    (1 for none). Positions are run-time data so that packed documents restart
    at 0. With `transpose` the rotation runs backwards (angle negated): that is
    the op's own gradient.

    ```mlir
    %r = g3moe.rope %q, %pos {theta = 1.0e+06 : f64, scaling_factor = 8.0 : f64}
        : (tensor<2x16x4x16xbf16>, tensor<2x16xi32>) -> tensor<2x16x4x16xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_IndexTensor:$positions,
                       F64Attr:$theta, F64Attr:$scaling_factor,
                       UnitAttr:$transpose);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$input `,` $positions attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_AttentionOp : G3MoE_Op<"attention", [Pure, G3MoE_Differentiable]> {
  let summary = "causal GQA attention with sliding window and document masks";
  let description = [{
    `q` is [B, T, n_h, d]; `k` and `v` are [B, T, n_kv, d] with n_h a multiple
    of n_kv (query head h reads kv head h / (n_h / n_kv)). Key j is visible to
    query i of row b iff j <= i, `segment_ids[b, j]` is non-zero (0 marks
    padding), `segment_ids[b, j] == segment_ids[b, i]` (packed documents do not
    see each other) and, with `sliding_window = W`, i - j < W. Scores are
    `q·k * scale`, capped by `softcap * tanh(s / softcap)` when `softcap` is
    set; softmax in fp32. A query with no visible key yields 0.

    The optional `lse` result, fp32 [B, n_h, T], holds each query row's
    logsumexp of its visible (scaled, capped) scores, 0 for a row without
    one: the softmax statistics `attention_grad` may take instead of
    recomputing them (--g3moe-save-attention-stats).

    ```mlir
    %o = g3moe.attention %q, %k, %v, %seg {scale = 2.5e-01 : f64, sliding_window = 8 : i64}
        : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>,
           tensor<2x16xi32>) -> tensor<2x16x4x16xbf16>
    %o2, %lse = g3moe.attention %q, %k, %v, %seg {scale = 2.5e-01 : f64}
        : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>,
           tensor<2x16xi32>) -> (tensor<2x16x4x16xbf16>, tensor<2x4x16xf32>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$query, G3MoE_FloatTensor:$key,
                       G3MoE_FloatTensor:$value, G3MoE_IndexTensor:$segment_ids,
                       F64Attr:$scale, OptionalAttr<I64Attr>:$sliding_window,
                       OptionalAttr<F64Attr>:$softcap);
  let results = (outs G3MoE_FloatTensor:$result, Optional<RankedTensorOf<[F32]>>:$lse);
  let assemblyFormat = [{
    $query `,` $key `,` $value `,` $segment_ids attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def G3MoE_GeluTanhMulOp : G3MoE_Op<"gelu_tanh_mul", [Pure, SameOperandsAndResultType, G3MoE_Differentiable]> {
  let summary = "GeGLU: gelu_tanh(gate) * up";
  let description = [{
    `gelu_tanh(z) = 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))`.

    ```mlir
    %a = g3moe.gelu_tanh_mul %g, %u : tensor<2x16x128xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$gate, G3MoE_FloatTensor:$up);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$gate `,` $up attr-dict `:` type($result)";
}

def G3MoE_LMHeadOp : G3MoE_Op<"lm_head", [Pure, G3MoE_Differentiable]> {
  let summary = "output projection onto the vocabulary, with optional softcap";
  let description = [{
    `logits = x·tableᵀ`, then `softcap * tanh(logits / softcap)` when
    `softcap` is set. With tied embeddings `table` is the embedding matrix.
    The result is fp32.

    ```mlir
    %l = g3moe.lm_head %h, %emb
        : (tensor<2x16x64xbf16>, tensor<512x64xbf16>) -> tensor<2x16x512xf32>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_FloatTensor:$table,
                       OptionalAttr<F64Attr>:$softcap);
  let results = (outs RankedTensorOf<[F32]>:$result);
  let assemblyFormat = "$input `,` $table attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Routers and experts
//===----------------------------------------------------------------------===//

def G3MoE_SparseMixerRouterOp : G3MoE_Op<"sparsemixer_router", [Pure, G3MoE_Differentiable]> {
  let summary = "GRIN SparseMixer-v2 top-2 routing";
  let description = [{
    Routes each of N tokens to two of E experts from router logits [N, E]
    (G3MOE_SPEC.md 3.4): per stage, experts whose relative gap to the stage's
    best logit exceeds 2·`epsilon` are excluded, the expert is drawn by
    Gumbel-max from the softmax of the survivors (training) or taken as the
    argmax (eval), and its weight is that softmax probability, times 1/3 in
    training when a coin says so. Weights are not renormalised.

    `noise` is present exactly in training: [N, 2, E + 1] uniforms, the first E
    of stage j for the Gumbel draws and the last for the stage's coin.

    ```mlir
    %w, %i = g3moe.sparsemixer_router %logits noise %u {epsilon = 1.0e-02 : f64}
        : (tensor<32x4xf32>, tensor<32x2x5xf32>) -> (tensor<32x2xf32>, tensor<32x2xi32>)
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$logits,
                       Optional<RankedTensorOf<[F32]>>:$noise, F64Attr:$epsilon);
  let results = (outs RankedTensorOf<[F32]>:$weights, G3MoE_IndexTensor:$indices);
  let assemblyFormat = [{
    $logits (`noise` $noise^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def G3MoE_SoftmaxTopKRouterOp : G3MoE_Op<"softmax_topk_router", [Pure, G3MoE_Differentiable]> {
  let summary = "Mixtral-style routing: softmax, then top-k";
  let description = [{
    Weights are the top-k softmax probabilities, renormalised to sum to 1 when
    `norm_topk_prob` is set.

    ```mlir
    %w, %i = g3moe.softmax_topk_router %logits {top_k = 2 : i64, norm_topk_prob = true}
        : (tensor<32x4xf32>) -> (tensor<32x2xf32>, tensor<32x2xi32>)
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$logits, I64Attr:$top_k,
                       BoolAttr:$norm_topk_prob);
  let results = (outs RankedTensorOf<[F32]>:$weights, G3MoE_IndexTensor:$indices);
  let assemblyFormat = "$logits attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_SigmoidGroupedRouterOp : G3MoE_Op<"sigmoid_grouped_router", [Pure, G3MoE_Differentiable]> {
  let summary = "DeepSeek-V3-style grouped sigmoid routing";
  let description = [{
    Scores `s = sigmoid(logits)`; selection uses `s + bias` (the score
    correction bias): each of `n_group` groups is scored by the sum of its top
    two, the best `topk_group` groups are kept and the top-k experts among them
    chosen. Weights are the un-biased `s` of the chosen experts, renormalised
    when `norm_topk_prob` and multiplied by `routed_scaling_factor`.

    ```mlir
    %w, %i = g3moe.sigmoid_grouped_router %logits, %bias {top_k = 2 : i64, n_group = 2 : i64,
        topk_group = 1 : i64, routed_scaling_factor = 2.5 : f64, norm_topk_prob = true}
        : (tensor<32x4xf32>, tensor<4xf32>) -> (tensor<32x2xf32>, tensor<32x2xi32>)
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$logits, RankedTensorOf<[F32]>:$bias,
                       I64Attr:$top_k, I64Attr:$n_group, I64Attr:$topk_group,
                       F64Attr:$routed_scaling_factor, BoolAttr:$norm_topk_prob);
  let results = (outs RankedTensorOf<[F32]>:$weights, G3MoE_IndexTensor:$indices);
  let assemblyFormat = "$logits `,` $bias attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_MoEDispatchOp : G3MoE_Op<"moe_dispatch", [Pure, G3MoE_Differentiable]> {
  let summary = "permute token copies into one buffer grouped by expert";
  let description = [{
    Given tokens [N, H] and their k expert indices [N, k], writes the N·k token
    copies into `permuted` [N·k, H] so that the rows of expert e are
    `expert_offsets[e] .. expert_offsets[e + 1]` (stable in token order).
    `slots[n, j]` is the row holding the copy of token n for its j-th expert.
    The buffer size is static; the offsets are run-time data.

    ```mlir
    %p, %off, %slots = g3moe.moe_dispatch %x, %idx {num_experts = 4 : i64}
        : (tensor<32x64xbf16>, tensor<32x2xi32>)
        -> (tensor<64x64xbf16>, tensor<5xi32>, tensor<32x2xi32>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_IndexTensor:$indices,
                       I64Attr:$num_experts);
  let results = (outs G3MoE_FloatTensor:$permuted, G3MoE_IndexTensor:$expert_offsets,
                      G3MoE_IndexTensor:$slots);
  let assemblyFormat = "$input `,` $indices attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_ExpertLinearOp : G3MoE_Op<"expert_linear",
    [Pure, G3MoE_Differentiable, AttrSizedOperandSegments]> {
  let summary = "grouped linear layer over the expert-permuted buffer";
  let description = [{
    Rows `expert_offsets[e] .. expert_offsets[e + 1]` of `input` [M, in] are
    multiplied by `weight[e]`ᵀ, with `weight` [E, out, in] the stacked expert
    weights. Result [M, out]. With `plus %a` (as for `linear`) the result
    is `a` plus that product (rows past the last expert: `a`).

    With `lowrank %h, %b` (made by --g3moe-fuse-linear-add after
    differentiation, never differentiated itself) the rows of expert e also
    get `h·b[e]`ᵀ, `h` [M, r] and `b` [E, out, r]: a LoRA term computed in
    the same fp32 accumulation as the product, before the one rounding.

    With `dropout %m {dropout_p}` (as for `linear`; not with `lowrank`) the
    input is `input` dropped by the mask.

    ```mlir
    %g = g3moe.expert_linear %p, %off, %wg
        : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>) -> tensor<64x128xbf16>
    %l = g3moe.expert_linear %p, %off, %wg lowrank %h, %b
        : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>, tensor<64x8xbf16>,
           tensor<4x128x8xbf16>) -> tensor<64x128xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_IndexTensor:$expert_offsets,
                       G3MoE_FloatTensor:$weight, Optional<G3MoE_FloatTensor>:$addend,
                       Optional<G3MoE_FloatTensor>:$lowrank_input,
                       Optional<G3MoE_FloatTensor>:$lowrank_weight,
                       Optional<G3MoE_DropoutMask>:$dropout_mask,
                       OptionalAttr<F64Attr>:$dropout_p);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $expert_offsets `,` $weight (`plus` $addend^)?
    (`lowrank` $lowrank_input^ `,` $lowrank_weight)? (`dropout` $dropout_mask^)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def G3MoE_MoECombineOp : G3MoE_Op<"moe_combine", [Pure, G3MoE_Differentiable]> {
  let summary = "gather expert outputs back to tokens, weighted by the router";
  let description = [{
    `result[n] = sum_j weights[n, j] * input[slots[n, j]]`, accumulated in fp32.

    ```mlir
    %y = g3moe.moe_combine %e, %slots, %w
        : (tensor<64x64xbf16>, tensor<32x2xi32>, tensor<32x2xf32>) -> tensor<32x64xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_IndexTensor:$slots,
                       RankedTensorOf<[F32]>:$weights);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = "$input `,` $slots `,` $weights attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Losses
//===----------------------------------------------------------------------===//

def G3MoE_CrossEntropyOp : G3MoE_Op<"cross_entropy", [Pure, G3MoE_Differentiable]> {
  let summary = "summed token cross-entropy divided by the window's label count";
  let description = [{
    `targets` are the labels already shifted left by one (the label of position
    t is the token at t + 1); entries equal to `ignore_index` contribute
    nothing. The result is `sum CE / num_items`, with `num_items` the count of
    labels of the whole gradient-accumulation window (HF semantics), a run-time
    scalar.

    ```mlir
    %ce = g3moe.cross_entropy %logits, %targets, %n {ignore_index = -100 : i64}
        : (tensor<2x16x512xf32>, tensor<2x16xi32>, tensor<f32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$logits, G3MoE_IndexTensor:$targets,
                       G3MoE_Scalar:$num_items, I64Attr:$ignore_index);
  let results = (outs G3MoE_Scalar:$result);
  let assemblyFormat = [{
    $logits `,` $targets `,` $num_items attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def G3MoE_LMHeadCrossEntropyOp : G3MoE_Op<"lm_head_cross_entropy", [Pure]> {
  let summary = "fused, chunked LM head and cross-entropy";
  let description = [{
    `cross_entropy(lm_head(input, table), targets, num_items)` computed over
    chunks of rows: the [tokens, vocab] logits never exist in full (at 120K
    tokens and a 262K vocabulary they would be 63 GB in bf16). Made by
    --g3moe-fuse-lm-head-loss; differentiated before fusion, so it has no
    gradient rule of its own.

    The optional `lse` result holds each row's logsumexp over the (capped)
    logits, 0 on ignored rows (and NaN on the CUDA backend for a target out
    of range, an error on the CPU), shaped like `targets`: `lm_head_cross_entropy_grad` takes it instead of
    sweeping the vocabulary once more for it.

    ```mlir
    %loss = g3moe.lm_head_cross_entropy %h, %emb, %t, %n {ignore_index = -100 : i64}
        : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>) -> tensor<f32>
    %loss2, %lse = g3moe.lm_head_cross_entropy %h, %emb, %t, %n {ignore_index = -100 : i64}
        : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>)
        -> (tensor<f32>, tensor<2x16xf32>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_FloatTensor:$table,
                       G3MoE_IndexTensor:$targets, G3MoE_Scalar:$num_items,
                       OptionalAttr<F64Attr>:$softcap, I64Attr:$ignore_index);
  let results = (outs G3MoE_Scalar:$result, Optional<RankedTensorOf<[F32]>>:$lse);
  let assemblyFormat = [{
    $input `,` $table `,` $targets `,` $num_items attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def G3MoE_LMHeadCrossEntropyAndGradOp : G3MoE_Op<"lm_head_cross_entropy_and_grad", [Pure]> {
  let summary = "fused LM head and cross-entropy with the input gradient, in one pass";
  let description = [{
    `lm_head_cross_entropy(input, table, targets, num_items)` and, in the
    same sweep over the logits, the input gradient that
    `lm_head_cross_entropy_grad(input, table, targets, num_items, grad)`
    (without a table gradient) gives. The gradient of a logit tile is formed
    while the tile is made, against the row's running maximum, and its
    product with the table is rescaled as the maximum grows (the online
    softmax of flash attention), so each tile of logits is computed once
    instead of once forward and once backward. Made by
    --g3moe-fuse-lm-head-loss where the seed `grad` of the backward is known
    before the forward and the table is frozen. Not differentiable.

    ```mlir
    %loss, %dx = g3moe.lm_head_cross_entropy_and_grad %h, %emb, %t, %n, %g {ignore_index = -100 : i64}
        : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>, tensor<f32>)
        -> (tensor<f32>, tensor<2x16x64xbf16>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_FloatTensor:$table,
                       G3MoE_IndexTensor:$targets, G3MoE_Scalar:$num_items,
                       G3MoE_Scalar:$grad, OptionalAttr<F64Attr>:$softcap,
                       I64Attr:$ignore_index);
  let results = (outs G3MoE_Scalar:$result, G3MoE_FloatTensor:$input_grad);
  let assemblyFormat = [{
    $input `,` $table `,` $targets `,` $num_items `,` $grad attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def G3MoE_LMHeadEvalOp : G3MoE_Op<"lm_head_eval", [Pure]> {
  let summary = "fused, chunked LM head, cross-entropy and token accuracy";
  let description = [{
    An evaluation's three numbers from one LM head without its logits:
    `loss` is `lm_head_cross_entropy`'s, and `correct` and `total` are
    `token_accuracy(lm_head(input, table), targets)`'s (argmax of the capped
    logits, lowest index on ties), all computed over tiles of rows and
    vocabulary. Made by --g3moe-fuse-lm-head-loss where a cross-entropy and
    a token accuracy read the same logits and targets. Not differentiable.

    ```mlir
    %loss, %correct, %total = g3moe.lm_head_eval %h, %emb, %t, %n {ignore_index = -100 : i64}
        : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>)
        -> (tensor<f32>, tensor<f32>, tensor<f32>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_FloatTensor:$table,
                       G3MoE_IndexTensor:$targets, G3MoE_Scalar:$num_items,
                       OptionalAttr<F64Attr>:$softcap, I64Attr:$ignore_index);
  let results = (outs G3MoE_Scalar:$loss, G3MoE_Scalar:$correct, G3MoE_Scalar:$total);
  let assemblyFormat = [{
    $input `,` $table `,` $targets `,` $num_items attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def G3MoE_TokenAccuracyOp : G3MoE_Op<"token_accuracy", [Pure]> {
  let summary = "counts for mean token accuracy (TRL's metric)";
  let description = [{
    Over the positions whose target is not `ignore_index`: `total` is their
    number and `correct` the number whose logits' argmax (lowest index on
    ties) equals the target. Not differentiable: evaluation only.

    ```mlir
    %c, %n = g3moe.token_accuracy %logits, %targets {ignore_index = -100 : i64}
        : (tensor<2x16x512xf32>, tensor<2x16xi32>) -> (tensor<f32>, tensor<f32>)
    ```
  }];
  let arguments = (ins RankedTensorOf<[F32]>:$logits, G3MoE_IndexTensor:$targets,
                       I64Attr:$ignore_index);
  let results = (outs G3MoE_Scalar:$correct, G3MoE_Scalar:$total);
  let assemblyFormat = "$logits `,` $targets attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_ExpertLoadOp : G3MoE_Op<"expert_load", [Pure]> {
  let summary = "routing slots per expert over the real tokens (MoE statistics)";
  let description = [{
    `result[e]` counts the pairs (n, j) with `indices[n, j] == e` over the
    tokens whose `segment_ids` entry is non-zero. A statistic, not
    differentiable.

    ```mlir
    %load = g3moe.expert_load %idx, %seg {num_experts = 4 : i64}
        : (tensor<32x2xi32>, tensor<2x16xi32>) -> tensor<4xf32>
    ```
  }];
  let arguments = (ins G3MoE_IndexTensor:$indices, G3MoE_IndexTensor:$segment_ids,
                       I64Attr:$num_experts);
  let results = (outs RankedTensorOf<[F32]>:$result);
  let assemblyFormat = "$indices `,` $segment_ids attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_LoadBalancingLossOp : G3MoE_Op<"load_balancing_loss",
    [Pure, AttrSizedOperandSegments, G3MoE_Differentiable]> {
  let summary = "Switch-style load-balancing loss over all MoE layers";
  let description = [{
    Takes the router logits [N, E] and chosen experts [N, k] of every MoE layer
    and the document ids [B, T] (non-zero = real token). Over the R real rows
    of all layers, with p the full softmax of the logits, f[e] the number of
    routing slots that went to expert e divided by R, and P[e] the mean of
    p[:, e]: `E * sum_e f[e] * P[e]` (Mixtral's formula, k at perfect
    balance). Gradient flows through P only.

    ```mlir
    %aux = g3moe.load_balancing_loss (%l2, %l3) indices (%i2, %i3) mask %seg {num_experts = 4 : i64}
        : (tensor<32x4xf32>, tensor<32x4xf32>, tensor<32x2xi32>, tensor<32x2xi32>,
           tensor<2x16xi32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins Variadic<RankedTensorOf<[F32]>>:$logits,
                       Variadic<G3MoE_IndexTensor>:$indices,
                       G3MoE_IndexTensor:$segment_ids, I64Attr:$num_experts);
  let results = (outs G3MoE_Scalar:$result);
  let assemblyFormat = [{
    `(` $logits `)` `indices` `(` $indices `)` `mask` $segment_ids attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def G3MoE_RouterZLossOp : G3MoE_Op<"router_z_loss", [Pure, G3MoE_Differentiable]> {
  let summary = "router z-loss: mean over real tokens of logsumexp(logits)^2";
  let description = [{
    Averaged over the real tokens of all given layers.

    ```mlir
    %z = g3moe.router_z_loss (%l2, %l3) mask %seg
        : (tensor<32x4xf32>, tensor<32x4xf32>, tensor<2x16xi32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins Variadic<RankedTensorOf<[F32]>>:$logits,
                       G3MoE_IndexTensor:$segment_ids);
  let results = (outs G3MoE_Scalar:$result);
  let assemblyFormat = [{
    `(` $logits `)` `mask` $segment_ids attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def G3MoE_LossSumOp : G3MoE_Op<"loss_sum", [Pure, G3MoE_Differentiable]> {
  let summary = "weighted sum of scalar loss terms";
  let description = [{
    `result = sum_i coefficients[i] * terms[i]`.

    ```mlir
    %loss = g3moe.loss_sum %ce, %aux {coefficients = array<f64: 1.0, 1.0e-03>}
        : (tensor<f32>, tensor<f32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins Variadic<G3MoE_Scalar>:$terms, DenseF64ArrayAttr:$coefficients);
  let results = (outs G3MoE_Scalar:$result);
  let assemblyFormat = "$terms attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

include "dialects/G3MoE/IR/G3MoEGradOps.td"
include "dialects/G3MoE/IR/G3MoETrainOps.td"
include "dialects/G3MoE/IR/G3MoECollectiveOps.td"
include "dialects/G3MoE/IR/G3MoEFp8Ops.td"

#endif // G3MOE_OPS_TD
