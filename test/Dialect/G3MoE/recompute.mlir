// --g3moe-recompute: values of the chosen scopes that the backward reads are
// computed again right before their first backward use; values outside the
// scopes (the expert input) are kept.
// RUN: g3moe-opt %s --g3moe-recompute | FileCheck %s
// RUN: g3moe-opt %s --g3moe-recompute="scopes=nothing.matches" | FileCheck %s --check-prefix=NONE

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
