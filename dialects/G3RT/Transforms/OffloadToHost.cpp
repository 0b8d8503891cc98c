//===- OffloadToHost.cpp - long-idle buffers wait in host memory ----------===//
//
// Implements --g3rt-offload-to-host. A function is a straight line of
// launches, so a buffer's uses are a sorted list of launch indices and its
// idle stretches are the gaps between consecutive uses. The pass only
// inserts launches and redirects the uses after a gap; --g3rt-plan-memory
// then sees two shorter device lives (before the gap, after it) and a host
// life spanning it, and packs each arena as usual.
//
// The copies are asynchronous on the GPU, so a buffer's device bytes are
// not free when its copy starts: the wait_copy that ends the copy is itself
// a use of the buffer, which keeps the bytes reserved until the kernels have
// waited for the copy. Likewise the restored buffer is live from the launch
// that starts its copy.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3RT/Transforms/MemoryPlan.h"
#include "dialects/G3RT/Transforms/Passes.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"

#include <algorithm>
#include <functional>

namespace g3moe::lowered {
#define GEN_PASS_DEF_G3RTOFFLOADTOHOSTPASS
#include "dialects/G3RT/Transforms/Passes.h.inc"
} // namespace g3moe::lowered

using namespace mlir;
using namespace g3moe::lowered;

namespace {

/// One launch touching a buffer.
struct Use {
  int64_t at;
  bool writes;
};

/// A buffer chosen to wait in host memory, with the launch indices the
/// copies go around (all in the function's launch order before the pass).
struct Move {
  BufferOp buffer;
  int64_t bytes = 0;
  /// The last use before the gap and the first after it.
  int64_t before = 0, after = 0;
  /// The last launch writing the buffer before the gap: the copy out starts
  /// after it.
  int64_t written = 0;
  /// The copy out is waited for before launch `outWait`, the copy back
  /// starts before launch `inStart` (and is waited for before `after`).
  int64_t outWait = 0, inStart = 0;
};

struct G3RTOffloadToHostPass
    : g3moe::lowered::impl::G3RTOffloadToHostPassBase<G3RTOffloadToHostPass> {
  using Base::Base;

  void runOnOperation() override {
    if (distance < 1 || minBytes < 0 || count < -1) {
      getOperation().emitError(
          "g3rt-offload-to-host: distance must be at least 1, min-bytes non-negative and "
          "count -1 or more");
      return signalPassFailure();
    }
    for (auto func : getOperation().getOps<func::FuncOp>())
      offloadFunction(func);
  }

  /// The buffers worth moving, longest gap first.
  std::vector<Move> candidates(func::FuncOp func, ArrayRef<LaunchOp> launches) {
    llvm::DenseMap<Operation *, std::vector<Use>> uses;
    std::vector<BufferOp> order;
    for (auto [at, constLaunch] : llvm::enumerate(launches)) {
      LaunchOp launch = constLaunch;
      auto touch = [&](Value v, bool writes) {
        BufferOp root = rootBuffer(v);
        if (!root || root.getKind() != kArena)
          return;
        std::vector<Use> &list = uses[root];
        if (list.empty())
          order.push_back(root);
        if (!list.empty() && list.back().at == int64_t(at))
          list.back().writes |= writes;
        else
          list.push_back({int64_t(at), writes});
      };
      for (Value in : launch.getIns())
        touch(in, false);
      for (Value out : launch.getOuts())
        touch(out, true);
    }
    // What the runtime reads after the call stays where it is.
    llvm::DenseSet<Operation *> outputs;
    func.walk([&](OutputOp out) { outputs.insert(rootBuffer(out.getBuffer())); });

    std::vector<Move> moves;
    for (BufferOp buffer : order) {
      const std::vector<Use> &list = uses[buffer];
      Move m;
      m.buffer = buffer;
      m.bytes = bufferBytes(buffer.getType());
      if (m.bytes < minBytes || outputs.contains(buffer) || list.size() < 2)
        continue;
      size_t gap = 0;
      for (size_t i = 1; i + 1 < list.size(); ++i)
        if (list[i + 1].at - list[i].at > list[gap + 1].at - list[gap].at)
          gap = i;
      m.before = list[gap].at;
      m.after = list[gap + 1].at;
      m.written = -1;
      for (size_t i = 0; i <= gap; ++i)
        if (list[i].writes)
          m.written = list[i].at;
      if (m.written < 0)
        continue;
      m.outWait = std::max(m.before + 1, m.written + 1 + distance);
      m.inStart = m.after - distance;
      // Worth it only when the device bytes are free for a while between.
      if (m.inStart - m.outWait < distance)
        continue;
      moves.push_back(m);
    }
    std::stable_sort(moves.begin(), moves.end(), [](const Move &a, const Move &b) {
      if (a.after - a.before != b.after - b.before)
        return a.after - a.before > b.after - b.before;
      return a.bytes > b.bytes;
    });
    return moves;
  }

  void offloadFunction(func::FuncOp func) {
    std::vector<LaunchOp> launches;
    func.walk([&](LaunchOp launch) { launches.push_back(launch); });
    std::vector<Move> moves = candidates(func, launches);
    if (count >= 0 && moves.size() > size_t(count))
      moves.resize(size_t(count));
    // Copy ids follow the order the copies out start in, for readable IR.
    std::stable_sort(moves.begin(), moves.end(),
                     [](const Move &a, const Move &b) { return a.written < b.written; });
    for (auto [move, m] : llvm::enumerate(moves))
      rewrite(m, int64_t(move), launches);
  }

  /// Moves `m`'s buffer out as copy 2 * `move` and back as 2 * `move` + 1.
  void rewrite(const Move &m, int64_t move, ArrayRef<LaunchOp> launches) {
    BufferOp buffer = m.buffer;
    OpBuilder b(buffer);
    b.setInsertionPointAfter(buffer);
    Location loc = buffer.getLoc();
    MemRefType type = buffer.getType();
    Value device = buffer;
    Value host =
        BufferOp::create(b, loc, type, b.getStringAttr(kHost), StringAttr(), IntegerAttr());
    Value restored =
        BufferOp::create(b, loc, type, b.getStringAttr(kArena), StringAttr(), IntegerAttr());
    auto launch = [&](StringRef kernel, Value in, Value out, int64_t id) {
      LaunchOp::create(b, loc, b.getStringAttr(kernel), ValueRange{in}, ValueRange{out},
                       b.getDictionaryAttr(b.getNamedAttr("copy", b.getI64IntegerAttr(id))));
    };
    b.setInsertionPointAfter(launches[m.written]);
    launch("copy_to_host", device, host, 2 * move);
    b.setInsertionPoint(launches[m.outWait]);
    launch("wait_copy", device, host, 2 * move);
    b.setInsertionPoint(launches[m.inStart]);
    launch("copy_to_device", host, restored, 2 * move + 1);
    b.setInsertionPoint(launches[m.after]);
    launch("wait_copy", host, restored, 2 * move + 1);

    // Every use after the gap reads the restored buffer, through views made
    // anew on it where the old use went through views.
    llvm::DenseMap<Value, Value> remapped;
    remapped[device] = restored;
    std::function<Value(Value)> remap = [&](Value v) -> Value {
      if (Value r = remapped.lookup(v))
        return r;
      auto view = v.getDefiningOp<ViewOp>();
      Value source = remap(view.getSource());
      OpBuilder vb(source.getContext());
      vb.setInsertionPointAfterValue(source);
      Value made = ViewOp::create(vb, view.getLoc(), view.getType(), source);
      remapped[v] = made;
      return made;
    };
    for (LaunchOp later : launches.drop_front(m.after))
      for (OpOperand &operand : later->getOpOperands())
        if (rootBuffer(operand.get()) == buffer)
          operand.set(remap(operand.get()));
    // Views only the moved uses went through are dead now; a view of a view
    // dies once its users did.
    for (bool erased = true; erased;) {
      erased = false;
      for (auto &[old, made] : remapped)
        if (auto view = old.getDefiningOp<ViewOp>(); view && view->use_empty()) {
          remapped.erase(old);
          view->erase();
          erased = true;
          break;
        }
    }
  }
};

} // namespace
