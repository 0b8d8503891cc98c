// --g3rt-offload-to-host: a buffer idle between two uses waits in host memory
// for the gap; the uses after it read the copy brought back, through views
// made anew; buffers named by outputs, too small or with too short a gap stay.
// RUN: g3moe-opt %s -split-input-file --g3rt-offload-to-host="distance=1 min-bytes=1024" | FileCheck %s
// RUN: g3moe-opt %s -split-input-file --g3rt-offload-to-host="distance=1 min-bytes=1024" --g3rt-plan-memory="alignment=64" | FileCheck %s --check-prefix=PLAN
// RUN: g3moe-opt %s -split-input-file --g3rt-offload-to-host="count=0" | FileCheck %s --check-prefix=NONE

// CHECK-LABEL: func.func @gap
// PLAN: module attributes {{.*}}g3rt.host_bytes = 1024 : i64
// PLAN-LABEL: func.func @gap() attributes {{{.*}}g3rt.host_bytes = 1024 : i64}
// NONE-NOT: copy_to_host
func.func @gap() {
  %in = g3rt.buffer "input" {name = "x"} : memref<256xf32>
  // CHECK: %[[X:.*]] = g3rt.buffer "arena" : memref<256xf32>
  // CHECK-NEXT: %[[H:.*]] = g3rt.buffer "host" : memref<256xf32>
  // CHECK-NEXT: %[[R:.*]] = g3rt.buffer "arena" : memref<256xf32>
  // CHECK-NEXT: %[[RV:.*]] = g3rt.view %[[R]] : memref<256xf32> to memref<2x128xf32>
  // The device bytes are free during the gap: the restored buffer may take
  // the moved one's.
  // PLAN: g3rt.buffer "arena" {offset = [[OFF:[0-9]+]] : i64} : memref<256xf32>
  // PLAN-NEXT: g3rt.buffer "host" {offset = 0 : i64} : memref<256xf32>
  // PLAN-NEXT: g3rt.buffer "arena" {offset = [[OFF]] : i64} : memref<256xf32>
  %x = g3rt.buffer "arena" : memref<256xf32>
  // Too small to move (512 bytes), though idle as long.
  %small = g3rt.buffer "arena" : memref<128xf32>
  %t = g3rt.buffer "arena" : memref<256xf32>
  %out = g3rt.buffer "arena" : memref<256xf32>
  // CHECK: g3rt.launch "copy" ins(%{{.*}} : memref<256xf32>) outs(%[[X]] : memref<256xf32>)
  // CHECK-NEXT: g3rt.launch "copy_to_host" ins(%[[X]] : memref<256xf32>) outs(%[[H]] : memref<256xf32>) {attrs = {copy = 0 : i64}}
  g3rt.launch "copy" ins(%in : memref<256xf32>) outs(%x : memref<256xf32>) {attrs = {}}
  g3rt.launch "copy" ins(%in : memref<256xf32>) outs(%small : memref<128xf32>) {attrs = {}}
  // The last use before the gap; the copy is waited for after it.
  // CHECK: g3rt.launch "add" ins(%[[X]], %[[X]] : memref<256xf32>, memref<256xf32>) outs(%[[T:.*]] : memref<256xf32>)
  // CHECK-NEXT: g3rt.launch "wait_copy" ins(%[[X]] : memref<256xf32>) outs(%[[H]] : memref<256xf32>) {attrs = {copy = 0 : i64}}
  g3rt.launch "add" ins(%x, %x : memref<256xf32>, memref<256xf32>) outs(%t : memref<256xf32>) {attrs = {}}
  g3rt.launch "copy" ins(%t : memref<256xf32>) outs(%t : memref<256xf32>) {attrs = {}}
  g3rt.launch "copy" ins(%t : memref<256xf32>) outs(%t : memref<256xf32>) {attrs = {}}
  g3rt.launch "copy" ins(%t : memref<256xf32>) outs(%t : memref<256xf32>) {attrs = {}}
  g3rt.launch "copy" ins(%t : memref<256xf32>) outs(%t : memref<256xf32>) {attrs = {}}
  // CHECK: g3rt.launch "copy_to_device" ins(%[[H]] : memref<256xf32>) outs(%[[R]] : memref<256xf32>) {attrs = {copy = 1 : i64}}
  // CHECK-NEXT: g3rt.launch "copy"
  // CHECK-NEXT: g3rt.launch "wait_copy" ins(%[[H]] : memref<256xf32>) outs(%[[R]] : memref<256xf32>) {attrs = {copy = 1 : i64}}
  g3rt.launch "copy" ins(%t : memref<256xf32>) outs(%t : memref<256xf32>) {attrs = {}}
  g3rt.launch "copy" ins(%t : memref<256xf32>) outs(%t : memref<256xf32>) {attrs = {}}
  // CHECK-NEXT: g3rt.launch "linear_half" ins(%[[RV]] : memref<2x128xf32>)
  %xv = g3rt.view %x : memref<256xf32> to memref<2x128xf32>
  g3rt.launch "linear_half" ins(%xv : memref<2x128xf32>) outs(%t : memref<256xf32>) {attrs = {}}
  // CHECK-NEXT: g3rt.launch "add" ins(%[[R]], %[[T]] : memref<256xf32>, memref<256xf32>) outs(%{{.*}} : memref<256xf32>)
  g3rt.launch "add" ins(%x, %t : memref<256xf32>, memref<256xf32>) outs(%out : memref<256xf32>) {attrs = {}}
  g3rt.launch "copy" ins(%small : memref<128xf32>) outs(%small : memref<128xf32>) {attrs = {}}
  // CHECK-NOT: copy_to_host
  g3rt.output "result" %out : memref<256xf32>
  return
}

// -----

// A gap too short for the copies: nothing moves.
// CHECK-LABEL: func.func @short
// CHECK-NOT: copy_to_host
func.func @short() {
  %in = g3rt.buffer "input" {name = "x"} : memref<256xf32>
  %x = g3rt.buffer "arena" : memref<256xf32>
  %t = g3rt.buffer "arena" : memref<256xf32>
  g3rt.launch "copy" ins(%in : memref<256xf32>) outs(%x : memref<256xf32>) {attrs = {}}
  g3rt.launch "copy" ins(%in : memref<256xf32>) outs(%t : memref<256xf32>) {attrs = {}}
  g3rt.launch "copy" ins(%t : memref<256xf32>) outs(%t : memref<256xf32>) {attrs = {}}
  g3rt.launch "add" ins(%x, %t : memref<256xf32>, memref<256xf32>) outs(%t : memref<256xf32>) {attrs = {}}
  g3rt.output "result" %t : memref<256xf32>
  return
}
