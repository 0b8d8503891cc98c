// Verifier messages of the g3moe ops, one broken invariant per case.
// RUN: g3moe-opt %s -split-input-file -verify-diagnostics

func.func @param_empty_name() {
  // expected-error @+1 {{name must not be empty}}
  %w = g3moe.param "" : tensor<4xbf16>
  return
}

// -----

func.func @param_dynamic(%x: tensor<?x4xbf16>) {
  // expected-error @+1 {{requires static shapes}}
  %w = g3moe.param "w" : tensor<?x4xbf16>
  return
}

// -----

func.func @reshape_count(%x: tensor<2x16x64xbf16>) {
  // expected-error @+1 {{must keep the element count: [2, 16, 64] has 2048, [32, 32] has 1024}}
  %y = g3moe.reshape %x : tensor<2x16x64xbf16> -> tensor<32x32xbf16>
  return
}

// -----

func.func @reshape_type(%x: tensor<4xbf16>) {
  // expected-error @+1 {{must keep the element type}}
  %y = g3moe.reshape %x : tensor<4xbf16> -> tensor<4xf32>
  return
}

// -----

func.func @convert_shape(%x: tensor<4xbf16>) {
  // expected-error @+1 {{must keep the shape, got [4] -> [2, 2]}}
  %y = g3moe.convert %x : tensor<4xbf16> -> tensor<2x2xf32>
  return
}

// -----

func.func @random_range(%key: tensor<2xi64>) {
  // expected-error @+1 {{requires low < high}}
  %u = g3moe.random_uniform %key {stream = 0 : i64, low = 1.0 : f64, high = 1.0 : f64}
      : (tensor<2xi64>) -> tensor<4xf32>
  return
}

// -----

func.func @random_key(%key: tensor<3xi64>) {
  // expected-error @+1 {{key must have shape [2], got [3]}}
  %u = g3moe.random_uniform %key {stream = 0 : i64, low = 0.0 : f64, high = 1.0 : f64}
      : (tensor<3xi64>) -> tensor<4xf32>
  return
}

// -----

func.func @embedding_result(%ids: tensor<2x16xi32>, %t: tensor<512x64xbf16>) {
  // expected-error @+1 {{result must have shape [2, 16, 64], got [2, 16, 32]}}
  %x = g3moe.embedding %ids, %t {scale = 8.0 : f64, padding_idx = 0 : i64}
      : (tensor<2x16xi32>, tensor<512x64xbf16>) -> tensor<2x16x32xbf16>
  return
}

// -----

func.func @embedding_padding(%ids: tensor<2x16xi32>, %t: tensor<512x64xbf16>) {
  // expected-error @+1 {{padding_idx 512 is outside the vocabulary [0, 512)}}
  %x = g3moe.embedding %ids, %t {scale = 8.0 : f64, padding_idx = 512 : i64}
      : (tensor<2x16xi32>, tensor<512x64xbf16>) -> tensor<2x16x64xbf16>
  return
}

// -----

func.func @rms_norm_weight(%x: tensor<2x16x64xbf16>, %w: tensor<32xbf16>) {
  // expected-error @+1 {{weight must have shape [64], got [32]}}
  %y = g3moe.rms_norm %x, %w {eps = 1.0e-06 : f64}
      : (tensor<2x16x64xbf16>, tensor<32xbf16>) -> tensor<2x16x64xbf16>
  return
}

// -----

func.func @rms_norm_eps(%x: tensor<2x64xbf16>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{eps must be positive}}
  %y = g3moe.rms_norm %x, %w {eps = 0.0 : f64}
      : (tensor<2x64xbf16>, tensor<64xbf16>) -> tensor<2x64xbf16>
  return
}

// -----

func.func @linear_in(%x: tensor<2x16x64xbf16>, %w: tensor<128x32xbf16>) {
  // expected-error @+1 {{input features (64) must equal the weight's in dimension (weight is [out, in] = [128, 32])}}
  %y = g3moe.linear %x, %w : (tensor<2x16x64xbf16>, tensor<128x32xbf16>) -> tensor<2x16x128xbf16>
  return
}

// -----

func.func @linear_out(%x: tensor<2x64xbf16>, %w: tensor<128x64xbf16>) {
  // expected-error @+1 {{result must have shape [2, 128], got [2, 64]}}
  %y = g3moe.linear %x, %w : (tensor<2x64xbf16>, tensor<128x64xbf16>) -> tensor<2x64xbf16>
  return
}

// -----

func.func @rope_odd(%x: tensor<2x16x4x15xbf16>, %p: tensor<2x16xi32>) {
  // expected-error @+1 {{head dimension must be even, got 15}}
  %y = g3moe.rope %x, %p {theta = 1.0e+04 : f64, scaling_factor = 1.0 : f64}
      : (tensor<2x16x4x15xbf16>, tensor<2x16xi32>) -> tensor<2x16x4x15xbf16>
  return
}

// -----

func.func @rope_positions(%x: tensor<2x16x4x16xbf16>, %p: tensor<2x8xi32>) {
  // expected-error @+1 {{positions must have shape [2, 16], got [2, 8]}}
  %y = g3moe.rope %x, %p {theta = 1.0e+04 : f64, scaling_factor = 1.0 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x8xi32>) -> tensor<2x16x4x16xbf16>
  return
}

// -----

func.func @attention_gqa(%q: tensor<2x16x4x16xbf16>, %k: tensor<2x16x3x16xbf16>, %s: tensor<2x16xi32>) {
  // expected-error @+1 {{query heads (4) must be a multiple of key/value heads (3)}}
  %o = g3moe.attention %q, %k, %k, %s {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x3x16xbf16>, tensor<2x16x3x16xbf16>, tensor<2x16xi32>)
      -> tensor<2x16x4x16xbf16>
  return
}

// -----

func.func @attention_kv(%q: tensor<2x16x4x16xbf16>, %k: tensor<2x16x2x16xbf16>,
                        %v: tensor<2x16x2x8xbf16>, %s: tensor<2x16xi32>) {
  // expected-error @+1 {{key and value must have the same type}}
  %o = g3moe.attention %q, %k, %v, %s {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x8xbf16>, tensor<2x16xi32>)
      -> tensor<2x16x4x16xbf16>
  return
}

// -----

func.func @attention_lse(%q: tensor<2x16x4x16xbf16>, %k: tensor<2x16x2x16xbf16>, %s: tensor<2x16xi32>) {
  // expected-error @+1 {{lse must have shape [2, 4, 16], got [2, 16, 4]}}
  %o, %l = g3moe.attention %q, %k, %k, %s {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>)
      -> (tensor<2x16x4x16xbf16>, tensor<2x16x4xf32>)
  return
}

// -----

func.func @attention_grad_saved_alone(%q: tensor<2x16x4x16xbf16>, %k: tensor<2x16x2x16xbf16>,
                                      %s: tensor<2x16xi32>) {
  // expected-error @+1 {{takes the forward's output and lse together, got 1 saved operand(s)}}
  %d:3 = g3moe.attention_grad %q, %k, %k, %s, %q, %q {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>,
         tensor<2x16x4x16xbf16>, tensor<2x16x4x16xbf16>)
      -> (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>)
  return
}

// -----

func.func @attention_grad_saved_lse(%q: tensor<2x16x4x16xbf16>, %k: tensor<2x16x2x16xbf16>,
                                    %s: tensor<2x16xi32>, %l: tensor<2x4x16xbf16>) {
  // expected-error @+1 {{saved lse must be f32, got 'tensor<2x4x16xbf16>'}}
  %d:3 = g3moe.attention_grad %q, %k, %k, %s, %q, %q, %l {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>,
         tensor<2x16x4x16xbf16>, tensor<2x16x4x16xbf16>, tensor<2x4x16xbf16>)
      -> (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>)
  return
}

// -----

func.func @attention_window(%q: tensor<2x16x4x16xbf16>, %k: tensor<2x16x2x16xbf16>, %s: tensor<2x16xi32>) {
  // expected-error @+1 {{sliding_window must be at least 1, got 0}}
  %o = g3moe.attention %q, %k, %k, %s {scale = 0.25 : f64, sliding_window = 0 : i64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>)
      -> tensor<2x16x4x16xbf16>
  return
}

// -----

func.func @attention_segments(%q: tensor<2x16x4x16xbf16>, %k: tensor<2x16x2x16xbf16>, %s: tensor<16xi32>) {
  // expected-error @+1 {{segment_ids must have shape [2, 16], got [16]}}
  %o = g3moe.attention %q, %k, %k, %s {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<16xi32>)
      -> tensor<2x16x4x16xbf16>
  return
}

// -----

func.func @gelu_types(%a: tensor<4xbf16>, %b: tensor<4xf32>) {
  // expected-error @+1 {{requires the same type for all operands and results}}
  %y = "g3moe.gelu_tanh_mul"(%a, %b) : (tensor<4xbf16>, tensor<4xf32>) -> tensor<4xbf16>
  return
}

// -----

func.func @lm_head_hidden(%h: tensor<2x16x64xbf16>, %t: tensor<512x32xbf16>) {
  // expected-error @+1 {{hidden size (64) must equal the table's second dimension (table is [512, 32])}}
  %l = g3moe.lm_head %h, %t : (tensor<2x16x64xbf16>, tensor<512x32xbf16>) -> tensor<2x16x512xf32>
  return
}

// -----

func.func @lm_head_f32(%h: tensor<2x64xbf16>, %t: tensor<512x64xbf16>) {
  // expected-error @+1 {{result #0 must be ranked tensor of 32-bit float values}}
  %l = g3moe.lm_head %h, %t : (tensor<2x64xbf16>, tensor<512x64xbf16>) -> tensor<2x512xbf16>
  return
}

// -----

func.func @sparsemixer_noise(%l: tensor<32x4xf32>, %n: tensor<32x2x4xf32>) {
  // expected-error @+1 {{noise must have shape [32, 2, 5], got [32, 2, 4]}}
  %w, %i = g3moe.sparsemixer_router %l noise %n {epsilon = 0.01 : f64}
      : (tensor<32x4xf32>, tensor<32x2x4xf32>) -> (tensor<32x2xf32>, tensor<32x2xi32>)
  return
}

// -----

func.func @sparsemixer_top2(%l: tensor<32x4xf32>) {
  // expected-error @+1 {{result must have shape [32, 2], got [32, 3]}}
  %w, %i = g3moe.sparsemixer_router %l {epsilon = 0.01 : f64}
      : (tensor<32x4xf32>) -> (tensor<32x3xf32>, tensor<32x3xi32>)
  return
}

// -----

func.func @topk_too_large(%l: tensor<32x4xf32>) {
  // expected-error @+1 {{top_k must be in [1, 4] (the number of experts), got 8}}
  %w, %i = g3moe.softmax_topk_router %l {top_k = 8 : i64, norm_topk_prob = true}
      : (tensor<32x4xf32>) -> (tensor<32x8xf32>, tensor<32x8xi32>)
  return
}

// -----

func.func @grouped_topk_group(%l: tensor<32x8xf32>, %b: tensor<8xf32>) {
  // expected-error @+1 {{topk_group (8) must be in [1, n_group = 4]}}
  %w, %i = g3moe.sigmoid_grouped_router %l, %b {top_k = 2 : i64, n_group = 4 : i64,
      topk_group = 8 : i64, routed_scaling_factor = 1.0 : f64, norm_topk_prob = true}
      : (tensor<32x8xf32>, tensor<8xf32>) -> (tensor<32x2xf32>, tensor<32x2xi32>)
  return
}

// -----

func.func @grouped_divides(%l: tensor<32x6xf32>, %b: tensor<6xf32>) {
  // expected-error @+1 {{n_group (4) must divide the number of experts (6)}}
  %w, %i = g3moe.sigmoid_grouped_router %l, %b {top_k = 2 : i64, n_group = 4 : i64,
      topk_group = 2 : i64, routed_scaling_factor = 1.0 : f64, norm_topk_prob = true}
      : (tensor<32x6xf32>, tensor<6xf32>) -> (tensor<32x2xf32>, tensor<32x2xi32>)
  return
}

// -----

func.func @grouped_bias(%l: tensor<32x8xf32>, %b: tensor<4xf32>) {
  // expected-error @+1 {{bias must have shape [8], got [4]}}
  %w, %i = g3moe.sigmoid_grouped_router %l, %b {top_k = 2 : i64, n_group = 4 : i64,
      topk_group = 2 : i64, routed_scaling_factor = 1.0 : f64, norm_topk_prob = true}
      : (tensor<32x8xf32>, tensor<4xf32>) -> (tensor<32x2xf32>, tensor<32x2xi32>)
  return
}

// -----

func.func @dispatch_rows(%x: tensor<32x64xbf16>, %i: tensor<32x2xi32>) {
  // expected-error @+1 {{permuted must have shape [64, 64], got [32, 64]}}
  %p, %o, %s = g3moe.moe_dispatch %x, %i {num_experts = 4 : i64}
      : (tensor<32x64xbf16>, tensor<32x2xi32>) -> (tensor<32x64xbf16>, tensor<5xi32>, tensor<32x2xi32>)
  return
}

// -----

func.func @dispatch_offsets(%x: tensor<32x64xbf16>, %i: tensor<32x2xi32>) {
  // expected-error @+1 {{expert_offsets must have shape [5], got [4]}}
  %p, %o, %s = g3moe.moe_dispatch %x, %i {num_experts = 4 : i64}
      : (tensor<32x64xbf16>, tensor<32x2xi32>) -> (tensor<64x64xbf16>, tensor<4xi32>, tensor<32x2xi32>)
  return
}

// -----

func.func @expert_linear_in(%x: tensor<64x64xbf16>, %o: tensor<5xi32>, %w: tensor<4x128x32xbf16>) {
  // expected-error @+1 {{input features (64) must equal the weight's in dimension}}
  %y = g3moe.expert_linear %x, %o, %w
      : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x32xbf16>) -> tensor<64x128xbf16>
  return
}

// -----

func.func @expert_linear_experts(%x: tensor<64x64xbf16>, %o: tensor<5xi32>, %w: tensor<3x128x64xbf16>) {
  // expected-error @+1 {{expert_offsets must have shape [4], got [5]}}
  %y = g3moe.expert_linear %x, %o, %w
      : (tensor<64x64xbf16>, tensor<5xi32>, tensor<3x128x64xbf16>) -> tensor<64x128xbf16>
  return
}

// -----

func.func @expert_linear_lowrank(%x: tensor<64x64xbf16>, %o: tensor<5xi32>, %w: tensor<4x128x64xbf16>,
                                 %h: tensor<64x8xbf16>, %b: tensor<4x128x16xbf16>) {
  // expected-error @+1 {{lowrank input [64, 8] and weight [4, 128, 16] must be [64, r] and [4, 128, r] with r <= 64}}
  %y = g3moe.expert_linear %x, %o, %w lowrank %h, %b
      : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>, tensor<64x8xbf16>,
         tensor<4x128x16xbf16>) -> tensor<64x128xbf16>
  return
}

// -----

func.func @expert_grad_lowrank(%dy: tensor<64x128xbf16>, %o: tensor<5xi32>, %w: tensor<4x128x64xbf16>,
                               %h: tensor<32x8xbf16>, %a: tensor<4x8x64xbf16>) {
  // expected-error @+1 {{lowrank input [32, 8] and weight [4, 8, 64] must be [64, r] and [4, r, 64] with r <= 64}}
  %dx = g3moe.expert_linear_grad_input %dy, %o, %w lowrank %h, %a
      : (tensor<64x128xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>, tensor<32x8xbf16>,
         tensor<4x8x64xbf16>) -> tensor<64x64xbf16>
  return
}

// -----

func.func @combine_rows(%y: tensor<48x64xbf16>, %s: tensor<32x2xi32>, %w: tensor<32x2xf32>) {
  // expected-error @+1 {{input must have tokens x top_k = 64 rows, got 48}}
  %r = g3moe.moe_combine %y, %s, %w
      : (tensor<48x64xbf16>, tensor<32x2xi32>, tensor<32x2xf32>) -> tensor<32x64xbf16>
  return
}

// -----

func.func @cross_entropy_targets(%l: tensor<2x16x512xf32>, %t: tensor<2x15xi32>, %n: tensor<f32>) {
  // expected-error @+1 {{targets must have shape [2, 16], got [2, 15]}}
  %ce = g3moe.cross_entropy %l, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x16x512xf32>, tensor<2x15xi32>, tensor<f32>) -> tensor<f32>
  return
}

// -----

func.func @lb_pairs(%l: tensor<32x4xf32>, %i: tensor<32x2xi32>, %s: tensor<2x16xi32>) {
  // expected-error @+1 {{needs one indices tensor per logits tensor, got 2 logits and 1 indices}}
  %aux = g3moe.load_balancing_loss (%l, %l) indices (%i) mask %s {num_experts = 4 : i64}
      : (tensor<32x4xf32>, tensor<32x4xf32>, tensor<32x2xi32>, tensor<2x16xi32>) -> tensor<f32>
  return
}

// -----

func.func @lb_tokens(%l: tensor<16x4xf32>, %i: tensor<16x2xi32>, %s: tensor<2x16xi32>) {
  // expected-error @+1 {{logits must have shape [32, 4], got [16, 4]}}
  %aux = g3moe.load_balancing_loss (%l) indices (%i) mask %s {num_experts = 4 : i64}
      : (tensor<16x4xf32>, tensor<16x2xi32>, tensor<2x16xi32>) -> tensor<f32>
  return
}

// -----

func.func @z_loss_tokens(%l: tensor<16x4xf32>, %s: tensor<2x16xi32>) {
  // expected-error @+1 {{logits must be [32, E], got [16, 4]}}
  %z = g3moe.router_z_loss (%l) mask %s : (tensor<16x4xf32>, tensor<2x16xi32>) -> tensor<f32>
  return
}

// -----

func.func @loss_sum_coefficients(%a: tensor<f32>, %b: tensor<f32>) {
  // expected-error @+1 {{needs one coefficient per term, got 1 for 2 terms}}
  %l = g3moe.loss_sum %a, %b {coefficients = array<f64: 1.0>}
      : (tensor<f32>, tensor<f32>) -> tensor<f32>
  return
}

// -----

func.func @linear_grad_input_out(%dy: tensor<2x64xbf16>, %w: tensor<128x64xbf16>) {
  // expected-error @+1 {{grad features (64) must equal the weight's out dimension (128)}}
  %dx = g3moe.linear_grad_input %dy, %w : (tensor<2x64xbf16>, tensor<128x64xbf16>) -> tensor<2x64xbf16>
  return
}

// -----

func.func @linear_grad_weight_tokens(%dy: tensor<2x128xbf16>, %x: tensor<3x64xbf16>) {
  // expected-error @+1 {{must agree on the leading dimensions}}
  %dw = g3moe.linear_grad_weight %dy, %x : (tensor<2x128xbf16>, tensor<3x64xbf16>) -> tensor<128x64xf32>
  return
}

// -----

func.func @rms_norm_grad_weight(%x: tensor<2x64xbf16>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{weight_grad must have shape [64], got [32]}}
  %d:2 = g3moe.rms_norm_grad %x, %w, %x {eps = 1.0e-06 : f64}
      : (tensor<2x64xbf16>, tensor<64xbf16>, tensor<2x64xbf16>) -> (tensor<2x64xbf16>, tensor<32xf32>)
  return
}

// -----

func.func @attention_grad_kv(%q: tensor<2x16x4x16xbf16>, %k: tensor<2x16x2x16xbf16>, %s: tensor<2x16xi32>) {
  // expected-error @+1 {{key_grad must have shape [2, 16, 2, 16], got [2, 16, 4, 16]}}
  %d:3 = g3moe.attention_grad %q, %k, %k, %s, %q {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>, tensor<2x16x4x16xbf16>)
      -> (tensor<2x16x4x16xbf16>, tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>)
  return
}

// -----

func.func @router_grad_shape(%l: tensor<32x4xf32>, %i: tensor<32x2xi32>, %g: tensor<32x3xf32>) {
  // expected-error @+1 {{grad must have shape [32, 2], got [32, 3]}}
  %d = g3moe.sparsemixer_router_grad %l, %i, %g {epsilon = 0.01 : f64}
      : (tensor<32x4xf32>, tensor<32x2xi32>, tensor<32x3xf32>) -> tensor<32x4xf32>
  return
}

// -----

func.func @dispatch_grad_rows(%g: tensor<48x64xbf16>, %s: tensor<32x2xi32>) {
  // expected-error @+1 {{grad must have tokens x top_k = 64 rows, got 48}}
  %d = g3moe.moe_dispatch_grad %g, %s : (tensor<48x64xbf16>, tensor<32x2xi32>) -> tensor<32x64xbf16>
  return
}

// -----

func.func @dropout_p(%x: tensor<4xbf16>, %u: tensor<4xf32>) {
  // expected-error @+1 {{p must be in [0, 1), got 1}}
  %y = g3moe.dropout %x, %u {p = 1.0 : f64} : (tensor<4xbf16>, tensor<4xf32>) -> tensor<4xbf16>
  return
}

// -----

func.func @keyed_dropout_p(%x: tensor<4xbf16>, %key: tensor<2xi64>) {
  // expected-error @+1 {{p must be in [0, 1), got 1}}
  %y = g3moe.keyed_dropout %x, %key {stream = 0 : i64, p = 1.0 : f64} : (tensor<4xbf16>, tensor<2xi64>) -> tensor<4xbf16>
  return
}

// -----

func.func @keyed_jitter_bounds(%x: tensor<4xbf16>, %key: tensor<2xi64>) {
  // expected-error @+1 {{requires low < high, got [1.010000e+00, 9.900000e-01)}}
  %y = g3moe.keyed_jitter %x, %key {stream = 0 : i64, low = 1.01 : f64, high = 0.99 : f64} : (tensor<4xbf16>, tensor<2xi64>) -> tensor<4xbf16>
  return
}

// -----

func.func @keyed_jitter_type(%x: tensor<4xbf16>, %key: tensor<2xi64>) {
  // expected-error @+1 {{result type must equal the input type}}
  %y = g3moe.keyed_jitter %x, %key {stream = 0 : i64, low = 0.99 : f64, high = 1.01 : f64} : (tensor<4xbf16>, tensor<2xi64>) -> tensor<4xf32>
  return
}

// -----

func.func @dropout_mask_p(%key: tensor<2xi64>) {
  // expected-error @+1 {{p must be in [0, 1), got 1}}
  %m = g3moe.dropout_mask %key {stream = 0 : i64, p = 1.0 : f64} : (tensor<2xi64>) -> tensor<4xi32>
  return
}

// -----

func.func @product_dropout_without_p(%x: tensor<4x64xbf16>, %a: tensor<8x64xbf16>, %m: tensor<8xi32>) {
  // expected-error @+1 {{dropout needs a mask and dropout_p together}}
  %h = g3moe.linear %x, %a dropout %m : (tensor<4x64xbf16>, tensor<8x64xbf16>, tensor<8xi32>) -> tensor<4x8xbf16>
  return
}

// -----

func.func @product_dropout_short_mask(%x: tensor<4x64xbf16>, %a: tensor<8x64xbf16>, %m: tensor<7xi32>) {
  // expected-error @+1 {{dropout mask of 7 words does not cover the 256 masked elements}}
  %h = g3moe.linear %x, %a dropout %m {dropout_p = 0.1 : f64} : (tensor<4x64xbf16>, tensor<8x64xbf16>, tensor<7xi32>) -> tensor<4x8xbf16>
  return
}

// -----

func.func @product_dropout_with_addend(%dh: tensor<4x8xbf16>, %a: tensor<8x64xbf16>, %c: tensor<4x64xbf16>, %m: tensor<8xi32>) {
  // expected-error @+1 {{dropout cannot be fused into a product with an addend}}
  %dx = g3moe.linear_grad_input %dh, %a plus %c dropout %m {dropout_p = 0.1 : f64} : (tensor<4x8xbf16>, tensor<8x64xbf16>, tensor<4x64xbf16>, tensor<8xi32>) -> tensor<4x64xbf16>
  return
}

// -----

func.func @schedule_kind(%t: tensor<i64>) {
  // expected-error @+1 {{kind must be cosine, linear, constant or constant_with_warmup, got 'step'}}
  %lr = g3moe.lr_schedule %t, %t, %t {kind = "step", learning_rate = 1.0e-04 : f64}
      : (tensor<i64>, tensor<i64>, tensor<i64>) -> tensor<f32>
  return
}

// -----

func.func @adamw_moments(%p: tensor<4xf32>, %m: tensor<3xf32>, %t: tensor<i64>, %s: tensor<f32>) {
  // expected-error @+1 {{exp_avg must have shape [4], got [3]}}
  %r:3 = g3moe.adamw %p, %p, %m, %p, %t, %s, %s
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.01 : f64}
      : (tensor<4xf32>, tensor<4xf32>, tensor<3xf32>, tensor<4xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  return
}

// -----

func.func @adamw_betas(%p: tensor<4xf32>, %t: tensor<i64>, %s: tensor<f32>) {
  // expected-error @+1 {{betas must be in [0, 1), got (9.000000e-01, 1.000000e+00)}}
  %r:3 = g3moe.adamw %p, %p, %p, %p, %t, %s, %s
      {beta1 = 0.9 : f64, beta2 = 1.0 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.01 : f64}
      : (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  return
}

// -----

func.func @adamw_counts(%p: tensor<4xf32>, %t: tensor<i64>, %s: tensor<f32>) {
  // expected-error @+1 {{takes 4n state operands (params, grads, exp_avgs, exp_avg_sqs) and gives 3n results for some n >= 1, got 5 and 3}}
  %r:3 = g3moe.adamw %p, %p, %p, %p, %p, %t, %s, %s
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.01 : f64}
      : (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  return
}

// -----

func.func @adamw_second_tensor(%p: tensor<4xf32>, %q: tensor<8xf32>, %t: tensor<i64>, %s: tensor<f32>) {
  // expected-error @+1 {{grad must have shape [8], got [4]}}
  %r:6 = g3moe.adamw %p, %q, %p, %p, %p, %q, %p, %q, %t, %s, %s
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.01 : f64}
      : (tensor<4xf32>, tensor<8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<8xf32>, tensor<4xf32>, tensor<8xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<4xf32>, tensor<8xf32>, tensor<4xf32>, tensor<8xf32>, tensor<4xf32>, tensor<8xf32>)
  return
}

// -----

func.func @add_rms_norm_types(%x: tensor<2x64xbf16>, %y: tensor<2x64xf32>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{summands, sum and result must all have the type 'tensor<2x64xbf16>'}}
  %s, %n = g3moe.add_rms_norm %x, %y, %w {eps = 1.0e-06 : f64}
      : (tensor<2x64xbf16>, tensor<2x64xf32>, tensor<64xbf16>) -> (tensor<2x64xbf16>, tensor<2x64xbf16>)
  return
}

// -----

func.func @rms_norm_grad_addend(%x: tensor<2x64xbf16>, %w: tensor<64xbf16>, %a: tensor<2x64xf32>) {
  // expected-error @+1 {{addend type 'tensor<2x64xf32>' must equal the result type 'tensor<2x64xbf16>'}}
  %d:2 = g3moe.rms_norm_grad %x, %w, %x, %a {eps = 1.0e-06 : f64}
      : (tensor<2x64xbf16>, tensor<64xbf16>, tensor<2x64xbf16>, tensor<2x64xf32>) -> (tensor<2x64xbf16>, tensor<64xf32>)
  return
}

// -----

func.func @rms_norm_rope_weight(%x: tensor<2x16x4x16xbf16>, %w: tensor<64xbf16>, %p: tensor<2x16xi32>) {
  // expected-error @+1 {{weight must have shape [16], got [64]}}
  %y = g3moe.rms_norm_rope %x, %w, %p {eps = 1.0e-06 : f64, theta = 1.0e+04 : f64, scaling_factor = 1.0 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<64xbf16>, tensor<2x16xi32>) -> tensor<2x16x4x16xbf16>
  return
}

// -----

func.func @rms_norm_rope_grad_positions(%x: tensor<2x16x4x16xbf16>, %w: tensor<16xbf16>, %p: tensor<2x8xi32>) {
  // expected-error @+1 {{positions must have shape [2, 16], got [2, 8]}}
  %d:2 = g3moe.rms_norm_rope_grad %x, %w, %p, %x {eps = 1.0e-06 : f64, theta = 1.0e+04 : f64, scaling_factor = 1.0 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<16xbf16>, tensor<2x8xi32>, tensor<2x16x4x16xbf16>) -> (tensor<2x16x4x16xbf16>, tensor<16xf32>)
  return
}

// -----

func.func @expert_load_tokens(%i: tensor<16x2xi32>, %s: tensor<2x16xi32>) {
  // expected-error @+1 {{indices must be [32, k], got [16, 2]}}
  %load = g3moe.expert_load %i, %s {num_experts = 4 : i64} : (tensor<16x2xi32>, tensor<2x16xi32>) -> tensor<4xf32>
  return
}

// -----

func.func @fused_head_lse_shape(%h: tensor<2x16x64xbf16>, %e: tensor<512x64xbf16>, %t: tensor<2x16xi32>, %n: tensor<f32>) {
  // expected-error @+1 {{lse must have shape [2, 16], got [32]}}
  %l, %lse = g3moe.lm_head_cross_entropy %h, %e, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>) -> (tensor<f32>, tensor<32xf32>)
  return
}

// -----

func.func @head_eval_targets(%h: tensor<2x16x64xbf16>, %e: tensor<512x64xbf16>, %t: tensor<16xi32>, %n: tensor<f32>) {
  // expected-error @+1 {{targets must have shape [2, 16], got [16]}}
  %l, %c, %k = g3moe.lm_head_eval %h, %e, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<16xi32>, tensor<f32>) -> (tensor<f32>, tensor<f32>, tensor<f32>)
  return
}

// -----

func.func @fused_head_grad_lse_shape(%h: tensor<2x16x64xbf16>, %e: tensor<512x64xbf16>, %t: tensor<2x16xi32>, %n: tensor<f32>, %lse: tensor<16xf32>) {
  // expected-error @+1 {{lse must have shape [2, 16], got [16]}}
  %dx = g3moe.lm_head_cross_entropy_grad %h, %e, %t, %n, %n, %lse {ignore_index = -100 : i64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>, tensor<f32>, tensor<16xf32>) -> tensor<2x16x64xbf16>
  return
}

// -----

func.func @fused_head_and_grad_type(%h: tensor<2x16x64xbf16>, %e: tensor<512x64xbf16>, %t: tensor<2x16xi32>, %n: tensor<f32>) {
  // expected-error @+1 {{input_grad must have the input's type 'tensor<2x16x64xbf16>', got 'tensor<2x16x64xf32>'}}
  %l, %dx = g3moe.lm_head_cross_entropy_and_grad %h, %e, %t, %n, %n {ignore_index = -100 : i64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>, tensor<f32>) -> (tensor<f32>, tensor<2x16x64xf32>)
  return
}

// -----

func.func @fused_head_and_grad_hidden(%h: tensor<2x16x64xbf16>, %e: tensor<512x32xbf16>, %t: tensor<2x16xi32>, %n: tensor<f32>) {
  // expected-error @+1 {{hidden size (64) must equal the table's second dimension}}
  %l, %dx = g3moe.lm_head_cross_entropy_and_grad %h, %e, %t, %n, %n {ignore_index = -100 : i64}
      : (tensor<2x16x64xbf16>, tensor<512x32xbf16>, tensor<2x16xi32>, tensor<f32>, tensor<f32>) -> (tensor<f32>, tensor<2x16x64xbf16>)
  return
}

// -----

func.func @linear_addend_type(%x: tensor<2x64xbf16>, %w: tensor<32x64xbf16>, %a: tensor<2x32xf32>) {
  // expected-error @+1 {{addend type 'tensor<2x32xf32>' must equal the result type 'tensor<2x32xbf16>'}}
  %y = g3moe.linear %x, %w plus %a : (tensor<2x64xbf16>, tensor<32x64xbf16>, tensor<2x32xf32>) -> tensor<2x32xbf16>
  return
}

// -----

func.func @split_rows_count(%x: tensor<12x64xbf16>) {
  // expected-error @+1 {{parts have 10 rows in all, the whole has 12}}
  %a, %b = g3moe.split_rows %x : tensor<12x64xbf16> -> tensor<8x64xbf16>, tensor<2x64xbf16>
  return
}

// -----

func.func @split_rows_width(%x: tensor<12x64xbf16>) {
  // expected-error @+1 {{part 1 ('tensor<4x32xbf16>') is not a block of rows of 'tensor<12x64xbf16>'}}
  %a, %b = g3moe.split_rows %x : tensor<12x64xbf16> -> tensor<8x64xbf16>, tensor<4x32xbf16>
  return
}

// -----

func.func @concat_rows_type(%a: tensor<8x64xbf16>, %b: tensor<4x64xf32>) {
  // expected-error @+1 {{part 1 ('tensor<4x64xf32>') is not a block of rows of 'tensor<12x64xbf16>'}}
  %y = g3moe.concat_rows %a, %b : tensor<8x64xbf16>, tensor<4x64xf32> -> tensor<12x64xbf16>
  return
}

// -----

func.func @broadcast_types(%a: tensor<4x64xf32>) {
  // expected-error @+1 {{results must have the operands' types, one for one}}
  %p = g3moe.broadcast %a {root = 0 : i64} : (tensor<4x64xf32>) -> tensor<64x4xf32>
  return
}

// -----

func.func @broadcast_root(%a: tensor<4x64xf32>) {
  // expected-error @+1 {{root must be a process rank (>= 0), got -1}}
  %p = g3moe.broadcast %a {root = -1 : i64} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  return
}

// -----

func.func @all_to_all_blocks(%a: tensor<3x64xf32>) {
  // expected-error @+1 {{each tensor's first dimension must divide among the 2 processes, got 'tensor<3x64xf32>'}}
  %x = g3moe.all_to_all %a {processes = 2 : i64} : (tensor<3x64xf32>) -> tensor<3x64xf32>
  return
}

// -----

func.func @all_reduce_empty() {
  // expected-error @+1 {{needs at least one tensor}}
  g3moe.all_reduce : () -> ()
  return
}

// -----

func.func @adamw_owner(%a: tensor<4xf32>, %t: tensor<i64>, %s: tensor<f32>) {
  // expected-error @+1 {{owner must be a process rank (>= 0), got -2}}
  %r:3 = g3moe.adamw %a, %a, %a, %a, %t, %s, %s
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, owner = -2 : i64, weight_decay = 0.0 : f64}
      : (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<4xf32>, tensor<4xf32>, tensor<4xf32>)
  return
}

// -----

func.func @expert_product_dropout_with_addend(%dh: tensor<16x8xbf16>, %off: tensor<3xi32>, %a: tensor<2x8x64xbf16>, %c: tensor<16x64xbf16>, %m: tensor<32xi32>) {
  // expected-error @+1 {{dropout cannot be fused into a product with an addend but no lowrank}}
  %dx = g3moe.expert_linear_grad_input %dh, %off, %a, %c dropout %m {dropout_p = 0.1 : f64} : (tensor<16x8xbf16>, tensor<3xi32>, tensor<2x8x64xbf16>, tensor<16x64xbf16>, tensor<32xi32>) -> tensor<16x64xbf16>
  return
}

// -----

func.func @quantize_fp8_not_transposed(%w: tensor<128x64xbf16>) {
  // expected-error @+1 {{result must have shape [128, 64], got [64, 128]}}
  %q, %s = g3moe.quantize_fp8 %w : (tensor<128x64xbf16>) -> (tensor<64x128xf8E4M3FN>, tensor<64xf32>)
  return
}

// -----

func.func @quantize_fp8_scales(%w: tensor<128x64xbf16>) {
  // expected-error @+1 {{scale must have shape [128], got [64]}}
  %q, %s = g3moe.quantize_fp8 %w : (tensor<128x64xbf16>) -> (tensor<128x64xf8E4M3FN>, tensor<64xf32>)
  return
}

// -----

func.func @frozen_e4m3_transposed() {
  // expected-error @+1 {{result must have shape [64, 128], got [128, 64]}}
  %q, %s = g3moe.frozen_e4m3 "w" transpose : tensor<128x64xbf16> -> tensor<128x64xf8E4M3FN>, tensor<128xf32>
  return
}

// -----

func.func @frozen_e4m3_source() {
  // expected-error @+1 {{source_type must be a static bf16, f16 or f32 tensor}}
  %q, %s = g3moe.frozen_e4m3 "w" : tensor<128x64xi32> -> tensor<128x64xf8E4M3FN>, tensor<128xf32>
  return
}

// -----

func.func @frozen_e4m3_name() {
  // expected-error @+1 {{needs the name of a parameter}}
  %q, %s = g3moe.frozen_e4m3 "" : tensor<128x64xbf16> -> tensor<128x64xf8E4M3FN>, tensor<128xf32>
  return
}

// -----

func.func @scaled_linear_features(%x: tensor<8x32xbf16>, %q: tensor<128x64xf8E4M3FN>, %s: tensor<128xf32>) {
  // expected-error @+1 {{input features (32) must equal the weight's last dimension}}
  %y = g3moe.scaled_linear %x, %q, %s : (tensor<8x32xbf16>, tensor<128x64xf8E4M3FN>, tensor<128xf32>) -> tensor<8x128xbf16>
  return
}

// -----

func.func @scaled_linear_bf16_weight(%x: tensor<8x64xbf16>, %w: tensor<128x64xbf16>, %s: tensor<128xf32>) {
  // expected-error @+1 {{operand #1 must be ranked tensor of f8E4M3FN type values}}
  %y = g3moe.scaled_linear %x, %w, %s : (tensor<8x64xbf16>, tensor<128x64xbf16>, tensor<128xf32>) -> tensor<8x128xbf16>
  return
}

// -----

func.func @scaled_expert_linear_offsets(%x: tensor<16x64xbf16>, %off: tensor<4xi32>, %q: tensor<2x128x64xf8E4M3FN>, %s: tensor<2x128xf32>) {
  // expected-error @+1 {{expert_offsets must have shape [3], got [4]}}
  %y = g3moe.scaled_expert_linear %x, %off, %q, %s : (tensor<16x64xbf16>, tensor<4xi32>, tensor<2x128x64xf8E4M3FN>, tensor<2x128xf32>) -> tensor<16x128xbf16>
  return
}

// -----

func.func @scaled_expert_linear_lowrank(%x: tensor<16x64xbf16>, %off: tensor<3xi32>, %q: tensor<2x128x64xf8E4M3FN>, %s: tensor<2x128xf32>, %h: tensor<16x8xbf16>, %b: tensor<2x128x8xbf16>) {
  // expected-error @+1 {{lowrank input [16, 8] and weight [2, 128, 8] must be [16, r] and [2, r, 128] with r <= 64}}
  %y = g3moe.scaled_expert_linear %x, %off, %q, %s lowrank %h, %b transposed : (tensor<16x64xbf16>, tensor<3xi32>, tensor<2x128x64xf8E4M3FN>, tensor<2x128xf32>, tensor<16x8xbf16>, tensor<2x128x8xbf16>) -> tensor<16x128xbf16>
  return
}

// -----

func.func @scaled_expert_linear_dropout(%x: tensor<16x64xbf16>, %off: tensor<3xi32>, %q: tensor<2x128x64xf8E4M3FN>, %s: tensor<2x128xf32>, %m: tensor<64xi32>) {
  // expected-error @+1 {{dropout cannot be fused into a product with no lowrank}}
  %y = g3moe.scaled_expert_linear %x, %off, %q, %s dropout %m {dropout_p = 0.1 : f64} : (tensor<16x64xbf16>, tensor<3xi32>, tensor<2x128x64xf8E4M3FN>, tensor<2x128xf32>, tensor<64xi32>) -> tensor<16x128xbf16>
  return
}
