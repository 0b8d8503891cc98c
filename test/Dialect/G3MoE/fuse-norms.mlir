// --g3moe-fuse-norms: a norm of a residual sum becomes add_rms_norm, an add
// of a norm's input gradient folds into it as its addend, and QK-norm with
// RoPE (forward and backward) become one op each.
// RUN: g3moe-opt %s --split-input-file --g3moe-fuse-norms | FileCheck %s

// The residual add whose sum the next block's norm reads and the stream keeps.
// CHECK-LABEL: func.func @residual_norm
func.func @residual_norm(%r: tensor<2x8x64xbf16>, %h: tensor<2x8x64xbf16>, %w: tensor<64xbf16>)
    -> (tensor<2x8x64xbf16>, tensor<2x8x64xbf16>) {
  // CHECK-NOT: g3moe.add
  // CHECK: %[[S:.*]], %[[Y:.*]] = g3moe.add_rms_norm %arg0, %arg1, %arg2 {eps = 9.9999999999999995E-7 : f64}
  // CHECK-SAME: -> (tensor<2x8x64xbf16>, tensor<2x8x64xbf16>)
  %s = g3moe.add %r, %h : tensor<2x8x64xbf16>
  // CHECK-NOT: g3moe.rms_norm
  %y = g3moe.rms_norm %s, %w {eps = 1.0e-06 : f64}
      : (tensor<2x8x64xbf16>, tensor<64xbf16>) -> tensor<2x8x64xbf16>
  // CHECK: return %[[S]], %[[Y]]
  return %s, %y : tensor<2x8x64xbf16>, tensor<2x8x64xbf16>
}

// -----

// The sum is read before the norm: the fused op takes the add's place.
// CHECK-LABEL: func.func @sum_read_first
func.func @sum_read_first(%r: tensor<8x64xf32>, %h: tensor<8x64xf32>, %w: tensor<64xf32>)
    -> (tensor<8x64xf32>, tensor<8x64xf32>) {
  // CHECK: %[[S:.*]], %[[Y:.*]] = g3moe.add_rms_norm
  // CHECK-NEXT: %[[M:.*]] = g3moe.mul %[[S]], %[[S]]
  %s = g3moe.add %r, %h : tensor<8x64xf32>
  %m = g3moe.mul %s, %s : tensor<8x64xf32>
  %y = g3moe.rms_norm %s, %w {eps = 1.0e-06 : f64}
      : (tensor<8x64xf32>, tensor<64xf32>) -> tensor<8x64xf32>
  // CHECK: return %[[M]], %[[Y]]
  return %m, %y : tensor<8x64xf32>, tensor<8x64xf32>
}

// -----

// The sum is read before the norm and the weight is made after the add: no
// place for the fused op, nothing changes.
// CHECK-LABEL: func.func @weight_after_add
func.func @weight_after_add(%r: tensor<8x64xf32>, %h: tensor<8x64xf32>) -> (tensor<8x64xf32>, tensor<8x64xf32>) {
  // CHECK: g3moe.add
  // CHECK: g3moe.rms_norm
  // CHECK-NOT: add_rms_norm
  %s = g3moe.add %r, %h : tensor<8x64xf32>
  %m = g3moe.mul %s, %s : tensor<8x64xf32>
  %w = g3moe.param "model.norm.weight" : tensor<64xf32>
  %y = g3moe.rms_norm %s, %w {eps = 1.0e-06 : f64}
      : (tensor<8x64xf32>, tensor<64xf32>) -> tensor<8x64xf32>
  return %m, %y : tensor<8x64xf32>, tensor<8x64xf32>
}

// -----

// The backward: the stream's gradient, defined after the norm's backward,
// becomes its addend (the backward moves to the add).
// CHECK-LABEL: func.func @norm_grad_addend
func.func @norm_grad_addend(%x: tensor<8x64xbf16>, %w: tensor<64xbf16>, %dy: tensor<8x64xbf16>,
                            %g: tensor<8x64xbf16>) -> (tensor<8x64xbf16>, tensor<64xf32>) {
  %dx, %dw = g3moe.rms_norm_grad %x, %w, %dy {eps = 1.0e-06 : f64}
      : (tensor<8x64xbf16>, tensor<64xbf16>, tensor<8x64xbf16>) -> (tensor<8x64xbf16>, tensor<64xf32>)
  // CHECK: %[[R:.*]] = g3moe.mul
  %r = g3moe.mul %g, %g : tensor<8x64xbf16>
  // CHECK-NEXT: %[[DX:.*]], %[[DW:.*]] = g3moe.rms_norm_grad %arg0, %arg1, %arg2, %[[R]] {eps = 9.9999999999999995E-7 : f64}
  // CHECK-NOT: g3moe.add
  %sum = g3moe.add %r, %dx : tensor<8x64xbf16>
  // CHECK: return %[[DX]], %[[DW]]
  return %sum, %dw : tensor<8x64xbf16>, tensor<64xf32>
}

// -----

// An input gradient something else also reads keeps its add.
// CHECK-LABEL: func.func @norm_grad_shared
func.func @norm_grad_shared(%x: tensor<8x64xbf16>, %w: tensor<64xbf16>, %dy: tensor<8x64xbf16>,
                            %r: tensor<8x64xbf16>) -> (tensor<8x64xbf16>, tensor<8x64xbf16>) {
  // CHECK: g3moe.rms_norm_grad %arg0, %arg1, %arg2 {
  // CHECK: g3moe.add
  %dx, %dw = g3moe.rms_norm_grad %x, %w, %dy {eps = 1.0e-06 : f64}
      : (tensor<8x64xbf16>, tensor<64xbf16>, tensor<8x64xbf16>) -> (tensor<8x64xbf16>, tensor<64xf32>)
  %sum = g3moe.add %r, %dx : tensor<8x64xbf16>
  return %sum, %dx : tensor<8x64xbf16>, tensor<8x64xbf16>
}

// -----

// QK-norm then RoPE, and its backward: RoPE transposed, then the norm's.
// CHECK-LABEL: func.func @qk_norm_rope
func.func @qk_norm_rope(%x: tensor<2x8x4x16xbf16>, %w: tensor<16xbf16>, %pos: tensor<2x8xi32>,
                        %dq: tensor<2x8x4x16xbf16>)
    -> (tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>, tensor<16xf32>) {
  // CHECK: %[[Q:.*]] = g3moe.rms_norm_rope %arg0, %arg1, %arg2 {eps = 9.9999999999999995E-7 : f64, scaling_factor = 1.000000e+00 : f64, theta = 1.000000e+04 : f64}
  // CHECK-NOT: g3moe.rope
  %n = g3moe.rms_norm %x, %w {eps = 1.0e-06 : f64}
      : (tensor<2x8x4x16xbf16>, tensor<16xbf16>) -> tensor<2x8x4x16xbf16>
  %q = g3moe.rope %n, %pos {theta = 1.0e+04 : f64, scaling_factor = 1.0 : f64}
      : (tensor<2x8x4x16xbf16>, tensor<2x8xi32>) -> tensor<2x8x4x16xbf16>
  // CHECK: %[[DX:.*]], %[[DW:.*]] = g3moe.rms_norm_rope_grad %arg0, %arg1, %arg2, %arg3 {eps = 9.9999999999999995E-7 : f64, scaling_factor = 1.000000e+00 : f64, theta = 1.000000e+04 : f64}
  // CHECK-NOT: g3moe.rope
  %g = g3moe.rope %dq, %pos {theta = 1.0e+04 : f64, scaling_factor = 1.0 : f64, transpose}
      : (tensor<2x8x4x16xbf16>, tensor<2x8xi32>) -> tensor<2x8x4x16xbf16>
  %dx, %dw = g3moe.rms_norm_grad %x, %w, %g {eps = 1.0e-06 : f64}
      : (tensor<2x8x4x16xbf16>, tensor<16xbf16>, tensor<2x8x4x16xbf16>) -> (tensor<2x8x4x16xbf16>, tensor<16xf32>)
  // CHECK: return %[[Q]], %[[DX]], %[[DW]]
  return %q, %dx, %dw : tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>, tensor<16xf32>
}

// -----

// A norm whose output is also read unrotated is left alone.
// CHECK-LABEL: func.func @norm_read_twice
func.func @norm_read_twice(%x: tensor<2x8x4x16xbf16>, %w: tensor<16xbf16>, %pos: tensor<2x8xi32>)
    -> (tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>) {
  // CHECK: g3moe.rms_norm %
  // CHECK: g3moe.rope
  // CHECK-NOT: rms_norm_rope
  %n = g3moe.rms_norm %x, %w {eps = 1.0e-06 : f64}
      : (tensor<2x8x4x16xbf16>, tensor<16xbf16>) -> tensor<2x8x4x16xbf16>
  %q = g3moe.rope %n, %pos {theta = 1.0e+04 : f64, scaling_factor = 1.0 : f64}
      : (tensor<2x8x4x16xbf16>, tensor<2x8xi32>) -> tensor<2x8x4x16xbf16>
  return %q, %n : tensor<2x8x4x16xbf16>, tensor<2x8x4x16xbf16>
}
