// --g3moe-autodiff: gradients along trainable paths only, typed like their params.
// RUN: g3moe-opt %s --split-input-file --g3moe-autodiff | FileCheck %s

// A frozen first layer needs neither a weight gradient nor an input gradient;
// the trainable second layer gets its weight gradient in fp32.
// CHECK-LABEL: func.func @forward_backward(
// CHECK-SAME: -> (tensor<f32> {g3moe.output = "loss"}, tensor<16x8xf32> {g3moe.grad = "w2"})
func.func @forward(%x: tensor<4x8xbf16>, %t: tensor<4xi32>, %n: tensor<f32>) -> (tensor<f32> {g3moe.output = "loss"}) {
  %w1 = g3moe.param "w1" : tensor<8x8xbf16>
  %h = g3moe.linear %x, %w1 : (tensor<4x8xbf16>, tensor<8x8xbf16>) -> tensor<4x8xbf16>
  %w2 = g3moe.param "w2" trainable : tensor<16x8xf32>
  %w2b = g3moe.convert %w2 : tensor<16x8xf32> -> tensor<16x8xbf16>
  %l = g3moe.linear %h, %w2b : (tensor<4x8xbf16>, tensor<16x8xbf16>) -> tensor<4x16xf32>
  %ce = g3moe.cross_entropy %l, %t, %n {ignore_index = -100 : i64}
      : (tensor<4x16xf32>, tensor<4xi32>, tensor<f32>) -> tensor<f32>
  return %ce : tensor<f32>
}
// CHECK: %[[H:.*]] = g3moe.linear
// CHECK: %[[CE:.*]] = g3moe.cross_entropy
// CHECK: %[[ONE:.*]] = arith.constant dense<1.000000e+00> : tensor<f32>
// CHECK: %[[DL:.*]] = g3moe.cross_entropy_grad %{{.*}}, %{{.*}}, %{{.*}}, %[[ONE]] {ignore_index = -100 : i64}
// CHECK: %[[DW:.*]] = g3moe.linear_grad_weight %[[DL]], %[[H]] : (tensor<4x16xf32>, tensor<4x8xbf16>) -> tensor<16x8xf32>
// CHECK-NOT: g3moe.linear_grad_input
// CHECK-NOT: g3moe.linear_grad_weight
// CHECK: return %[[CE]], %[[DW]] : tensor<f32>, tensor<16x8xf32>

// -----

// Two uses of a trainable value add their gradients; dropout's backward reuses
// the forward's draw; rope's backward is the transposed rotation.
// CHECK-LABEL: func.func @forward_backward(
func.func @forward(%x: tensor<1x4x2x8xbf16>, %pos: tensor<1x4xi32>, %key: tensor<2xi64>) -> tensor<f32> {
  %w = g3moe.param "w" trainable : tensor<1x4x2x8xf32>
  %wb = g3moe.convert %w : tensor<1x4x2x8xf32> -> tensor<1x4x2x8xbf16>
  %u = g3moe.random_uniform %key {stream = 0 : i64, low = 0.0 : f64, high = 1.0 : f64} : (tensor<2xi64>) -> tensor<1x4x2x8xf32>
  %d = g3moe.dropout %wb, %u {p = 0.1 : f64} : (tensor<1x4x2x8xbf16>, tensor<1x4x2x8xf32>) -> tensor<1x4x2x8xbf16>
  %r = g3moe.rope %d, %pos {theta = 1.0e+04 : f64, scaling_factor = 1.0 : f64}
      : (tensor<1x4x2x8xbf16>, tensor<1x4xi32>) -> tensor<1x4x2x8xbf16>
  %m = g3moe.mul %r, %wb : tensor<1x4x2x8xbf16>
  %flat = g3moe.reshape %m : tensor<1x4x2x8xbf16> -> tensor<64xbf16>
  %f = g3moe.convert %flat : tensor<64xbf16> -> tensor<64xf32>
  %g = g3moe.param "g" : tensor<1x64xf32>
  %s = g3moe.linear %f, %g : (tensor<64xf32>, tensor<1x64xf32>) -> tensor<1xf32>
  %s0 = g3moe.reshape %s : tensor<1xf32> -> tensor<f32>
  %loss = g3moe.loss_sum %s0 {coefficients = array<f64: 2.0>} : (tensor<f32>) -> tensor<f32>
  return %loss : tensor<f32>
}
// CHECK: %[[U:.*]] = g3moe.random_uniform
// CHECK: %[[R:.*]] = g3moe.rope
// CHECK: g3moe.scale %{{.*}} {factor = 2.000000e+00 : f64}
// CHECK: g3moe.linear_grad_input
// CHECK-NOT: g3moe.linear_grad_weight
// CHECK: %[[DM:.*]] = g3moe.reshape %{{.*}} : tensor<64xbf16> -> tensor<1x4x2x8xbf16>
// CHECK: %[[DR:.*]] = g3moe.mul %[[DM]], %{{.*}}
// CHECK: %[[DW1:.*]] = g3moe.mul %[[DM]], %[[R]]
// CHECK: %[[DD:.*]] = g3moe.rope %[[DR]], %{{.*}} {scaling_factor = 1.000000e+00 : f64, theta = 1.000000e+04 : f64, transpose}
// CHECK: %[[DWB:.*]] = g3moe.dropout %[[DD]], %[[U]] {p = 1.000000e-01 : f64}
// CHECK: %[[SUM:.*]] = g3moe.add %[[DW1]], %[[DWB]]
// CHECK: %[[G:.*]] = g3moe.convert %[[SUM]] : tensor<1x4x2x8xbf16> -> tensor<1x4x2x8xf32>
// CHECK: return %{{.*}}, %[[G]]

// -----

// A trainable parameter that does not reach the loss gets a zero gradient.
// CHECK-LABEL: func.func @forward_backward(
func.func @forward(%x: tensor<4xf32>) -> tensor<f32> {
  %a = g3moe.param "a" trainable : tensor<1x4xf32>
  %b = g3moe.param "b" trainable : tensor<3xf32>
  %y = g3moe.linear %x, %a : (tensor<4xf32>, tensor<1x4xf32>) -> tensor<1xf32>
  %l = g3moe.reshape %y : tensor<1xf32> -> tensor<f32>
  return %l : tensor<f32>
}
// CHECK: %[[DA:.*]] = g3moe.linear_grad_weight
// CHECK: %[[Z:.*]] = arith.constant dense<0.000000e+00> : tensor<3xf32>
// CHECK: return %{{.*}}, %[[DA]], %[[Z]]

// -----

// Statistics @forward returns after the loss pass through unchanged, before
// the gradients.
// CHECK-LABEL: func.func @forward_backward(
// CHECK-SAME: -> (tensor<f32> {g3moe.output = "loss"}, tensor<1xf32> {g3moe.output = "stat"}, tensor<1x4xf32> {g3moe.grad = "a"})
func.func @forward(%x: tensor<4xf32>) -> (tensor<f32> {g3moe.output = "loss"}, tensor<1xf32> {g3moe.output = "stat"}) {
  %a = g3moe.param "a" trainable : tensor<1x4xf32>
  %y = g3moe.linear %x, %a : (tensor<4xf32>, tensor<1x4xf32>) -> tensor<1xf32>
  %l = g3moe.reshape %y : tensor<1xf32> -> tensor<f32>
  return %l, %y : tensor<f32>, tensor<1xf32>
}
// CHECK: %[[Y:.*]] = g3moe.linear
// CHECK: return %{{.*}}, %[[Y]], %{{.*}} :
