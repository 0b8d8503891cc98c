// --g3moe-lower-to-g3rt: persistent buffers from tags, arena buffers for the
// rest, in-place accumulation, views, fills, calls lowered inline, outputs.
// RUN: g3moe-opt %s --g3moe-lower-to-g3rt | FileCheck %s

func.func @forward_backward(%x: tensor<2x4xf32> {g3moe.input = "x"})
    -> (tensor<f32> {g3moe.output = "loss"}, tensor<3x4xf32> {g3moe.grad = "w"}) {
  %w = g3moe.param "w" trainable : tensor<3x4xf32>
  %y = g3moe.linear %x, %w : (tensor<2x4xf32>, tensor<3x4xf32>) -> tensor<2x3xf32>
  %flat = g3moe.reshape %y : tensor<2x3xf32> -> tensor<6xf32>
  %one = arith.constant dense<1.0> : tensor<f32>
  %g = g3moe.linear_grad_weight %y, %x : (tensor<2x3xf32>, tensor<2x4xf32>) -> tensor<3x4xf32>
  return %one, %g : tensor<f32>, tensor<3x4xf32>
}

// CHECK-LABEL: func.func @forward_backward() {
// CHECK-DAG: %[[X:.*]] = g3rt.buffer "input" {name = "x"} : memref<2x4xf32>
// CHECK-DAG: %[[W:.*]] = g3rt.buffer "param" {name = "w"} : memref<3x4xf32>
// CHECK: %[[Y:.*]] = g3rt.buffer "arena" : memref<2x3xf32>
// CHECK: g3rt.launch "linear" ins(%[[X]], %[[W]] : memref<2x4xf32>, memref<3x4xf32>) outs(%[[Y]] : memref<2x3xf32>) {attrs = {}}
// CHECK: g3rt.view %[[Y]] : memref<2x3xf32> to memref<6xf32>
// CHECK: %[[ONE:.*]] = g3rt.buffer "arena" : memref<f32>
// CHECK: g3rt.launch "fill" outs(%[[ONE]] : memref<f32>) {attrs = {value = 1.000000e+00 : f64}}
// CHECK: %[[G:.*]] = g3rt.buffer "arena" : memref<3x4xf32>
// CHECK: g3rt.launch "linear_grad_weight"
// CHECK: g3rt.output "loss" %[[ONE]]
// CHECK: g3rt.output "grad:w" %[[G]]

func.func @train_micro_step(%x: tensor<2x4xf32> {g3moe.input = "x"},
                            %acc: tensor<3x4xf32> {g3moe.grad_acc = "w"})
    -> (tensor<f32> {g3moe.output = "loss"}, tensor<3x4xf32> {g3moe.grad_acc = "w"}) {
  %r:2 = call @forward_backward(%x) : (tensor<2x4xf32>) -> (tensor<f32>, tensor<3x4xf32>)
  %sum = g3moe.add %acc, %r#1 : tensor<3x4xf32>
  return %r#0, %sum : tensor<f32>, tensor<3x4xf32>
}

// The callee's launches appear inline; the sum lands in the accumulator itself.
// CHECK-LABEL: func.func @train_micro_step() {
// CHECK-DAG: %[[ACC:.*]] = g3rt.buffer "grad_acc" {name = "w"} : memref<3x4xf32>
// CHECK: g3rt.launch "linear"
// CHECK: g3rt.launch "linear_grad_weight" {{.*}} outs(%[[G2:.*]] : memref<3x4xf32>)
// CHECK: g3rt.launch "add" ins(%[[ACC]], %[[G2]] : memref<3x4xf32>, memref<3x4xf32>) outs(%[[ACC]] : memref<3x4xf32>)
// CHECK-NOT: "copy"
// CHECK: g3rt.output "loss"

func.func @returns_input(%acc: tensor<3x4xf32> {g3moe.grad_acc = "w"}, %x: tensor<3x4xf32> {g3moe.input = "x"})
    -> (tensor<3x4xf32> {g3moe.grad_acc = "w"}) {
  %s = g3moe.scale %x {factor = 2.0 : f64} : tensor<3x4xf32>
  return %s : tensor<3x4xf32>
}

// A result that cannot be computed in place is copied into its buffer.
// CHECK-LABEL: func.func @returns_input() {
// CHECK: g3rt.launch "scale" {{.*}} outs(%[[S:.*]] : memref<3x4xf32>)
// CHECK: g3rt.launch "copy" ins(%[[S]] : memref<3x4xf32>) outs(%{{.*}} : memref<3x4xf32>)

func.func @sharded_update(%p: tensor<4xf32> {g3moe.param = "w"}, %g: tensor<4xf32> {g3moe.grad_acc = "w"},
                          %m: tensor<4xf32> {g3moe.exp_avg = "w"}, %v: tensor<4xf32> {g3moe.exp_avg_sq = "w"},
                          %t: tensor<i64> {g3moe.input = "step"}, %lr: tensor<f32> {g3moe.input = "lr"})
    -> (tensor<4xf32> {g3moe.param = "w"}, tensor<4xf32> {g3moe.exp_avg = "w"},
        tensor<4xf32> {g3moe.exp_avg_sq = "w"}) {
  %r:3 = g3moe.adamw %p, %g, %m, %v, %t, %lr, %lr
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, owner = 1 : i64, weight_decay = 0.0 : f64}
      : (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  %b = g3moe.broadcast %r#0 {root = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
  return %b, %r#1, %r#2 : tensor<4xf32>, tensor<4xf32>, tensor<4xf32>
}

// ZeRO stage 1: the owner's update writes the parameter in place, and the
// broadcast sends it from there into the same buffer on every process.
// CHECK-LABEL: func.func @sharded_update() {
// CHECK-DAG: %[[P:.*]] = g3rt.buffer "param" {name = "w"} : memref<4xf32>
// CHECK-DAG: %[[M:.*]] = g3rt.buffer "exp_avg" {name = "w"} : memref<4xf32>
// CHECK: g3rt.launch "adamw" {{.*}} outs(%[[P]], %[[M]], %{{.*}} : memref<4xf32>, memref<4xf32>, memref<4xf32>) {attrs = {{{.*}}owner = 1 : i64
// CHECK: g3rt.launch "broadcast" ins(%[[P]] : memref<4xf32>) outs(%[[P]] : memref<4xf32>) {attrs = {root = 1 : i64}}
// CHECK-NOT: "copy"

func.func @received_param(%x: tensor<4xf32> {g3moe.input = "x"}) -> (tensor<4xf32> {g3moe.output = "y"}) {
  %w = g3moe.param "w" trainable : tensor<4xf32>
  %r = g3moe.broadcast %w {root = 1 : i64} : (tensor<4xf32>) -> tensor<4xf32>
  %y = g3moe.add %x, %r : tensor<4xf32>
  return %y : tensor<4xf32>
}

// ZeRO stage 3: a parameter as the step found it is received into an arena
// buffer (only its owner holds it, and it stays as it is there).
// CHECK-LABEL: func.func @received_param() {
// CHECK: %[[W:.*]] = g3rt.buffer "param" {name = "w"} : memref<4xf32>
// CHECK: %[[R:.*]] = g3rt.buffer "arena" : memref<4xf32>
// CHECK: g3rt.launch "broadcast" ins(%[[W]] : memref<4xf32>) outs(%[[R]] : memref<4xf32>) {attrs = {root = 1 : i64}}
// CHECK: g3rt.launch "add" ins(%{{.*}}, %[[R]] :

func.func @masked_lora(%x: tensor<4x64xbf16> {g3moe.input = "x"}, %key: tensor<2xi64> {g3moe.input = "rng_key"})
    -> (tensor<4x8xbf16> {g3moe.output = "h"}) {
  %a = g3moe.param "a" trainable : tensor<8x64xbf16>
  %m = g3moe.dropout_mask %key {stream = 3 : i64, p = 0.05 : f64} : (tensor<2xi64>) -> tensor<8xi32>
  %h = g3moe.linear %x, %a dropout %m {dropout_p = 0.05 : f64}
      : (tensor<4x64xbf16>, tensor<8x64xbf16>, tensor<8xi32>) -> tensor<4x8xbf16>
  return %h : tensor<4x8xbf16>
}

// A product with a dropout takes the keep-mask as its last input and
// dropout_p as an attribute: the kernels' convention (dense_checks.h).
// CHECK-LABEL: func.func @masked_lora() {
// CHECK: %[[MASK:.*]] = g3rt.buffer "arena" : memref<8xi32>
// CHECK: g3rt.launch "dropout_mask" ins(%{{.*}} : memref<2xi64>) outs(%[[MASK]] : memref<8xi32>) {attrs = {p = 5.000000e-02 : f64, stream = 3 : i64}}
// CHECK: g3rt.launch "linear" ins(%{{.*}}, %{{.*}}, %[[MASK]] : memref<4x64xbf16>, memref<8x64xbf16>, memref<8xi32>) outs(%{{.*}} : memref<4x8xbf16>) {attrs = {dropout_p = 5.000000e-02 : f64}}

// A frozen weight's e4m3 copies are parameters that name their source: the
// runtime derives them when it loads the weight; no launch computes them.
func.func @frozen_fp8(%x: tensor<2x64xbf16> {g3moe.input = "x"})
    -> (tensor<2x32xbf16> {g3moe.output = "y"}) {
  %q, %s = g3moe.frozen_e4m3 "w" transpose : tensor<64x32xbf16> -> tensor<32x64xf8E4M3FN>, tensor<32xf32>
  %y = g3moe.scaled_linear %x, %q, %s : (tensor<2x64xbf16>, tensor<32x64xf8E4M3FN>, tensor<32xf32>) -> tensor<2x32xbf16>
  return %y : tensor<2x32xbf16>
}

// CHECK-LABEL: func.func @frozen_fp8() {
// CHECK-DAG: %[[Q:.*]] = g3rt.buffer "param" {derivation = "e4m3_transposed", derived_from = "w", name = "w@e4m3t", source_type = tensor<64x32xbf16>} : memref<32x64xf8E4M3FN>
// CHECK-DAG: %[[S:.*]] = g3rt.buffer "param" {derivation = "e4m3_transposed_scales", derived_from = "w", name = "w@e4m3t.scale", source_type = tensor<64x32xbf16>} : memref<32xf32>
// CHECK-NOT: g3rt.launch "frozen_e4m3"
// CHECK: g3rt.launch "scaled_linear" ins(%{{.*}}, %[[Q]], %[[S]] :
