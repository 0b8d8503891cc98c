// --g3moe-optimizer: accumulation over micro-batches and the AdamW step.
// RUN: g3moe-opt %s --g3moe-optimizer="learning-rate=1e-4 schedule=linear weight-decay=0.01 max-grad-norm=1.0" | FileCheck %s
// RUN: not g3moe-opt %s --g3moe-optimizer="schedule=step" 2>&1 | FileCheck %s --check-prefix=SCHEDULE

// SCHEDULE: g3moe-optimizer: unknown schedule 'step'

func.func @forward_backward(%x: tensor<4xf32> {g3moe.input = "input_ids"})
    -> (tensor<f32> {g3moe.output = "loss"}, tensor<2x4xf32> {g3moe.grad = "m.lora_A.weight"},
        tensor<4xf32> {g3moe.grad = "model.norm.weight"}) {
  %l = arith.constant dense<1.0> : tensor<f32>
  %a = arith.constant dense<2.0> : tensor<2x4xf32>
  %b = arith.constant dense<3.0> : tensor<4xf32>
  return %l, %a, %b : tensor<f32>, tensor<2x4xf32>, tensor<4xf32>
}

// CHECK-LABEL: func.func @train_micro_step(
// CHECK-SAME: %[[X:[^:]*]]: tensor<4xf32> {g3moe.input = "input_ids"}
// CHECK-SAME: %[[ACC0:[^:]*]]: tensor<2x4xf32> {g3moe.grad_acc = "m.lora_A.weight"}
// CHECK-SAME: %[[ACC1:[^:]*]]: tensor<4xf32> {g3moe.grad_acc = "model.norm.weight"}
// CHECK-SAME: -> (tensor<f32> {g3moe.output = "loss"}, tensor<2x4xf32> {g3moe.grad_acc = "m.lora_A.weight"}, tensor<4xf32> {g3moe.grad_acc = "model.norm.weight"})
// CHECK: %[[R:.*]]:3 = call @forward_backward(%[[X]])
// CHECK: %[[S0:.*]] = g3moe.add %[[ACC0]], %[[R]]#1
// CHECK: %[[S1:.*]] = g3moe.add %[[ACC1]], %[[R]]#2
// CHECK: return %[[R]]#0, %[[S0]], %[[S1]]

// CHECK-LABEL: func.func @optimizer_step(
// CHECK-SAME: %[[P0:[^:]*]]: tensor<2x4xf32> {g3moe.param = "m.lora_A.weight"}
// CHECK-SAME: %[[G0:[^:]*]]: tensor<2x4xf32> {g3moe.grad_acc = "m.lora_A.weight"}
// CHECK-SAME: %[[G1:[^:]*]]: tensor<4xf32> {g3moe.grad_acc = "model.norm.weight"}
// CHECK-SAME: %[[M0:[^:]*]]: tensor<2x4xf32> {g3moe.exp_avg = "m.lora_A.weight"}
// CHECK-SAME: %[[V0:[^:]*]]: tensor<2x4xf32> {g3moe.exp_avg_sq = "m.lora_A.weight"}
// CHECK-SAME: %[[STEP:[^:]*]]: tensor<i64> {g3moe.input = "step"}
// CHECK-SAME: %[[TOTAL:[^:]*]]: tensor<i64> {g3moe.input = "total_steps"}
// CHECK-SAME: %[[WARM:[^:]*]]: tensor<i64> {g3moe.input = "warmup_steps"}
// CHECK-SAME: tensor<f32> {g3moe.output = "grad_norm"}, tensor<f32> {g3moe.output = "learning_rate"})
// CHECK: %[[NORM:.*]] = g3moe.global_norm %[[G0]], %[[G1]]
// CHECK: %[[CLIP:.*]] = g3moe.clip_scale %[[NORM]] {max_norm = 1.000000e+00 : f64}
// CHECK: %[[LR:.*]] = g3moe.lr_schedule %[[STEP]], %[[TOTAL]], %[[WARM]] {kind = "linear", learning_rate = 1.000000e-04 : f64}
// CHECK: g3moe.adamw %[[P0]], %[[G0]], %[[M0]], %[[V0]], %[[STEP]], %[[LR]], %[[CLIP]] {beta1 = 9.000000e-01 : f64, beta2 = 0.99899999999999999 : f64, epsilon = 1.000000e-08 : f64, weight_decay = 1.000000e-02 : f64}
// Norm weights are not decayed.
// CHECK: g3moe.adamw {{.*}} weight_decay = 0.000000e+00 : f64}
// CHECK: return {{.*}}, %[[NORM]], %[[LR]]
