//===- G3MoEFp8Ops.td - e4m3 products of frozen weights ----*- tablegen -*-===//
//
// The ops --g3moe-fp8-base puts in place of the products of frozen weights
// (fp8_base): a weight quantized to e4m3 with one fp32 scale per row, and the
// products that quantize their input's rows the same way as they read them.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_FP8_OPS_TD
#define G3MOE_FP8_OPS_TD

def G3MoE_Fp8Tensor : RankedTensorOf<[F8E4M3FN]>;
def G3MoE_ScaleTensor : RankedTensorOf<[F32]>;

def G3MoE_QuantizeFp8Op : G3MoE_Op<"quantize_fp8", [Pure]> {
  let summary = "a weight in e4m3 with one fp32 scale per row";
  let description = [{
    For a weight [N, K] (or [E, N, K], stacked experts) each row n gets
    `scale[n] = max_k |w[n, k]| / 448` and `result[n, k] = e4m3(w[n, k] *
    (448 / max_k |w[n, k]|))`, rounded to nearest even and saturated to ±448;
    a row of zeros gets scale 1 and zeros. With `transpose` the rows are
    those of the transpose: result [K, N] (or [E, K, N]) and scale [K] (or
    [E, K]), the layout an input gradient's product reads, since e4m3
    products contract the last dimension of both operands.

    ```mlir
    %q, %s = g3moe.quantize_fp8 %w
        : (tensor<128x64xbf16>) -> (tensor<128x64xf8E4M3FN>, tensor<128xf32>)
    %qt, %st = g3moe.quantize_fp8 %w {transpose}
        : (tensor<128x64xbf16>) -> (tensor<64x128xf8E4M3FN>, tensor<64xf32>)
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, UnitAttr:$transpose);
  let results = (outs G3MoE_Fp8Tensor:$result, G3MoE_ScaleTensor:$scale);
  let assemblyFormat = "$input attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def G3MoE_FrozenE4M3Op : G3MoE_Op<"frozen_e4m3", [Pure]> {
  let summary = "a frozen weight kept in e4m3, quantized once when it is loaded";
  let description = [{
    What `quantize_fp8` makes of the frozen parameter `name` (of type
    `source_type`), as state: the runtime quantizes the weight once, after
    loading or initialising it, and keeps the e4m3 values and scales in
    place of the weight. The weight itself then stays in host memory only,
    unless another op reads it as a `param`. Made by --g3moe-fp8-base; it
    lowers to no instruction.

    ```mlir
    %q, %s = g3moe.frozen_e4m3 "model.layers.0.mlp.up_proj.weight"
        : tensor<128x64xbf16> -> tensor<128x64xf8E4M3FN>, tensor<128xf32>
    %qt, %st = g3moe.frozen_e4m3 "model.layers.0.mlp.up_proj.weight" transpose
        : tensor<128x64xbf16> -> tensor<64x128xf8E4M3FN>, tensor<64xf32>
    ```
  }];
  let arguments = (ins StrAttr:$name, TypeAttrOf<AnyRankedTensor>:$source_type,
                       UnitAttr:$transpose);
  let results = (outs G3MoE_Fp8Tensor:$result, G3MoE_ScaleTensor:$scale);
  let assemblyFormat = [{
    $name (`transpose` $transpose^)? attr-dict `:` $source_type `->` type($result) `,` type($scale)
  }];
  let hasVerifier = 1;
}

def G3MoE_ScaledLinearOp : G3MoE_Op<"scaled_linear", [Pure]> {
  let summary = "x·Wᵀ with W in e4m3 and each row of x quantized to e4m3";
  let description = [{
    Each row m of `input` [..., K] is quantized as `quantize_fp8` quantizes a
    weight row, with scale `s[m]`; then `result[m, n] = (sum_k qx[m, k] *
    weight[n, k]) * s[m] * weight_scale[n]` in fp32, plus the optional
    `addend`, rounded once to the result type. `weight` [N, K] and
    `weight_scale` [N] come from `quantize_fp8`. Made by --g3moe-fp8-base
    from the forward and input-gradient products of frozen weights, after
    differentiation.

    ```mlir
    %y = g3moe.scaled_linear %x, %q, %s
        : (tensor<2x16x64xbf16>, tensor<128x64xf8E4M3FN>, tensor<128xf32>) -> tensor<2x16x128xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_Fp8Tensor:$weight,
                       G3MoE_ScaleTensor:$weight_scale, Optional<G3MoE_FloatTensor>:$addend);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight `,` $weight_scale (`plus` $addend^)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def G3MoE_ScaledExpertLinearOp
    : G3MoE_Op<"scaled_expert_linear", [Pure, AttrSizedOperandSegments]> {
  let summary = "expert_linear with e4m3 weights and rows quantized to e4m3";
  let description = [{
    Rows `expert_offsets[e] .. expert_offsets[e + 1]` of `input` [M, K] are
    multiplied as `scaled_linear` multiplies, by `weight[e]` [N, K] with
    scales `weight_scale[e]` [N]; plus the optional `addend`. Rows past the
    last expert get the addend (or zero).

    With `lowrank %h, %l` (a LoRA term that --g3moe-fp8-base keeps from an
    expert product fused by --g3moe-fuse-linear-add) the rows of expert e
    also get `h·l[e]`ᵀ in bf16 products, `h` [M, r] and `l` [E, N, r] (or,
    with `transposed`, [E, r, N]: an input gradient's A), added to the
    scaled fp32 product before the one rounding. With `dropout %m
    {dropout_p}` (only with `lowrank`) the mask drops that term alone, as
    `expert_linear_grad_input` drops its term.

    ```mlir
    %y = g3moe.scaled_expert_linear %p, %off, %q, %s
        : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xf8E4M3FN>, tensor<4x128xf32>)
        -> tensor<64x128xbf16>
    %l = g3moe.scaled_expert_linear %p, %off, %q, %s lowrank %h, %b
        : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xf8E4M3FN>, tensor<4x128xf32>,
           tensor<64x8xbf16>, tensor<4x128x8xbf16>) -> tensor<64x128xbf16>
    ```
  }];
  let arguments = (ins G3MoE_FloatTensor:$input, G3MoE_IndexTensor:$expert_offsets,
                       G3MoE_Fp8Tensor:$weight, G3MoE_ScaleTensor:$weight_scale,
                       Optional<G3MoE_FloatTensor>:$addend,
                       Optional<G3MoE_FloatTensor>:$lowrank_input,
                       Optional<G3MoE_FloatTensor>:$lowrank_weight,
                       UnitAttr:$lowrank_transposed,
                       Optional<G3MoE_DropoutMask>:$dropout_mask,
                       OptionalAttr<F64Attr>:$dropout_p);
  let results = (outs G3MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $expert_offsets `,` $weight `,` $weight_scale (`plus` $addend^)?
    (`lowrank` $lowrank_input^ `,` $lowrank_weight (`transposed` $lowrank_transposed^)?)?
    (`dropout` $dropout_mask^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

#endif // G3MOE_FP8_OPS_TD
