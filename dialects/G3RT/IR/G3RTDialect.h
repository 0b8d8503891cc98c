//===- G3RTDialect.h - the lowered g3rt dialect -----------------*- C++ -*-===//
//
// Declares the `g3rt` dialect and its ops (G3RTDialect.td).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_DIALECTS_G3RT_IR_G3RTDIALECT_H
#define G3MOE_DIALECTS_G3RT_IR_G3RTDIALECT_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "dialects/G3RT/IR/G3RTDialect.h.inc"

#define GET_OP_CLASSES
#include "dialects/G3RT/IR/G3RT.h.inc"

namespace g3moe::lowered {
/// Buffer kinds, as `g3rt.buffer` spells them.
inline constexpr llvm::StringLiteral kArena = "arena";
/// Host memory that --g3rt-offload-to-host moves device buffers to (pinned on
/// the GPU); planned like the arena, in a host arena of its own.
inline constexpr llvm::StringLiteral kHost = "host";
/// True for the kinds the memory planner places at an offset: arena, host.
bool isPlannedKind(llvm::StringRef kind);
/// True for the kinds the runtime keeps across calls and binds by name.
bool isPersistentKind(llvm::StringRef kind);
/// The buffer a (chain of) `g3rt.view` ends at.
BufferOp rootBuffer(mlir::Value buffer);
/// A derived `param` buffer's `derivation` values, in the order of step.fbs's
/// Derivation enum: e4m3 values or scales of the source's rows, then of its
/// transpose's rows.
inline constexpr llvm::StringLiteral kDerivations[] = {"e4m3", "e4m3_scales", "e4m3_transposed",
                                                       "e4m3_transposed_scales"};
/// The derivation of the values or the scales, of the rows or the transpose.
inline llvm::StringRef derivationName(bool transposed, bool scales) {
  return kDerivations[2 * int(transposed) + int(scales)];
}
} // namespace g3moe::lowered

#endif // G3MOE_DIALECTS_G3RT_IR_G3RTDIALECT_H
