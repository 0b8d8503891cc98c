// --g3moe-prefetch-parameters: each ZeRO stage 3 receipt (a broadcast of a
// g3moe.param) after the first moves, with its param, up to the first reader
// of the receipt before it; other broadcasts stay where they are.
// RUN: g3moe-opt %s --g3moe-prefetch-parameters | FileCheck %s

// CHECK-LABEL: func.func @forward
func.func @forward(%x: tensor<4x8xf32>, %s: tensor<f32>) -> tensor<4x8xf32> {
  // CHECK: %[[P0:.*]] = g3moe.param "w0"
  // CHECK-NEXT: %[[R0:.*]] = g3moe.broadcast %[[P0]] {root = 0 : i64}
  // CHECK-NEXT: %[[P1:.*]] = g3moe.param "w1"
  // CHECK-NEXT: %[[R1:.*]] = g3moe.broadcast %[[P1]] {root = 1 : i64}
  // CHECK-NEXT: %[[Y0:.*]] = g3moe.linear %arg0, %[[R0]]
  // CHECK-NEXT: %[[P2:.*]] = g3moe.param "w2"
  // CHECK-NEXT: %[[R2:.*]] = g3moe.broadcast %[[P2]] {root = 0 : i64}
  // CHECK-NEXT: %[[Y1:.*]] = g3moe.linear %[[Y0]], %[[R1]]
  // CHECK-NEXT: %[[S:.*]] = g3moe.broadcast %arg1 {root = 1 : i64}
  // CHECK-NEXT: g3moe.linear %[[Y1]], %[[R2]]
  %p0 = g3moe.param "w0" : tensor<8x8xf32>
  %r0 = g3moe.broadcast %p0 {root = 0 : i64} : (tensor<8x8xf32>) -> tensor<8x8xf32>
  %y0 = g3moe.linear %x, %r0 : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  %p1 = g3moe.param "w1" : tensor<8x8xf32>
  %r1 = g3moe.broadcast %p1 {root = 1 : i64} : (tensor<8x8xf32>) -> tensor<8x8xf32>
  %y1 = g3moe.linear %y0, %r1 : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  // Not a receipt: a broadcast of something other than a param.
  %ss = g3moe.broadcast %s {root = 1 : i64} : (tensor<f32>) -> tensor<f32>
  %p2 = g3moe.param "w2" : tensor<8x8xf32>
  %r2 = g3moe.broadcast %p2 {root = 0 : i64} : (tensor<8x8xf32>) -> tensor<8x8xf32>
  %y2 = g3moe.linear %y1, %r2 : (tensor<4x8xf32>, tensor<8x8xf32>) -> tensor<4x8xf32>
  return %y2 : tensor<4x8xf32>
}
