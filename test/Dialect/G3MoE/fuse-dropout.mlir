// --g3moe-fuse-dropout: a dropout of a [0, 1) draw becomes a keyed_dropout
// with the draw's key and stream, and the draw goes; a draw on other bounds
// (input jitter) stays.
// RUN: g3moe-opt %s --g3moe-fuse-dropout | FileCheck %s

// CHECK-LABEL: func.func @forward_backward
func.func @forward_backward(%x: tensor<8x4xbf16>, %dy: tensor<8x4xbf16>, %key: tensor<2xi64>)
    -> (tensor<8x4xbf16>, tensor<8x4xbf16>, tensor<8x4xbf16>) {
  %u = g3moe.random_uniform %key {stream = 7 : i64, low = 0.0 : f64, high = 1.0 : f64}
      : (tensor<2xi64>) -> tensor<8x4xf32>
  // CHECK: %[[Y:.*]] = g3moe.keyed_dropout %arg0, %arg2 {p = 2.500000e-01 : f64, stream = 7 : i64} : (tensor<8x4xbf16>, tensor<2xi64>) -> tensor<8x4xbf16>
  %y = g3moe.dropout %x, %u {p = 0.25 : f64} : (tensor<8x4xbf16>, tensor<8x4xf32>) -> tensor<8x4xbf16>
  // CHECK: %[[D:.*]] = g3moe.keyed_dropout %arg1, %arg2 {p = 2.500000e-01 : f64, stream = 7 : i64}
  %d = g3moe.dropout %dy, %u {p = 0.25 : f64} : (tensor<8x4xbf16>, tensor<8x4xf32>) -> tensor<8x4xbf16>
  // CHECK: %[[J:.*]] = g3moe.random_uniform %arg2 {high = 1.010000e+00 : f64, low = {{.*}} : f64, stream = 8 : i64}
  %j = g3moe.random_uniform %key {stream = 8 : i64, low = 0.99 : f64, high = 1.01 : f64}
      : (tensor<2xi64>) -> tensor<8x4xf32>
  // CHECK: g3moe.dropout %arg0, %[[J]]
  %z = g3moe.dropout %x, %j {p = 0.25 : f64} : (tensor<8x4xbf16>, tensor<8x4xf32>) -> tensor<8x4xbf16>
  // CHECK-NOT: stream = 7
  // CHECK: return %[[Y]], %[[D]]
  return %y, %d, %z : tensor<8x4xbf16>, tensor<8x4xbf16>, tensor<8x4xbf16>
}
