// --g3moe-fuse-dropout: a dropout of a [0, 1) draw becomes a keyed_dropout
// with the draw's key and stream, and the draw goes; a draw on other bounds
// stays under a dropout. A product with a (converted) draw, the input
// jitter, becomes a keyed_jitter. With into-products the keyed_dropouts then
// move into the LoRA products the low-rank kernels take.
// RUN: g3moe-opt %s --split-input-file --g3moe-fuse-dropout | FileCheck %s
// RUN: g3moe-opt %s --split-input-file --g3moe-fuse-dropout=into-products=true | FileCheck %s --check-prefix=INTO
// RUN: g3moe-opt %s --split-input-file --g3moe-fuse-dropout | FileCheck %s --check-prefix=SEPARATE

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

// -----

// The input jitter and its gradient: each product with the converted draw
// (on either side) becomes a keyed_jitter with the draw's key, stream and
// bounds; in fp32 the draw is the factor itself. The draws and the
// conversion go; a product of two tensors stays.
// CHECK-LABEL: func.func @jitter
// CHECK: %[[Y:.*]] = g3moe.keyed_jitter %arg0, %arg3 {high = 1.250000e+00 : f64, low = 7.500000e-01 : f64, stream = 2 : i64} : (tensor<8x4xbf16>, tensor<2xi64>) -> tensor<8x4xbf16>
// CHECK: %[[D:.*]] = g3moe.keyed_jitter %arg1, %arg3 {high = 1.250000e+00 : f64, low = 7.500000e-01 : f64, stream = 2 : i64}
// CHECK: %[[F:.*]] = g3moe.keyed_jitter %arg2, %arg3 {high = 1.500000e+00 : f64, low = 5.000000e-01 : f64, stream = 3 : i64} : (tensor<8x4xf32>, tensor<2xi64>) -> tensor<8x4xf32>
// CHECK: %[[P:.*]] = g3moe.mul %arg0, %arg1
// CHECK-NOT: random_uniform
// CHECK-NOT: g3moe.convert
// CHECK: return %[[Y]], %[[D]], %[[F]], %[[P]]
func.func @jitter(%x: tensor<8x4xbf16>, %dy: tensor<8x4xbf16>, %xf: tensor<8x4xf32>,
                  %key: tensor<2xi64>)
    -> (tensor<8x4xbf16>, tensor<8x4xbf16>, tensor<8x4xf32>, tensor<8x4xbf16>) {
  %u = g3moe.random_uniform %key {stream = 2 : i64, low = 0.75 : f64, high = 1.25 : f64}
      : (tensor<2xi64>) -> tensor<8x4xf32>
  %c = g3moe.convert %u : tensor<8x4xf32> -> tensor<8x4xbf16>
  %y = g3moe.mul %x, %c : tensor<8x4xbf16>
  %d = g3moe.mul %c, %dy : tensor<8x4xbf16>
  %v = g3moe.random_uniform %key {stream = 3 : i64, low = 0.5 : f64, high = 1.5 : f64}
      : (tensor<2xi64>) -> tensor<8x4xf32>
  %f = g3moe.mul %xf, %v : tensor<8x4xf32>
  %p = g3moe.mul %x, %dy : tensor<8x4xbf16>
  return %y, %d, %f, %p : tensor<8x4xbf16>, tensor<8x4xbf16>, tensor<8x4xf32>, tensor<8x4xbf16>
}

// -----

// The dropout moves into the LoRA products around it: one keep-mask per
// draw, read by the A product and the A gradient (the input dropped as it
// is read) and by the input gradient through A (the result dropped as it is
// written); the dropped tensor and both keyed_dropouts go.
// INTO-LABEL: func.func @lora
// INTO: %[[M:.*]] = g3moe.dropout_mask %arg3 {p = 1.000000e-01 : f64, stream = 4 : i64} : (tensor<2xi64>) -> tensor<8xi32>
// INTO: %[[H:.*]] = g3moe.linear %arg0, %arg1 dropout %[[M]] {dropout_p = 1.000000e-01 : f64} : (tensor<16x16xbf16>, tensor<8x16xbf16>, tensor<8xi32>) -> tensor<16x8xbf16>
// INTO: %[[DA:.*]] = g3moe.linear_grad_weight %arg2, %arg0 dropout %[[M]] {dropout_p = 1.000000e-01 : f64}
// INTO: %[[DX:.*]] = g3moe.linear_grad_input %arg2, %arg1 dropout %[[M]] {dropout_p = 1.000000e-01 : f64}
// INTO-NOT: keyed_dropout
// INTO-NOT: dropout_mask
// INTO: return %[[H]], %[[DA]], %[[DX]]
// SEPARATE-LABEL: func.func @lora
// SEPARATE-COUNT-2: g3moe.keyed_dropout
// SEPARATE-NOT: dropout_mask
func.func @lora(%x: tensor<16x16xbf16>, %a: tensor<8x16xbf16>, %dh: tensor<16x8xbf16>,
                %key: tensor<2xi64>) -> (tensor<16x8xbf16>, tensor<8x16xf32>, tensor<16x16xbf16>) {
  %u = g3moe.random_uniform %key {stream = 4 : i64, low = 0.0 : f64, high = 1.0 : f64}
      : (tensor<2xi64>) -> tensor<16x16xf32>
  %xd = g3moe.dropout %x, %u {p = 0.1 : f64} : (tensor<16x16xbf16>, tensor<16x16xf32>) -> tensor<16x16xbf16>
  %h = g3moe.linear %xd, %a : (tensor<16x16xbf16>, tensor<8x16xbf16>) -> tensor<16x8xbf16>
  %da = g3moe.linear_grad_weight %dh, %xd : (tensor<16x8xbf16>, tensor<16x16xbf16>) -> tensor<8x16xf32>
  %g = g3moe.linear_grad_input %dh, %a : (tensor<16x8xbf16>, tensor<8x16xbf16>) -> tensor<16x16xbf16>
  %dx = g3moe.dropout %g, %u {p = 0.1 : f64} : (tensor<16x16xbf16>, tensor<16x16xf32>) -> tensor<16x16xbf16>
  return %h, %da, %dx : tensor<16x8xbf16>, tensor<8x16xf32>, tensor<16x16xbf16>
}

// -----

// The expert products likewise; a rank the low-rank kernels do not take
// (4) or an fp32 product keeps its keyed_dropout.
// INTO-LABEL: func.func @experts
// INTO: %[[M:.*]] = g3moe.dropout_mask %arg4 {p = 5.000000e-02 : f64, stream = 2 : i64} : (tensor<2xi64>) -> tensor<8xi32>
// INTO: g3moe.expert_linear %arg0, %arg1, %arg2 dropout %[[M]] {dropout_p = 5.000000e-02 : f64}
// INTO: g3moe.expert_linear_grad_weight %arg3, %arg1, %arg0 dropout %[[M]] {dropout_p = 5.000000e-02 : f64}
// INTO: g3moe.expert_linear_grad_input %arg3, %arg1, %arg2 dropout %[[M]] {dropout_p = 5.000000e-02 : f64}
// INTO: %[[K:.*]] = g3moe.keyed_dropout %arg0, %arg4 {p = 5.000000e-02 : f64, stream = 3 : i64}
// INTO: g3moe.linear %[[K]], %arg5 :
// INTO: %[[F:.*]] = g3moe.keyed_dropout %arg6, %arg4 {p = 5.000000e-02 : f64, stream = 5 : i64}
// INTO: g3moe.linear %[[F]], %arg7 :
func.func @experts(%x: tensor<16x16xbf16>, %off: tensor<3xi32>, %a: tensor<2x8x16xbf16>,
                   %dh: tensor<16x8xbf16>, %key: tensor<2xi64>, %a4: tensor<4x16xbf16>,
                   %xf: tensor<16x16xf32>, %af: tensor<8x16xf32>)
    -> (tensor<16x8xbf16>, tensor<2x8x16xf32>, tensor<16x16xbf16>, tensor<16x4xbf16>, tensor<16x8xf32>) {
  %k = g3moe.keyed_dropout %x, %key {stream = 2 : i64, p = 0.05 : f64}
      : (tensor<16x16xbf16>, tensor<2xi64>) -> tensor<16x16xbf16>
  %h = g3moe.expert_linear %k, %off, %a
      : (tensor<16x16xbf16>, tensor<3xi32>, tensor<2x8x16xbf16>) -> tensor<16x8xbf16>
  %da = g3moe.expert_linear_grad_weight %dh, %off, %k
      : (tensor<16x8xbf16>, tensor<3xi32>, tensor<16x16xbf16>) -> tensor<2x8x16xf32>
  %g = g3moe.expert_linear_grad_input %dh, %off, %a
      : (tensor<16x8xbf16>, tensor<3xi32>, tensor<2x8x16xbf16>) -> tensor<16x16xbf16>
  %dx = g3moe.keyed_dropout %g, %key {stream = 2 : i64, p = 0.05 : f64}
      : (tensor<16x16xbf16>, tensor<2xi64>) -> tensor<16x16xbf16>
  %k4 = g3moe.keyed_dropout %x, %key {stream = 3 : i64, p = 0.05 : f64}
      : (tensor<16x16xbf16>, tensor<2xi64>) -> tensor<16x16xbf16>
  %h4 = g3moe.linear %k4, %a4 : (tensor<16x16xbf16>, tensor<4x16xbf16>) -> tensor<16x4xbf16>
  %kf = g3moe.keyed_dropout %xf, %key {stream = 5 : i64, p = 0.05 : f64}
      : (tensor<16x16xf32>, tensor<2xi64>) -> tensor<16x16xf32>
  %hf = g3moe.linear %kf, %af : (tensor<16x16xf32>, tensor<8x16xf32>) -> tensor<16x8xf32>
  return %h, %da, %dx, %h4, %hf
      : tensor<16x8xbf16>, tensor<2x8x16xf32>, tensor<16x16xbf16>, tensor<16x4xbf16>, tensor<16x8xf32>
}
