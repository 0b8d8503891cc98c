//===- Shard.cpp - ZeRO sharding of the optimizer step --------------------===//
//
// Implements --g3moe-shard. ZeRO stage 1 divides the Adam moments (two fp32
// copies of every trainable tensor) among the data-parallel processes: each
// tensor gets one owner, whose process alone updates it, and the updated
// parameters travel from their owners to everyone (one broadcast each). The
// ownership is fixed here, at compile time, so that the memory report and
// the runtime's allocation agree (the runtime reads it from the `owner` of
// the update that takes each moment).
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

#include <algorithm>

namespace g3moe {
#define GEN_PASS_DEF_G3MOESHARDPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// Tensor `index` of update `op`.
struct Slot {
  AdamWOp op;
  unsigned index;
  int64_t elements;
};

/// Each slot's owner: largest first, to the least-loaded process.
SmallVector<int64_t> assignOwners(ArrayRef<Slot> slots, int64_t processes) {
  SmallVector<unsigned> order(slots.size());
  for (unsigned i = 0; i < order.size(); ++i)
    order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](unsigned a, unsigned b) { return slots[a].elements > slots[b].elements; });
  SmallVector<int64_t> load(processes, 0), owner(slots.size());
  for (unsigned i : order) {
    int64_t least = std::min_element(load.begin(), load.end()) - load.begin();
    owner[i] = least;
    load[least] += slots[i].elements;
  }
  return owner;
}

struct G3MoEShardPass : g3moe::impl::G3MoEShardPassBase<G3MoEShardPass> {
  using Base::Base;

  void runOnOperation() override {
    if (stage == 0)
      return;
    ModuleOp module = getOperation();
    if (stage != 1 || processes < 1) {
      module.emitError("g3moe-shard: needs stage 0 or 1 (ZeRO stages 2 and 3 are not built) and "
                       "processes >= 1, got stage ")
          << int64_t(stage) << " and processes " << int64_t(processes);
      return signalPassFailure();
    }
    auto step = module.lookupSymbol<func::FuncOp>("optimizer_step");
    if (!step) {
      module.emitError("g3moe-shard: no @optimizer_step; run --g3moe-optimizer first");
      return signalPassFailure();
    }
    SmallVector<AdamWOp> updates(step.getOps<AdamWOp>());
    SmallVector<Slot> slots;
    for (AdamWOp op : updates) {
      if (op.getOwner()) {
        op.emitOpError("g3moe-shard: the optimizer step is sharded already");
        return signalPassFailure();
      }
      for (unsigned i = 0; i < op.getNumTensors(); ++i)
        slots.push_back(
            {op, i, cast<RankedTensorType>(op.getStateOf(0, i).getType()).getNumElements()});
    }
    if (slots.empty())
      return;
    SmallVector<int64_t> owner = assignOwners(slots, processes);

    // One update per (original update, owner), each tensor's results in
    // place of the original's.
    OpBuilder b(step.getContext());
    SmallVector<Value> newParams;
    SmallVector<int64_t> paramOwners;
    size_t first = 0;
    for (AdamWOp op : updates) {
      unsigned n = op.getNumTensors();
      b.setInsertionPoint(op);
      for (int64_t rank = 0; rank < processes; ++rank) {
        SmallVector<unsigned> members;
        for (unsigned i = 0; i < n; ++i)
          if (owner[first + i] == rank)
            members.push_back(i);
        if (members.empty())
          continue;
        SmallVector<Value> state;
        SmallVector<Type> types;
        for (unsigned role = 0; role < 4; ++role)
          for (unsigned i : members)
            state.push_back(op.getStateOf(role, i));
        for (unsigned role = 0; role < 3; ++role)
          for (unsigned i : members)
            types.push_back(op.getNewStateOf(role, i).getType());
        auto part = AdamWOp::create(b, op.getLoc(), types, state, op.getStep(), op.getLr(),
                                    op.getGradScale(), op.getBeta1Attr(), op.getBeta2Attr(),
                                    op.getEpsilonAttr(), op.getWeightDecayAttr(),
                                    b.getI64IntegerAttr(rank));
        for (auto [k, i] : llvm::enumerate(members))
          for (unsigned role = 0; role < 3; ++role)
            op.getNewStateOf(role, i).replaceAllUsesWith(part.getNewStateOf(role, unsigned(k)));
        for (auto [k, i] : llvm::enumerate(members)) {
          newParams.push_back(part.getNewStateOf(0, unsigned(k)));
          paramOwners.push_back(rank);
        }
      }
      first += n;
    }
    for (AdamWOp op : updates)
      op.erase();

    // One broadcast per owner of what it updated, before the results.
    b.setInsertionPoint(step.getBody().front().getTerminator());
    for (int64_t rank = 0; rank < processes; ++rank) {
      SmallVector<Value> sent;
      for (auto [param, owner] : llvm::zip(newParams, paramOwners))
        if (owner == rank)
          sent.push_back(param);
      if (sent.empty())
        continue;
      auto sending = BroadcastOp::create(b, step.getLoc(), ValueRange(sent).getTypes(), sent,
                                         b.getI64IntegerAttr(rank));
      for (auto [param, received] : llvm::zip(sent, sending.getResults()))
        param.replaceAllUsesExcept(received, sending);
    }
  }
};

} // namespace
