// --g3rt-plan-memory: buffers with disjoint live ranges share bytes, live ones
// never do, outputs live to the end, views keep their root alive.
// RUN: g3moe-opt %s --g3rt-plan-memory="alignment=64" | FileCheck %s

// CHECK: module attributes {g3rt.arena_alignment = 64 : i64, g3rt.arena_bytes = 1536 : i64}
// CHECK-LABEL: func.func @chain() attributes {g3rt.arena_bytes = 1536 : i64}
func.func @chain() {
  %in = g3rt.buffer "input" {name = "x"} : memref<256xf32>
  // a (1 KiB) is live over launches 0-1, b (512 B) over 1-2, c (512 B) over
  // 2-3, d (512 B) over 3 to the end: c and d reuse a's bytes, never b's
  // while b is live, and never each other's.
  // CHECK: %[[A:.*]] = g3rt.buffer "arena" {offset = 0 : i64} : memref<256xf32>
  %a = g3rt.buffer "arena" : memref<256xf32>
  // CHECK: %[[B:.*]] = g3rt.buffer "arena" {offset = 1024 : i64} : memref<128xf32>
  %b = g3rt.buffer "arena" : memref<128xf32>
  // CHECK: %[[C:.*]] = g3rt.buffer "arena" {offset = 0 : i64} : memref<128xf32>
  %c = g3rt.buffer "arena" : memref<128xf32>
  // CHECK: %[[D:.*]] = g3rt.buffer "arena" {offset = 512 : i64} : memref<2x64xf32>
  %d = g3rt.buffer "arena" : memref<2x64xf32>
  g3rt.launch "copy" ins(%in : memref<256xf32>) outs(%a : memref<256xf32>) {attrs = {}}
  %av = g3rt.view %a : memref<256xf32> to memref<2x128xf32>
  g3rt.launch "linear_half" ins(%av : memref<2x128xf32>) outs(%b : memref<128xf32>) {attrs = {}}
  g3rt.launch "copy" ins(%b : memref<128xf32>) outs(%c : memref<128xf32>) {attrs = {}}
  %dv = g3rt.view %d : memref<2x64xf32> to memref<128xf32>
  g3rt.launch "copy" ins(%c : memref<128xf32>) outs(%dv : memref<128xf32>) {attrs = {}}
  g3rt.output "result" %d : memref<2x64xf32>
  return
}
