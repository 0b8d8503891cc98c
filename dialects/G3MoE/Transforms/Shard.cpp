//===- Shard.cpp - ZeRO sharding of the training step ---------------------===//
//
// Implements --g3moe-shard. ZeRO stage 1 divides the Adam moments (two fp32
// copies of every trainable tensor) among the data-parallel processes: each
// tensor gets one owner, whose process alone updates it, and the updated
// parameters travel from their owners to everyone (one broadcast per owner).
// Stage 2 divides the gradient accumulators the same way: a micro-batch's
// gradients are summed into their owners' accumulators. Stage 3 divides the
// trainable parameters too: only the owner keeps a parameter between steps,
// and every other function receives it from the owner where it reads it (the
// backward again, so that the forward's copy dies in the forward). The
// ownership is fixed here, at compile time, so that the memory report and
// the runtime's allocation agree (the runtime derives it from the `owner`
// attributes and broadcast roots of the instructions that touch each
// tensor).
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"

#include <algorithm>

namespace g3moe {
#define GEN_PASS_DEF_G3MOESHARDPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// The owner of each tensor (of `elements` elements each, in the order of
/// the updates): largest first, to the least-loaded process.
SmallVector<int64_t> assignOwners(ArrayRef<int64_t> elements, int64_t processes) {
  SmallVector<unsigned> order(elements.size());
  for (unsigned i = 0; i < order.size(); ++i)
    order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](unsigned a, unsigned b) { return elements[a] > elements[b]; });
  SmallVector<int64_t> load(processes, 0), owner(elements.size());
  for (unsigned i : order) {
    int64_t least = std::min_element(load.begin(), load.end()) - load.begin();
    owner[i] = least;
    load[least] += elements[i];
  }
  return owner;
}

struct G3MoEShardPass : g3moe::impl::G3MoEShardPassBase<G3MoEShardPass> {
  using Base::Base;

  void runOnOperation() override {
    if (stage == 0)
      return;
    ModuleOp module = getOperation();
    if (stage < 0 || stage > 3 || processes < 1) {
      module.emitError("g3moe-shard: needs stage 0 to 3 and processes >= 1, got stage ")
          << int64_t(stage) << " and processes " << int64_t(processes);
      return signalPassFailure();
    }
    auto step = module.lookupSymbol<func::FuncOp>("optimizer_step");
    if (!step) {
      module.emitError("g3moe-shard: no @optimizer_step; run --g3moe-optimizer first");
      return signalPassFailure();
    }
    SmallVector<AdamWOp> updates(step.getOps<AdamWOp>());
    SmallVector<int64_t> elements;
    for (AdamWOp op : updates) {
      if (op.getOwner()) {
        op.emitOpError("g3moe-shard: the optimizer step is sharded already");
        return signalPassFailure();
      }
      for (unsigned i = 0; i < op.getNumTensors(); ++i)
        elements.push_back(cast<RankedTensorType>(op.getStateOf(0, i).getType()).getNumElements());
    }
    if (elements.empty())
      return;
    SmallVector<int64_t> owner = assignOwners(elements, processes);

    DenseMap<StringAttr, int64_t> owners; // by parameter name
    SmallVector<SmallVector<Value>> updated = splitUpdates(step, updates, owner, owners);
    if (stage < 3)
      broadcastUpdated(step, updated);
    if (stage >= 2) {
      reduceToOwners(module, owners);
      if (failed(normOfShards(step, owners)))
        return signalPassFailure();
    }
    if (stage == 3)
      gatherParameters(module, step, owners);
  }

  /// One update per (original update, owner), each tensor's results in
  /// place of the original's; `owner` is per tensor, in the updates' order.
  /// Returns each process's new parameters and records the owner of each
  /// named parameter in `owners`.
  SmallVector<SmallVector<Value>> splitUpdates(func::FuncOp step, ArrayRef<AdamWOp> updates,
                                               ArrayRef<int64_t> owner,
                                               DenseMap<StringAttr, int64_t> &owners) {
    OpBuilder b(step.getContext());
    SmallVector<SmallVector<Value>> updated(processes);
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
        for (auto [k, i] : llvm::enumerate(members)) {
          for (unsigned role = 0; role < 3; ++role)
            op.getNewStateOf(role, i).replaceAllUsesWith(part.getNewStateOf(role, unsigned(k)));
          updated[rank].push_back(part.getNewStateOf(0, unsigned(k)));
          if (auto name = nameOf(step, op.getStateOf(0, i), "g3moe.param"))
            owners[name] = rank;
        }
      }
      first += n;
    }
    for (AdamWOp op : updates)
      op.erase();
    return updated;
  }

  /// One broadcast per owner of the parameters it updated, before the
  /// results.
  void broadcastUpdated(func::FuncOp step, ArrayRef<SmallVector<Value>> updated) {
    OpBuilder b(step.getBody().front().getTerminator());
    for (auto [rank, sent] : llvm::enumerate(updated)) {
      if (sent.empty())
        continue;
      auto sending = BroadcastOp::create(b, step.getLoc(), ValueRange(sent).getTypes(), sent,
                                         b.getI64IntegerAttr(int64_t(rank)));
      for (auto [param, received] : llvm::zip(sent, sending.getResults()))
        Value(param).replaceAllUsesExcept(received, sending);
    }
  }

  /// Stage 3: each read of an owned parameter outside the optimizer step
  /// (a `g3moe.param`) goes through a broadcast from its owner, right after
  /// it; @forward_backward's backward receives each again.
  void gatherParameters(ModuleOp module, func::FuncOp step,
                        const DenseMap<StringAttr, int64_t> &owners) {
    OpBuilder b(module.getContext());
    for (auto func : module.getOps<func::FuncOp>()) {
      if (func == step)
        continue;
      SmallVector<ParamOp> params(func.getOps<ParamOp>());
      SmallVector<BroadcastOp> received;
      for (ParamOp param : params) {
        auto it = owners.find(param.getNameAttr());
        if (it == owners.end())
          continue;
        b.setInsertionPointAfter(param);
        received.push_back(BroadcastOp::create(b, param.getLoc(), TypeRange{param.getType()},
                                               ValueRange{param.getResult()},
                                               b.getI64IntegerAttr(it->second)));
        param.getResult().replaceAllUsesExcept(received.back().getResult(0), received.back());
      }
      if (func.getSymName() == "forward_backward")
        receiveAgainInBackward(func, received);
    }
  }

  /// The backward (what follows the op defining the loss, as
  /// --g3moe-recompute divides it) receives each parameter again, with the
  /// converts and reshapes the forward made of it, before its first reader
  /// there: the forward's copies then die in the forward instead of all
  /// living until the backward reaches their layers.
  static void receiveAgainInBackward(func::FuncOp fb, ArrayRef<BroadcastOp> received) {
    Block &body = fb.getBody().front();
    Operation *lossOp = lossBoundary(fb);
    if (!lossOp)
      return;
    DenseMap<Operation *, unsigned> order = opOrder(body);
    const unsigned backwardStart = order[lossOp] + 1;
    OpBuilder b(fb.getContext());
    for (BroadcastOp receipt : received) {
      // The receipt and what the forward derives from it alone, in order.
      SmallVector<Operation *> chain = {receipt};
      for (size_t i = 0; i < chain.size(); ++i)
        for (Operation *user : chain[i]->getUsers())
          if (isa<ConvertOp, ReshapeOp>(user) && order.lookup(user) < backwardStart &&
              !llvm::is_contained(chain, user))
            chain.push_back(user);
      SmallVector<OpOperand *> late;
      Operation *first = nullptr;
      for (Operation *op : chain)
        for (OpOperand &use : op->getResult(0).getUses()) {
          Operation *user = body.findAncestorOpInBlock(*use.getOwner());
          if (!user || order.lookup(user) < backwardStart || user == body.getTerminator())
            continue;
          late.push_back(&use);
          if (!first || order.lookup(user) < order.lookup(first))
            first = user;
        }
      if (late.empty())
        continue;
      IRMapping copies;
      b.setInsertionPoint(first);
      for (Operation *op : chain)
        b.clone(*op, copies);
      for (OpOperand *use : late)
        use->set(copies.lookup(use->get()));
    }
  }

  /// The name tag `key` of `value`, a block argument of `func`; null else.
  static StringAttr nameOf(func::FuncOp func, Value value, StringRef key) {
    auto arg = dyn_cast<BlockArgument>(value);
    if (!arg || arg.getOwner()->getParentOp() != func)
      return {};
    return func.getArgAttrOfType<StringAttr>(arg.getArgNumber(), key);
  }

  /// Stage 2: each micro-batch's gradient is summed over the processes into
  /// its owner's accumulator (one reduce per owner, before the adds), and
  /// only the owner adds (and keeps an accumulator). Nothing to do in a
  /// module without @train_micro_step.
  void reduceToOwners(ModuleOp module, const DenseMap<StringAttr, int64_t> &owners) {
    auto micro = module.lookupSymbol<func::FuncOp>("train_micro_step");
    if (!micro)
      return;
    SmallVector<SmallVector<AddOp>> adds(processes);
    for (AddOp add : micro.getOps<AddOp>())
      if (StringAttr name = nameOf(micro, add.getLhs(), "g3moe.grad_acc"))
        if (auto it = owners.find(name); it != owners.end())
          adds[it->second].push_back(add);
    OpBuilder b(micro.getContext());
    for (int64_t rank = 0; rank < processes; ++rank) {
      if (adds[rank].empty())
        continue;
      SmallVector<Value> grads;
      for (AddOp add : adds[rank])
        grads.push_back(add.getRhs());
      b.setInsertionPoint(adds[rank].front());
      auto summed = ReduceOp::create(b, micro.getLoc(), ValueRange(grads).getTypes(), grads,
                                     b.getI64IntegerAttr(rank));
      for (auto [add, sum] : llvm::zip(adds[rank], summed.getResults())) {
        add.getRhsMutable().assign(sum);
        add->setAttr("owner", b.getI64IntegerAttr(rank));
      }
    }
  }

  /// Stage 2: each owner takes the norm of the gradients it holds, the
  /// norms go to every process, and their norm is the global norm.
  LogicalResult normOfShards(func::FuncOp step, const DenseMap<StringAttr, int64_t> &owners) {
    SmallVector<GlobalNormOp> norms(step.getOps<GlobalNormOp>());
    OpBuilder b(step.getContext());
    for (GlobalNormOp norm : norms) {
      SmallVector<SmallVector<Value>> parts(processes);
      for (Value g : norm.getInputs()) {
        auto it = owners.find(nameOf(step, g, "g3moe.grad_acc"));
        if (it == owners.end())
          return norm.emitOpError("g3moe-shard: a gradient of no owned parameter");
        parts[it->second].push_back(g);
      }
      b.setInsertionPoint(norm);
      SmallVector<Value> shares;
      for (int64_t rank = 0; rank < processes; ++rank) {
        if (parts[rank].empty())
          continue;
        auto part = GlobalNormOp::create(b, norm.getLoc(), norm.getType(), parts[rank]);
        part->setAttr("owner", b.getI64IntegerAttr(rank));
        shares.push_back(BroadcastOp::create(b, norm.getLoc(), TypeRange{norm.getType()},
                                             ValueRange{part.getResult()},
                                             b.getI64IntegerAttr(rank))
                             .getResult(0));
      }
      Value whole = GlobalNormOp::create(b, norm.getLoc(), norm.getType(), shares);
      norm.getResult().replaceAllUsesWith(whole);
      norm.erase();
    }
    return success();
  }
};

} // namespace
