//===- PrefetchParameters.cpp - receive each parameter one ahead ----------===//
//
// Implements --g3moe-prefetch-parameters. At ZeRO stage 3 every function
// receives each trained parameter from its owner (a `g3moe.broadcast` of a
// `g3moe.param`) right where it first reads it, so that the exchange stands
// between the kernels before and after it. Moved up to the first reader of
// the receipt before it, each receipt is in flight while that reader and
// everything up to its own reader compute (the CPU backend runs collectives
// on a thread of their own, in program order); it costs holding one more
// parameter at a time.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOEPREFETCHPARAMETERSPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// The receipt of a parameter: a broadcast of one `g3moe.param` of its block.
ParamOp receivedParam(BroadcastOp op) {
  if (op->getNumOperands() != 1)
    return nullptr;
  auto param = op->getOperand(0).getDefiningOp<ParamOp>();
  return param && param->getBlock() == op->getBlock() ? param : nullptr;
}

/// The first op of `op`'s block that uses one of its results (null if none).
Operation *firstReader(Operation *op) {
  Operation *first = nullptr;
  for (Operation *user : op->getUsers()) {
    Operation *inBlock = op->getBlock()->findAncestorOpInBlock(*user);
    if (inBlock && (!first || inBlock->isBeforeInBlock(first)))
      first = inBlock;
  }
  return first;
}

struct G3MoEPrefetchParametersPass
    : g3moe::impl::G3MoEPrefetchParametersPassBase<G3MoEPrefetchParametersPass> {
  void runOnOperation() override {
    for (auto func : getOperation().getOps<func::FuncOp>()) {
      if (func.isExternal())
        continue;
      Operation *ahead = nullptr; // the first reader of the previous receipt
      for (Operation &op : llvm::make_early_inc_range(func.getBody().front())) {
        auto receipt = dyn_cast<BroadcastOp>(op);
        ParamOp param = receipt ? receivedParam(receipt) : nullptr;
        if (!param)
          continue;
        if (ahead && ahead->isBeforeInBlock(receipt)) {
          if (ahead->isBeforeInBlock(param))
            param->moveBefore(ahead);
          receipt->moveBefore(ahead);
        }
        ahead = firstReader(receipt);
      }
    }
  }
};

} // namespace
