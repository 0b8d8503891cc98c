// --g3moe-accumulate-early: @train_micro_step's call of @forward_backward is
// inlined and each add into a gradient accumulator follows the op that makes
// its gradient. ZeRO stage 2's reduces are remade per bucket of gradients in
// the order they are made (one per owner), right after the bucket's last one.
// RUN: g3moe-opt %s --split-input-file --g3moe-accumulate-early | FileCheck %s
// RUN: g3moe-opt %s --split-input-file --g3moe-accumulate-early="bucket-bytes=256" | FileCheck %s --check-prefix=SMALL

func.func @forward_backward(%x: tensor<64xf32>) -> (tensor<f32>, tensor<64xf32>, tensor<64xf32>) {
  %g0 = g3moe.scale %x {factor = 2.0 : f64} : tensor<64xf32>
  %g1 = g3moe.scale %g0 {factor = 3.0 : f64} : tensor<64xf32>
  %l = g3moe.global_norm %g1 : (tensor<64xf32>) -> tensor<f32>
  return %l, %g0, %g1 : tensor<f32>, tensor<64xf32>, tensor<64xf32>
}

// CHECK-LABEL: func.func @train_micro_step
// CHECK-NOT: call
// CHECK: %[[G0:.*]] = g3moe.scale %arg0 {factor = 2.0
// CHECK-NEXT: %[[A0:.*]] = g3moe.add %arg1, %[[G0]]
// CHECK-NEXT: %[[G1:.*]] = g3moe.scale %[[G0]] {factor = 3.0
// CHECK-NEXT: %[[A1:.*]] = g3moe.add %arg2, %[[G1]]
// CHECK-NEXT: %[[L:.*]] = g3moe.global_norm %[[G1]]
// CHECK-NEXT: return %[[L]], %[[A0]], %[[A1]]
func.func @train_micro_step(%x: tensor<64xf32>, %a0: tensor<64xf32> {g3moe.grad_acc = "w0"},
                            %a1: tensor<64xf32> {g3moe.grad_acc = "w1"})
    -> (tensor<f32>, tensor<64xf32> {g3moe.grad_acc = "w0"}, tensor<64xf32> {g3moe.grad_acc = "w1"}) {
  %r:3 = call @forward_backward(%x) : (tensor<64xf32>) -> (tensor<f32>, tensor<64xf32>, tensor<64xf32>)
  %s0 = g3moe.add %a0, %r#1 : tensor<64xf32>
  %s1 = g3moe.add %a1, %r#2 : tensor<64xf32>
  return %r#0, %s0, %s1 : tensor<f32>, tensor<64xf32>, tensor<64xf32>
}

// -----

// ZeRO stage 2: the gradients of two owners, made in the order g0, g1, g2.
// One bucket (16 MiB): one reduce per owner after g2, each followed by its
// adds. Buckets of 256 bytes (one gradient each): each gradient is sent
// right after it is made.
// CHECK-LABEL: func.func @train_micro_step
// CHECK: %[[G0:.*]] = g3moe.scale %arg0 {factor = 2.0
// CHECK-NEXT: %[[G1:.*]] = g3moe.scale %[[G0]] {factor = 3.0
// CHECK-NEXT: %[[G2:.*]] = g3moe.scale %[[G1]] {factor = 4.0
// CHECK-NEXT: %[[R0:.*]]:2 = g3moe.reduce %[[G0]], %[[G2]] {root = 0 : i64}
// CHECK-NEXT: g3moe.add %arg1, %[[R0]]#0 {owner = 0 : i64}
// CHECK-NEXT: g3moe.add %arg3, %[[R0]]#1 {owner = 0 : i64}
// CHECK-NEXT: %[[R1:.*]] = g3moe.reduce %[[G1]] {root = 1 : i64}
// CHECK-NEXT: g3moe.add %arg2, %[[R1]] {owner = 1 : i64}
// CHECK-NOT: g3moe.reduce
// SMALL: {{//.}}-----
// SMALL: func.func @train_micro_step
// SMALL: %[[G0:.*]] = g3moe.scale %arg0 {factor = 2.0
// SMALL-NEXT: %[[R0:.*]] = g3moe.reduce %[[G0]] {root = 0 : i64}
// SMALL-NEXT: g3moe.add %arg1, %[[R0]] {owner = 0 : i64}
// SMALL-NEXT: %[[G1:.*]] = g3moe.scale %[[G0]] {factor = 3.0
// SMALL-NEXT: %[[R1:.*]] = g3moe.reduce %[[G1]] {root = 1 : i64}
// SMALL-NEXT: g3moe.add %arg2, %[[R1]] {owner = 1 : i64}
// SMALL-NEXT: %[[G2:.*]] = g3moe.scale %[[G1]] {factor = 4.0
// SMALL-NEXT: %[[R2:.*]] = g3moe.reduce %[[G2]] {root = 0 : i64}
// SMALL-NEXT: g3moe.add %arg3, %[[R2]] {owner = 0 : i64}
// SMALL-NOT: g3moe.reduce
func.func @train_micro_step(%x: tensor<64xf32>, %a0: tensor<64xf32> {g3moe.grad_acc = "w0"},
                            %a1: tensor<64xf32> {g3moe.grad_acc = "w1"},
                            %a2: tensor<64xf32> {g3moe.grad_acc = "w2"})
    -> (tensor<64xf32> {g3moe.grad_acc = "w0"}, tensor<64xf32> {g3moe.grad_acc = "w1"},
        tensor<64xf32> {g3moe.grad_acc = "w2"}) {
  %g0 = g3moe.scale %x {factor = 2.0 : f64} : tensor<64xf32>
  %g1 = g3moe.scale %g0 {factor = 3.0 : f64} : tensor<64xf32>
  %g2 = g3moe.scale %g1 {factor = 4.0 : f64} : tensor<64xf32>
  %r0:2 = g3moe.reduce %g0, %g2 {root = 0 : i64} : (tensor<64xf32>, tensor<64xf32>) -> (tensor<64xf32>, tensor<64xf32>)
  %s0 = g3moe.add %a0, %r0#0 {owner = 0 : i64} : tensor<64xf32>
  %s2 = g3moe.add %a2, %r0#1 {owner = 0 : i64} : tensor<64xf32>
  %r1 = g3moe.reduce %g1 {root = 1 : i64} : (tensor<64xf32>) -> tensor<64xf32>
  %s1 = g3moe.add %a1, %r1 {owner = 1 : i64} : tensor<64xf32>
  return %s0, %s1, %s2 : tensor<64xf32>, tensor<64xf32>, tensor<64xf32>
}
