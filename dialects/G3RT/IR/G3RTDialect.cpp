//===- G3RTDialect.cpp - the lowered g3rt dialect -------------------------===//

#include "dialects/G3RT/IR/G3RTDialect.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/StringSwitch.h"

using namespace mlir;
using namespace g3moe::lowered;

#include "dialects/G3RT/IR/G3RTDialect.cpp.inc"

void G3RTDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "dialects/G3RT/IR/G3RT.cpp.inc"
      >();
}

bool g3moe::lowered::isPersistentKind(StringRef kind) {
  return llvm::StringSwitch<bool>(kind)
      .Cases({"param", "grad_acc", "exp_avg", "exp_avg_sq", "input"}, true)
      .Default(false);
}

bool g3moe::lowered::isPlannedKind(StringRef kind) { return kind == kArena || kind == kHost; }

BufferOp g3moe::lowered::rootBuffer(Value buffer) {
  while (auto view = buffer.getDefiningOp<ViewOp>())
    buffer = view.getSource();
  return buffer.getDefiningOp<BufferOp>();
}

LogicalResult BufferOp::verify() {
  StringRef kind = getKind();
  if (!isPlannedKind(kind) && !isPersistentKind(kind))
    return emitOpError("unknown buffer kind '")
           << kind << "' (arena, host, param, grad_acc, exp_avg, exp_avg_sq, input)";
  if (isPersistentKind(kind) && (!getName() || getName()->empty()))
    return emitOpError("a ") << kind << " buffer needs a name";
  const int derivedAttrs = bool(getDerivedFrom()) + bool(getDerivation()) + bool(getSourceType());
  if (derivedAttrs && (kind != "param" || derivedAttrs != 3))
    return emitOpError("derived_from, derivation and source_type go together, on a param buffer");
  if (getDerivation() && !llvm::is_contained(kDerivations, *getDerivation()))
    return emitOpError("unknown derivation '") << *getDerivation() << "'";
  if (getOffset()) {
    if (!isPlannedKind(kind))
      return emitOpError("only arena and host buffers have an offset");
    if (getOffsetAttr().getInt() < 0)
      return emitOpError("offset must be non-negative");
  }
  return success();
}

LogicalResult ViewOp::verify() {
  auto in = getSource().getType(), out = getType();
  if (in.getElementType() != out.getElementType() || in.getNumElements() != out.getNumElements())
    return emitOpError("must keep the element type and count, got ") << in << " to " << out;
  return success();
}

LogicalResult LaunchOp::verify() {
  if (getKernel().empty())
    return emitOpError("needs a kernel name");
  if (getOuts().empty())
    return emitOpError("writes no buffer");
  for (Value out : getOuts())
    if (!rootBuffer(out))
      return emitOpError("outputs must be g3rt.buffer values or views of them");
  return success();
}

#define GET_OP_CLASSES
#include "dialects/G3RT/IR/G3RT.cpp.inc"
