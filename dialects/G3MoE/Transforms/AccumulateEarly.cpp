//===- AccumulateEarly.cpp - add each gradient as soon as it exists ------===//
//
// Implements --g3moe-accumulate-early. @train_micro_step calls
// @forward_backward and then adds each returned gradient into its
// accumulator (ZeRO stage 2: after the gradients went to their owners). The
// call returns every gradient at once, so each lives from where the backward
// made it to the end of the backward: for full fine-tuning, a whole fp32
// copy of the model. Inlined, each add can follow its gradient directly,
// and the gradient dies there.
//
// A stage-2 reduce sends a group of gradients to one owner; it is remade per
// bucket of gradients in the order the backward makes them (closing a
// bucket once it holds `bucket-bytes`, one reduce per owner with gradients
// in it), right after the bucket's last gradient: a gradient then lives at
// most until its bucket is sent, and the exchange starts while the backward
// still has layers to go.
//
//===----------------------------------------------------------------------===//

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"

#include <map>

namespace g3moe {
#define GEN_PASS_DEF_G3MOEACCUMULATEEARLYPASS
#include "dialects/G3MoE/Transforms/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

namespace {

/// One accumulation: `add` sums `gradient` (sent to process `root` first,
/// at stage 2; -1 otherwise) into an accumulator.
struct Accumulation {
  AddOp add;
  Value gradient;
  int64_t root = -1;
};

/// Replaces `call` by the callee's body.
void inlineCall(func::CallOp call, func::FuncOp callee) {
  OpBuilder b(call);
  IRMapping map;
  Block &body = callee.getBody().front();
  for (auto [arg, operand] : llvm::zip(body.getArguments(), call.getOperands()))
    map.map(arg, operand);
  for (Operation &op : body.without_terminator())
    b.clone(op, map);
  for (auto [result, value] : llvm::zip(call.getResults(), body.getTerminator()->getOperands()))
    result.replaceAllUsesWith(map.lookupOrDefault(value));
  call.erase();
}

struct G3MoEAccumulateEarlyPass
    : g3moe::impl::G3MoEAccumulateEarlyPassBase<G3MoEAccumulateEarlyPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto micro = module.lookupSymbol<func::FuncOp>("train_micro_step");
    if (!micro || !micro.getBody().hasOneBlock())
      return;
    Block &body = micro.getBody().front();
    for (auto call : llvm::make_early_inc_range(body.getOps<func::CallOp>())) {
      auto callee = module.lookupSymbol<func::FuncOp>(call.getCallee());
      if (!callee || !callee.getBody().hasOneBlock()) {
        call.emitOpError("g3moe-accumulate-early: cannot inline @") << call.getCallee();
        return signalPassFailure();
      }
      inlineCall(call, callee);
    }

    SmallVector<Accumulation> sums = accumulations(micro);
    if (sums.empty())
      return;
    DenseMap<Operation *, unsigned> order = opOrder(body);
    // Where each gradient is made; a gradient that is an argument or made
    // in another block stays where it is summed.
    auto madeAt = [&](Value g) -> Operation * {
      Operation *def = g.getDefiningOp();
      return def && def->getBlock() == &body ? def : nullptr;
    };
    llvm::stable_sort(sums, [&](const Accumulation &a, const Accumulation &b) {
      Operation *x = madeAt(a.gradient), *y = madeAt(b.gradient);
      return (x ? order[x] : 0) < (y ? order[y] : 0);
    });

    OpBuilder builder(module.getContext());
    SmallVector<Accumulation> bucket;
    int64_t bucketBytes = 0;
    for (auto [i, sum] : llvm::enumerate(sums)) {
      if (sum.root < 0) {
        if (Operation *def = madeAt(sum.gradient))
          sum.add->moveAfter(def);
        continue;
      }
      bucket.push_back(sum);
      auto type = cast<RankedTensorType>(sum.gradient.getType());
      bucketBytes += type.getNumElements() * int64_t(type.getElementTypeBitWidth() / 8);
      if (bucketBytes >= bucketSize || i + 1 == sums.size()) {
        sendBucket(builder, bucket, madeAt(sum.gradient));
        bucket.clear();
        bucketBytes = 0;
      }
    }
    // The grouped reduces the buckets replaced.
    for (auto reduce : llvm::make_early_inc_range(body.getOps<ReduceOp>()))
      if (reduce->use_empty())
        reduce.erase();
  }

  /// The adds of @train_micro_step into its gradient accumulators.
  static SmallVector<Accumulation> accumulations(func::FuncOp micro) {
    SmallVector<Accumulation> out;
    for (AddOp add : micro.getOps<AddOp>()) {
      auto acc = dyn_cast<BlockArgument>(add.getLhs());
      if (!acc || acc.getOwner()->getParentOp() != micro ||
          !micro.getArgAttr(acc.getArgNumber(), "g3moe.grad_acc"))
        continue;
      Accumulation a{add, add.getRhs()};
      if (auto reduce = add.getRhs().getDefiningOp<ReduceOp>()) {
        a.gradient = reduce.getInputs()[cast<OpResult>(add.getRhs()).getResultNumber()];
        a.root = reduce.getRoot();
      }
      out.push_back(a);
    }
    return out;
  }

  /// One reduce per owner of the bucket's gradients, after `last` (where the
  /// bucket's last gradient is made, or at the adds if null), each followed
  /// by its adds.
  static void sendBucket(OpBuilder &b, ArrayRef<Accumulation> bucket, Operation *last) {
    std::map<int64_t, SmallVector<Accumulation>> byOwner;
    for (const Accumulation &a : bucket)
      byOwner[a.root].push_back(a);
    if (last)
      b.setInsertionPointAfter(last);
    else
      b.setInsertionPoint(bucket.front().add);
    for (auto &[root, members] : byOwner) {
      SmallVector<Value> grads;
      for (const Accumulation &a : members)
        grads.push_back(a.gradient);
      auto sent = ReduceOp::create(b, members.front().add.getLoc(), ValueRange(grads).getTypes(),
                                   grads, b.getI64IntegerAttr(root));
      for (auto [a, summed] : llvm::zip(members, sent.getResults())) {
        a.add.getRhsMutable().assign(summed);
        a.add->moveBefore(b.getInsertionBlock(), b.getInsertionPoint());
      }
    }
  }
};

} // namespace
