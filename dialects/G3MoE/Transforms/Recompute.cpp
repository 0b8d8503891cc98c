//===- Recompute.cpp - recompute activations in the backward --------------===//
//
// Implements --g3moe-recompute. The forward of @forward_backward runs up to
// the op that defines the loss; everything after it is the backward. A value
// the backward reads keeps its buffer alive from the forward to that read;
// recomputing it right before the read moves the cost from memory to FLOPs.
// For MoE expert MLPs at long context that is the difference between fitting
// and not: their intermediates are [tokens * k, intermediate] per layer.
//
// A checkpoint scope (a decoder layer) goes further: everything the layer
// computes is made again from what enters it, the previous layer's output,
// so that between the forward and the backward only the layer boundaries
// stay alive. A checkpoint may keep its attention: at long context a global
// layer's attention is the one op of the layer whose cost grows with the
// square of the tokens, while its output grows linearly.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOERECOMPUTEPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// Ops whose results are cheaper to recompute than to keep: pure, with no
/// state, the random draws included (they are keyed, so a redraw is exact),
/// and the receipt of a ZeRO-3 parameter from its owner (isReceivedAgain).
bool isRecomputable(Operation *op) {
  return isa<LinearOp, ExpertLinearOp, ScaledLinearOp, ScaledExpertLinearOp, GeluTanhMulOp, AddOp,
             MulOp, ScaleOp, ConvertOp, DropoutOp, KeyedDropoutOp, KeyedJitterOp, DropoutMaskOp,
             RandomUniformOp, ReshapeOp, ParamOp, FrozenE4M3Op, SplitRowsOp, ConcatRowsOp,
             MoEDispatchOp, BroadcastOp>(op);
}

/// A broadcast has effects (it waits for the other processes), but one
/// made again in the backward is made at the same point on every process,
/// which all run the same step: receiving a parameter again then costs a
/// transfer instead of keeping the forward's copy alive until the backward.
bool isReceivedAgain(Operation *op) { return isa<BroadcastOp>(op); }

/// The module paths of `op`'s location: one, or each name of a fused
/// location (a fused op made of ops of different modules).
SmallVector<std::string> scopesOf(Operation *op) {
  SmallVector<std::string> names;
  Location loc = op->getLoc();
  if (auto fused = dyn_cast<FusedLoc>(loc)) {
    for (Location l : fused.getLocations())
      if (auto name = dyn_cast<NameLoc>(l))
        names.push_back(name.getName().str());
  } else if (auto name = dyn_cast<NameLoc>(loc)) {
    names.push_back(name.getName().str());
  }
  return names;
}

/// The recomputation of one @forward_backward.
class Recomputation {
public:
  Recomputation(func::FuncOp fb, Operation *lossOp, ArrayRef<std::string> scopes,
                ArrayRef<std::string> checkpoints, ArrayRef<std::string> keepAttention)
      : scopes(scopes), checkpoints(checkpoints), keepAttention(keepAttention),
        builder(fb.getContext()), order(opOrder(fb.getBody().front())) {
    backwardStart = order[lossOp] + 1;
  }

  void run(Block &body) {
    for (Operation *user : backwardOps(body))
      for (OpOperand &use : user->getOpOperands()) {
        Value v = use.get();
        if (homeOf(v.getDefiningOp()) == 0 && !isBoundaryNorm(v))
          continue;
        builder.setInsertionPoint(user);
        use.set(recompute(v));
      }
  }

private:
  /// Where a forward op belongs: the checkpoint scope it lies in (its index
  /// + 1; any op free of memory effects may then be made again), -1 for a
  /// cheap op of a recompute scope, or 0: kept.
  int homeOf(Operation *op) {
    if (!op || order.lookup(op) >= backwardStart)
      return 0;
    auto [it, inserted] = homes.try_emplace(op, 0);
    if (!inserted)
      return it->second;
    SmallVector<std::string> names = scopesOf(op);
    std::string scope = names.empty() ? "" : names.front();
    if (isa<AddRMSNormOp>(op) && names.size() == 2 &&
        checkpointOf(names[0]) != checkpointOf(names[1]))
      return it->second; // a boundary: see isBoundaryNorm
    if (int c = checkpointOf(scope); c > 0 && (isMemoryEffectFree(op) || isReceivedAgain(op)) &&
                                     op->getNumRegions() == 0 &&
                                     !(isa<AttentionOp>(op) && matchesAny(keepAttention, scope)))
      return it->second = c;
    if (isRecomputable(op) && matchesAny(scopes, scope))
      return it->second = -1;
    return it->second;
  }

  static bool matchesAny(ArrayRef<std::string> substrings, const std::string &scope) {
    return llvm::any_of(substrings,
                        [&](const std::string &s) { return scope.find(s) != std::string::npos; });
  }

  /// The checkpoint scope a module path lies in, as homeOf counts, or 0.
  int checkpointOf(const std::string &scope) const {
    for (auto [i, c] : llvm::enumerate(checkpoints))
      if (scope.find(c) != std::string::npos)
        return int(i) + 1;
    return 0;
  }

  /// Whether `v` is the normalised output of an add_rms_norm that ends one
  /// layer (the residual add) and starts a recomputed one (its input norm):
  /// the sum is the boundary, kept, and the norm is made again from it
  /// (add_rms_norm normalises its rounded sum, so rms_norm of the kept sum
  /// is the same value).
  bool isBoundaryNorm(Value v) {
    auto op = v.getDefiningOp<AddRMSNormOp>();
    if (!op || v != op.getResult() || order.lookup(op) >= backwardStart)
      return false;
    SmallVector<std::string> names = scopesOf(op);
    return names.size() == 2 && checkpointOf(names[1]) > 0 &&
           checkpointOf(names[0]) != checkpointOf(names[1]);
  }

  /// One recomputed copy per value, made before the first backward op that
  /// reads it; later readers share it. A copy's operands are recomputed too
  /// when they belong where it does (the same checkpoint, or any recompute
  /// scope); the rest (a checkpoint's inputs) are kept.
  Value recompute(Value v) {
    if (Value done = copies.lookupOrNull(v))
      return done;
    if (isBoundaryNorm(v)) {
      auto op = v.getDefiningOp<AddRMSNormOp>();
      Value normed = RMSNormOp::create(builder, op.getLoc(), v.getType(), op.getSum(),
                                       op.getWeight(), op.getEpsAttr());
      copies.map(v, normed);
      return normed;
    }
    Operation *def = v.getDefiningOp();
    int where = homeOf(def);
    for (Value operand : def->getOperands()) {
      int from = homeOf(operand.getDefiningOp());
      if ((from != 0 && (from == where || (from < 0 && where < 0))) ||
          (where > 0 && isBoundaryNorm(operand)))
        recompute(operand);
    }
    Operation *clone = builder.clone(*def, copies);
    for (auto [orig, copy] : llvm::zip(def->getResults(), clone->getResults()))
      copies.map(orig, copy);
    return copies.lookup(v);
  }

  /// The ops after the loss that compute gradients. Those that read only
  /// forward values and are returned directly are forward outputs placed
  /// there (the MoE statistics): made again at the start of the backward,
  /// every layer's router would be recomputed at once and live until its
  /// layer's backward.
  SmallVector<Operation *> backwardOps(Block &body) {
    SmallVector<Operation *> ops;
    for (Operation &op : body) {
      if (order[&op] < backwardStart)
        continue;
      bool readsOnlyForward =
          op.getNumOperands() > 0 && llvm::all_of(op.getOperands(), [&](Value v) {
            Operation *def = v.getDefiningOp();
            return !def || order.lookup(def) < backwardStart;
          });
      bool onlyReturned = !op.use_empty() && llvm::all_of(op.getUsers(), [](Operation *user) {
        return isa<func::ReturnOp>(user);
      });
      if (!(readsOnlyForward && onlyReturned))
        ops.push_back(&op);
    }
    return ops;
  }

  ArrayRef<std::string> scopes, checkpoints, keepAttention;
  OpBuilder builder;
  DenseMap<Operation *, unsigned> order;
  unsigned backwardStart = 0;
  DenseMap<Operation *, int> homes;
  IRMapping copies;
};

struct G3MoERecomputePass : g3moe::impl::G3MoERecomputePassBase<G3MoERecomputePass> {
  using Base::Base;

  void runOnOperation() override {
    auto fb = getOperation().lookupSymbol<func::FuncOp>("forward_backward");
    if (!fb)
      return;
    SmallVector<std::string> scopeList(scopes.begin(), scopes.end());
    SmallVector<std::string> checkpointList(checkpoints.begin(), checkpoints.end());
    SmallVector<std::string> keepList(keepAttention.begin(), keepAttention.end());
    if (!keepList.empty() && checkpointList.empty()) {
      emitError(getOperation().getLoc())
          << "keep-attention names attention to keep in checkpoints, but no checkpoints are "
             "given (keep-attention '"
          << keepList.front() << "')";
      return signalPassFailure();
    }
    if (scopeList.empty() && checkpointList.empty())
      scopeList.push_back("moe.experts");
    Operation *lossOp = lossBoundary(fb);
    if (!lossOp)
      return;
    Recomputation(fb, lossOp, scopeList, checkpointList, keepList).run(fb.getBody().front());
  }
};

} // namespace
