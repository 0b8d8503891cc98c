// --g3moe-fp8-base: the products of frozen weights become e4m3 products of
// the weight's frozen_e4m3 copies (transposed for an input gradient), which
// replace the bf16 parameter; an expert product keeps its fused low-rank
// term and the term's mask.
// RUN: g3moe-opt %s --split-input-file --g3moe-fp8-base | FileCheck %s

// A LoRA forward and input gradient of a dense projection: the frozen
// products change, the adapter's (trainable, and rank 4) do not.
// CHECK-LABEL: func.func @dense
func.func @dense(%x: tensor<8x64xbf16>, %dy: tensor<8x32xbf16>, %h: tensor<8x4xbf16>,
                 %b: tensor<32x4xbf16>) -> (tensor<8x32xbf16>, tensor<8x64xbf16>) {
  %w = g3moe.param "model.layers.0.self_attn.k_proj.weight" : tensor<32x64xbf16>
  // CHECK-NOT: g3moe.param
  // CHECK: %[[Q:.*]], %[[S:.*]] = g3moe.frozen_e4m3 "model.layers.0.self_attn.k_proj.weight" : tensor<32x64xbf16> -> tensor<32x64xf8E4M3FN>, tensor<32xf32>
  // CHECK: %[[QT:.*]], %[[ST:.*]] = g3moe.frozen_e4m3 "model.layers.0.self_attn.k_proj.weight" transpose : tensor<32x64xbf16> -> tensor<64x32xf8E4M3FN>, tensor<64xf32>
  // CHECK-NOT: g3moe.param
  // CHECK: %[[BASE:.*]] = g3moe.scaled_linear %arg0, %[[Q]], %[[S]] :
  %base = g3moe.linear %x, %w : (tensor<8x64xbf16>, tensor<32x64xbf16>) -> tensor<8x32xbf16>
  // CHECK: g3moe.linear %arg2, %arg3 plus %[[BASE]]
  %y = g3moe.linear %h, %b plus %base : (tensor<8x4xbf16>, tensor<32x4xbf16>, tensor<8x32xbf16>) -> tensor<8x32xbf16>
  // CHECK: g3moe.scaled_linear %arg1, %[[QT]], %[[ST]] :
  %dx = g3moe.linear_grad_input %dy, %w : (tensor<8x32xbf16>, tensor<32x64xbf16>) -> tensor<8x64xbf16>
  return %y, %dx : tensor<8x32xbf16>, tensor<8x64xbf16>
}

// -----

// Expert products with fused low-rank terms: the e4m3 product keeps the
// term (the input gradient's A as `transposed`) and its mask.
// CHECK-LABEL: func.func @experts
func.func @experts(%x: tensor<16x64xbf16>, %off: tensor<3xi32>, %h: tensor<16x4xbf16>,
                   %b: tensor<2x32x4xbf16>, %dy: tensor<16x32xbf16>, %dh: tensor<16x4xbf16>,
                   %a: tensor<2x4x64xbf16>, %v: tensor<16x64xbf16>, %m: tensor<32xi32>)
    -> (tensor<16x32xbf16>, tensor<16x64xbf16>) {
  %w = g3moe.param "model.layers.2.moe.experts.{e}.up_proj.weight" : tensor<2x32x64xbf16>
  // CHECK: %[[Q:.*]], %[[S:.*]] = g3moe.frozen_e4m3 "model.layers.2.moe.experts.{e}.up_proj.weight" : tensor<2x32x64xbf16> -> tensor<2x32x64xf8E4M3FN>, tensor<2x32xf32>
  // CHECK: %[[QT:.*]], %[[ST:.*]] = g3moe.frozen_e4m3 "model.layers.2.moe.experts.{e}.up_proj.weight" transpose : tensor<2x32x64xbf16> -> tensor<2x64x32xf8E4M3FN>, tensor<2x64xf32>
  // CHECK-NOT: g3moe.expert_linear
  // CHECK: %[[Y:.*]] = g3moe.scaled_expert_linear %arg0, %arg1, %[[Q]], %[[S]] lowrank %arg2, %arg3 :
  %y = g3moe.expert_linear %x, %off, %w lowrank %h, %b
      : (tensor<16x64xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>, tensor<16x4xbf16>, tensor<2x32x4xbf16>) -> tensor<16x32xbf16>
  // CHECK-NOT: g3moe.expert_linear
  // CHECK: %[[DX:.*]] = g3moe.scaled_expert_linear %arg4, %arg1, %[[QT]], %[[ST]] plus %arg7 lowrank %arg5, %arg6 transposed dropout %arg8 {dropout_p = 5.000000e-02 : f64} :
  %dx = g3moe.expert_linear_grad_input %dy, %off, %w, %v lowrank %dh, %a dropout %m {dropout_p = 0.05 : f64}
      : (tensor<16x32xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>, tensor<16x64xbf16>, tensor<16x4xbf16>, tensor<2x4x64xbf16>, tensor<32xi32>) -> tensor<16x64xbf16>
  // CHECK: return %[[Y]], %[[DX]]
  return %y, %dx : tensor<16x32xbf16>, tensor<16x64xbf16>
}

// -----

// Trainable weights, the fp32 router and sizes that are not multiples of 16
// keep their products.
// CHECK-LABEL: func.func @kept
func.func @kept(%x: tensor<8x64xbf16>, %xf: tensor<8x64xf32>) -> (tensor<8x32xbf16>, tensor<8x4xf32>, tensor<8x24xbf16>) {
  %t = g3moe.param "model.layers.0.self_attn.k_proj.weight" trainable : tensor<32x64xbf16>
  %r = g3moe.param "model.layers.2.moe.gate.weight" : tensor<4x64xf32>
  %n = g3moe.param "model.layers.0.self_attn.v_proj.weight" : tensor<24x64xbf16>
  // CHECK-NOT: frozen_e4m3
  // CHECK-NOT: scaled_linear
  %a = g3moe.linear %x, %t : (tensor<8x64xbf16>, tensor<32x64xbf16>) -> tensor<8x32xbf16>
  %b = g3moe.linear %xf, %r : (tensor<8x64xf32>, tensor<4x64xf32>) -> tensor<8x4xf32>
  %c = g3moe.linear %x, %n : (tensor<8x64xbf16>, tensor<24x64xbf16>) -> tensor<8x24xbf16>
  return %a, %b, %c : tensor<8x32xbf16>, tensor<8x4xf32>, tensor<8x24xbf16>
}

// -----

// A weight that something else also reads as bf16 stays a parameter beside
// its e4m3 copy.
// CHECK-LABEL: func.func @shared
func.func @shared(%x: tensor<8x64xbf16>) -> (tensor<8x32xbf16>, tensor<32x64xbf16>) {
  // CHECK: %[[W:.*]] = g3moe.param "model.layers.0.self_attn.k_proj.weight" : tensor<32x64xbf16>
  // CHECK: g3moe.frozen_e4m3 "model.layers.0.self_attn.k_proj.weight" :
  %w = g3moe.param "model.layers.0.self_attn.k_proj.weight" : tensor<32x64xbf16>
  %y = g3moe.linear %x, %w : (tensor<8x64xbf16>, tensor<32x64xbf16>) -> tensor<8x32xbf16>
  %w2 = g3moe.mul %w, %w : tensor<32x64xbf16>
  // CHECK: return %{{.*}}, %{{.*}}
  return %y, %w2 : tensor<8x32xbf16>, tensor<32x64xbf16>
}
