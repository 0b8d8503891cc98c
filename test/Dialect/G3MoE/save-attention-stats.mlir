// --g3moe-save-attention-stats: a backward whose forward precedes it takes
// the forward's output and an lse result added to the forward; others stay.
// RUN: g3moe-opt %s --split-input-file --g3moe-save-attention-stats | FileCheck %s

// CHECK-LABEL: func.func @linked
func.func @linked(%q: tensor<2x16x4x16xbf16>, %k: tensor<2x16x2x16xbf16>, %s: tensor<2x16xi32>,
                  %do: tensor<2x16x4x16xbf16>)
    -> (tensor<2x16x4x16xbf16>, tensor<2x16x4x16xbf16>) {
  // CHECK: %[[O:.*]], %[[LSE:.*]] = g3moe.attention %{{.*}} {scale = 2.500000e-01 : f64, sliding_window = 8 : i64}
  // CHECK-SAME: -> (tensor<2x16x4x16xbf16>, tensor<2x4x16xf32>)
  %o = g3moe.attention %q, %k, %k, %s {scale = 0.25 : f64, sliding_window = 8 : i64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>)
      -> tensor<2x16x4x16xbf16>
  // CHECK: g3moe.attention_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[O]], %[[LSE]] {scale = 2.500000e-01 : f64, sliding_window = 8 : i64}
  %d:3 = g3moe.attention_grad %q, %k, %k, %s, %do {scale = 0.25 : f64, sliding_window = 8 : i64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>,
         tensor<2x16x4x16xbf16>)
      -> (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>)
  // CHECK: return %[[O]]
  return %o, %d#0 : tensor<2x16x4x16xbf16>, tensor<2x16x4x16xbf16>
}

// -----

// Another window is another forward; a backward without a forward keeps
// recomputing.
// CHECK-LABEL: func.func @unlinked
func.func @unlinked(%q: tensor<2x16x4x16xbf16>, %k: tensor<2x16x2x16xbf16>, %s: tensor<2x16xi32>,
                    %do: tensor<2x16x4x16xbf16>) -> (tensor<2x16x4x16xbf16>, tensor<2x16x4x16xbf16>) {
  // CHECK: g3moe.attention {{.*}} -> tensor<2x16x4x16xbf16>
  %o = g3moe.attention %q, %k, %k, %s {scale = 0.25 : f64, sliding_window = 8 : i64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>)
      -> tensor<2x16x4x16xbf16>
  // CHECK: g3moe.attention_grad {{.*}} : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>, tensor<2x16x4x16xbf16>) ->
  %d:3 = g3moe.attention_grad %q, %k, %k, %s, %do {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>,
         tensor<2x16x4x16xbf16>)
      -> (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>)
  return %o, %d#0 : tensor<2x16x4x16xbf16>, tensor<2x16x4x16xbf16>
}
