//===- TileTokens.cpp - run feed-forward blocks on chunks of tokens -------===//
//
// Implements --g3moe-tile-tokens. A feed-forward block (a dense MLP, the
// routed experts from dispatch to combine, a shared expert) works on each
// token on its own, and its intermediates are the largest activations of a
// step: [tokens * k, intermediate] per expert layer. Cut into chunks of
// tokens, only one chunk's intermediates exist at a time, in the forward and,
// since autodiff and recomputation follow the chunks, in the backward too.
//
// The pass runs before autodiff on every entry point. A block is a run of
// consecutive ops under one feed-forward module path; the ops that read
// token rows are cloned once per chunk on slices made by split_rows, the
// weights they share stay where they are, and concat_rows joins the chunks'
// outputs for the rest of the layer.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/SetVector.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOETILETOKENSPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// Module paths of feed-forward blocks: a dense MLP (Gemma-3's `mlp`, a
/// G3MoE dense layer's `moe`), the routed experts and the shared experts.
bool isFeedForwardScope(StringRef scope) {
  return scope.ends_with(".mlp") || scope.ends_with(".moe") || scope.ends_with(".moe.experts") ||
         scope.ends_with(".moe.shared_experts");
}

/// The feed-forward block `loc` lies in, or "": the innermost name that is
/// one. A LoRA adapter's ops are named after its projection, inside the
/// block's name.
StringRef feedForwardScope(Location loc) {
  if (auto name = dyn_cast<NameLoc>(loc)) {
    if (isFeedForwardScope(name.getName().strref()))
      return name.getName().strref();
    return feedForwardScope(name.getChildLoc());
  }
  return "";
}

/// Whether `loc` is the norm that follows a feed-forward block in a
/// Gemma-3 layer.
bool isPostFeedForwardNorm(Location loc) {
  auto name = dyn_cast<NameLoc>(loc);
  return name && name.getName().strref().ends_with(".post_feedforward_layernorm");
}

RankedTensorType typeOf(Value v) { return cast<RankedTensorType>(v.getType()); }

/// `t` with its first dimension scaled from `tokens` rows to `rows`.
RankedTensorType chunkType(RankedTensorType t, int64_t tokens, int64_t rows) {
  SmallVector<int64_t> shape(t.getShape());
  shape[0] = shape[0] / tokens * rows;
  return RankedTensorType::get(shape, t.getElementType());
}

/// Tiles the blocks of one entry point.
class Tiler {
public:
  Tiler(func::FuncOp func, int64_t tokens, int64_t chunk, int64_t &nextStream)
      : func(func), tokens(tokens), nextStream(nextStream) {
    for (int64_t start = 0; start < tokens; start += chunk)
      chunkRows.push_back(std::min(chunk, tokens - start));
  }

  /// Tiles every block it can; returns how many.
  int64_t run() {
    SmallVector<SmallVector<Operation *>> blocks;
    StringRef current;
    for (Operation &op : func.getBody().front()) {
      StringRef scope = feedForwardScope(op.getLoc());
      // The norm after a block joins it: its backward reads the block's
      // output, which would otherwise be made again whole.
      if (scope.empty() && !current.empty() && isPostFeedForwardNorm(op.getLoc())) {
        blocks.back().push_back(&op);
        continue;
      }
      if (scope.empty()) {
        current = "";
        continue;
      }
      if (scope != current)
        blocks.emplace_back();
      current = scope;
      blocks.back().push_back(&op);
    }
    int64_t tiled = 0;
    for (ArrayRef<Operation *> block : blocks)
      tiled += tile(block);
    return tiled;
  }

private:
  /// Whether a value outside the per-chunk ops is the same for every chunk:
  /// made from weights and the random key only (a LoRA factor, scaled and
  /// cast), but not a random draw, whose elements are per token.
  bool isShared(Value v) {
    if (auto known = shared.find(v); known != shared.end())
      return known->second;
    bool result;
    if (auto arg = dyn_cast<BlockArgument>(v)) {
      result = arg == findInput(func, "rng_key");
    } else {
      Operation *def = v.getDefiningOp();
      result = !isa<RandomUniformOp>(def) &&
               llvm::all_of(def->getOperands(), [&](Value operand) { return isShared(operand); });
    }
    return shared[v] = result;
  }

  /// Whether `t` has token rows (a multiple of the token count) first.
  bool hasTokenRows(Type t) {
    auto rt = dyn_cast<RankedTensorType>(t);
    return rt && rt.getRank() >= 1 && rt.getDimSize(0) > 0 && rt.getDimSize(0) % tokens == 0;
  }

  /// The ops of `block` that run per chunk: those reading token rows, and the
  /// random draws they read (their rows are the chunk's). Reshapes stay
  /// whole: they only give the block's input and output their shapes.
  /// Empty when the block cannot be tiled.
  SetVector<Operation *> chunkOps(ArrayRef<Operation *> block, SetVector<Value> &rowInputs) {
    SetVector<Operation *> ops;
    for (Operation *op : block) {
      if (isa<ReshapeOp, ParamOp, FrozenE4M3Op>(op))
        continue;
      bool perChunk = isa<RandomUniformOp>(op) && hasTokenRows(op->getResult(0).getType());
      bool readsRows = false, readsOther = false;
      SmallVector<Value> inputs;
      for (Value v : op->getOperands()) {
        Operation *def = v.getDefiningOp();
        if (def && ops.contains(def)) {
          perChunk = true;
        } else if (!isShared(v)) {
          bool rows = hasTokenRows(v.getType()) && typeOf(v).getDimSize(0) == tokens;
          readsRows |= rows;
          readsOther |= !rows;
          inputs.push_back(v);
        }
      }
      // An op of the block that reads neither chunks nor token rows (the
      // residual add on [batch, seq, hidden]) stays whole.
      if (!perChunk && !readsRows)
        continue;
      if (readsOther)
        return {};
      rowInputs.insert(inputs.begin(), inputs.end());
      ops.insert(op);
    }
    // Every per-chunk result has token rows (the expert offsets are the
    // chunk's own), and whatever reads the block's results outside the
    // per-chunk ops gets the whole rows back.
    for (Operation *op : ops)
      for (OpResult r : op->getResults()) {
        bool offsets = isa<MoEDispatchOp>(op) && r.getResultNumber() == 1;
        if (!offsets && !hasTokenRows(r.getType()))
          return {};
        bool readOutside =
            llvm::any_of(r.getUsers(), [&](Operation *u) { return !ops.contains(u); });
        if (readOutside && (offsets || typeOf(r).getDimSize(0) != tokens))
          return {};
      }
    return ops;
  }

  bool tile(ArrayRef<Operation *> block) {
    SetVector<Value> rowInputs;
    SetVector<Operation *> ops = chunkOps(block, rowInputs);
    if (ops.empty() || chunkRows.size() < 2 ||
        !llvm::any_of(ops, [](Operation *op) { return isa<LinearOp, ExpertLinearOp>(op); }))
      return false;
    // What the chunks share moves above them (weights, their casts, the
    // input's reshape), so that every chunk sees it defined; a row input
    // made after the first per-chunk op from its results cannot be tiled.
    Operation *first = ops.front();
    auto definedAbove = [&](Value v) {
      Operation *def = v.getDefiningOp();
      return !def || def->isBeforeInBlock(first);
    };
    for (Operation *op : block)
      if (!ops.contains(op) && first->isBeforeInBlock(op) &&
          llvm::all_of(op->getOperands(), definedAbove))
        op->moveBefore(first);
    if (!llvm::all_of(rowInputs, definedAbove))
      return false;

    OpBuilder b(first);
    Location loc = first->getLoc();
    // One split per row input, one concat per result read outside.
    DenseMap<Value, SmallVector<Value>> slices;
    for (Value in : rowInputs) {
      SmallVector<Type> types;
      for (int64_t rows : chunkRows)
        types.push_back(chunkType(typeOf(in), tokens, rows));
      slices[in] = SplitRowsOp::create(b, loc, types, in).getResults();
    }
    SmallVector<IRMapping> chunks(chunkRows.size());
    for (auto [c, rows] : llvm::enumerate(chunkRows)) {
      for (Value in : rowInputs)
        chunks[c].map(in, slices[in][c]);
      for (Operation *op : ops)
        cloneForChunk(b, op, c, rows, chunks[c]);
    }
    for (Operation *op : ops)
      for (OpResult r : op->getResults()) {
        if (llvm::all_of(r.getUsers(), [&](Operation *u) { return ops.contains(u); }))
          continue;
        SmallVector<Value> parts;
        for (IRMapping &m : chunks)
          parts.push_back(m.lookup(r));
        Value whole = ConcatRowsOp::create(b, op->getLoc(), r.getType(), parts);
        r.replaceUsesWithIf(whole, [&](OpOperand &use) { return !ops.contains(use.getOwner()); });
      }
    for (Operation *op : llvm::reverse(ops))
      op->erase();
    return true;
  }

  /// Clones `op` for chunk `c` of `rows` tokens: results take the chunk's
  /// rows; random draws after the first chunk take fresh streams, so that no
  /// two chunks share a mask.
  void cloneForChunk(OpBuilder &b, Operation *op, size_t c, int64_t rows, IRMapping &map) {
    Operation *clone = b.clone(*op, map);
    for (OpResult r : clone->getResults()) {
      bool offsets = isa<MoEDispatchOp>(op) && r.getResultNumber() == 1;
      if (!offsets)
        r.setType(chunkType(typeOf(r), tokens, rows));
    }
    if (auto draw = dyn_cast<RandomUniformOp>(clone); draw && c > 0)
      draw.setStreamAttr(b.getI64IntegerAttr(nextStream++));
  }

  func::FuncOp func;
  int64_t tokens;
  int64_t &nextStream;
  /// The rows of each chunk: `chunk` each, the last one the rest.
  SmallVector<int64_t> chunkRows;
  DenseMap<Value, bool> shared;
};

struct G3MoETileTokensPass : g3moe::impl::G3MoETileTokensPassBase<G3MoETileTokensPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (tokens < 0) {
      emitError(module.getLoc()) << "g3moe-tile-tokens: tokens must be >= 0, got " << tokens;
      return signalPassFailure();
    }
    if (tokens == 0)
      return;
    int64_t nextStream = nextFreeStream(module);
    for (auto func : module.getOps<func::FuncOp>()) {
      std::optional<int64_t> count = inputTokenCount(func);
      if (!count || *count <= tokens)
        continue;
      // The blocks are found by their module paths, which a module parsed
      // from text has only when it was printed with them.
      if (Tiler(func, *count, tokens, nextStream).run() == 0)
        emitWarning(func.getLoc(),
                    "g3moe-tile-tokens: no feed-forward block to tile (blocks are found by "
                    "the module paths of their locations: print the input with "
                    "--mlir-print-debuginfo)");
    }
  }
};

} // namespace
