// --g3moe-fuse-lm-head-loss: the LM head and the cross-entropy become one
// chunked op forward and backward; the table gradient only when used; the
// backward takes the forward's per-row logsumexp, or joins the forward in
// one pass when it needs no table gradient and its seed is known at the
// forward.
// RUN: g3moe-opt %s --split-input-file --g3moe-fuse-lm-head-loss | FileCheck %s

// CHECK-LABEL: func.func @frozen_table
func.func @frozen_table(%h: tensor<2x16x64xbf16>, %t: tensor<2x16xi32>, %n: tensor<f32>, %g: tensor<f32>)
    -> (tensor<f32>, tensor<2x16x64xbf16>) {
  %emb = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  %l = g3moe.lm_head %h, %emb {softcap = 30.0 : f64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>) -> tensor<2x16x512xf32>
  // CHECK: %[[LOSS:.*]], %[[DX:.*]] = g3moe.lm_head_cross_entropy_and_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} {ignore_index = -100 : i64, softcap = 3.000000e+01 : f64} : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>, tensor<f32>) -> (tensor<f32>, tensor<2x16x64xbf16>)
  %ce = g3moe.cross_entropy %l, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x16x512xf32>, tensor<2x16xi32>, tensor<f32>) -> tensor<f32>
  %dl = g3moe.cross_entropy_grad %l, %t, %n, %g {ignore_index = -100 : i64}
      : (tensor<2x16x512xf32>, tensor<2x16xi32>, tensor<f32>, tensor<f32>) -> tensor<2x16x512xf32>
  %dx, %dt = g3moe.lm_head_grad %h, %emb, %dl {softcap = 30.0 : f64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16x512xf32>) -> (tensor<2x16x64xbf16>, tensor<512x64xf32>)
  // CHECK-NOT: g3moe.lm_head
  // CHECK-NOT: g3moe.cross_entropy
  // CHECK: return %[[LOSS]], %[[DX]]
  return %ce, %dx : tensor<f32>, tensor<2x16x64xbf16>
}

// -----

// A constant seed written after the forward (autodiff's) is hoisted above it.
// CHECK-LABEL: func.func @constant_seed
func.func @constant_seed(%h: tensor<2x64xbf16>, %t: tensor<2xi32>, %n: tensor<f32>)
    -> (tensor<f32>, tensor<2x64xbf16>) {
  %emb = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  %l = g3moe.lm_head %h, %emb : (tensor<2x64xbf16>, tensor<512x64xbf16>) -> tensor<2x512xf32>
  // CHECK: %[[ONE:.*]] = arith.constant dense<1.000000e+00> : tensor<f32>
  // CHECK: %[[LOSS:.*]], %[[DX:.*]] = g3moe.lm_head_cross_entropy_and_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[ONE]]
  %ce = g3moe.cross_entropy %l, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>, tensor<f32>) -> tensor<f32>
  %one = arith.constant dense<1.0> : tensor<f32>
  %dl = g3moe.cross_entropy_grad %l, %t, %n, %one {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>, tensor<f32>, tensor<f32>) -> tensor<2x512xf32>
  %dx, %dt = g3moe.lm_head_grad %h, %emb, %dl
      : (tensor<2x64xbf16>, tensor<512x64xbf16>, tensor<2x512xf32>) -> (tensor<2x64xbf16>, tensor<512x64xf32>)
  // CHECK: return %[[LOSS]], %[[DX]]
  return %ce, %dx : tensor<f32>, tensor<2x64xbf16>
}

// -----

// A seed computed after the forward (here from its loss) keeps the two ops,
// linked by the logsumexp.
// CHECK-LABEL: func.func @late_seed
func.func @late_seed(%h: tensor<2x64xbf16>, %t: tensor<2xi32>, %n: tensor<f32>)
    -> (tensor<f32>, tensor<2x64xbf16>) {
  %emb = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  %l = g3moe.lm_head %h, %emb : (tensor<2x64xbf16>, tensor<512x64xbf16>) -> tensor<2x512xf32>
  // CHECK: %[[LOSS:.*]], %[[LSE:.*]] = g3moe.lm_head_cross_entropy
  %ce = g3moe.cross_entropy %l, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>, tensor<f32>) -> tensor<f32>
  // CHECK: %[[SEED:.*]] = g3moe.mul %[[LOSS]], %[[LOSS]]
  %g = g3moe.mul %ce, %ce : tensor<f32>
  %dl = g3moe.cross_entropy_grad %l, %t, %n, %g {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>, tensor<f32>, tensor<f32>) -> tensor<2x512xf32>
  // CHECK: g3moe.lm_head_cross_entropy_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[SEED]], %[[LSE]]
  %dx, %dt = g3moe.lm_head_grad %h, %emb, %dl
      : (tensor<2x64xbf16>, tensor<512x64xbf16>, tensor<2x512xf32>) -> (tensor<2x64xbf16>, tensor<512x64xf32>)
  // CHECK-NOT: lm_head_cross_entropy_and_grad
  return %ce, %dx : tensor<f32>, tensor<2x64xbf16>
}

// -----

// A trained table keeps its gradient; logits another op reads (an accuracy
// of other targets) stay.
// CHECK-LABEL: func.func @trained_table
func.func @trained_table(%h: tensor<2x64xbf16>, %t: tensor<2xi32>, %u: tensor<2xi32>, %n: tensor<f32>, %g: tensor<f32>)
    -> (tensor<f32>, tensor<512x64xf32>, tensor<f32>) {
  %emb = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  // CHECK: %[[L:.*]] = g3moe.lm_head
  %l = g3moe.lm_head %h, %emb : (tensor<2x64xbf16>, tensor<512x64xbf16>) -> tensor<2x512xf32>
  // CHECK: %{{.*}}, %[[LSE2:.*]] = g3moe.lm_head_cross_entropy
  %ce = g3moe.cross_entropy %l, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>, tensor<f32>) -> tensor<f32>
  %dl = g3moe.cross_entropy_grad %l, %t, %n, %g {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>, tensor<f32>, tensor<f32>) -> tensor<2x512xf32>
  // CHECK: %{{.*}}, %[[DT:.*]] = g3moe.lm_head_cross_entropy_grad {{.*}}, %[[LSE2]] {{.*}} -> (tensor<2x64xbf16>, tensor<512x64xf32>)
  %dx, %dt = g3moe.lm_head_grad %h, %emb, %dl
      : (tensor<2x64xbf16>, tensor<512x64xbf16>, tensor<2x512xf32>) -> (tensor<2x64xbf16>, tensor<512x64xf32>)
  // CHECK: %[[C:.*]], %{{.*}} = g3moe.token_accuracy %[[L]]
  %c, %k = g3moe.token_accuracy %l, %u {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>) -> (tensor<f32>, tensor<f32>)
  // CHECK: return %{{.*}}, %[[DT]], %[[C]]
  return %ce, %dt, %c : tensor<f32>, tensor<512x64xf32>, tensor<f32>
}

// -----

// A forward without a backward (evaluation) keeps a single result.
// CHECK-LABEL: func.func @forward_only
func.func @forward_only(%h: tensor<2x64xbf16>, %t: tensor<2xi32>, %n: tensor<f32>) -> tensor<f32> {
  %emb = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  %l = g3moe.lm_head %h, %emb : (tensor<2x64xbf16>, tensor<512x64xbf16>) -> tensor<2x512xf32>
  // CHECK: g3moe.lm_head_cross_entropy {{.*}} -> tensor<f32>
  %ce = g3moe.cross_entropy %l, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>, tensor<f32>) -> tensor<f32>
  return %ce : tensor<f32>
}

// -----

// An evaluation: the loss and the token accuracy of one head fuse into one
// lm_head_eval, and the logits go.
// CHECK-LABEL: func.func @evaluation
func.func @evaluation(%h: tensor<2x64xbf16>, %t: tensor<2xi32>, %n: tensor<f32>)
    -> (tensor<f32>, tensor<f32>, tensor<f32>) {
  %emb = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  // CHECK-NOT: g3moe.lm_head %
  %l = g3moe.lm_head %h, %emb {softcap = 30.0 : f64} : (tensor<2x64xbf16>, tensor<512x64xbf16>) -> tensor<2x512xf32>
  %ce = g3moe.cross_entropy %l, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>, tensor<f32>) -> tensor<f32>
  // CHECK: %[[L:.*]], %[[C:.*]], %[[K:.*]] = g3moe.lm_head_eval %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} {ignore_index = -100 : i64, softcap = 3.000000e+01 : f64}
  %c, %k = g3moe.token_accuracy %l, %t {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>) -> (tensor<f32>, tensor<f32>)
  // CHECK-NOT: g3moe.cross_entropy
  // CHECK-NOT: g3moe.token_accuracy
  // CHECK: return %[[L]], %[[C]], %[[K]]
  return %ce, %c, %k : tensor<f32>, tensor<f32>, tensor<f32>
}

// -----

// An accuracy of other targets than the loss's keeps the logits.
// CHECK-LABEL: func.func @other_targets
func.func @other_targets(%h: tensor<2x64xbf16>, %t: tensor<2xi32>, %u: tensor<2xi32>, %n: tensor<f32>)
    -> (tensor<f32>, tensor<f32>) {
  %emb = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  // CHECK: %[[L:.*]] = g3moe.lm_head
  %l = g3moe.lm_head %h, %emb : (tensor<2x64xbf16>, tensor<512x64xbf16>) -> tensor<2x512xf32>
  // CHECK: g3moe.lm_head_cross_entropy
  %ce = g3moe.cross_entropy %l, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>, tensor<f32>) -> tensor<f32>
  // CHECK: g3moe.token_accuracy %[[L]]
  %c, %k = g3moe.token_accuracy %l, %u {ignore_index = -100 : i64}
      : (tensor<2x512xf32>, tensor<2xi32>) -> (tensor<f32>, tensor<f32>)
  return %ce, %c : tensor<f32>, tensor<f32>
}
