// --g3moe-regenerate-random: a forward draw that the backward reads is drawn
// again (same key and stream) right before its first backward reader, and
// later readers share that copy; a draw only the forward reads stays alone.
// RUN: g3moe-opt %s --g3moe-regenerate-random | FileCheck %s

// CHECK-LABEL: func.func @forward_backward
func.func @forward_backward(%x: tensor<8x4xbf16>, %key: tensor<2xi64>, %dy: tensor<8x4xbf16>)
    -> (tensor<f32>, tensor<8x4xbf16>, tensor<8x4xbf16>) {
  // CHECK: %[[U:.*]] = g3moe.random_uniform %{{.*}} {high = 1.000000e+00 : f64, low = 0.000000e+00 : f64, stream = 7 : i64}
  %u = g3moe.random_uniform %key {stream = 7 : i64, low = 0.0 : f64, high = 1.0 : f64}
      : (tensor<2xi64>) -> tensor<8x4xf32>
  // CHECK: %[[J:.*]] = g3moe.random_uniform %{{.*}} {{.*}}stream = 8
  %j = g3moe.random_uniform %key {stream = 8 : i64, low = 0.99 : f64, high = 1.01 : f64}
      : (tensor<2xi64>) -> tensor<8x4xf32>
  // CHECK: g3moe.dropout %{{.*}}, %[[U]]
  %y = g3moe.dropout %x, %u {p = 0.25 : f64} : (tensor<8x4xbf16>, tensor<8x4xf32>) -> tensor<8x4xbf16>
  %f = g3moe.convert %y : tensor<8x4xbf16> -> tensor<8x4xf32>
  // CHECK: g3moe.mul %{{.*}}, %[[J]]
  %m = g3moe.mul %f, %j : tensor<8x4xf32>
  %r = g3moe.reshape %m : tensor<8x4xf32> -> tensor<32xf32>
  %v = g3moe.param "v" : tensor<1x32xf32>
  %l1 = g3moe.linear %r, %v : (tensor<32xf32>, tensor<1x32xf32>) -> tensor<1xf32>
  // CHECK: %[[LOSS:.*]] = g3moe.reshape {{.*}} -> tensor<f32>
  %loss = g3moe.reshape %l1 : tensor<1xf32> -> tensor<f32>
  // The backward reads the dropout draw twice and the jitter draw not at all.
  // CHECK-NEXT: %[[U2:.*]] = g3moe.random_uniform %{{.*}} {high = 1.000000e+00 : f64, low = 0.000000e+00 : f64, stream = 7 : i64}
  // CHECK-NEXT: g3moe.dropout %{{.*}}, %[[U2]]
  %dx = g3moe.dropout %dy, %u {p = 0.25 : f64} : (tensor<8x4xbf16>, tensor<8x4xf32>) -> tensor<8x4xbf16>
  // CHECK-NEXT: g3moe.dropout %{{.*}}, %[[U2]]
  %dx2 = g3moe.dropout %dx, %u {p = 0.25 : f64} : (tensor<8x4xbf16>, tensor<8x4xf32>) -> tensor<8x4xbf16>
  // CHECK-NOT: g3moe.random_uniform
  // CHECK: return
  return %loss, %dx, %dx2 : tensor<f32>, tensor<8x4xbf16>, tensor<8x4xbf16>
}

// Without @forward_backward nothing changes.
// CHECK-LABEL: func.func @eval_forward
// CHECK-COUNT-1: g3moe.random_uniform
// CHECK-NOT: g3moe.random_uniform
func.func @eval_forward(%x: tensor<8x4xbf16>, %key: tensor<2xi64>) -> tensor<8x4xbf16> {
  %u = g3moe.random_uniform %key {stream = 1 : i64, low = 0.0 : f64, high = 1.0 : f64}
      : (tensor<2xi64>) -> tensor<8x4xf32>
  %y = g3moe.dropout %x, %u {p = 0.25 : f64} : (tensor<8x4xbf16>, tensor<8x4xf32>) -> tensor<8x4xbf16>
  %z = g3moe.dropout %y, %u {p = 0.25 : f64} : (tensor<8x4xbf16>, tensor<8x4xf32>) -> tensor<8x4xbf16>
  return %z : tensor<8x4xbf16>
}
