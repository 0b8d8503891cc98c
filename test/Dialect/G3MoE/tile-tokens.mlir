// --g3moe-tile-tokens: a feed-forward block runs once per chunk of tokens on
// row slices of its inputs; the weights stay shared, later chunks' random
// draws take fresh streams, and the chunks' outputs are joined for the rest
// of the layer. Blocks with no linear layer (input jitter) and chunks as long
// as the step leave the function unchanged.
// RUN: g3moe-opt %s --g3moe-tile-tokens=tokens=4 | FileCheck %s
// RUN: g3moe-opt %s --g3moe-tile-tokens=tokens=8 | FileCheck %s --check-prefix=WHOLE
// RUN: g3moe-opt %s --g3moe-tile-tokens=tokens=3 | FileCheck %s --check-prefix=UNEVEN

// CHECK-LABEL: func.func @forward
// WHOLE-LABEL: func.func @forward
func.func @forward(%ids: tensor<1x8xi32> {g3moe.input = "input_ids"},
                   %key: tensor<2xi64> {g3moe.input = "rng_key"},
                   %f: tensor<1x8x4xbf16>, %idx: tensor<8x2xi32>, %w: tensor<8x2xf32>)
    -> (tensor<1x8x4xbf16>, tensor<8x4xbf16>, tensor<8x4xbf16>) {
  // The dense MLP: the reshaped input is cut, the weights stay.
  // CHECK: %[[X:.*]] = g3moe.reshape %arg2
  // CHECK: %[[WG:.*]] = g3moe.param "model.layers.0.mlp.gate_proj.weight"
  // CHECK: %[[WD:.*]] = g3moe.param "model.layers.0.mlp.down_proj.weight"
  // CHECK: %[[XS:.*]]:2 = g3moe.split_rows %[[X]] : tensor<8x4xbf16> -> tensor<4x4xbf16>, tensor<4x4xbf16>
  // CHECK: %[[G0:.*]] = g3moe.linear %[[XS]]#0, %[[WG]] : (tensor<4x4xbf16>, tensor<16x4xbf16>) -> tensor<4x16xbf16>
  // CHECK: %[[H0:.*]] = g3moe.gelu_tanh_mul %[[G0]], %[[G0]] : tensor<4x16xbf16>
  // CHECK: %[[D0:.*]] = g3moe.linear %[[H0]], %[[WD]] : (tensor<4x16xbf16>, tensor<4x16xbf16>) -> tensor<4x4xbf16>
  // CHECK: %[[G1:.*]] = g3moe.linear %[[XS]]#1, %[[WG]]
  // CHECK: %[[H1:.*]] = g3moe.gelu_tanh_mul %[[G1]], %[[G1]]
  // CHECK: %[[D1:.*]] = g3moe.linear %[[H1]], %[[WD]]
  // CHECK: %[[Y:.*]] = g3moe.concat_rows %[[D0]], %[[D1]] : tensor<4x4xbf16>, tensor<4x4xbf16> -> tensor<8x4xbf16>
  // CHECK: g3moe.reshape %[[Y]] : tensor<8x4xbf16> -> tensor<1x8x4xbf16>
  // WHOLE-NOT: split_rows
  %x = g3moe.reshape %f : tensor<1x8x4xbf16> -> tensor<8x4xbf16> loc("model.layers.0.mlp")
  %wg = g3moe.param "model.layers.0.mlp.gate_proj.weight" : tensor<16x4xbf16> loc("model.layers.0.mlp")
  %g = g3moe.linear %x, %wg : (tensor<8x4xbf16>, tensor<16x4xbf16>) -> tensor<8x16xbf16> loc("model.layers.0.mlp")
  %h = g3moe.gelu_tanh_mul %g, %g : tensor<8x16xbf16> loc("model.layers.0.mlp")
  %wd = g3moe.param "model.layers.0.mlp.down_proj.weight" : tensor<4x16xbf16> loc("model.layers.0.mlp")
  %d = g3moe.linear %h, %wd : (tensor<8x16xbf16>, tensor<4x16xbf16>) -> tensor<8x4xbf16> loc("model.layers.0.mlp")
  %y = g3moe.reshape %d : tensor<8x4xbf16> -> tensor<1x8x4xbf16> loc("model.layers.0.mlp")

  // Input jitter: token rows but no linear layer, so left whole.
  // CHECK: %[[J:.*]] = g3moe.random_uniform %arg1 {{.*}}stream = 3 : i64} : (tensor<2xi64>) -> tensor<8x4xf32>
  // CHECK: %[[JX:.*]] = g3moe.mul %[[X]], {{.*}} : tensor<8x4xbf16>
  %j = g3moe.random_uniform %key {stream = 3 : i64, low = 0.99 : f64, high = 1.01 : f64}
      : (tensor<2xi64>) -> tensor<8x4xf32> loc("model.layers.1.moe")
  %jb = g3moe.convert %j : tensor<8x4xf32> -> tensor<8x4xbf16> loc("model.layers.1.moe")
  %jx = g3moe.mul %x, %jb : tensor<8x4xbf16> loc("model.layers.1.moe")

  // The experts: tokens, indices and router weights are cut; each chunk
  // dispatches and combines its own tokens; the LoRA-style dropout draw of
  // the second chunk takes stream 6, one past the highest in the module.
  // CHECK: %[[XE:.*]]:2 = g3moe.split_rows %[[JX]] : tensor<8x4xbf16> -> tensor<4x4xbf16>, tensor<4x4xbf16>
  // CHECK: %[[IE:.*]]:2 = g3moe.split_rows %arg3 : tensor<8x2xi32> -> tensor<4x2xi32>, tensor<4x2xi32>
  // CHECK: %[[WE:.*]]:2 = g3moe.split_rows %arg4 : tensor<8x2xf32> -> tensor<4x2xf32>, tensor<4x2xf32>
  // CHECK: %[[P0:.*]], %[[O0:.*]], %[[S0:.*]] = g3moe.moe_dispatch %[[XE]]#0, %[[IE]]#0 {num_experts = 3 : i64} : (tensor<4x4xbf16>, tensor<4x2xi32>) -> (tensor<8x4xbf16>, tensor<4xi32>, tensor<4x2xi32>)
  // CHECK: g3moe.random_uniform %arg1 {{.*}}stream = 5 : i64} : (tensor<2xi64>) -> tensor<8x4xf32>
  // CHECK: g3moe.expert_linear {{.*}}, %[[O0]], {{.*}} -> tensor<8x4xbf16>
  // CHECK: %[[C0:.*]] = g3moe.moe_combine {{.*}}, %[[S0]], %[[WE]]#0 : {{.*}} -> tensor<4x4xbf16>
  // CHECK: g3moe.moe_dispatch %[[XE]]#1, %[[IE]]#1
  // CHECK: g3moe.random_uniform %arg1 {{.*}}stream = 6 : i64} : (tensor<2xi64>) -> tensor<8x4xf32>
  // CHECK: %[[C1:.*]] = g3moe.moe_combine {{.*}}, %[[WE]]#1
  // CHECK: %[[E:.*]] = g3moe.concat_rows %[[C0]], %[[C1]] : tensor<4x4xbf16>, tensor<4x4xbf16> -> tensor<8x4xbf16>
  // CHECK: return {{.*}}, %[[JX]], %[[E]]
  %p, %off, %slots = g3moe.moe_dispatch %jx, %idx {num_experts = 3 : i64}
      : (tensor<8x4xbf16>, tensor<8x2xi32>) -> (tensor<16x4xbf16>, tensor<4xi32>, tensor<8x2xi32>) loc("model.layers.1.moe.experts")
  %u = g3moe.random_uniform %key {stream = 5 : i64, low = 0.0 : f64, high = 1.0 : f64}
      : (tensor<2xi64>) -> tensor<16x4xf32> loc("model.layers.1.moe.experts")
  %pd = g3moe.dropout %p, %u {p = 0.1 : f64} : (tensor<16x4xbf16>, tensor<16x4xf32>) -> tensor<16x4xbf16> loc("model.layers.1.moe.experts")
  %we = g3moe.param "model.layers.1.moe.experts.{e}.down_proj.weight" : tensor<3x4x4xbf16> loc("model.layers.1.moe.experts")
  %e = g3moe.expert_linear %pd, %off, %we : (tensor<16x4xbf16>, tensor<4xi32>, tensor<3x4x4xbf16>) -> tensor<16x4xbf16> loc("model.layers.1.moe.experts")
  %c = g3moe.moe_combine %e, %slots, %w : (tensor<16x4xbf16>, tensor<8x2xi32>, tensor<8x2xf32>) -> tensor<8x4xbf16> loc("model.layers.1.moe.experts")
  return %y, %jx, %c : tensor<1x8x4xbf16>, tensor<8x4xbf16>, tensor<8x4xbf16>
}

// Eight tokens in chunks of three: 3, 3 and 2 rows.
// UNEVEN: g3moe.split_rows {{.*}} : tensor<8x4xbf16> -> tensor<3x4xbf16>, tensor<3x4xbf16>, tensor<2x4xbf16>
// UNEVEN: g3moe.concat_rows {{.*}} : tensor<3x4xbf16>, tensor<3x4xbf16>, tensor<2x4xbf16> -> tensor<8x4xbf16>
