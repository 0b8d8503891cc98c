// Round trip of every g3moe op through the printer and parser.
// RUN: g3moe-opt %s | g3moe-opt | FileCheck %s
// RUN: g3moe-opt %s --mlir-print-op-generic | g3moe-opt | FileCheck %s

// CHECK-LABEL: func.func @backbone
func.func @backbone(%ids: tensor<2x16xi32>, %pos: tensor<2x16xi32>, %seg: tensor<2x16xi32>)
    -> tensor<2x16x64xbf16> {
  // CHECK: %[[EMB:.*]] = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  %emb = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  // CHECK: g3moe.param "model.layers.0.self_attn.q_proj.weight" trainable : tensor<64x64xbf16>
  %wq = g3moe.param "model.layers.0.self_attn.q_proj.weight" trainable : tensor<64x64xbf16>
  %wk = g3moe.param "model.layers.0.self_attn.k_proj.weight" : tensor<32x64xbf16>
  %ln = g3moe.param "model.layers.0.input_layernorm.weight" : tensor<64xbf16>
  %qn = g3moe.param "model.layers.0.self_attn.q_norm.weight" : tensor<16xbf16>
  // CHECK: %[[X:.*]] = g3moe.embedding %{{.*}}, %[[EMB]] {padding_idx = 0 : i64, scale = 8.000000e+00 : f64}
  %x = g3moe.embedding %ids, %emb {scale = 8.0 : f64, padding_idx = 0 : i64}
      : (tensor<2x16xi32>, tensor<512x64xbf16>) -> tensor<2x16x64xbf16>
  // CHECK: g3moe.rms_norm %[[X]], %{{.*}} {eps = 9.9999999999999995E-7 : f64}
  %a = g3moe.rms_norm %x, %ln {eps = 1.0e-06 : f64}
      : (tensor<2x16x64xbf16>, tensor<64xbf16>) -> tensor<2x16x64xbf16>
  // CHECK: g3moe.linear
  %q = g3moe.linear %a, %wq : (tensor<2x16x64xbf16>, tensor<64x64xbf16>) -> tensor<2x16x64xbf16>
  %k = g3moe.linear %a, %wk : (tensor<2x16x64xbf16>, tensor<32x64xbf16>) -> tensor<2x16x32xbf16>
  // CHECK: g3moe.reshape {{.*}} : tensor<2x16x64xbf16> -> tensor<2x16x4x16xbf16>
  %q4 = g3moe.reshape %q : tensor<2x16x64xbf16> -> tensor<2x16x4x16xbf16>
  %k4 = g3moe.reshape %k : tensor<2x16x32xbf16> -> tensor<2x16x2x16xbf16>
  %qnorm = g3moe.rms_norm %q4, %qn {eps = 1.0e-06 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<16xbf16>) -> tensor<2x16x4x16xbf16>
  // CHECK: g3moe.rope {{.*}} {scaling_factor = 8.000000e+00 : f64, theta = 1.000000e+06 : f64}
  %qr = g3moe.rope %qnorm, %pos {theta = 1.0e+06 : f64, scaling_factor = 8.0 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16xi32>) -> tensor<2x16x4x16xbf16>
  // CHECK: g3moe.attention {{.*}} {scale = 2.500000e-01 : f64, sliding_window = 8 : i64, softcap = 5.000000e+01 : f64}
  %o = g3moe.attention %qr, %k4, %k4, %seg {scale = 0.25 : f64, sliding_window = 8 : i64, softcap = 50.0 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>)
      -> tensor<2x16x4x16xbf16>
  %o3 = g3moe.reshape %o : tensor<2x16x4x16xbf16> -> tensor<2x16x64xbf16>
  // CHECK: g3moe.gelu_tanh_mul
  %g = g3moe.gelu_tanh_mul %o3, %x : tensor<2x16x64xbf16>
  // CHECK: g3moe.add
  %h = g3moe.add %g, %x : tensor<2x16x64xbf16>
  return %h : tensor<2x16x64xbf16>
}

// CHECK-LABEL: func.func @moe_block
func.func @moe_block(%x: tensor<32x64xbf16>, %key: tensor<2xi64>) -> tensor<32x64xbf16> {
  %wr = g3moe.param "model.layers.2.moe.gate.weight" : tensor<4x64xf32>
  %wg = g3moe.param "model.layers.2.moe.experts.{e}.gate_proj.weight" : tensor<4x128x64xbf16>
  %wu = g3moe.param "model.layers.2.moe.experts.{e}.up_proj.weight" : tensor<4x128x64xbf16>
  %wd = g3moe.param "model.layers.2.moe.experts.{e}.down_proj.weight" : tensor<4x64x128xbf16>
  // CHECK: g3moe.random_uniform %{{.*}} {high = 1.010000e+00 : f64, low = 0.98999999999999999 : f64, stream = 0 : i64}
  %u = g3moe.random_uniform %key {stream = 0 : i64, low = 0.99 : f64, high = 1.01 : f64}
      : (tensor<2xi64>) -> tensor<32x64xf32>
  // CHECK: g3moe.convert {{.*}} : tensor<32x64xf32> -> tensor<32x64xbf16>
  %ub = g3moe.convert %u : tensor<32x64xf32> -> tensor<32x64xbf16>
  // CHECK: g3moe.mul
  %xj = g3moe.mul %x, %ub : tensor<32x64xbf16>
  %xf = g3moe.convert %xj : tensor<32x64xbf16> -> tensor<32x64xf32>
  %logits = g3moe.linear %xf, %wr : (tensor<32x64xf32>, tensor<4x64xf32>) -> tensor<32x4xf32>
  %noise = g3moe.random_uniform %key {stream = 1 : i64, low = 0.0 : f64, high = 1.0 : f64}
      : (tensor<2xi64>) -> tensor<32x2x5xf32>
  // CHECK: g3moe.sparsemixer_router %{{.*}} noise %{{.*}} {epsilon = 1.000000e-02 : f64}
  %w, %i = g3moe.sparsemixer_router %logits noise %noise {epsilon = 0.01 : f64}
      : (tensor<32x4xf32>, tensor<32x2x5xf32>) -> (tensor<32x2xf32>, tensor<32x2xi32>)
  // CHECK: g3moe.sparsemixer_router %{{[^ ]*}} {epsilon
  %we, %ie = g3moe.sparsemixer_router %logits {epsilon = 0.01 : f64}
      : (tensor<32x4xf32>) -> (tensor<32x2xf32>, tensor<32x2xi32>)
  // CHECK: %[[P:.*]], %[[OFF:.*]], %[[SLOTS:.*]] = g3moe.moe_dispatch {{.*}} {num_experts = 4 : i64}
  %p, %off, %slots = g3moe.moe_dispatch %xj, %i {num_experts = 4 : i64}
      : (tensor<32x64xbf16>, tensor<32x2xi32>) -> (tensor<64x64xbf16>, tensor<5xi32>, tensor<32x2xi32>)
  // CHECK: g3moe.expert_linear %[[P]], %[[OFF]]
  %g = g3moe.expert_linear %p, %off, %wg
      : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>) -> tensor<64x128xbf16>
  %up = g3moe.expert_linear %p, %off, %wu
      : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>) -> tensor<64x128xbf16>
  %act = g3moe.gelu_tanh_mul %g, %up : tensor<64x128xbf16>
  %d = g3moe.expert_linear %act, %off, %wd
      : (tensor<64x128xbf16>, tensor<5xi32>, tensor<4x64x128xbf16>) -> tensor<64x64xbf16>
  // CHECK: g3moe.moe_combine %{{.*}}, %[[SLOTS]]
  %y = g3moe.moe_combine %d, %slots, %w
      : (tensor<64x64xbf16>, tensor<32x2xi32>, tensor<32x2xf32>) -> tensor<32x64xbf16>
  return %y : tensor<32x64xbf16>
}

// CHECK-LABEL: func.func @other_routers
func.func @other_routers(%logits: tensor<32x4xf32>) -> (tensor<32x2xf32>, tensor<32x2xf32>) {
  %bias = g3moe.param "model.layers.2.moe.gate.e_score_correction_bias" : tensor<4xf32>
  // CHECK: g3moe.softmax_topk_router {{.*}} {norm_topk_prob = true, top_k = 2 : i64}
  %w1, %i1 = g3moe.softmax_topk_router %logits {top_k = 2 : i64, norm_topk_prob = true}
      : (tensor<32x4xf32>) -> (tensor<32x2xf32>, tensor<32x2xi32>)
  // CHECK: g3moe.sigmoid_grouped_router {{.*}} {n_group = 2 : i64, norm_topk_prob = false, routed_scaling_factor = 2.500000e+00 : f64, top_k = 2 : i64, topk_group = 1 : i64}
  %w2, %i2 = g3moe.sigmoid_grouped_router %logits, %bias {top_k = 2 : i64, n_group = 2 : i64,
      topk_group = 1 : i64, routed_scaling_factor = 2.5 : f64, norm_topk_prob = false}
      : (tensor<32x4xf32>, tensor<4xf32>) -> (tensor<32x2xf32>, tensor<32x2xi32>)
  return %w1, %w2 : tensor<32x2xf32>, tensor<32x2xf32>
}

// CHECK-LABEL: func.func @losses
func.func @losses(%h: tensor<2x16x64xbf16>, %t: tensor<2x16xi32>, %n: tensor<f32>,
                  %seg: tensor<2x16xi32>, %l2: tensor<32x4xf32>, %l3: tensor<32x4xf32>,
                  %i2: tensor<32x2xi32>, %i3: tensor<32x2xi32>) -> tensor<f32> {
  %emb = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  // CHECK: g3moe.lm_head {{.*}} {softcap = 3.000000e+01 : f64}
  %logits = g3moe.lm_head %h, %emb {softcap = 30.0 : f64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>) -> tensor<2x16x512xf32>
  // CHECK: g3moe.cross_entropy {{.*}} {ignore_index = -100 : i64}
  %ce = g3moe.cross_entropy %logits, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x16x512xf32>, tensor<2x16xi32>, tensor<f32>) -> tensor<f32>
  // CHECK: g3moe.load_balancing_loss(%{{.*}}, %{{.*}}) indices(%{{.*}}, %{{.*}}) mask %{{.*}} {num_experts = 4 : i64}
  %aux = g3moe.load_balancing_loss (%l2, %l3) indices (%i2, %i3) mask %seg {num_experts = 4 : i64}
      : (tensor<32x4xf32>, tensor<32x4xf32>, tensor<32x2xi32>, tensor<32x2xi32>, tensor<2x16xi32>)
      -> tensor<f32>
  // CHECK: g3moe.router_z_loss(%{{.*}}, %{{.*}}) mask
  %z = g3moe.router_z_loss (%l2, %l3) mask %seg
      : (tensor<32x4xf32>, tensor<32x4xf32>, tensor<2x16xi32>) -> tensor<f32>
  // CHECK: g3moe.loss_sum {{.*}} {coefficients = array<f64: 1.000000e+00, 1.000000e-03, 1.000000e-04>}
  %loss = g3moe.loss_sum %ce, %aux, %z {coefficients = array<f64: 1.0, 1.0e-03, 1.0e-04>}
      : (tensor<f32>, tensor<f32>, tensor<f32>) -> tensor<f32>
  return %loss : tensor<f32>
}

// CHECK-LABEL: func.func @backward_ops
func.func @backward_ops(%x: tensor<2x16x64xbf16>, %dy: tensor<2x16x128xbf16>, %ids: tensor<2x16xi32>,
                        %q: tensor<2x16x4x16xbf16>, %k: tensor<2x16x2x16xbf16>, %seg: tensor<2x16xi32>,
                        %logits: tensor<32x4xf32>, %idx: tensor<32x2xi32>, %dw: tensor<32x2xf32>,
                        %p: tensor<64x64xbf16>, %off: tensor<5xi32>, %n: tensor<f32>,
                        %key: tensor<2xi64>) {
  %w = g3moe.param "w" : tensor<128x64xbf16>
  // CHECK: g3moe.linear_grad_input {{.*}} : (tensor<2x16x128xbf16>, tensor<128x64xbf16>) -> tensor<2x16x64xbf16>
  %dx = g3moe.linear_grad_input %dy, %w : (tensor<2x16x128xbf16>, tensor<128x64xbf16>) -> tensor<2x16x64xbf16>
  // CHECK: g3moe.linear_grad_weight {{.*}} -> tensor<128x64xf32>
  %dW = g3moe.linear_grad_weight %dy, %x : (tensor<2x16x128xbf16>, tensor<2x16x64xbf16>) -> tensor<128x64xf32>
  %we = g3moe.param "we" : tensor<4x128x64xbf16>
  %pe = g3moe.expert_linear %p, %off, %we : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>) -> tensor<64x128xbf16>
  // CHECK: g3moe.expert_linear_grad_input
  %dpe = g3moe.expert_linear_grad_input %pe, %off, %we
      : (tensor<64x128xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>) -> tensor<64x64xbf16>
  %ha = g3moe.param "ha" : tensor<64x16xbf16>
  %lb = g3moe.param "lb" : tensor<4x128x16xbf16>
  %la = g3moe.param "la" : tensor<4x16x64xbf16>
  // CHECK: g3moe.expert_linear %{{.*}}, %{{.*}}, %{{.*}} plus %{{.*}} lowrank %{{.*}}, %{{.*}} : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>, tensor<64x128xbf16>, tensor<64x16xbf16>, tensor<4x128x16xbf16>) -> tensor<64x128xbf16>
  %pl = g3moe.expert_linear %p, %off, %we plus %pe lowrank %ha, %lb
      : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>, tensor<64x128xbf16>,
         tensor<64x16xbf16>, tensor<4x128x16xbf16>) -> tensor<64x128xbf16>
  // CHECK: g3moe.expert_linear_grad_input %{{.*}}, %{{.*}}, %{{.*}} lowrank %{{.*}}, %{{.*}} : (tensor<64x128xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>, tensor<64x16xbf16>, tensor<4x16x64xbf16>) -> tensor<64x64xbf16>
  %dpl = g3moe.expert_linear_grad_input %pl, %off, %we lowrank %ha, %la
      : (tensor<64x128xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>, tensor<64x16xbf16>,
         tensor<4x16x64xbf16>) -> tensor<64x64xbf16>
  // CHECK: g3moe.expert_linear_grad_input %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} lowrank %{{.*}}, %{{.*}} dropout %{{.*}} {dropout_p = 5.000000e-02 : f64} : (tensor<64x128xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>, tensor<64x64xbf16>, tensor<64x16xbf16>, tensor<4x16x64xbf16>, tensor<128xi32>) -> tensor<64x64xbf16>
  %bits = g3moe.dropout_mask %key {stream = 2 : i64, p = 0.05 : f64} : (tensor<2xi64>) -> tensor<128xi32>
  %dpm = g3moe.expert_linear_grad_input %pl, %off, %we, %dpe lowrank %ha, %la dropout %bits
      {dropout_p = 0.05 : f64}
      : (tensor<64x128xbf16>, tensor<5xi32>, tensor<4x128x64xbf16>, tensor<64x64xbf16>,
         tensor<64x16xbf16>, tensor<4x16x64xbf16>, tensor<128xi32>) -> tensor<64x64xbf16>
  // CHECK: g3moe.expert_linear_grad_weight {{.*}} -> tensor<4x128x64xf32>
  %dwe = g3moe.expert_linear_grad_weight %pe, %off, %p
      : (tensor<64x128xbf16>, tensor<5xi32>, tensor<64x64xbf16>) -> tensor<4x128x64xf32>
  // CHECK: g3moe.embedding_grad {{.*}} {padding_idx = 0 : i64, scale = 8.000000e+00 : f64}
  %dt = g3moe.embedding_grad %x, %ids {scale = 8.0 : f64, padding_idx = 0 : i64}
      : (tensor<2x16x64xbf16>, tensor<2x16xi32>) -> tensor<512x64xf32>
  %ln = g3moe.param "ln" : tensor<64xbf16>
  // CHECK: g3moe.rms_norm_grad
  %dn:2 = g3moe.rms_norm_grad %x, %ln, %x {eps = 1.0e-06 : f64}
      : (tensor<2x16x64xbf16>, tensor<64xbf16>, tensor<2x16x64xbf16>) -> (tensor<2x16x64xbf16>, tensor<64xf32>)
  // CHECK: g3moe.attention_grad {{.*}} {scale = 2.500000e-01 : f64, sliding_window = 8 : i64}
  %da:3 = g3moe.attention_grad %q, %k, %k, %seg, %q {scale = 0.25 : f64, sliding_window = 8 : i64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>, tensor<2x16x4x16xbf16>)
      -> (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>)
  // CHECK: g3moe.attention {{.*}} -> (tensor<2x16x4x16xbf16>, tensor<2x4x16xf32>)
  %ao, %lse = g3moe.attention %q, %k, %k, %seg {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>)
      -> (tensor<2x16x4x16xbf16>, tensor<2x4x16xf32>)
  // CHECK: g3moe.attention_grad {{.*}}, %{{.*}}, %{{.*}} {scale = 2.500000e-01 : f64} : ({{.*}}, tensor<2x16x4x16xbf16>, tensor<2x4x16xf32>)
  %ds:3 = g3moe.attention_grad %q, %k, %k, %seg, %q, %ao, %lse {scale = 0.25 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16xi32>,
         tensor<2x16x4x16xbf16>, tensor<2x16x4x16xbf16>, tensor<2x4x16xf32>)
      -> (tensor<2x16x4x16xbf16>, tensor<2x16x2x16xbf16>, tensor<2x16x2x16xbf16>)
  // CHECK: g3moe.rope {{.*}} transpose
  %rq = g3moe.rope %q, %seg {theta = 1.0e+04 : f64, scaling_factor = 1.0 : f64, transpose}
      : (tensor<2x16x4x16xbf16>, tensor<2x16xi32>) -> tensor<2x16x4x16xbf16>
  // CHECK: g3moe.gelu_tanh_mul_grad
  %dg:2 = g3moe.gelu_tanh_mul_grad %x, %x, %x
      : (tensor<2x16x64xbf16>, tensor<2x16x64xbf16>, tensor<2x16x64xbf16>) -> (tensor<2x16x64xbf16>, tensor<2x16x64xbf16>)
  %emb = g3moe.param "emb" : tensor<512x64xbf16>
  %l = g3moe.lm_head %x, %emb : (tensor<2x16x64xbf16>, tensor<512x64xbf16>) -> tensor<2x16x512xf32>
  // CHECK: g3moe.cross_entropy_grad
  %dl = g3moe.cross_entropy_grad %l, %ids, %n, %n {ignore_index = -100 : i64}
      : (tensor<2x16x512xf32>, tensor<2x16xi32>, tensor<f32>, tensor<f32>) -> tensor<2x16x512xf32>
  // CHECK: g3moe.lm_head_grad {{.*}} {softcap = 3.000000e+01 : f64}
  %dh:2 = g3moe.lm_head_grad %x, %emb, %dl {softcap = 30.0 : f64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16x512xf32>) -> (tensor<2x16x64xbf16>, tensor<512x64xf32>)
  // CHECK: g3moe.sparsemixer_router_grad
  %d1 = g3moe.sparsemixer_router_grad %logits, %idx, %dw {epsilon = 0.01 : f64}
      : (tensor<32x4xf32>, tensor<32x2xi32>, tensor<32x2xf32>) -> tensor<32x4xf32>
  // CHECK: g3moe.softmax_topk_router_grad
  %d2 = g3moe.softmax_topk_router_grad %logits, %idx, %dw {norm_topk_prob = true}
      : (tensor<32x4xf32>, tensor<32x2xi32>, tensor<32x2xf32>) -> tensor<32x4xf32>
  // CHECK: g3moe.sigmoid_grouped_router_grad
  %d3 = g3moe.sigmoid_grouped_router_grad %logits, %idx, %dw {norm_topk_prob = true, routed_scaling_factor = 2.5 : f64}
      : (tensor<32x4xf32>, tensor<32x2xi32>, tensor<32x2xf32>) -> tensor<32x4xf32>
  // CHECK: g3moe.moe_dispatch_grad
  %dd = g3moe.moe_dispatch_grad %p, %idx : (tensor<64x64xbf16>, tensor<32x2xi32>) -> tensor<32x64xbf16>
  // CHECK: g3moe.moe_combine_grad
  %dc:2 = g3moe.moe_combine_grad %p, %idx, %dw, %dd
      : (tensor<64x64xbf16>, tensor<32x2xi32>, tensor<32x2xf32>, tensor<32x64xbf16>) -> (tensor<64x64xbf16>, tensor<32x2xf32>)
  // CHECK: g3moe.load_balancing_loss_grad(%{{.*}}) indices(%{{.*}}) mask %{{.*}} grad %{{.*}} {num_experts = 4 : i64}
  %dlb = g3moe.load_balancing_loss_grad (%logits) indices (%idx) mask %seg grad %n {num_experts = 4 : i64}
      : (tensor<32x4xf32>, tensor<32x2xi32>, tensor<2x16xi32>, tensor<f32>) -> tensor<32x4xf32>
  // CHECK: g3moe.router_z_loss_grad(%{{.*}}) mask %{{.*}} grad
  %dz = g3moe.router_z_loss_grad (%logits) mask %seg grad %n
      : (tensor<32x4xf32>, tensor<2x16xi32>, tensor<f32>) -> tensor<32x4xf32>
  return
}

// CHECK-LABEL: func.func @training_ops
func.func @training_ops(%x: tensor<32x64xbf16>, %u: tensor<32x64xf32>, %p: tensor<4x64xf32>,
                        %t: tensor<i64>, %s: tensor<i64>, %w: tensor<i64>, %key: tensor<2xi64>) {
  // CHECK: g3moe.scale {{.*}} {factor = 4.000000e+00 : f64} : tensor<32x64xbf16>
  %a = g3moe.scale %x {factor = 4.0 : f64} : tensor<32x64xbf16>
  // CHECK: g3moe.stop_gradient {{.*}} : tensor<32x64xbf16>
  %b = g3moe.stop_gradient %a : tensor<32x64xbf16>
  // CHECK: g3moe.dropout {{.*}} {p = 5.000000e-02 : f64}
  %c = g3moe.dropout %b, %u {p = 0.05 : f64} : (tensor<32x64xbf16>, tensor<32x64xf32>) -> tensor<32x64xbf16>
  // CHECK: g3moe.keyed_dropout {{.*}} {p = 5.000000e-02 : f64, stream = 4 : i64} : (tensor<32x64xbf16>, tensor<2xi64>) -> tensor<32x64xbf16>
  %kd = g3moe.keyed_dropout %b, %key {stream = 4 : i64, p = 0.05 : f64} : (tensor<32x64xbf16>, tensor<2xi64>) -> tensor<32x64xbf16>
  // CHECK: g3moe.keyed_jitter {{.*}} {high = 1.250000e+00 : f64, low = 7.500000e-01 : f64, stream = 0 : i64} : (tensor<32x64xbf16>, tensor<2xi64>) -> tensor<32x64xbf16>
  %kj = g3moe.keyed_jitter %b, %key {stream = 0 : i64, low = 0.75 : f64, high = 1.25 : f64} : (tensor<32x64xbf16>, tensor<2xi64>) -> tensor<32x64xbf16>
  // CHECK: %[[M:.*]] = g3moe.dropout_mask {{.*}} {p = 5.000000e-02 : f64, stream = 4 : i64} : (tensor<2xi64>) -> tensor<64xi32>
  %m = g3moe.dropout_mask %key {stream = 4 : i64, p = 0.05 : f64} : (tensor<2xi64>) -> tensor<64xi32>
  %la = g3moe.param "lora_a" : tensor<8x64xbf16>
  // CHECK: g3moe.linear {{.*}} dropout %[[M]] {dropout_p = 5.000000e-02 : f64} : (tensor<32x64xbf16>, tensor<8x64xbf16>, tensor<64xi32>) -> tensor<32x8xbf16>
  %lh = g3moe.linear %b, %la dropout %m {dropout_p = 0.05 : f64} : (tensor<32x64xbf16>, tensor<8x64xbf16>, tensor<64xi32>) -> tensor<32x8xbf16>
  // CHECK: g3moe.linear_grad_input {{.*}} dropout %[[M]] {dropout_p = 5.000000e-02 : f64}
  %lx = g3moe.linear_grad_input %lh, %la dropout %m {dropout_p = 0.05 : f64} : (tensor<32x8xbf16>, tensor<8x64xbf16>, tensor<64xi32>) -> tensor<32x64xbf16>
  // CHECK: g3moe.linear_grad_weight {{.*}} dropout %[[M]] {dropout_p = 5.000000e-02 : f64}
  %lw = g3moe.linear_grad_weight %lh, %b dropout %m {dropout_p = 0.05 : f64} : (tensor<32x8xbf16>, tensor<32x64xbf16>, tensor<64xi32>) -> tensor<8x64xf32>
  // CHECK: g3moe.global_norm
  %n = g3moe.global_norm %p, %u : (tensor<4x64xf32>, tensor<32x64xf32>) -> tensor<f32>
  // CHECK: g3moe.clip_scale {{.*}} {max_norm = 1.000000e+00 : f64}
  %k = g3moe.clip_scale %n {max_norm = 1.0 : f64} : (tensor<f32>) -> tensor<f32>
  // CHECK: g3moe.lr_schedule {{.*}} {kind = "cosine", learning_rate = 1.000000e-04 : f64}
  %lr = g3moe.lr_schedule %t, %s, %w {kind = "cosine", learning_rate = 1.0e-04 : f64}
      : (tensor<i64>, tensor<i64>, tensor<i64>) -> tensor<f32>
  // CHECK: g3moe.adamw
  %r:3 = g3moe.adamw %p, %p, %p, %p, %t, %lr, %k
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.01 : f64}
      : (tensor<4x64xf32>, tensor<4x64xf32>, tensor<4x64xf32>, tensor<4x64xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<4x64xf32>, tensor<4x64xf32>, tensor<4x64xf32>)
  // Two tensors in one update: 8 state operands, 6 results.
  // CHECK: g3moe.adamw {{.*}} -> (tensor<4x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x64xf32>)
  %r2:6 = g3moe.adamw %p, %u, %p, %u, %p, %u, %p, %u, %t, %lr, %k
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, weight_decay = 0.01 : f64}
      : (tensor<4x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>,
         tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x64xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<4x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x64xf32>, tensor<4x64xf32>, tensor<32x64xf32>)
  return
}

// The fused norms of --g3moe-fuse-norms.
// CHECK-LABEL: func.func @fused_norms
func.func @fused_norms(%x: tensor<2x16x64xbf16>, %w: tensor<64xbf16>, %q: tensor<2x16x4x16xbf16>,
                       %qn: tensor<16xbf16>, %pos: tensor<2x16xi32>) {
  // CHECK: g3moe.add_rms_norm {{.*}} {eps = 9.9999999999999995E-7 : f64} : (tensor<2x16x64xbf16>, tensor<2x16x64xbf16>, tensor<64xbf16>) -> (tensor<2x16x64xbf16>, tensor<2x16x64xbf16>)
  %s, %y = g3moe.add_rms_norm %x, %x, %w {eps = 1.0e-06 : f64}
      : (tensor<2x16x64xbf16>, tensor<2x16x64xbf16>, tensor<64xbf16>) -> (tensor<2x16x64xbf16>, tensor<2x16x64xbf16>)
  // CHECK: g3moe.rms_norm_grad {{.*}} : (tensor<2x16x64xbf16>, tensor<64xbf16>, tensor<2x16x64xbf16>, tensor<2x16x64xbf16>) -> (tensor<2x16x64xbf16>, tensor<64xf32>)
  %dx, %dw = g3moe.rms_norm_grad %x, %w, %y, %s {eps = 1.0e-06 : f64}
      : (tensor<2x16x64xbf16>, tensor<64xbf16>, tensor<2x16x64xbf16>, tensor<2x16x64xbf16>)
      -> (tensor<2x16x64xbf16>, tensor<64xf32>)
  // CHECK: g3moe.rms_norm_rope {{.*}} {eps = 9.9999999999999995E-7 : f64, scaling_factor = 8.000000e+00 : f64, theta = 1.000000e+06 : f64}
  %r = g3moe.rms_norm_rope %q, %qn, %pos {eps = 1.0e-06 : f64, theta = 1.0e+06 : f64, scaling_factor = 8.0 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<16xbf16>, tensor<2x16xi32>) -> tensor<2x16x4x16xbf16>
  // CHECK: g3moe.rms_norm_rope_grad
  %dq, %dqn = g3moe.rms_norm_rope_grad %q, %qn, %pos, %r {eps = 1.0e-06 : f64, theta = 1.0e+06 : f64, scaling_factor = 8.0 : f64}
      : (tensor<2x16x4x16xbf16>, tensor<16xbf16>, tensor<2x16xi32>, tensor<2x16x4x16xbf16>)
      -> (tensor<2x16x4x16xbf16>, tensor<16xf32>)
  return
}

// CHECK-LABEL: func.func @statistics
func.func @statistics(%l: tensor<2x16x512xf32>, %t: tensor<2x16xi32>, %i: tensor<32x2xi32>) {
  // CHECK: g3moe.token_accuracy {{.*}} {ignore_index = -100 : i64} : (tensor<2x16x512xf32>, tensor<2x16xi32>) -> (tensor<f32>, tensor<f32>)
  %c, %n = g3moe.token_accuracy %l, %t {ignore_index = -100 : i64}
      : (tensor<2x16x512xf32>, tensor<2x16xi32>) -> (tensor<f32>, tensor<f32>)
  // CHECK: g3moe.expert_load {{.*}} {num_experts = 4 : i64} : (tensor<32x2xi32>, tensor<2x16xi32>) -> tensor<4xf32>
  %load = g3moe.expert_load %i, %t {num_experts = 4 : i64} : (tensor<32x2xi32>, tensor<2x16xi32>) -> tensor<4xf32>
  return
}

// CHECK-LABEL: func.func @linear_plus
func.func @linear_plus(%x: tensor<2x16x64xbf16>, %w: tensor<32x64xbf16>, %a: tensor<2x16x32xbf16>,
                       %p: tensor<64x64xbf16>, %off: tensor<5xi32>, %we: tensor<4x32x64xbf16>,
                       %ae: tensor<64x32xbf16>) {
  // CHECK: g3moe.linear %{{.*}}, %{{.*}} plus %{{.*}} : (tensor<2x16x64xbf16>, tensor<32x64xbf16>, tensor<2x16x32xbf16>) -> tensor<2x16x32xbf16>
  %y = g3moe.linear %x, %w plus %a
      : (tensor<2x16x64xbf16>, tensor<32x64xbf16>, tensor<2x16x32xbf16>) -> tensor<2x16x32xbf16>
  // CHECK: g3moe.expert_linear %{{.*}}, %{{.*}}, %{{.*}} plus %{{.*}} :
  %e = g3moe.expert_linear %p, %off, %we plus %ae
      : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x32x64xbf16>, tensor<64x32xbf16>) -> tensor<64x32xbf16>
  return
}

// CHECK-LABEL: func.func @fused_head
func.func @fused_head(%h: tensor<2x16x64xbf16>, %t: tensor<2x16xi32>, %n: tensor<f32>) {
  %emb = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  // CHECK: g3moe.lm_head_cross_entropy {{.*}} {ignore_index = -100 : i64}
  %l = g3moe.lm_head_cross_entropy %h, %emb, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>) -> tensor<f32>
  // CHECK: g3moe.lm_head_cross_entropy_grad {{.*}} -> tensor<2x16x64xbf16>
  %dx = g3moe.lm_head_cross_entropy_grad %h, %emb, %t, %n, %l {ignore_index = -100 : i64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>, tensor<f32>) -> tensor<2x16x64xbf16>
  // CHECK: g3moe.lm_head_cross_entropy_grad {{.*}} -> (tensor<2x16x64xbf16>, tensor<512x64xf32>)
  %dx2, %dt = g3moe.lm_head_cross_entropy_grad %h, %emb, %t, %n, %l {ignore_index = -100 : i64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>, tensor<f32>) -> (tensor<2x16x64xbf16>, tensor<512x64xf32>)
  // CHECK: %{{.*}}, %[[LSE:.*]] = g3moe.lm_head_cross_entropy {{.*}} -> (tensor<f32>, tensor<2x16xf32>)
  %l2, %lse = g3moe.lm_head_cross_entropy %h, %emb, %t, %n {ignore_index = -100 : i64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>) -> (tensor<f32>, tensor<2x16xf32>)
  // CHECK: g3moe.lm_head_cross_entropy_grad {{.*}}, %[[LSE]] {{.*}} tensor<2x16xf32>) -> tensor<2x16x64xbf16>
  %dx3 = g3moe.lm_head_cross_entropy_grad %h, %emb, %t, %n, %l2, %lse {ignore_index = -100 : i64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>, tensor<f32>, tensor<2x16xf32>) -> tensor<2x16x64xbf16>
  // CHECK: g3moe.lm_head_cross_entropy_and_grad {{.*}} -> (tensor<f32>, tensor<2x16x64xbf16>)
  %l3, %dx4 = g3moe.lm_head_cross_entropy_and_grad %h, %emb, %t, %n, %l {ignore_index = -100 : i64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>, tensor<f32>) -> (tensor<f32>, tensor<2x16x64xbf16>)
  // CHECK: g3moe.lm_head_eval {{.*}} {ignore_index = -100 : i64, softcap = 3.000000e+01 : f64} : {{.*}} -> (tensor<f32>, tensor<f32>, tensor<f32>)
  %el, %ec, %et = g3moe.lm_head_eval %h, %emb, %t, %n {ignore_index = -100 : i64, softcap = 30.0 : f64}
      : (tensor<2x16x64xbf16>, tensor<512x64xbf16>, tensor<2x16xi32>, tensor<f32>) -> (tensor<f32>, tensor<f32>, tensor<f32>)
  return
}

// CHECK-LABEL: func.func @row_blocks
func.func @row_blocks(%x: tensor<12x64xbf16>, %idx: tensor<12x2xi32>) -> tensor<12x64xbf16> {
  // CHECK: %[[P:.*]]:2 = g3moe.split_rows %arg0 : tensor<12x64xbf16> -> tensor<8x64xbf16>, tensor<4x64xbf16>
  %a, %b = g3moe.split_rows %x : tensor<12x64xbf16> -> tensor<8x64xbf16>, tensor<4x64xbf16>
  // CHECK: g3moe.split_rows %arg1 : tensor<12x2xi32> -> tensor<6x2xi32>, tensor<6x2xi32>
  %i, %j = g3moe.split_rows %idx : tensor<12x2xi32> -> tensor<6x2xi32>, tensor<6x2xi32>
  // CHECK: g3moe.concat_rows %[[P]]#0, %[[P]]#1 : tensor<8x64xbf16>, tensor<4x64xbf16> -> tensor<12x64xbf16>
  %y = g3moe.concat_rows %a, %b : tensor<8x64xbf16>, tensor<4x64xbf16> -> tensor<12x64xbf16>
  return %y : tensor<12x64xbf16>
}

// CHECK-LABEL: func.func @collectives
func.func @collectives(%a: tensor<4x64xf32>, %b: tensor<f32>, %t: tensor<i64>) {
  // CHECK: g3moe.all_reduce {{.*}} -> (tensor<4x64xf32>, tensor<f32>)
  %s:2 = g3moe.all_reduce %a, %b : (tensor<4x64xf32>, tensor<f32>) -> (tensor<4x64xf32>, tensor<f32>)
  // CHECK: g3moe.broadcast {{.*}} {root = 1 : i64}
  %p = g3moe.broadcast %a {root = 1 : i64} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  // CHECK: g3moe.all_to_all {{.*}} {processes = 2 : i64}
  %x = g3moe.all_to_all %a {processes = 2 : i64} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  // CHECK: g3moe.adamw {{.*}}owner = 1 : i64
  %r:3 = g3moe.adamw %a, %a, %a, %a, %t, %b, %b
      {beta1 = 0.9 : f64, beta2 = 0.999 : f64, epsilon = 1.0e-08 : f64, owner = 1 : i64, weight_decay = 0.0 : f64}
      : (tensor<4x64xf32>, tensor<4x64xf32>, tensor<4x64xf32>, tensor<4x64xf32>, tensor<i64>, tensor<f32>, tensor<f32>)
      -> (tensor<4x64xf32>, tensor<4x64xf32>, tensor<4x64xf32>)
  return
}

// CHECK-LABEL: func.func @fp8
func.func @fp8(%w: tensor<4x128x64xbf16>, %p: tensor<64x64xbf16>, %off: tensor<5xi32>,
               %y: tensor<64x128xbf16>, %h: tensor<64x8xbf16>, %b: tensor<4x128x8xbf16>,
               %a: tensor<4x8x64xbf16>, %m: tensor<128xi32>)
    -> (tensor<64x128xbf16>, tensor<64x64xbf16>, tensor<64x128xbf16>, tensor<64x64xbf16>) {
  // CHECK: g3moe.quantize_fp8 %{{.*}} : (tensor<4x128x64xbf16>) -> (tensor<4x128x64xf8E4M3FN>, tensor<4x128xf32>)
  %q, %s = g3moe.quantize_fp8 %w : (tensor<4x128x64xbf16>) -> (tensor<4x128x64xf8E4M3FN>, tensor<4x128xf32>)
  // CHECK: g3moe.quantize_fp8 %{{.*}} {transpose}
  %qt, %st = g3moe.quantize_fp8 %w {transpose} : (tensor<4x128x64xbf16>) -> (tensor<4x64x128xf8E4M3FN>, tensor<4x64xf32>)
  // CHECK: g3moe.scaled_expert_linear %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} plus %{{.*}} :
  %e = g3moe.scaled_expert_linear %p, %off, %q, %s plus %y
      : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xf8E4M3FN>, tensor<4x128xf32>, tensor<64x128xbf16>) -> tensor<64x128xbf16>
  // CHECK: g3moe.scaled_expert_linear %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} lowrank %{{.*}}, %{{.*}} :
  %l = g3moe.scaled_expert_linear %p, %off, %q, %s lowrank %h, %b
      : (tensor<64x64xbf16>, tensor<5xi32>, tensor<4x128x64xf8E4M3FN>, tensor<4x128xf32>, tensor<64x8xbf16>, tensor<4x128x8xbf16>) -> tensor<64x128xbf16>
  // CHECK: g3moe.scaled_expert_linear %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} plus %{{.*}} lowrank %{{.*}}, %{{.*}} transposed dropout %{{.*}} {dropout_p = 1.000000e-01 : f64} :
  %g = g3moe.scaled_expert_linear %y, %off, %qt, %st plus %p lowrank %h, %a transposed dropout %m {dropout_p = 0.1 : f64}
      : (tensor<64x128xbf16>, tensor<5xi32>, tensor<4x64x128xf8E4M3FN>, tensor<4x64xf32>, tensor<64x64xbf16>, tensor<64x8xbf16>, tensor<4x8x64xbf16>, tensor<128xi32>) -> tensor<64x64xbf16>
  %q0, %s0 = g3moe.quantize_fp8 %p : (tensor<64x64xbf16>) -> (tensor<64x64xf8E4M3FN>, tensor<64xf32>)
  // CHECK: g3moe.scaled_linear
  %d = g3moe.scaled_linear %p, %q0, %s0 : (tensor<64x64xbf16>, tensor<64x64xf8E4M3FN>, tensor<64xf32>) -> tensor<64x64xbf16>
  return %e, %d, %l, %g : tensor<64x128xbf16>, tensor<64x64xbf16>, tensor<64x128xbf16>, tensor<64x64xbf16>
}

// CHECK-LABEL: func.func @frozen_e4m3
func.func @frozen_e4m3() -> (tensor<4x128x64xf8E4M3FN>, tensor<4x64xf32>) {
  // CHECK: g3moe.frozen_e4m3 "model.layers.1.moe.experts.{e}.up_proj.weight" : tensor<4x128x64xbf16> -> tensor<4x128x64xf8E4M3FN>, tensor<4x128xf32>
  %q, %s = g3moe.frozen_e4m3 "model.layers.1.moe.experts.{e}.up_proj.weight" : tensor<4x128x64xbf16> -> tensor<4x128x64xf8E4M3FN>, tensor<4x128xf32>
  // CHECK: g3moe.frozen_e4m3 "model.layers.1.moe.experts.{e}.up_proj.weight" transpose : tensor<4x128x64xbf16> -> tensor<4x64x128xf8E4M3FN>, tensor<4x64xf32>
  %qt, %st = g3moe.frozen_e4m3 "model.layers.1.moe.experts.{e}.up_proj.weight" transpose : tensor<4x128x64xbf16> -> tensor<4x64x128xf8E4M3FN>, tensor<4x64xf32>
  return %q, %st : tensor<4x128x64xf8E4M3FN>, tensor<4x64xf32>
}
