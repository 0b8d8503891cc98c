//===- PlanMemory.cpp - arena offsets by liveness -------------------------===//
//
// Implements --g3rt-plan-memory. The program of a function is straight-line,
// so a live range is an interval of launch indices, and planning is interval
// packing: two buffers may share bytes exactly when their intervals are
// disjoint. Largest-first placement at the lowest fitting offset keeps the
// arena close to the peak of live bytes in practice.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3RT/Transforms/MemoryPlan.h"
#include "dialects/G3RT/Transforms/Passes.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/DenseMap.h"

#include <algorithm>

namespace g3moe::lowered {
#define GEN_PASS_DEF_G3RTPLANMEMORYPASS
#include "dialects/G3RT/Transforms/Passes.h.inc"
} // namespace g3moe::lowered

using namespace mlir;
using namespace g3moe::lowered;

int64_t g3moe::lowered::bufferBytes(MemRefType type) {
  int64_t bits = type.getElementTypeBitWidth();
  return type.getNumElements() * std::max<int64_t>(1, bits / 8);
}

std::vector<BufferLife> g3moe::lowered::analyzeArenaLiveness(func::FuncOp func, StringRef kind) {
  llvm::DenseMap<Operation *, size_t> index;
  std::vector<BufferLife> lives;
  int64_t step = 0;
  auto touch = [&](Value v, int64_t at, LaunchOp writer) {
    BufferOp root = rootBuffer(v);
    if (!root || root.getKind() != kind)
      return;
    auto [it, inserted] = index.try_emplace(root, lives.size());
    if (inserted) {
      BufferLife life;
      life.buffer = root;
      life.bytes = bufferBytes(root.getType());
      life.first = life.last = at;
      lives.push_back(life);
    }
    BufferLife &life = lives[it->second];
    life.first = std::min(life.first, at);
    life.last = std::max(life.last, at);
    if (writer && !life.producer)
      life.producer = writer;
  };
  func.walk([&](Operation *op) {
    if (auto launch = dyn_cast<LaunchOp>(op)) {
      for (Value in : launch.getIns())
        touch(in, step, LaunchOp());
      for (Value out : launch.getOuts())
        touch(out, step, launch);
      ++step;
    }
  });
  // What the runtime reads after the call must survive the whole program.
  func.walk([&](OutputOp out) { touch(out.getBuffer(), step, LaunchOp()); });
  return lives;
}

MemoryReport g3moe::lowered::reportMemory(func::FuncOp func) {
  MemoryReport report;
  std::vector<BufferLife> lives = analyzeArenaLiveness(func);
  int64_t steps = 0;
  for (const BufferLife &l : lives) {
    steps = std::max(steps, l.last + 1);
    if (auto offset = BufferOp(l.buffer).getOffset())
      report.arenaBytes = std::max<int64_t>(report.arenaBytes, *offset + l.bytes);
  }
  // Sweep the interval starts and ends to find the launch with most live bytes.
  std::vector<int64_t> delta(size_t(steps) + 1, 0);
  for (const BufferLife &l : lives) {
    delta[size_t(l.first)] += l.bytes;
    delta[size_t(l.last) + 1] -= l.bytes;
  }
  int64_t live = 0;
  for (int64_t s = 0; s < steps; ++s) {
    live += delta[size_t(s)];
    if (live > report.peakLiveBytes) {
      report.peakLiveBytes = live;
      report.peakLaunch = s;
    }
  }
  for (const BufferLife &l : lives)
    if (l.first <= report.peakLaunch && report.peakLaunch <= l.last)
      report.liveAtPeak.push_back(l);
  std::stable_sort(report.liveAtPeak.begin(), report.liveAtPeak.end(),
                   [](const BufferLife &a, const BufferLife &b) { return a.bytes > b.bytes; });
  return report;
}

namespace {

struct Placed {
  int64_t offset, end, first, last;
};

int64_t alignUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

struct G3RTPlanMemoryPass : g3moe::lowered::impl::G3RTPlanMemoryPassBase<G3RTPlanMemoryPass> {
  using Base::Base;

  void runOnOperation() override {
    if (alignment < 1 || (alignment & (alignment - 1))) {
      getOperation().emitError("g3rt-plan-memory: alignment must be a power of two");
      return signalPassFailure();
    }
    Builder b(&getContext());
    // A training step's @forward_backward holds every gradient of the step
    // at its end; training runs @train_micro_step, which adds each into its
    // accumulator as it is made (--g3moe-accumulate-early), and must not be
    // planned for the larger need of a gradient dump.
    const bool trains = getOperation().lookupSymbol("train_micro_step") != nullptr;
    for (auto [kind, attr] :
         {std::pair(kArena, "g3rt.arena_bytes"), std::pair(kHost, "g3rt.host_bytes")}) {
      int64_t moduleBytes = 0;
      for (auto func : getOperation().getOps<func::FuncOp>()) {
        int64_t bytes = planFunction(func, kind);
        if (!(kind == kArena && trains && func.getSymName() == "forward_backward"))
          moduleBytes = std::max(moduleBytes, bytes);
        // Steps without host buffers say nothing of a host arena.
        if (kind == kArena || bytes > 0)
          func->setAttr(attr, b.getI64IntegerAttr(bytes));
      }
      if (kind == kArena || moduleBytes > 0)
        getOperation()->setAttr(attr, b.getI64IntegerAttr(moduleBytes));
    }
    getOperation()->setAttr("g3rt.arena_alignment", b.getI64IntegerAttr(alignment));
  }

  /// Places the buffers of `kind` (arena or host) of `func`; returns the
  /// bytes they span.
  int64_t planFunction(func::FuncOp func, StringRef kind) {
    std::vector<BufferLife> lives = analyzeArenaLiveness(func, kind);
    std::vector<size_t> order(lives.size());
    for (size_t i = 0; i < order.size(); ++i)
      order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      if (lives[a].bytes != lives[b].bytes)
        return lives[a].bytes > lives[b].bytes;
      return lives[a].first < lives[b].first;
    });

    // Placed buffers by offset: the first gap among those alive at the same
    // time is found walking up from offset 0, and the walk stops there
    // instead of sorting every overlapping buffer for each placement (a 128K
    // step has some 10^5 buffers).
    std::vector<Placed> placed;
    int64_t arenaBytes = 0;
    Builder b(&getContext());
    for (size_t i : order) {
      const BufferLife &l = lives[i];
      int64_t offset = 0;
      for (const Placed &p : placed) {
        if (!(p.first <= l.last && l.first <= p.last))
          continue;
        if (offset + l.bytes <= p.offset)
          break;
        offset = std::max(offset, alignUp(p.end, alignment));
      }
      auto at = std::upper_bound(placed.begin(), placed.end(), offset,
                                 [](int64_t o, const Placed &p) { return o < p.offset; });
      placed.insert(at, {offset, offset + l.bytes, l.first, l.last});
      arenaBytes = std::max(arenaBytes, offset + l.bytes);
      BufferOp(l.buffer).setOffsetAttr(b.getI64IntegerAttr(offset));
    }
    // Buffers no launch touches still get a (harmless) offset.
    func.walk([&](BufferOp buffer) {
      if (buffer.getKind() == kind && !buffer.getOffset())
        buffer.setOffsetAttr(b.getI64IntegerAttr(0));
    });
    return arenaBytes;
  }
};

} // namespace
