//===- Recompute.cpp - recompute activations in the backward --------------===//
//
// Implements --g3moe-recompute. The forward of @forward_backward runs up to
// the op that defines the loss; everything after it is the backward. A value
// the backward reads keeps its buffer alive from the forward to that read;
// recomputing it right before the read moves the cost from memory to FLOPs.
// For MoE expert MLPs at long context that is the difference between fitting
// and not: their intermediates are [tokens * k, intermediate] per layer.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOERECOMPUTEPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// Ops whose results are cheaper to recompute than to keep: pure, with no
/// state, the random draws included (they are keyed, so a redraw is exact).
bool isRecomputable(Operation *op) {
  return isa<LinearOp, ExpertLinearOp, GeluTanhMulOp, AddOp, MulOp, ScaleOp, ConvertOp, DropoutOp,
             RandomUniformOp, ReshapeOp, ParamOp>(op);
}

std::string scopeOf(Operation *op) {
  Location loc = op->getLoc();
  if (auto fused = dyn_cast<FusedLoc>(loc))
    for (Location l : fused.getLocations())
      if (auto name = dyn_cast<NameLoc>(l))
        return name.getName().str();
  if (auto name = dyn_cast<NameLoc>(loc))
    return name.getName().str();
  return "";
}

struct G3MoERecomputePass : g3moe::impl::G3MoERecomputePassBase<G3MoERecomputePass> {
  using Base::Base;

  void runOnOperation() override {
    auto fb = getOperation().lookupSymbol<func::FuncOp>("forward_backward");
    if (!fb)
      return;
    SmallVector<std::string> scopeList(scopes.begin(), scopes.end());
    if (scopeList.empty())
      scopeList.push_back("moe.experts");

    Block &body = fb.getBody().front();
    Value loss = body.getTerminator()->getOperand(0);
    Operation *lossOp = loss.getDefiningOp();
    if (!lossOp)
      return;
    DenseMap<Operation *, unsigned> order;
    unsigned index = 0;
    for (Operation &op : body)
      order[&op] = index++;
    unsigned backwardStart = order[lossOp] + 1;

    auto inScope = [&](Operation *op) {
      if (!op || order.lookup(op) >= backwardStart || !isRecomputable(op))
        return false;
      std::string scope = scopeOf(op);
      return llvm::any_of(scopeList,
                          [&](const std::string &s) { return scope.find(s) != std::string::npos; });
    };

    // One recomputed copy per value, made before the first backward op that
    // reads it; later readers share it.
    IRMapping copies;
    OpBuilder b(fb.getContext());
    std::function<Value(Value)> recompute = [&](Value v) -> Value {
      if (Value done = copies.lookupOrNull(v))
        return done;
      Operation *def = v.getDefiningOp();
      for (Value operand : def->getOperands())
        if (inScope(operand.getDefiningOp()))
          recompute(operand);
      Operation *clone = b.clone(*def, copies);
      for (auto [orig, copy] : llvm::zip(def->getResults(), clone->getResults()))
        copies.map(orig, copy);
      return copies.lookup(v);
    };

    SmallVector<Operation *> backwardOps;
    for (Operation &op : body)
      if (order[&op] >= backwardStart)
        backwardOps.push_back(&op);
    for (Operation *user : backwardOps) {
      for (OpOperand &use : user->getOpOperands()) {
        Operation *def = use.get().getDefiningOp();
        if (!inScope(def))
          continue;
        b.setInsertionPoint(user);
        use.set(recompute(use.get()));
      }
    }
  }
};

} // namespace
