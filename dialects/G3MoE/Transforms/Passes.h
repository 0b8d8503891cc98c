//===- Passes.h - g3moe training passes -------------------------*- C++ -*-===//
//
// Declarations and registration of the passes in Passes.td.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_DIALECTS_G3MOE_TRANSFORMS_PASSES_H
#define G3MOE_DIALECTS_G3MOE_TRANSFORMS_PASSES_H

#include "dialects/G3MoE/IR/G3MoEDialect.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Pass/Pass.h"
#include "llvm/ADT/DenseMap.h"

#include <optional>

namespace g3moe {

#define GEN_PASS_DECL
#include "dialects/G3MoE/Transforms/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "dialects/G3MoE/Transforms/Passes.h.inc"

/// The rewrites of --g3moe-fuse-lm-head-loss.
void populateFuseLMHeadLossPatterns(mlir::RewritePatternSet &patterns);

/// The pattern of --g3moe-fuse-linear-add.
void populateFuseLinearAddPatterns(mlir::RewritePatternSet &patterns);

/// The rewrites of --g3moe-fuse-norms.
void populateFuseNormsPatterns(mlir::RewritePatternSet &patterns);

/// --g3moe-fp8-base's rewrites: products of frozen weights to e4m3 ones.
void populateFp8BasePatterns(mlir::RewritePatternSet &patterns);

/// The rewrites of --g3moe-fuse-dropout: keyed_dropout from a draw, and
/// with `intoProducts` the keyed_dropouts moved into the LoRA products.
void populateFuseDropoutPatterns(mlir::RewritePatternSet &patterns, bool intoProducts = false);

/// The argument of `func` marked `g3moe.input = name` ("rng_key",
/// "input_ids", ...), or null.
mlir::BlockArgument findInput(mlir::func::FuncOp func, llvm::StringRef name);

/// The tokens of one micro-batch of entry point `func` (the elements of its
/// `g3moe.input = "input_ids"` argument), which --g3moe-tile-tokens cuts
/// into chunks; none for a function without that argument.
std::optional<int64_t> inputTokenCount(mlir::func::FuncOp func);

/// The op of `fb`'s body that defines its loss (its first result), or null:
/// the forward of @forward_backward ends there, the backward follows it.
mlir::Operation *lossBoundary(mlir::func::FuncOp fb);

/// Each op of `block` by its position, first 0: which of two ops comes first.
llvm::DenseMap<mlir::Operation *, unsigned> opOrder(mlir::Block &block);

/// A random stream no draw of `module` uses yet: one past the largest.
int64_t nextFreeStream(mlir::ModuleOp module);

} // namespace g3moe

#endif // G3MOE_DIALECTS_G3MOE_TRANSFORMS_PASSES_H
