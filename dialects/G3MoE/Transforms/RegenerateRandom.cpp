//===- RegenerateRandom.cpp - draw random masks again in the backward -----===//
//
// Implements --g3moe-regenerate-random. The dropout masks of LoRA and the
// router's input jitter are uniform draws the backward reads again. Kept,
// each is an fp32 activation as large as its input: at 120K tokens the LoRA
// dropout draw on a down_proj input is [2T, 10240] fp32, 9.2 GiB per expert
// layer. The draw is a pure function of its key and stream, so the backward
// can make it again bit for bit at the cost of one elementwise kernel.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOEREGENERATERANDOMPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

struct G3MoERegenerateRandomPass
    : g3moe::impl::G3MoERegenerateRandomPassBase<G3MoERegenerateRandomPass> {
  void runOnOperation() override {
    auto fb = getOperation().lookupSymbol<func::FuncOp>("forward_backward");
    if (!fb)
      return;
    Block &body = fb.getBody().front();
    Operation *lossOp = lossBoundary(fb);
    if (!lossOp)
      return;

    // Forward draws, in order; the backward starts after the loss.
    SmallVector<RandomUniformOp> draws;
    Operation *op = &body.front();
    for (; op && op != lossOp->getNextNode(); op = op->getNextNode())
      if (auto draw = dyn_cast<RandomUniformOp>(op))
        draws.push_back(draw);
    Operation *backwardStart = lossOp->getNextNode();
    if (!backwardStart)
      return;
    DenseMap<Operation *, unsigned> order = opOrder(body);
    const unsigned backwardIndex = order[backwardStart];

    OpBuilder b(fb.getContext());
    for (RandomUniformOp draw : draws) {
      // The backward's readers of the draw, earliest first: one new draw,
      // made right before the first, serves them all. Its key is a function
      // argument, live everywhere.
      SmallVector<OpOperand *> backwardUses;
      for (OpOperand &use : draw.getResult().getUses())
        if (order.lookup(use.getOwner()) >= backwardIndex)
          backwardUses.push_back(&use);
      if (backwardUses.empty())
        continue;
      Operation *first = backwardUses.front()->getOwner();
      for (OpOperand *use : backwardUses)
        if (order.lookup(use->getOwner()) < order.lookup(first))
          first = use->getOwner();
      b.setInsertionPoint(first);
      Operation *again = b.clone(*draw.getOperation());
      for (OpOperand *use : backwardUses)
        use->set(again->getResult(0));
    }
  }
};

} // namespace
