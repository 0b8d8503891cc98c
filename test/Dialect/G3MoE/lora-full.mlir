// --g3moe-lora full fine-tuning and router training: fp32 masters, no adapters.
// RUN: g3moe-opt %s --split-input-file --g3moe-lora="full-finetune=true" | FileCheck %s
// RUN: g3moe-opt %s --split-input-file --g3moe-lora="targets=q_proj train-router=true" | FileCheck %s --check-prefix=ROUTER

// CHECK-LABEL: func.func @forward
// ROUTER-LABEL: func.func @forward
func.func @forward(%ids: tensor<2x8xi32>, %x: tensor<16x64xbf16>) -> (tensor<2x8x64xbf16>, tensor<16x4xf32>, tensor<16x64xbf16>) {
  // The tied embedding becomes one fp32 master; its uses see bf16.
  // CHECK: %[[E:.*]] = g3moe.param "model.embed_tokens.weight" trainable : tensor<512x64xf32>
  // CHECK: %[[E16:.*]] = g3moe.convert %[[E]] : tensor<512x64xf32> -> tensor<512x64xbf16>
  // CHECK: g3moe.embedding %{{.*}}, %[[E16]]
  %e = g3moe.param "model.embed_tokens.weight" : tensor<512x64xbf16>
  %h = g3moe.embedding %ids, %e {scale = 8.0 : f64, padding_idx = 0 : i64}
      : (tensor<2x8xi32>, tensor<512x64xbf16>) -> tensor<2x8x64xbf16>
  // CHECK: g3moe.param "model.layers.2.moe.gate.weight" trainable : tensor<4x64xf32>
  // ROUTER: g3moe.param "model.layers.2.moe.gate.weight" trainable : tensor<4x64xf32>
  %r = g3moe.param "model.layers.2.moe.gate.weight" : tensor<4x64xf32>
  %xf = g3moe.convert %x : tensor<16x64xbf16> -> tensor<16x64xf32>
  %l = g3moe.linear %xf, %r : (tensor<16x64xf32>, tensor<4x64xf32>) -> tensor<16x4xf32>
  // Shared experts stay frozen by default.
  // CHECK: g3moe.param "model.layers.2.moe.shared_experts.up_proj.weight" : tensor<64x64xbf16>
  %s = g3moe.param "model.layers.2.moe.shared_experts.up_proj.weight" : tensor<64x64xbf16>
  %y = g3moe.linear %x, %s : (tensor<16x64xbf16>, tensor<64x64xbf16>) -> tensor<16x64xbf16>
  // ROUTER: g3moe.param "model.layers.2.self_attn.q_proj.lora_A.weight" trainable
  %q = g3moe.param "model.layers.2.self_attn.q_proj.weight" : tensor<64x64xbf16>
  %y2 = g3moe.linear %y, %q : (tensor<16x64xbf16>, tensor<64x64xbf16>) -> tensor<16x64xbf16>
  return %h, %l, %y2 : tensor<2x8x64xbf16>, tensor<16x4xf32>, tensor<16x64xbf16>
}
