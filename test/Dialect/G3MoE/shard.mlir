// --g3moe-shard: ZeRO stage 1 gives each trainable tensor one owning process
// (largest first, to the least loaded), splits each adamw into one per owner,
// and broadcasts each owner's new parameters before they are returned. Stage
// 2 also sums each micro-batch's gradients into their owner's accumulator
// (one reduce per owner; only the owner adds), and takes the global norm as
// the norm of the owners' norms, each broadcast from its owner. Stage 3
// keeps each updated parameter with its owner, and every other function
// receives each trainable parameter from its owner right after reading it.
// RUN: g3moe-opt %s --split-input-file --verify-diagnostics --g3moe-shard="stage=1 processes=2" | FileCheck %s
// RUN: g3moe-opt %s --split-input-file --verify-diagnostics --g3moe-shard="stage=2 processes=2" | FileCheck %s --check-prefix=STAGE2
// RUN: g3moe-opt %s --split-input-file --g3moe-shard="stage=0 processes=2" | FileCheck %s --check-prefix=STAGE0
// RUN: g3moe-opt %s --split-input-file --verify-diagnostics --g3moe-shard="stage=3 processes=2" | FileCheck %s --check-prefix=STAGE3
// RUN: not g3moe-opt %s --split-input-file --g3moe-shard="stage=4 processes=2" 2>&1 | FileCheck %s --check-prefix=STAGE4

// STAGE0: g3moe.adamw %arg0, %arg1, %arg2, %arg0, %arg1, %arg2
// STAGE0-NOT: g3moe.broadcast
// STAGE4: g3moe-shard: needs stage 0 to 3 and processes >= 1, got stage 4 and processes 2

// Three tensors of 64, 32 and 16 elements: the largest goes to process 0,
// the next two to process 1 (32 + 16 < 64 would leave it lighter still).
// CHECK-LABEL: func.func @optimizer_step
func.func @optimizer_step(%a: tensor<64xf32>, %b: tensor<32xf32>, %c: tensor<16xf32>,
                          %t: tensor<i64>, %lr: tensor<f32>, %k: tensor<f32>)
    -> (tensor<64xf32>, tensor<32xf32>, tensor<16xf32>, tensor<64xf32>, tensor<32xf32>, tensor<16xf32>) {
  // CHECK: %[[U0:.*]]:3 = g3moe.adamw %arg0, %arg0, %arg0, %arg0, %arg3, %arg4, %arg5 {{{.*}}owner = 0 : i64
  // CHECK: %[[U1:.*]]:6 = g3moe.adamw %arg1, %arg2, %arg1, %arg2, %arg1, %arg2, %arg1, %arg2, %arg3, %arg4, %arg5 {{{.*}}owner = 1 : i64
  %r:9 = g3moe.adamw %a, %b, %c, %a, %b, %c, %a, %b, %c, %a, %b, %c, %t, %lr, %k
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.01 : f64}
      : (tensor<64xf32>, tensor<32xf32>, tensor<16xf32>, tensor<64xf32>, tensor<32xf32>, tensor<16xf32>,
         tensor<64xf32>, tensor<32xf32>, tensor<16xf32>, tensor<64xf32>, tensor<32xf32>, tensor<16xf32>,
         tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<64xf32>, tensor<32xf32>, tensor<16xf32>, tensor<64xf32>, tensor<32xf32>, tensor<16xf32>,
          tensor<64xf32>, tensor<32xf32>, tensor<16xf32>)
  // CHECK: %[[P0:.*]] = g3moe.broadcast %[[U0]]#0 {root = 0 : i64}
  // CHECK: %[[P1:.*]]:2 = g3moe.broadcast %[[U1]]#0, %[[U1]]#1 {root = 1 : i64}
  // CHECK: return %[[P0]], %[[P1]]#0, %[[P1]]#1, %[[U0]]#1, %[[U1]]#2, %[[U1]]#3
  return %r#0, %r#1, %r#2, %r#3, %r#4, %r#5
      : tensor<64xf32>, tensor<32xf32>, tensor<16xf32>, tensor<64xf32>, tensor<32xf32>, tensor<16xf32>
}

// -----

// A step sharded already is refused.
func.func @optimizer_step(%a: tensor<64xf32>, %t: tensor<i64>, %lr: tensor<f32>) -> tensor<64xf32> {
  // expected-error @+1 {{g3moe-shard: the optimizer step is sharded already}}
  %r:3 = g3moe.adamw %a, %a, %a, %a, %t, %lr, %lr
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, owner = 1 : i64, weight_decay = 0.0 : f64}
      : (tensor<64xf32>, tensor<64xf32>, tensor<64xf32>, tensor<64xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<64xf32>, tensor<64xf32>, tensor<64xf32>)
  return %r#0 : tensor<64xf32>
}

// -----

// STAGE2-LABEL: func.func @train_micro_step
func.func @train_micro_step(%g0: tensor<64xf32>, %g1: tensor<32xf32>,
                            %a0: tensor<64xf32> {g3moe.grad_acc = "a"},
                            %a1: tensor<32xf32> {g3moe.grad_acc = "b"})
    -> (tensor<64xf32> {g3moe.grad_acc = "a"}, tensor<32xf32> {g3moe.grad_acc = "b"}) {
  // STAGE2: %[[R0:.*]] = g3moe.reduce %arg0 {root = 0 : i64}
  // STAGE2: g3moe.add %arg2, %[[R0]] {owner = 0 : i64}
  // STAGE2: %[[R1:.*]] = g3moe.reduce %arg1 {root = 1 : i64}
  // STAGE2: g3moe.add %arg3, %[[R1]] {owner = 1 : i64}
  %s0 = g3moe.add %a0, %g0 : tensor<64xf32>
  %s1 = g3moe.add %a1, %g1 : tensor<32xf32>
  return %s0, %s1 : tensor<64xf32>, tensor<32xf32>
}

// STAGE2-LABEL: func.func @optimizer_step
func.func @optimizer_step(%a: tensor<64xf32> {g3moe.param = "a"}, %b: tensor<32xf32> {g3moe.param = "b"},
                          %ga: tensor<64xf32> {g3moe.grad_acc = "a"}, %gb: tensor<32xf32> {g3moe.grad_acc = "b"},
                          %t: tensor<i64>, %lr: tensor<f32>)
    -> (tensor<64xf32>, tensor<32xf32>, tensor<f32>) {
  // STAGE2: %[[N0:.*]] = g3moe.global_norm %arg2 {owner = 0 : i64}
  // STAGE2: %[[B0:.*]] = g3moe.broadcast %[[N0]] {root = 0 : i64}
  // STAGE2: %[[N1:.*]] = g3moe.global_norm %arg3 {owner = 1 : i64}
  // STAGE2: %[[B1:.*]] = g3moe.broadcast %[[N1]] {root = 1 : i64}
  // STAGE2: %[[N:.*]] = g3moe.global_norm %[[B0]], %[[B1]] :
  %n = g3moe.global_norm %ga, %gb : (tensor<64xf32>, tensor<32xf32>) -> tensor<f32>
  // STAGE2: g3moe.adamw %arg0, %arg2, {{.*}}owner = 0 : i64
  // STAGE2: g3moe.adamw %arg1, %arg3, {{.*}}owner = 1 : i64
  %r:6 = g3moe.adamw %a, %b, %ga, %gb, %a, %b, %a, %b, %t, %lr, %n
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.0 : f64}
      : (tensor<64xf32>, tensor<32xf32>, tensor<64xf32>, tensor<32xf32>, tensor<64xf32>, tensor<32xf32>,
         tensor<64xf32>, tensor<32xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<64xf32>, tensor<32xf32>, tensor<64xf32>, tensor<32xf32>, tensor<64xf32>, tensor<32xf32>)
  // STAGE2: return {{.*}}, %[[N]]
  return %r#0, %r#1, %n : tensor<64xf32>, tensor<32xf32>, tensor<f32>
}

// -----

// STAGE3-LABEL: func.func @forward_backward
func.func @forward_backward(%x: tensor<64xbf16>) -> (tensor<64xbf16>, tensor<64xbf16>, tensor<32xf32>) {
  // STAGE3: %[[A:.*]] = g3moe.param "a" trainable
  // STAGE3-NEXT: %[[RA:.*]] = g3moe.broadcast %[[A]] {root = 0 : i64}
  // STAGE3-NEXT: %[[C:.*]] = g3moe.convert %[[RA]]
  // STAGE3-NEXT: %[[Y:.*]] = g3moe.add %arg0, %[[C]]
  %a = g3moe.param "a" trainable : tensor<64xf32>
  %ac = g3moe.convert %a : tensor<64xf32> -> tensor<64xbf16>
  %y = g3moe.add %x, %ac : tensor<64xbf16>
  // STAGE3-NEXT: %[[B:.*]] = g3moe.param "b" trainable
  // STAGE3-NEXT: %[[RB:.*]] = g3moe.broadcast %[[B]] {root = 1 : i64}
  %b = g3moe.param "b" trainable : tensor<32xf32>
  // A frozen weight is every process's.
  // STAGE3-NEXT: %[[F:.*]] = g3moe.param "f" :
  // STAGE3-NEXT: %[[L:.*]] = g3moe.add %[[Y]], %[[F]]
  %f = g3moe.param "f" : tensor<64xbf16>
  %loss = g3moe.add %y, %f : tensor<64xbf16>
  // The backward (after the loss) receives "a" again, with its convert.
  // STAGE3-NEXT: %[[RA2:.*]] = g3moe.broadcast %[[A]] {root = 0 : i64}
  // STAGE3-NEXT: %[[C2:.*]] = g3moe.convert %[[RA2]]
  // STAGE3-NEXT: %[[G:.*]] = g3moe.add %[[L]], %[[C2]]
  %g = g3moe.add %loss, %ac : tensor<64xbf16>
  // STAGE3-NEXT: return %[[L]], %[[G]], %[[RB]]
  return %loss, %g, %b : tensor<64xbf16>, tensor<64xbf16>, tensor<32xf32>
}

// STAGE3-LABEL: func.func @optimizer_step
func.func @optimizer_step(%a: tensor<64xf32> {g3moe.param = "a"}, %b: tensor<32xf32> {g3moe.param = "b"},
                          %ga: tensor<64xf32> {g3moe.grad_acc = "a"}, %gb: tensor<32xf32> {g3moe.grad_acc = "b"},
                          %t: tensor<i64>, %lr: tensor<f32>)
    -> (tensor<64xf32>, tensor<32xf32>, tensor<f32>) {
  %n = g3moe.global_norm %ga, %gb : (tensor<64xf32>, tensor<32xf32>) -> tensor<f32>
  // STAGE3: %[[U0:.*]]:3 = g3moe.adamw %arg0, %arg2, {{.*}}owner = 0 : i64
  // STAGE3-NEXT: %[[U1:.*]]:3 = g3moe.adamw %arg1, %arg3, {{.*}}owner = 1 : i64
  // STAGE3-NEXT: return %[[U0]]#0, %[[U1]]#0,
  %r:6 = g3moe.adamw %a, %b, %ga, %gb, %a, %b, %a, %b, %t, %lr, %n
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.0 : f64}
      : (tensor<64xf32>, tensor<32xf32>, tensor<64xf32>, tensor<32xf32>, tensor<64xf32>, tensor<32xf32>,
         tensor<64xf32>, tensor<32xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<64xf32>, tensor<32xf32>, tensor<64xf32>, tensor<32xf32>, tensor<64xf32>, tensor<32xf32>)
  return %r#0, %r#1, %n : tensor<64xf32>, tensor<32xf32>, tensor<f32>
}
