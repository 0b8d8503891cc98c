//===- ModelBuilder.h - config to g3moe forward graph -----------*- C++ -*-===//
//
// Emits the forward + loss graph of one micro-batch of a G3MoE / Gemma-3 model
// in the g3moe dialect. This is the contract between the frontend and the
// compiler passes (docs/architecture.md).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_FRONTEND_MODELBUILDER_H
#define G3MOE_FRONTEND_MODELBUILDER_H

#include "frontend/Config.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"

namespace g3moe::frontend {

/// What kind of step to build.
struct BuildOptions {
  /// Training mode: input jitter and the routers' random draws are on, so the
  /// step takes a random key. Eval mode is deterministic.
  bool training = true;
  /// Build every weight and activation in fp32 instead of bf16: the exact
  /// reference used by gradient checks and numerical comparisons.
  bool fp32 = false;
  /// Also build `@eval_forward`: the deterministic evaluation forward, which
  /// returns the loss and the counts of mean token accuracy
  /// (`correct_tokens`, `counted_tokens`).
  bool withEval = false;
  /// Also build `@eval_logits`: the evaluation forward returning the logits
  /// [B, T, V] (output `logits`), for comparisons with other implementations.
  bool withLogits = false;
};

/// Name of the step function in the module.
inline constexpr llvm::StringLiteral kStepFunctionName = "forward";

/// Builds a module holding `func.func @forward`:
///
///   (input_ids [B,T] i32, targets [B,T] i32, positions [B,T] i32,
///    segment_ids [B,T] i32, num_items f32 [, rng_key 2 x i64]) -> loss f32
///
/// `targets` are the labels shifted left by one with -100 where no loss is
/// taken; `segment_ids` number the packed documents of a row from 1, with 0
/// for padding; `num_items` is the label count of the accumulation window.
/// Each argument carries `g3moe.input = "<name>"`. Weights are `g3moe.param`
/// ops named after the HF checkpoint tensors. The module carries the resolved
/// configuration as the `g3moe.model` and `g3moe.training` attributes.
/// The caller verifies the result.
mlir::OwningOpRef<mlir::ModuleOp> buildStepModule(mlir::MLIRContext &context,
                                                  const CompileConfig &config,
                                                  const BuildOptions &options);

} // namespace g3moe::frontend

#endif // G3MOE_FRONTEND_MODELBUILDER_H
