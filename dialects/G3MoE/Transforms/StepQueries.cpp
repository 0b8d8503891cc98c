//===- StepQueries.cpp - what passes read off a step module ---------------===//
//
// Small lookups several passes share: the entry point's named inputs, the
// micro-batch's token count, where the backward starts, the order of a
// block's ops, and the first random stream no draw uses.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

using namespace mlir;

BlockArgument g3moe::findInput(func::FuncOp func, StringRef name) {
  for (BlockArgument arg : func.getArguments())
    if (auto input = func.getArgAttrOfType<StringAttr>(arg.getArgNumber(), "g3moe.input");
        input && input.getValue() == name)
      return arg;
  return BlockArgument();
}

std::optional<int64_t> g3moe::inputTokenCount(func::FuncOp func) {
  if (BlockArgument ids = findInput(func, "input_ids"))
    return cast<RankedTensorType>(ids.getType()).getNumElements();
  return std::nullopt;
}

Operation *g3moe::lossBoundary(func::FuncOp fb) {
  Block &body = fb.getBody().front();
  Operation *loss = body.getTerminator()->getOperand(0).getDefiningOp();
  return loss && loss->getBlock() == &body ? loss : nullptr;
}

DenseMap<Operation *, unsigned> g3moe::opOrder(Block &block) {
  DenseMap<Operation *, unsigned> order;
  unsigned index = 0;
  for (Operation &op : block)
    order[&op] = index++;
  return order;
}

int64_t g3moe::nextFreeStream(ModuleOp module) {
  int64_t next = 0;
  module.walk(
      [&](RandomUniformOp op) { next = std::max<int64_t>(next, op.getStreamAttr().getInt() + 1); });
  return next;
}
