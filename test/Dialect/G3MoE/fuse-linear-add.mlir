// --g3moe-fuse-linear-add: an add of a product that only the add reads
// becomes that product with `plus`; the shorter contraction takes the addend.
// RUN: g3moe-opt %s --split-input-file --g3moe-fuse-linear-add | FileCheck %s

// LoRA's forward: the rank-4 product takes the base product as its addend.
// CHECK-LABEL: func.func @lora_forward
func.func @lora_forward(%x: tensor<8x64xbf16>, %w: tensor<32x64xbf16>, %a: tensor<4x64xbf16>,
                        %b: tensor<32x4xbf16>) -> tensor<8x32xbf16> {
  // CHECK: %[[BASE:.*]] = g3moe.linear %{{.*}}, %{{.*}} : (tensor<8x64xbf16>, tensor<32x64xbf16>) -> tensor<8x32xbf16>
  %base = g3moe.linear %x, %w : (tensor<8x64xbf16>, tensor<32x64xbf16>) -> tensor<8x32xbf16>
  // CHECK: %[[H:.*]] = g3moe.linear %{{.*}}, %{{.*}} : (tensor<8x64xbf16>, tensor<4x64xbf16>) -> tensor<8x4xbf16>
  %h = g3moe.linear %x, %a : (tensor<8x64xbf16>, tensor<4x64xbf16>) -> tensor<8x4xbf16>
  // CHECK: %[[Y:.*]] = g3moe.linear %[[H]], %{{.*}} plus %[[BASE]]
  %d = g3moe.linear %h, %b : (tensor<8x4xbf16>, tensor<32x4xbf16>) -> tensor<8x32xbf16>
  // CHECK-NOT: g3moe.add
  %y = g3moe.add %base, %d : tensor<8x32xbf16>
  // CHECK: return %[[Y]]
  return %y : tensor<8x32xbf16>
}

// -----

// The backward of a routed expert layer: dy·W + (dy·B)·A. The rank-4
// product takes the wide one as its addend, and then the wide product takes
// the rank-4 term: one product with `lowrank`.
// CHECK-LABEL: func.func @expert_backward
func.func @expert_backward(%dy: tensor<16x32xbf16>, %off: tensor<3xi32>, %w: tensor<2x32x64xbf16>,
                           %du: tensor<16x4xbf16>, %a: tensor<2x4x64xbf16>) -> tensor<16x64xbf16> {
  %lora = g3moe.expert_linear_grad_input %du, %off, %a
      : (tensor<16x4xbf16>, tensor<3xi32>, tensor<2x4x64xbf16>) -> tensor<16x64xbf16>
  %base = g3moe.expert_linear_grad_input %dy, %off, %w
      : (tensor<16x32xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>) -> tensor<16x64xbf16>
  // CHECK: %[[DX:.*]] = g3moe.expert_linear_grad_input %arg0, %arg1, %arg2 lowrank %arg3, %arg4 : (tensor<16x32xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>, tensor<16x4xbf16>, tensor<2x4x64xbf16>) -> tensor<16x64xbf16>
  // CHECK-NOT: g3moe.expert_linear_grad_input
  %dx = g3moe.add %lora, %base : tensor<16x64xbf16>
  // CHECK: return %[[DX]]
  return %dx : tensor<16x64xbf16>
}

// -----

// Gate and up read one input: autodiff sums their four input-gradient terms
// in a chain, ((u term + up) + g term) + gate. Each wide product ends up
// with its own term, one the other's addend.
// CHECK-LABEL: func.func @gate_up_backward_plain
func.func @gate_up_backward_plain(%dg: tensor<16x32xbf16>, %du: tensor<16x32xbf16>,
                                  %off: tensor<3xi32>, %wg: tensor<2x32x64xbf16>,
                                  %wu: tensor<2x32x64xbf16>, %hg: tensor<16x4xbf16>,
                                  %hu: tensor<16x4xbf16>, %ag: tensor<2x4x64xbf16>,
                                  %au: tensor<2x4x64xbf16>) -> tensor<16x64xbf16> {
  %tu = g3moe.expert_linear_grad_input %hu, %off, %au
      : (tensor<16x4xbf16>, tensor<3xi32>, tensor<2x4x64xbf16>) -> tensor<16x64xbf16>
  %bu = g3moe.expert_linear_grad_input %du, %off, %wu
      : (tensor<16x32xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>) -> tensor<16x64xbf16>
  %s1 = g3moe.add %tu, %bu : tensor<16x64xbf16>
  %tg = g3moe.expert_linear_grad_input %hg, %off, %ag
      : (tensor<16x4xbf16>, tensor<3xi32>, tensor<2x4x64xbf16>) -> tensor<16x64xbf16>
  %s2 = g3moe.add %s1, %tg : tensor<16x64xbf16>
  %bg = g3moe.expert_linear_grad_input %dg, %off, %wg
      : (tensor<16x32xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>) -> tensor<16x64xbf16>
  // CHECK: %[[U:.*]] = g3moe.expert_linear_grad_input %arg1, %arg2, %arg4 lowrank %arg6, %arg8 :
  // CHECK: %[[G:.*]] = g3moe.expert_linear_grad_input %arg0, %arg2, %arg3, %[[U]] lowrank %arg5, %arg7 :
  // CHECK-NOT: g3moe.add
  %s3 = g3moe.add %s2, %bg : tensor<16x64xbf16>
  // CHECK: return %[[G]]
  return %s3 : tensor<16x64xbf16>
}

// -----

// After --g3moe-fuse-dropout: the input gradient through A of a dropped
// input is a rank-4 product with `dropout`, which takes no addend. The wide
// product takes it as its term, mask and all.
// CHECK-LABEL: func.func @expert_backward_masked
func.func @expert_backward_masked(%dy: tensor<16x32xbf16>, %off: tensor<3xi32>,
                                  %w: tensor<2x32x64xbf16>, %du: tensor<16x4xbf16>,
                                  %a: tensor<2x4x64xbf16>, %m: tensor<32xi32>) -> tensor<16x64xbf16> {
  %lora = g3moe.expert_linear_grad_input %du, %off, %a dropout %m {dropout_p = 0.1 : f64}
      : (tensor<16x4xbf16>, tensor<3xi32>, tensor<2x4x64xbf16>, tensor<32xi32>) -> tensor<16x64xbf16>
  %base = g3moe.expert_linear_grad_input %dy, %off, %w
      : (tensor<16x32xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>) -> tensor<16x64xbf16>
  // CHECK: %[[DX:.*]] = g3moe.expert_linear_grad_input %arg0, %arg1, %arg2 lowrank %arg3, %arg4 dropout %arg5 {dropout_p = 1.000000e-01 : f64} :
  // CHECK-NOT: g3moe.expert_linear_grad_input
  // CHECK-NOT: g3moe.add
  %dx = g3moe.add %lora, %base : tensor<16x64xbf16>
  // CHECK: return %[[DX]]
  return %dx : tensor<16x64xbf16>
}

// -----

// Gate and up with dropped inputs: neither term takes an addend, so the
// chain folds as ((up plus u term) plus g term) into gate; the g term then
// moves from up's addend into gate.
// CHECK-LABEL: func.func @gate_up_backward_masked
func.func @gate_up_backward_masked(%dg: tensor<16x32xbf16>, %du: tensor<16x32xbf16>,
                                   %off: tensor<3xi32>, %wg: tensor<2x32x64xbf16>,
                                   %wu: tensor<2x32x64xbf16>, %hg: tensor<16x4xbf16>,
                                   %hu: tensor<16x4xbf16>, %ag: tensor<2x4x64xbf16>,
                                   %au: tensor<2x4x64xbf16>, %mg: tensor<32xi32>,
                                   %mu: tensor<32xi32>) -> tensor<16x64xbf16> {
  %tu = g3moe.expert_linear_grad_input %hu, %off, %au dropout %mu {dropout_p = 0.1 : f64}
      : (tensor<16x4xbf16>, tensor<3xi32>, tensor<2x4x64xbf16>, tensor<32xi32>) -> tensor<16x64xbf16>
  %bu = g3moe.expert_linear_grad_input %du, %off, %wu
      : (tensor<16x32xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>) -> tensor<16x64xbf16>
  %s1 = g3moe.add %tu, %bu : tensor<16x64xbf16>
  %tg = g3moe.expert_linear_grad_input %hg, %off, %ag dropout %mg {dropout_p = 0.1 : f64}
      : (tensor<16x4xbf16>, tensor<3xi32>, tensor<2x4x64xbf16>, tensor<32xi32>) -> tensor<16x64xbf16>
  %s2 = g3moe.add %s1, %tg : tensor<16x64xbf16>
  %bg = g3moe.expert_linear_grad_input %dg, %off, %wg
      : (tensor<16x32xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>) -> tensor<16x64xbf16>
  // CHECK: %[[U:.*]] = g3moe.expert_linear_grad_input %arg1, %arg2, %arg4 lowrank %arg6, %arg8 dropout %arg10 {dropout_p = 1.000000e-01 : f64} :
  // CHECK: %[[G:.*]] = g3moe.expert_linear_grad_input %arg0, %arg2, %arg3, %[[U]] lowrank %arg5, %arg7 dropout %arg9 {dropout_p = 1.000000e-01 : f64} :
  // CHECK-NOT: g3moe.expert_linear_grad_input
  // CHECK-NOT: g3moe.add
  %s3 = g3moe.add %s2, %bg : tensor<16x64xbf16>
  // CHECK: return %[[G]]
  return %s3 : tensor<16x64xbf16>
}

// -----

// LoRA on an expert projection: x·W_eᵀ + (x·A_eᵀ)·B_eᵀ becomes the wide
// product with the rank-8 term; the residual add then folds in as its addend.
// CHECK-LABEL: func.func @expert_lora_forward
func.func @expert_lora_forward(%x: tensor<16x64xbf16>, %off: tensor<3xi32>, %w: tensor<2x32x64xbf16>,
                               %a: tensor<2x8x64xbf16>, %b: tensor<2x32x8xbf16>,
                               %r: tensor<16x32xbf16>) -> tensor<16x32xbf16> {
  %base = g3moe.expert_linear %x, %off, %w
      : (tensor<16x64xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>) -> tensor<16x32xbf16>
  // CHECK: %[[H:.*]] = g3moe.expert_linear %arg0, %arg1, %arg3 : {{.*}} -> tensor<16x8xbf16>
  %h = g3moe.expert_linear %x, %off, %a
      : (tensor<16x64xbf16>, tensor<3xi32>, tensor<2x8x64xbf16>) -> tensor<16x8xbf16>
  %d = g3moe.expert_linear %h, %off, %b
      : (tensor<16x8xbf16>, tensor<3xi32>, tensor<2x32x8xbf16>) -> tensor<16x32xbf16>
  %y = g3moe.add %base, %d : tensor<16x32xbf16>
  // CHECK: %[[Y:.*]] = g3moe.expert_linear %arg0, %arg1, %arg2 plus %arg5 lowrank %[[H]], %arg4
  // CHECK-NOT: g3moe.add
  %z = g3moe.add %y, %r : tensor<16x32xbf16>
  // CHECK: return %[[Y]]
  return %z : tensor<16x32xbf16>
}

// -----

// A wide product something else reads, or of other expert rows, keeps the
// rank-8 product separate (with the wide one as its addend).
// CHECK-LABEL: func.func @expert_lora_unfused
func.func @expert_lora_unfused(%x: tensor<16x64xbf16>, %off: tensor<3xi32>, %off2: tensor<3xi32>,
                               %w: tensor<2x32x64xbf16>, %h: tensor<16x8xbf16>,
                               %b: tensor<2x32x8xbf16>)
    -> (tensor<16x32xbf16>, tensor<16x32xbf16>, tensor<16x32xbf16>) {
  %base = g3moe.expert_linear %x, %off, %w
      : (tensor<16x64xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>) -> tensor<16x32xbf16>
  // CHECK: %[[D:.*]] = g3moe.expert_linear %arg4, %arg1, %arg5 plus %{{.*}} :
  %d = g3moe.expert_linear %h, %off, %b
      : (tensor<16x8xbf16>, tensor<3xi32>, tensor<2x32x8xbf16>) -> tensor<16x32xbf16>
  %y = g3moe.add %base, %d : tensor<16x32xbf16>
  %base2 = g3moe.expert_linear %x, %off2, %w
      : (tensor<16x64xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>) -> tensor<16x32xbf16>
  // CHECK: %[[D2:.*]] = g3moe.expert_linear %arg4, %arg1, %arg5 plus %{{.*}} :
  %d2 = g3moe.expert_linear %h, %off, %b
      : (tensor<16x8xbf16>, tensor<3xi32>, tensor<2x32x8xbf16>) -> tensor<16x32xbf16>
  %y2 = g3moe.add %base2, %d2 : tensor<16x32xbf16>
  // CHECK-NOT: lowrank
  return %y, %y2, %base : tensor<16x32xbf16>, tensor<16x32xbf16>, tensor<16x32xbf16>
}

// -----

// A product something else also reads stays as it is.
// CHECK-LABEL: func.func @shared_product
func.func @shared_product(%x: tensor<8x64xbf16>, %w: tensor<32x64xbf16>, %r: tensor<8x32xbf16>)
    -> (tensor<8x32xbf16>, tensor<8x32xbf16>) {
  // CHECK: %[[P:.*]] = g3moe.linear %{{.*}}, %{{.*}} : (tensor<8x64xbf16>, tensor<32x64xbf16>) -> tensor<8x32xbf16>
  %p = g3moe.linear %x, %w : (tensor<8x64xbf16>, tensor<32x64xbf16>) -> tensor<8x32xbf16>
  // CHECK: %[[S:.*]] = g3moe.add %[[P]], %{{.*}}
  %s = g3moe.add %p, %r : tensor<8x32xbf16>
  // CHECK: return %[[S]], %[[P]]
  return %s, %p : tensor<8x32xbf16>, tensor<8x32xbf16>
}

// -----

// An expert layer's forward residual: the product takes the other operand,
// whatever defines it; a product that already has an addend is left alone.
// CHECK-LABEL: func.func @expert_forward
func.func @expert_forward(%x: tensor<16x64xbf16>, %off: tensor<3xi32>, %w: tensor<2x32x64xbf16>,
                          %r: tensor<16x32xbf16>, %q: tensor<16x32xbf16>) -> tensor<16x32xbf16> {
  // CHECK: %[[Y:.*]] = g3moe.expert_linear %{{.*}}, %{{.*}}, %{{.*}} plus %{{.*}} :
  %p = g3moe.expert_linear %x, %off, %w
      : (tensor<16x64xbf16>, tensor<3xi32>, tensor<2x32x64xbf16>) -> tensor<16x32xbf16>
  %y = g3moe.add %r, %p : tensor<16x32xbf16>
  // CHECK: %[[F:.*]] = g3moe.linear_grad_input %{{.*}}, %{{.*}} plus %{{.*}} : (tensor<16x32xbf16>, tensor<32x32xbf16>, tensor<16x32xbf16>)
  %w2 = g3moe.param "w2" : tensor<32x32xbf16>
  %f = g3moe.linear_grad_input %y, %w2 plus %q : (tensor<16x32xbf16>, tensor<32x32xbf16>, tensor<16x32xbf16>) -> tensor<16x32xbf16>
  // CHECK: g3moe.add %[[F]], %[[Y]]
  %z = g3moe.add %f, %y : tensor<16x32xbf16>
  return %z : tensor<16x32xbf16>
}
