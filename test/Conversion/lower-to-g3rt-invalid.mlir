// --g3moe-lower-to-g3rt refuses an op it has no kernel for: g3moe.all_to_all
// is declared for expert parallelism, which is not built.
// RUN: g3moe-opt %s --g3moe-lower-to-g3rt --verify-diagnostics

func.func @experts(%x: tensor<4x8xf32> {g3moe.input = "x"}) -> (tensor<4x8xf32> {g3moe.output = "y"}) {
  // expected-error @+1 {{g3moe-lower-to-g3rt: no kernel yet (expert parallelism is not built)}}
  %y = g3moe.all_to_all %x {processes = 2 : i64} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}
