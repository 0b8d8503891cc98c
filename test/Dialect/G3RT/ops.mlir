// Round trip of the g3rt ops.
// RUN: g3moe-opt %s | g3moe-opt | FileCheck %s

// CHECK-LABEL: func.func @program
func.func @program() {
  // CHECK: %[[W:.*]] = g3rt.buffer "param" {name = "model.norm.weight"} : memref<64xbf16>
  %w = g3rt.buffer "param" {name = "model.norm.weight"} : memref<64xbf16>
  // CHECK: g3rt.buffer "param" {derivation = "e4m3_transposed", derived_from = "model.layers.0.mlp.up_proj.weight", name = "model.layers.0.mlp.up_proj.weight@e4m3t", source_type = tensor<128x64xbf16>} : memref<64x128xf8E4M3FN>
  %q = g3rt.buffer "param" {name = "model.layers.0.mlp.up_proj.weight@e4m3t", derived_from = "model.layers.0.mlp.up_proj.weight", derivation = "e4m3_transposed", source_type = tensor<128x64xbf16>} : memref<64x128xf8E4M3FN>
  // CHECK: %[[X:.*]] = g3rt.buffer "input" {name = "x"} : memref<2x16x64xbf16>
  %x = g3rt.buffer "input" {name = "x"} : memref<2x16x64xbf16>
  // CHECK: %[[Y:.*]] = g3rt.buffer "arena" {offset = 256 : i64} : memref<2x16x64xbf16>
  %y = g3rt.buffer "arena" {offset = 256 : i64} : memref<2x16x64xbf16>
  // CHECK: g3rt.launch "rms_norm" ins(%[[X]], %[[W]] : memref<2x16x64xbf16>, memref<64xbf16>) outs(%[[Y]] : memref<2x16x64xbf16>) {attrs = {eps = 9.9999999999999995E-7 : f64}}
  g3rt.launch "rms_norm" ins(%x, %w : memref<2x16x64xbf16>, memref<64xbf16>)
      outs(%y : memref<2x16x64xbf16>) {attrs = {eps = 1.0e-06 : f64}}
  // CHECK: g3rt.buffer "host" {offset = 0 : i64} : memref<2x16x64xbf16>
  %h = g3rt.buffer "host" {offset = 0 : i64} : memref<2x16x64xbf16>
  // CHECK: %[[V:.*]] = g3rt.view %[[Y]] : memref<2x16x64xbf16> to memref<32x64xbf16>
  %v = g3rt.view %y : memref<2x16x64xbf16> to memref<32x64xbf16>
  %s = g3rt.buffer "arena" : memref<f32>
  // CHECK: g3rt.launch "fill" outs(%{{.*}} : memref<f32>) {attrs = {value = 1.000000e+00 : f64}}
  g3rt.launch "fill" outs(%s : memref<f32>) {attrs = {value = 1.0 : f64}}
  // CHECK: g3rt.output "loss" %{{.*}} : memref<f32>
  g3rt.output "loss" %s : memref<f32>
  return
}
