// --g3moe-lora: adapters on the targeted projections, PEFT names, frozen rest.
// RUN: g3moe-opt %s --split-input-file --g3moe-lora="rank=4 alpha=16 dropout=0.05 targets=gate_proj,down_proj" | FileCheck %s

// CHECK-LABEL: func.func @forward
// CHECK-SAME: %[[X:[^:]*]]: tensor<2x64xbf16>
// CHECK-SAME: %[[KEY:[^:]*]]: tensor<2xi64> {g3moe.input = "rng_key"}
func.func @forward(%x: tensor<2x64xbf16>, %key: tensor<2xi64> {g3moe.input = "rng_key"}) -> tensor<2x128xbf16> {
  %u = g3moe.random_uniform %key {stream = 7 : i64, low = 0.0 : f64, high = 1.0 : f64} : (tensor<2xi64>) -> tensor<2x64xf32>
  // The base weight is frozen; A and B are trainable fp32 cast to bf16.
  // CHECK: %[[W:.*]] = g3moe.param "model.layers.0.mlp.gate_proj.weight" : tensor<128x64xbf16>
  %w = g3moe.param "model.layers.0.mlp.gate_proj.weight" trainable : tensor<128x64xbf16>
  // CHECK: %[[Y:.*]] = g3moe.linear %[[X]], %[[W]]
  // CHECK: %[[A:.*]] = g3moe.param "model.layers.0.mlp.gate_proj.lora_A.weight" trainable : tensor<4x64xf32>
  // CHECK: %[[A16:.*]] = g3moe.convert %[[A]] : tensor<4x64xf32> -> tensor<4x64xbf16>
  // CHECK: %[[B:.*]] = g3moe.param "model.layers.0.mlp.gate_proj.lora_B.weight" trainable : tensor<128x4xf32>
  // alpha/r scales the fp32 B, before its conversion.
  // CHECK: %[[BS:.*]] = g3moe.scale %[[B]] {factor = 4.000000e+00 : f64} : tensor<128x4xf32>
  // CHECK: %[[B16:.*]] = g3moe.convert %[[BS]]
  // CHECK: %[[U:.*]] = g3moe.random_uniform %[[KEY]] {high = 1.000000e+00 : f64, low = 0.000000e+00 : f64, stream = 8 : i64}
  // CHECK: %[[D:.*]] = g3moe.dropout %[[X]], %[[U]] {p = 5.000000e-02 : f64}
  // CHECK: %[[H:.*]] = g3moe.linear %[[D]], %[[A16]] : (tensor<2x64xbf16>, tensor<4x64xbf16>) -> tensor<2x4xbf16>
  // CHECK: %[[L:.*]] = g3moe.linear %[[H]], %[[B16]] : (tensor<2x4xbf16>, tensor<128x4xbf16>) -> tensor<2x128xbf16>
  // CHECK-NEXT: %[[SUM:.*]] = g3moe.add %[[Y]], %[[L]]
  %y = g3moe.linear %x, %w : (tensor<2x64xbf16>, tensor<128x64xbf16>) -> tensor<2x128xbf16>
  // Not a target: no adapter.
  // CHECK: g3moe.param "model.layers.0.mlp.up_proj.weight" : tensor<128x64xbf16>
  // CHECK-NOT: up_proj.lora
  %w2 = g3moe.param "model.layers.0.mlp.up_proj.weight" : tensor<128x64xbf16>
  %z = g3moe.linear %x, %w2 : (tensor<2x64xbf16>, tensor<128x64xbf16>) -> tensor<2x128xbf16>
  %r = g3moe.mul %y, %z : tensor<2x128xbf16>
  // CHECK: g3moe.mul %[[SUM]]
  // CHECK: g3moe.param "model.layers.0.mlp.down_proj.lora_A.weight" trainable : tensor<4x128xf32>
  // CHECK: g3moe.random_uniform %[[KEY]] {{.*}}stream = 9 : i64
  %wd = g3moe.param "model.layers.0.mlp.down_proj.weight" : tensor<128x128xbf16>
  %d = g3moe.linear %r, %wd : (tensor<2x128xbf16>, tensor<128x128xbf16>) -> tensor<2x128xbf16>
  return %d : tensor<2x128xbf16>
}

// -----

// Experts get stacked adapters; the router `moe.gate` is not `gate_proj`.
// CHECK-LABEL: func.func @experts
// CHECK-SAME: %{{.*}}: tensor<2xi64> {g3moe.input = "rng_key"})
func.func @experts(%x: tensor<8x64xbf16>, %off: tensor<5xi32>) -> tensor<8x64xbf16> {
  // CHECK: g3moe.param "model.layers.2.moe.gate.weight" : tensor<4x64xf32>
  // CHECK-NOT: moe.gate.lora
  %r = g3moe.param "model.layers.2.moe.gate.weight" : tensor<4x64xf32>
  %xf = g3moe.convert %x : tensor<8x64xbf16> -> tensor<8x64xf32>
  %logits = g3moe.linear %xf, %r : (tensor<8x64xf32>, tensor<4x64xf32>) -> tensor<8x4xf32>
  %w = g3moe.param "model.layers.2.moe.experts.{e}.down_proj.weight" : tensor<4x64x64xbf16>
  // CHECK: g3moe.param "model.layers.2.moe.experts.{e}.down_proj.lora_A.weight" trainable : tensor<4x4x64xf32>
  // CHECK: g3moe.param "model.layers.2.moe.experts.{e}.down_proj.lora_B.weight" trainable : tensor<4x64x4xf32>
  // CHECK: g3moe.random_uniform {{.*}}stream = 0 : i64
  // CHECK: g3moe.expert_linear {{.*}} : (tensor<8x64xbf16>, tensor<5xi32>, tensor<4x4x64xbf16>) -> tensor<8x4xbf16>
  // CHECK: g3moe.expert_linear {{.*}} : (tensor<8x4xbf16>, tensor<5xi32>, tensor<4x64x4xbf16>) -> tensor<8x64xbf16>
  %y = g3moe.expert_linear %x, %off, %w : (tensor<8x64xbf16>, tensor<5xi32>, tensor<4x64x64xbf16>) -> tensor<8x64xbf16>
  %g = g3moe.param "model.layers.2.moe.experts.{e}.gate_proj.weight" : tensor<4x64x64xbf16>
  %y2 = g3moe.expert_linear %y, %off, %g : (tensor<8x64xbf16>, tensor<5xi32>, tensor<4x64x64xbf16>) -> tensor<8x64xbf16>
  return %y2 : tensor<8x64xbf16>
}

// -----

// An eval step gets adapters without dropout.
// CHECK-LABEL: func.func @eval_step
// CHECK-NOT: g3moe.random_uniform
// CHECK-NOT: g3moe.dropout
// CHECK: g3moe.scale
module attributes {g3moe.training = {mode = "eval"}} {
  func.func @eval_step(%x: tensor<2x64xbf16>) -> tensor<2x64xbf16> {
    %w = g3moe.param "model.layers.0.mlp.gate_proj.weight" : tensor<64x64xbf16>
    %y = g3moe.linear %x, %w : (tensor<2x64xbf16>, tensor<64x64xbf16>) -> tensor<2x64xbf16>
    %w2 = g3moe.param "model.layers.0.mlp.down_proj.weight" : tensor<64x64xbf16>
    %y2 = g3moe.linear %y, %w2 : (tensor<2x64xbf16>, tensor<64x64xbf16>) -> tensor<2x64xbf16>
    return %y2 : tensor<2x64xbf16>
  }
}
