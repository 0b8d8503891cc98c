// --g3moe-lora rejects targets that match nothing and bad ranks.
// RUN: g3moe-opt %s --verify-diagnostics --g3moe-lora="targets=gate_proj,o_proj"
// RUN: not g3moe-opt %s --g3moe-lora="rank=0 targets=gate_proj" 2>&1 | FileCheck %s --check-prefix=RANK
// RUN: not g3moe-opt %s --g3moe-lora="dropout=1.0 targets=gate_proj" 2>&1 | FileCheck %s --check-prefix=DROPOUT
// RUN: not g3moe-opt %s --g3moe-lora 2>&1 | FileCheck %s --check-prefix=NOTARGET

// RANK: g3moe-lora: rank must be at least 1, got 0
// DROPOUT: g3moe-lora: dropout must be in [0, 1), got 1
// NOTARGET: g3moe-lora: no target modules given

// expected-error @below {{g3moe-lora: target module 'o_proj' matches no linear layer of the model}}
module {
  func.func @forward(%x: tensor<2x64xbf16>) -> tensor<2x64xbf16> {
    %w = g3moe.param "model.layers.0.mlp.gate_proj.weight" : tensor<64x64xbf16>
    %y = g3moe.linear %x, %w : (tensor<2x64xbf16>, tensor<64x64xbf16>) -> tensor<2x64xbf16>
    return %y : tensor<2x64xbf16>
  }
}
