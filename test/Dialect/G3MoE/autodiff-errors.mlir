// --g3moe-autodiff reports what it cannot differentiate.
// RUN: g3moe-opt %s --split-input-file --verify-diagnostics --g3moe-autodiff

// expected-error @+1 {{g3moe-autodiff: no parameter is trainable; run --g3moe-lora first}}
func.func @forward(%x: tensor<4xf32>) -> tensor<f32> {
  %a = g3moe.param "a" : tensor<1x4xf32>
  %y = g3moe.linear %x, %a : (tensor<4xf32>, tensor<1x4xf32>) -> tensor<1xf32>
  %l = g3moe.reshape %y : tensor<1xf32> -> tensor<f32>
  return %l : tensor<f32>
}

// -----

// expected-error @+1 {{g3moe-autodiff: the loss depends on no trainable parameter}}
func.func @forward(%x: tensor<4xf32>) -> tensor<f32> {
  %a = g3moe.param "a" trainable : tensor<1x4xf32>
  %b = g3moe.param "b" : tensor<1x4xf32>
  %y = g3moe.linear %x, %b : (tensor<4xf32>, tensor<1x4xf32>) -> tensor<1xf32>
  %l = g3moe.reshape %y : tensor<1xf32> -> tensor<f32>
  return %l : tensor<f32>
}

// -----

// expected-error @+1 {{g3moe-autodiff: the module has no @forward function}}
module {
  func.func @step(%x: tensor<f32>) -> tensor<f32> {
    return %x : tensor<f32>
  }
}

// -----

// A product with an addend comes from --g3moe-fuse-linear-add, after autodiff.
func.func @forward(%x: tensor<4xf32>, %r: tensor<1xf32>) -> tensor<f32> {
  %a = g3moe.param "a" trainable : tensor<1x4xf32>
  // expected-error @+2 {{with an addend or a dropout is fused after differentiation, not differentiated}}
  // expected-error @+1 {{g3moe-autodiff: could not build the gradient}}
  %y = g3moe.linear %x, %a plus %r : (tensor<4xf32>, tensor<1x4xf32>, tensor<1xf32>) -> tensor<1xf32>
  %l = g3moe.reshape %y : tensor<1xf32> -> tensor<f32>
  return %l : tensor<f32>
}
