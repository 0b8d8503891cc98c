// --g3moe-recompute: values of the chosen scopes that the backward reads are
// computed again right before their first backward use; values outside the
// scopes (the expert input) are kept. Checkpoint scopes are made again whole.
// RUN: g3moe-opt %s --split-input-file --g3moe-recompute | FileCheck %s
// RUN: g3moe-opt %s --split-input-file --g3moe-recompute="scopes=nothing.matches" | FileCheck %s --check-prefix=NONE
// RUN: g3moe-opt %s --split-input-file --g3moe-recompute="checkpoints=model.layers.1." | FileCheck %s --check-prefix=CKPT
// RUN: g3moe-opt %s --split-input-file --g3moe-recompute="checkpoints=model.layers.1. keep-attention=model.layers.1." | FileCheck %s --check-prefix=KEEP
// RUN: not g3moe-opt %s --split-input-file --g3moe-recompute="keep-attention=model.layers.1." 2>&1 | FileCheck %s --check-prefix=NOCKPT
// NOCKPT: error: keep-attention names attention to keep in checkpoints, but no checkpoints are given (keep-attention 'model.layers.1.')

// CHECK-LABEL: func.func @forward_backward
func.func @forward_backward(%x: tensor<8x4xbf16>, %off: tensor<3xi32>) -> (tensor<f32>, tensor<2x6x4xf32>) {
  // CHECK: %[[W:.*]] = g3moe.param "w"
  %w = g3moe.param "w" : tensor<2x6x4xbf16> loc("model.layers.2.moe.experts")
  // CHECK: %[[G:.*]] = g3moe.expert_linear %{{.*}}, %{{.*}}, %[[W]]
  %g = g3moe.expert_linear %x, %off, %w
      : (tensor<8x4xbf16>, tensor<3xi32>, tensor<2x6x4xbf16>) -> tensor<8x6xbf16> loc("model.layers.2.moe.experts")
  // CHECK: %[[A:.*]] = g3moe.gelu_tanh_mul %[[G]], %[[G]]
  %a = g3moe.gelu_tanh_mul %g, %g : tensor<8x6xbf16> loc("model.layers.2.moe.experts")
  %f = g3moe.convert %a : tensor<8x6xbf16> -> tensor<8x6xf32> loc("model.layers.2.post_feedforward_layernorm")
  %r = g3moe.reshape %f : tensor<8x6xf32> -> tensor<48xf32> loc("loss")
  %v = g3moe.param "v" : tensor<1x48xf32> loc("loss")
  %l1 = g3moe.linear %r, %v : (tensor<48xf32>, tensor<1x48xf32>) -> tensor<1xf32> loc("loss")
  // CHECK: %[[LOSS:.*]] = g3moe.reshape {{.*}} -> tensor<f32>
  %loss = g3moe.reshape %l1 : tensor<1xf32> -> tensor<f32> loc("loss")
  // The backward: the gate activation is recomputed from the kept input.
  // CHECK-NEXT: %[[W2:.*]] = g3moe.param "w"
  // CHECK-NEXT: %[[G2:.*]] = g3moe.expert_linear %{{.*}}, %{{.*}}, %[[W2]]
  // CHECK-NEXT: %[[A2:.*]] = g3moe.gelu_tanh_mul %[[G2]], %[[G2]]
  // CHECK-NEXT: %[[D:.*]], %{{.*}} = g3moe.gelu_tanh_mul_grad %[[G2]], %[[G2]], %[[A2]]
  %dg:2 = g3moe.gelu_tanh_mul_grad %g, %g, %a : (tensor<8x6xbf16>, tensor<8x6xbf16>, tensor<8x6xbf16>) -> (tensor<8x6xbf16>, tensor<8x6xbf16>)
  // A second backward reader shares the copy.
  // CHECK: g3moe.expert_linear_grad_weight %[[D]], %{{.*}}, %[[G2]]
  %dw = g3moe.expert_linear_grad_weight %dg#0, %off, %g
      : (tensor<8x6xbf16>, tensor<3xi32>, tensor<8x6xbf16>) -> tensor<2x6x6xf32>
  %dw2 = g3moe.expert_linear_grad_weight %dg#0, %off, %x
      : (tensor<8x6xbf16>, tensor<3xi32>, tensor<8x4xbf16>) -> tensor<2x6x4xf32>
  return %loss, %dw2 : tensor<f32>, tensor<2x6x4xf32>
}

// NONE-LABEL: func.func @forward_backward
// NONE: g3moe.expert_linear
// NONE-NOT: g3moe.expert_linear %
// NONE: g3moe.gelu_tanh_mul_grad

// -----

// A checkpoint (layer 1) is made again whole from what enters it: the
// boundary add_rms_norm's sum is kept and its norm redone as rms_norm, the
// layer's norms (not cheap) are recomputed, layer 0's values are kept, and a
// statistic after the loss (returned directly) reads the forward's values.
// CKPT-LABEL: func.func @forward_backward
func.func @forward_backward(%x: tensor<4x8xf32>, %w: tensor<8xf32>, %dy: tensor<4x8xf32>)
    -> (tensor<f32>, tensor<4x8xf32>, tensor<4x8xf32>) {
  // CKPT: %[[A0:.*]] = g3moe.rms_norm
  %a0 = g3moe.rms_norm %x, %w {eps = 1.0e-06 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32> loc("model.layers.0.input_layernorm")
  // CKPT: %[[S:.*]], %{{.*}} = g3moe.add_rms_norm
  %s, %n = g3moe.add_rms_norm %x, %a0, %w {eps = 1.0e-06 : f64}
      : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>)
      loc(fused["model.layers.0.post_feedforward_layernorm", "model.layers.1.input_layernorm"])
  // CKPT: %[[M:.*]] = g3moe.mul
  %m = g3moe.mul %n, %n : tensor<4x8xf32> loc("model.layers.1.mlp")
  %r = g3moe.rms_norm %m, %w {eps = 1.0e-06 : f64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32> loc("model.layers.1.post_feedforward_layernorm")
  %f = g3moe.reshape %r : tensor<4x8xf32> -> tensor<32xf32> loc("loss")
  %v = g3moe.param "v" : tensor<1x32xf32> loc("loss")
  %l1 = g3moe.linear %f, %v : (tensor<32xf32>, tensor<1x32xf32>) -> tensor<1xf32> loc("loss")
  // CKPT: %[[LOSS:.*]] = g3moe.reshape {{.*}} -> tensor<f32>
  %loss = g3moe.reshape %l1 : tensor<1xf32> -> tensor<f32> loc("loss")
  // CKPT-NEXT: %[[ST:.*]] = g3moe.mul %[[M]], %[[M]]
  %st = g3moe.mul %m, %m : tensor<4x8xf32> loc("model.layers.1.mlp")
  // CKPT-NEXT: %[[N2:.*]] = g3moe.rms_norm %[[S]], %{{.*}} {eps = 9.9999999999999995E-7 : f64}
  // CKPT-NEXT: %[[M2:.*]] = g3moe.mul %[[N2]], %[[N2]]
  // CKPT-NEXT: %[[R2:.*]] = g3moe.rms_norm %[[M2]]
  // CKPT-NEXT: %[[B1:.*]] = g3moe.mul %{{.*}}, %[[R2]]
  %b1 = g3moe.mul %dy, %r : tensor<4x8xf32>
  // CKPT-NEXT: %[[B2:.*]] = g3moe.mul %[[B1]], %[[A0]]
  %b2 = g3moe.mul %b1, %a0 : tensor<4x8xf32>
  // CKPT-NEXT: return %[[LOSS]], %[[B2]], %[[ST]]
  return %loss, %b2, %st : tensor<f32>, tensor<4x8xf32>, tensor<4x8xf32>
}

// -----

// A checkpoint's attention: recomputed with the layer (CKPT), or kept with
// its softmax statistics while its query is made again (KEEP).
// CKPT: func.func @forward_backward
// KEEP: func.func @forward_backward
func.func @forward_backward(%x: tensor<2x16x4x16xbf16>, %k: tensor<2x16x2x16xbf16>,
                            %s: tensor<2x16xi32>, %do: tensor<2x16x4x16xbf16>)
    -> (tensor<f32>, tensor<2x16x4x16xbf16>) {
  // CKPT: %[[Q:.*]] = g3moe.scale %{{.*}} {factor = 3.0
  // KEEP: %[[Q:.*]] = g3moe.scale %{{.*}} {factor = 3.0
  %q = g3moe.scale %x {factor = 3.0 : f64} : tensor<2x16x4x16xbf16> loc("model.layers.1.self_attn")
  // CKPT: %[[O:.*]], %[[L:.*]] = g3moe.attention %[[Q]]
  // KEEP: %[[O:.*]], %[[L:.*]] = g3moe.attention %[[Q]]
  %o, %l = g3moe.attention %q, %k, %k, %s {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>)
      -> (tensor<2x16x4x16xbf16>, tensor<2x4x16xf32>) loc("model.layers.1.self_attn")
  %f = g3moe.convert %o : tensor<2x16x4x16xbf16> -> tensor<2x16x4x16xf32> loc("model.layers.1.self_attn")
  %r = g3moe.reshape %f : tensor<2x16x4x16xf32> -> tensor<2048xf32> loc("loss")
  %v = g3moe.param "v" : tensor<1x2048xf32> loc("loss")
  %l1 = g3moe.linear %r, %v : (tensor<2048xf32>, tensor<1x2048xf32>) -> tensor<1xf32> loc("loss")
  %loss = g3moe.reshape %l1 : tensor<1xf32> -> tensor<f32> loc("loss")
  %dy = g3moe.scale %do {factor = 0.5 : f64} : tensor<2x16x4x16xbf16>
  // CKPT: %[[Q2:.*]] = g3moe.scale %{{.*}} {factor = 3.0
  // CKPT-NEXT: %[[O2:.*]], %[[L2:.*]] = g3moe.attention %[[Q2]]
  // CKPT-NEXT: g3moe.attention_grad %[[Q2]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[O2]], %[[L2]]
  // KEEP: %[[Q2:.*]] = g3moe.scale %{{.*}} {factor = 3.0
  // KEEP-NOT: g3moe.attention %
  // KEEP: g3moe.attention_grad %[[Q2]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[O]], %[[L]]
  %d:3 = g3moe.attention_grad %q, %k, %k, %s, %dy, %o, %l {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>,
         tensor<2x16x4x16xbf16>, tensor<2x16x4x16xbf16>, tensor<2x4x16xf32>)
      -> (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>)
  return %loss, %d#0 : tensor<f32>, tensor<2x16x4x16xbf16>
}
