// Verifier messages of the g3rt ops.
// RUN: g3moe-opt %s -split-input-file -verify-diagnostics

func.func @unknown_kind() {
  // expected-error @+1 {{unknown buffer kind 'heap'}}
  %b = g3rt.buffer "heap" : memref<4xf32>
  return
}

// -----

func.func @unnamed_param() {
  // expected-error @+1 {{a param buffer needs a name}}
  %b = g3rt.buffer "param" : memref<4xf32>
  return
}

// -----

func.func @offset_on_param() {
  // expected-error @+1 {{only arena and host buffers have an offset}}
  %b = g3rt.buffer "param" {name = "w", offset = 0 : i64} : memref<4xf32>
  return
}

// -----

func.func @derived_alone() {
  // expected-error @+1 {{derived_from, derivation and source_type go together, on a param buffer}}
  %b = g3rt.buffer "param" {name = "w@e4m3", derived_from = "w"} : memref<4x16xf8E4M3FN>
  return
}

// -----

func.func @derived_kind() {
  // expected-error @+1 {{unknown derivation 'e5m2'}}
  %b = g3rt.buffer "param" {name = "w@e4m3", derived_from = "w", derivation = "e5m2", source_type = tensor<4x16xbf16>} : memref<4x16xf8E4M3FN>
  return
}

// -----

func.func @view_count() {
  %b = g3rt.buffer "arena" : memref<4xf32>
  // expected-error @+1 {{must keep the element type and count}}
  %v = g3rt.view %b : memref<4xf32> to memref<3xf32>
  return
}

// -----

func.func @launch_without_outputs() {
  %b = g3rt.buffer "arena" : memref<4xf32>
  // expected-error @+1 {{writes no buffer}}
  "g3rt.launch"(%b) <{kernel = "copy", attrs = {}, operandSegmentSizes = array<i32: 1, 0>}> : (memref<4xf32>) -> ()
  return
}
