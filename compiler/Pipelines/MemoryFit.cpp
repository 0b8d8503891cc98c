//===- MemoryFit.cpp - fit a training step to a memory budget -------------===//
//
// The search compiles whole steps: the memory a plan saves depends on what the
// planner can overlap once everything is lowered, so it is measured, not
// estimated. Each candidate costs one run of the step pipeline.
//
//===----------------------------------------------------------------------===//

#include "compiler/Pipelines/MemoryFit.h"

#include "compiler/Pipelines/Passes.h"
#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3MoE/Transforms/Passes.h"
#include "dialects/G3RT/IR/G3RTDialect.h"
#include "dialects/G3RT/Transforms/MemoryPlan.h"
#include "runtime/base/units.h"
#include "runtime/exec/ownership.h"
#include "runtime/kernels/scratch_bounds.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringSwitch.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/raw_ostream.h"

#include <set>

namespace g3moe {
#define GEN_PASS_DEF_G3MOEFITMEMORYPASS
#include "compiler/Pipelines/Passes.h.inc"
} // namespace g3moe

using namespace mlir;
using namespace g3moe;

//===----------------------------------------------------------------------===//
// Plans
//===----------------------------------------------------------------------===//

MemoryPlan MemoryPlan::uniform(int64_t numLayers, LayerChoice choice, bool keepAttentionOutputs) {
  MemoryPlan plan;
  plan.layers.assign(numLayers, choice);
  plan.keepAttentionOutputs = keepAttentionOutputs;
  return plan;
}

MemoryPlan MemoryPlan::leadingFeedForward(int64_t count, int64_t numLayers,
                                          bool keepAttentionOutputs) {
  MemoryPlan plan = uniform(numLayers, LayerChoice::Keep, keepAttentionOutputs);
  for (int64_t l = 0; l < count && l < numLayers; ++l)
    plan.layers[l] = LayerChoice::RecomputeFeedForward;
  return plan;
}

MemoryPlan MemoryPlan::checkpointsIn(ArrayRef<int64_t> order, int64_t count, int64_t numLayers,
                                     bool keepAttentionOutputs) {
  MemoryPlan plan = uniform(numLayers, LayerChoice::RecomputeFeedForward, keepAttentionOutputs);
  for (int64_t l : order.take_front(std::min<int64_t>(count, order.size())))
    if (l >= 0 && l < numLayers)
      plan.layers[l] = LayerChoice::RecomputeLayer;
  return plan;
}

int64_t MemoryPlan::count(LayerChoice choice) const { return llvm::count(layers, choice); }

std::vector<std::string> MemoryPlan::recomputeScopes() const {
  const int64_t numLayers = layers.size();
  // Every layer alike: the scopes the planner has always used, which every
  // layer's module path contains.
  if (numLayers > 0 && count(LayerChoice::RecomputeFeedForward) == numLayers)
    return {"moe", "mlp"};
  // Scopes are substrings of module paths: "model.layers.1." must not match
  // layer 10, hence the trailing dot.
  std::vector<std::string> scopes;
  for (int64_t l = 0; l < numLayers; ++l)
    if (layers[l] == LayerChoice::RecomputeFeedForward) {
      std::string layer = "model.layers." + std::to_string(l);
      scopes.push_back(layer + ".moe");
      scopes.push_back(layer + ".mlp");
    }
  return scopes;
}

/// The scopes of the decoder layers whose choice `pick` takes, one each
/// (`model.layers.3.`).
static std::vector<std::string> layerScopes(ArrayRef<LayerChoice> layers,
                                            llvm::function_ref<bool(LayerChoice)> pick) {
  std::vector<std::string> scopes;
  for (auto [l, choice] : llvm::enumerate(layers))
    if (pick(choice))
      scopes.push_back("model.layers." + std::to_string(l) + ".");
  return scopes;
}

std::vector<std::string> MemoryPlan::checkpointScopes() const {
  // One scope per layer even when every layer is recomputed: a layer is made
  // again from the previous one's output, never from further back.
  return layerScopes(layers, [](LayerChoice c) {
    return c == LayerChoice::RecomputeLayer || c == LayerChoice::RecomputeAllButAttention;
  });
}

std::vector<std::string> MemoryPlan::keepAttentionScopes() const {
  return layerScopes(layers,
                     [](LayerChoice c) { return c == LayerChoice::RecomputeAllButAttention; });
}

std::string MemoryPlan::describeRecompute() const {
  const int64_t numLayers = layers.size();
  const int64_t feedForward = count(LayerChoice::RecomputeFeedForward);
  const int64_t keepingAttention = count(LayerChoice::RecomputeAllButAttention);
  const int64_t whole = count(LayerChoice::RecomputeLayer) + keepingAttention;
  const std::string keeping =
      keepingAttention > 0 ? " (" + std::to_string(keepingAttention) + " keeping their attention)"
                           : "";
  if (feedForward == 0 && whole == 0)
    return "none";
  if (feedForward == numLayers)
    return "mlp";
  if (whole == numLayers)
    return "layers" + keeping;
  std::string of = " of " + std::to_string(numLayers) + " layers";
  std::string text;
  if (feedForward > 0)
    text = "mlp in " + std::to_string(feedForward) + of;
  if (whole > 0)
    text += (text.empty() ? "" : ", ") + std::string("whole layers in ") + std::to_string(whole) +
            of + keeping;
  return text;
}

std::string MemoryPlan::describeExtras() const {
  std::string text = keepAttentionOutputs ? "" : ", attention outputs recomputed";
  if (tileTokens > 0)
    text += ", feed-forward in chunks of " + std::to_string(tileTokens) + " tokens";
  return text;
}

void MemoryPlan::applyTo(TrainingPipelineOptions &options) const {
  options.recomputeScopes = recomputeScopes();
  options.checkpointScopes = checkpointScopes();
  options.keepAttentionScopes = keepAttentionScopes();
  options.saveAttentionStats = keepAttentionOutputs;
  options.tileTokens = tileTokens;
  options.offloadCount = offloadCount;
}

//===----------------------------------------------------------------------===//
// Measurement
//===----------------------------------------------------------------------===//

StepMemory g3moe::measureStepMemory(ModuleOp step) {
  StepMemory memory;
  if (auto a = step->getAttrOfType<IntegerAttr>("g3rt.arena_bytes"))
    memory.arenaBytes = a.getInt();
  if (auto a = step->getAttrOfType<IntegerAttr>("g3rt.host_bytes"))
    memory.hostBytes = a.getInt();
  for (auto func : step.getOps<func::FuncOp>()) {
    int64_t copies = 0;
    func.walk([&](g3moe::lowered::LaunchOp l) {
      copies += l.getKernel() == "copy_to_host";
      if (l.getIns().empty())
        return;
      ArrayRef<int64_t> q = cast<MemRefType>(l.getIns()[0].getType()).getShape();
      memory.scratchBytes = std::max<int64_t>(
          memory.scratchBytes,
          int64_t(g3rt::launchScratchBound(l.getKernel(), q.data(), q.size(), l.getIns().size())));
    });
    memory.offloaded = std::max(memory.offloaded, copies);
  }
  // Each function declares the persistent buffers it touches; the runtime
  // allocates each (kind, name) once, and under ZeRO a moment, gradient
  // accumulator or parameter that only launches of one process touch (an
  // `owner`, or the root of a broadcast that only reads it) only on that
  // process (runtime/exec/state.h, stateOwners): the plan is that of the
  // process holding the most.
  using Key = std::pair<std::string, std::string>;
  auto keyOf = [](g3moe::lowered::BufferOp buffer) {
    return Key{buffer.getKind().str(), buffer.getName().value_or("").str()};
  };
  std::map<Key, int64_t> owner; // -1 once a launch of another or of every process touches it
  step.walk([&](g3moe::lowered::LaunchOp l) {
    auto attr = [&](StringRef name) -> std::optional<int64_t> {
      if (auto a = l.getAttrs().getAs<IntegerAttr>(name))
        return a.getInt();
      return std::nullopt;
    };
    for (bool read : {true, false})
      for (Value v : read ? ValueRange(l.getIns()) : ValueRange(l.getOuts())) {
        auto buffer = v.getDefiningOp<g3moe::lowered::BufferOp>();
        if (!buffer || (buffer.getKind() != "exp_avg" && buffer.getKind() != "exp_avg_sq" &&
                        buffer.getKind() != "grad_acc" && buffer.getKind() != "param"))
          continue;
        const int64_t process = g3rt::soleProcess(l.getKernel(), attr("owner"), attr("root"), read,
                                                  llvm::is_contained(l.getOuts(), v));
        auto [it, fresh] = owner.try_emplace(keyOf(buffer), process);
        if (!fresh && it->second != process)
          it->second = -1;
      }
  });
  std::set<Key> seen;
  std::map<int64_t, int64_t> ownedBytes;
  step.walk([&](g3moe::lowered::BufferOp buffer) {
    if (g3moe::lowered::isPlannedKind(buffer.getKind()) || !seen.insert(keyOf(buffer)).second)
      return;
    int64_t bytes = g3moe::lowered::bufferBytes(buffer.getType());
    auto it = owner.find(keyOf(buffer));
    (it == owner.end() || it->second < 0 ? memory.persistentBytes : ownedBytes[it->second]) +=
        bytes;
  });
  int64_t most = 0;
  for (auto [rank, bytes] : ownedBytes)
    most = std::max(most, bytes);
  memory.persistentBytes += most;
  return memory;
}

//===----------------------------------------------------------------------===//
// The search
//===----------------------------------------------------------------------===//

std::optional<RecomputePolicy> g3moe::parseRecomputePolicy(llvm::StringRef spelling) {
  return llvm::StringSwitch<std::optional<RecomputePolicy>>(spelling)
      .Case("auto", RecomputePolicy::Auto)
      .Case("none", RecomputePolicy::None)
      .Case("mlp", RecomputePolicy::FeedForward)
      .Case("layers", RecomputePolicy::Layers)
      .Default(std::nullopt);
}

namespace {

/// The levels a policy lets the search try, least recomputation first.
std::vector<LayerChoice> levelsFor(const MemoryFitOptions &options) {
  switch (options.policy) {
  case RecomputePolicy::Auto:
    if (options.budgetBytes <= 0)
      return {LayerChoice::Keep};
    return {LayerChoice::Keep, LayerChoice::RecomputeFeedForward, LayerChoice::RecomputeLayer};
  case RecomputePolicy::None:
    return {LayerChoice::Keep};
  case RecomputePolicy::FeedForward:
    return {LayerChoice::RecomputeFeedForward};
  case RecomputePolicy::Layers:
    return {LayerChoice::RecomputeLayer};
  }
  llvm_unreachable("unknown recompute policy");
}

/// The number of decoder layers, from the frontend's g3moe.model attribute.
std::optional<int64_t> layerCount(ModuleOp module) {
  auto model = module->getAttrOfType<DictionaryAttr>("g3moe.model");
  if (!model)
    return std::nullopt;
  auto layers = model.getAs<IntegerAttr>("num_hidden_layers");
  if (!layers || layers.getInt() < 1)
    return std::nullopt;
  return layers.getInt();
}

/// The planner's chunk of the feed-forward blocks for `tokens` tokens: the
/// tokens halved until at most 8192 remain (rounded up), at least once; 0
/// (whole) for a single token.
/// GEMMs of 8192 rows (twice as many for top-2 experts, spread over the
/// experts) still run near the H100's peak, a chunk's intermediates take a
/// few hundred MiB, and chunks of equal size give every chunk the same
/// kernels.
int64_t chunkTokens(int64_t tokens) {
  if (tokens < 2)
    return 0;
  int64_t chunk = (tokens + 1) / 2;
  while (chunk > 8192)
    chunk = (chunk + 1) / 2;
  return chunk;
}

/// The tokens of one micro-batch: the elements of @forward's input_ids.
int64_t tokenCount(ModuleOp module) {
  auto forward = module.lookupSymbol<func::FuncOp>("forward");
  return forward ? inputTokenCount(forward).value_or(0) : 0;
}

/// Compiles and measures candidate plans, recording each in the fit.
class Search {
public:
  Search(ModuleOp forward, const TrainingPipelineOptions &pipeline, const MemoryFitOptions &options,
         PipelineRunner run, MemoryFit &fit)
      : forward(forward), pipeline(pipeline), options(options), run(run), fit(fit),
        global(globalLayers(forward)) {}

  /// Compiles `plan` into `step` and records the attempt; `fits` says
  /// whether it is within the budget (always, without one).
  LogicalResult attempt(MemoryPlan plan, OwningOpRef<ModuleOp> &step, bool &fits) {
    // The pipeline consumes its input: each plan starts from a fresh copy.
    step = OwningOpRef<ModuleOp>(forward.clone());
    if (pipeline.offloadCount >= 0)
      plan.offloadCount = pipeline.offloadCount;
    TrainingPipelineOptions planned;
    planned.copyOptionValuesFrom(pipeline);
    plan.applyTo(planned);
    if (failed(run(*step, [&](OpPassManager &pm) { buildFixedStepPipeline(pm, planned); })))
      return failure();
    StepMemory memory = measureStepMemory(*step);
    fits = (options.budgetBytes <= 0 || memory.deviceBytes() <= options.budgetBytes) &&
           (options.hostBudgetBytes < 0 || memory.hostBytes <= options.hostBudgetBytes);
    fit.attempts.push_back({plan, memory, fits});
    return success();
  }

  /// Takes `step`, compiled from the latest attempt, as the choice.
  void choose(OwningOpRef<ModuleOp> step) {
    fit.step = std::move(step);
    fit.plan = fit.attempts.back().plan;
    fit.memory = fit.attempts.back().memory;
  }

  /// The least level (attention outputs kept, then recomputed) that fits.
  LogicalResult searchLevels(int64_t numLayers) {
    for (const MemoryPlan &plan : candidates(numLayers)) {
      OwningOpRef<ModuleOp> step;
      bool fits = false;
      if (failed(attempt(plan, step, fits)))
        return failure();
      if (fits) {
        choose(std::move(step));
        return success();
      }
    }
    return success();
  }

  /// With every layer's feed-forward block recomputed fitting, the fewest
  /// leading layers' that do: memory falls as layers are added, and each
  /// recomputed layer costs its forward GEMMs again. (Keeping the attention
  /// outputs is worth about as much as not recomputing a layer or two at
  /// 16K, more at 32K.)
  LogicalResult narrowFeedForward(int64_t numLayers) {
    return narrow(numLayers, [&](int64_t k, bool keepAttention) {
      return MemoryPlan::leadingFeedForward(k, numLayers, keepAttention);
    });
  }

  /// With every layer checkpointed fitting, the fewest layers that must be,
  /// the others recomputing only their feed-forward blocks: a checkpointed
  /// layer runs its whole forward twice. Sliding-window layers become
  /// checkpoints first: their attention costs O(tokens * window) to run
  /// again, a global layer's O(tokens^2).
  LogicalResult narrowLayers(int64_t numLayers) {
    std::vector<int64_t> order = checkpointOrder(numLayers);
    return narrow(numLayers, [&](int64_t k, bool keepAttention) {
      return MemoryPlan::checkpointsIn(order, k, numLayers, keepAttention);
    });
  }

  /// With checkpointed global-attention layers (and attention outputs
  /// kept), the most of them, in layer order, that keep their attention
  /// and still fit: each keeps tokens * heads * head_dim activations to
  /// save a forward attention that costs O(tokens^2).
  LogicalResult keepGlobalAttention() {
    if (!fit.plan.keepAttentionOutputs)
      return success();
    const std::vector<int64_t> candidates = globalCheckpoints(fit.plan);
    const MemoryPlan base = fit.plan;
    const int64_t n = candidates.size();
    // By the count of candidates left recomputing their attention: memory
    // falls as it grows.
    return bisect(
        0, n - 1,
        [&](int64_t recomputing) {
          MemoryPlan plan = base;
          for (int64_t l : ArrayRef(candidates).take_front(n - recomputing))
            plan.layers[l] = LayerChoice::RecomputeAllButAttention;
          return plan;
        },
        [](const FitAttempt &a) { return a.fits; });
  }

  /// With no plan fitting, the most frugal plans (attention outputs kept,
  /// the global layers keeping theirs too, then not, then attention outputs
  /// recomputed) with activations in host memory: every candidate the
  /// offload finds first, then the fewest that fit, by bisection (device
  /// memory falls and host memory grows with the count). Host memory comes
  /// last because the copies are not free: at short contexts a layer's
  /// compute cannot hide them. A global layer's attention output costs a
  /// copy each way at long context, its recomputation O(tokens^2).
  LogicalResult searchOffload(int64_t numLayers) {
    if (options.budgetBytes <= 0 || options.hostBudgetBytes == 0 || pipeline.offloadCount >= 0)
      return success();
    std::vector<MemoryPlan> plans = candidates(numLayers);
    plans.erase(plans.begin(), plans.end() - std::min<size_t>(2, plans.size()));
    if (!plans.empty() && plans.front().keepAttentionOutputs) {
      MemoryPlan keeping = plans.front();
      for (int64_t l : globalCheckpoints(keeping))
        keeping.layers[l] = LayerChoice::RecomputeAllButAttention;
      if (keeping.count(LayerChoice::RecomputeAllButAttention) > 0)
        plans.insert(plans.begin(), keeping);
    }
    for (MemoryPlan plan : plans) {
      plan.offloadCount = MemoryPlan::kEveryCandidate;
      OwningOpRef<ModuleOp> step;
      bool fits = false;
      if (failed(attempt(plan, step, fits)))
        return failure();
      auto deviceFits = [&](const FitAttempt &a) {
        return a.memory.deviceBytes() <= options.budgetBytes;
      };
      if (!deviceFits(fit.attempts.back()))
        continue;
      const int64_t copies = fit.attempts.back().memory.offloaded;
      if (fits)
        choose(std::move(step));
      auto planFor = [&](int64_t count) {
        plan.offloadCount = count;
        return plan;
      };
      if (failed(bisect(1, copies - 1, planFor, deviceFits)))
        return failure();
      // Within the host budget here, or else perhaps with the attention
      // outputs recomputed, which needs fewer activations offloaded.
      if (fit.fits())
        return success();
    }
    return success();
  }

private:
  /// The decoder layers of `forward`'s @forward whose attention is global
  /// (has no sliding_window).
  static llvm::SmallDenseSet<int64_t> globalLayers(ModuleOp forward) {
    llvm::SmallDenseSet<int64_t> global;
    if (auto f = forward.lookupSymbol<func::FuncOp>("forward"))
      f.walk([&](AttentionOp op) {
        auto name = dyn_cast<NameLoc>(op.getLoc());
        StringRef path = name ? name.getName().strref() : "";
        int64_t layer;
        if (!op.getSlidingWindowAttr() && path.consume_front("model.layers.") &&
            !path.consumeInteger(10, layer))
          global.insert(layer);
      });
    return global;
  }

  /// The global layers that `plan` checkpoints whole (RecomputeLayer), in
  /// layer order.
  std::vector<int64_t> globalCheckpoints(const MemoryPlan &plan) const {
    std::vector<int64_t> layers;
    for (auto [l, choice] : llvm::enumerate(plan.layers))
      if (choice == LayerChoice::RecomputeLayer && global.contains(l))
        layers.push_back(l);
    return layers;
  }

  /// The decoder layers, sliding-window layers first, then the global ones,
  /// each group in layer order.
  std::vector<int64_t> checkpointOrder(int64_t numLayers) {
    std::vector<int64_t> order;
    for (bool wantGlobal : {false, true})
      for (int64_t l = 0; l < numLayers; ++l)
        if (global.contains(l) == wantGlobal)
          order.push_back(l);
    return order;
  }

  /// The uniform plans, least recomputation first. Unless the pipeline
  /// fixes the chunk (tile-tokens >= 0), only the first plan keeps the
  /// feed-forward blocks whole: tiling them costs a few copies of their
  /// inputs and outputs and saves their intermediates, the largest
  /// activations at long context.
  std::vector<MemoryPlan> candidates(int64_t numLayers) const {
    const int64_t fixed = pipeline.tileTokens;
    const int64_t tile = fixed >= 0 ? fixed : chunkTokens(tokenCount(forward));
    std::vector<MemoryPlan> plans;
    for (LayerChoice level : levelsFor(options))
      for (bool keepAttention : {true, false}) {
        if (plans.empty() && fixed < 0 && tile > 0)
          plans.push_back(MemoryPlan::uniform(numLayers, level, keepAttention));
        plans.push_back(MemoryPlan::uniform(numLayers, level, keepAttention));
        plans.back().tileTokens = tile;
      }
    return plans;
  }

  /// The smallest count of layers for which `planFor` fits, by
  /// bisection (memory falls as the count grows); the attention choice and
  /// the chunk of the plan found so far stay.
  LogicalResult narrow(int64_t numLayers,
                       llvm::function_ref<MemoryPlan(int64_t count, bool keepAttention)> planFor) {
    const bool keepAttention = fit.plan.keepAttentionOutputs;
    const int64_t tileTokens = fit.plan.tileTokens;
    return bisect(
        1, numLayers - 1,
        [&](int64_t k) {
          MemoryPlan plan = planFor(k, keepAttention);
          plan.tileTokens = tileTokens;
          return plan;
        },
        [](const FitAttempt &a) { return a.fits; });
  }

  /// The smallest count in [lo, hi] whose plan (`planFor`) is `enough`, by
  /// bisection: memory falls as the count grows. Each plan tried that fits
  /// the budgets becomes the choice.
  LogicalResult bisect(int64_t lo, int64_t hi, llvm::function_ref<MemoryPlan(int64_t)> planFor,
                       llvm::function_ref<bool(const FitAttempt &)> enough) {
    while (lo <= hi) {
      const int64_t k = lo + (hi - lo) / 2;
      OwningOpRef<ModuleOp> step;
      bool fits = false;
      if (failed(attempt(planFor(k), step, fits)))
        return failure();
      if (!enough(fit.attempts.back())) {
        lo = k + 1;
        continue;
      }
      if (fits)
        choose(std::move(step));
      hi = k - 1;
    }
    return success();
  }

  ModuleOp forward;
  const TrainingPipelineOptions &pipeline;
  const MemoryFitOptions &options;
  PipelineRunner run;
  MemoryFit &fit;
  /// The layers whose attention is global.
  const llvm::SmallDenseSet<int64_t> global;
};

std::string gib(int64_t bytes) { return g3rt::gibText(uint64_t(bytes)); }

/// ", host memory 42.5 GiB for 34 activations (budget 64.0 GiB)" where a
/// step offloads.
std::string describeHost(const StepMemory &memory, int64_t hostBudgetBytes) {
  if (memory.offloaded <= 0)
    return "";
  return ", host memory " + gib(memory.hostBytes) + " for " + std::to_string(memory.offloaded) +
         " activations" +
         (hostBudgetBytes >= 0 ? " (budget " + gib(hostBudgetBytes) + ")" : std::string());
}

} // namespace

FailureOr<MemoryFit> g3moe::fitMemory(ModuleOp forward, const TrainingPipelineOptions &pipeline,
                                      const MemoryFitOptions &options, PipelineRunner run) {
  std::optional<int64_t> numLayers = layerCount(forward);
  if (!numLayers)
    return emitError(forward.getLoc(), "the memory fit needs the model's layer count "
                                       "(g3moe.model's num_hidden_layers)");
  MemoryFit fit;
  fit.budgetBytes = options.budgetBytes;
  fit.hostBudgetBytes = options.hostBudgetBytes;
  Search search(forward, pipeline, options, run, fit);
  if (failed(search.searchLevels(*numLayers)))
    return failure();
  // An offloading plan is already the most frugal: nothing to narrow.
  if (!fit.fits()) {
    if (failed(search.searchOffload(*numLayers)))
      return failure();
    return fit;
  }
  const bool narrow = options.budgetBytes > 0 && options.policy == RecomputePolicy::Auto;
  if (narrow && fit.plan.count(LayerChoice::RecomputeFeedForward) == *numLayers)
    if (failed(search.narrowFeedForward(*numLayers)))
      return failure();
  if (narrow && fit.plan.count(LayerChoice::RecomputeLayer) == *numLayers)
    if (failed(search.narrowLayers(*numLayers)))
      return failure();
  if (options.budgetBytes > 0 && fit.plan.count(LayerChoice::RecomputeLayer) > 0)
    if (failed(search.keepGlobalAttention()))
      return failure();
  return fit;
}

std::string g3moe::describeFit(const MemoryFit &fit) {
  return "device memory " + gib(fit.memory.deviceBytes()) + " (arena, persistent tensors and " +
         gib(fit.memory.scratchBytes) + " of attention scratch)" +
         (fit.budgetBytes > 0 ? ", budget " + gib(fit.budgetBytes) : std::string()) +
         describeHost(fit.memory, fit.hostBudgetBytes) + "; recompute " +
         fit.plan.describeRecompute() + fit.plan.describeExtras();
}

std::string g3moe::describeMisfit(const MemoryFit &fit) {
  std::string text = "the step does not fit memory_budget_gb (" + gib(fit.budgetBytes) + "):";
  for (const FitAttempt &a : fit.attempts)
    text += "\n  recompute " + a.plan.describeRecompute() +
            (a.plan.keepAttentionOutputs ? ", attention outputs kept" : "") +
            a.plan.describeExtras() + ": " + gib(a.memory.deviceBytes()) +
            describeHost(a.memory, fit.hostBudgetBytes);
  return text;
}

//===----------------------------------------------------------------------===//
// The pass
//===----------------------------------------------------------------------===//

namespace {

struct FitMemoryPass : g3moe::impl::G3MoEFitMemoryPassBase<FitMemoryPass> {
  using Base::Base;

  FitMemoryPass(std::shared_ptr<const TrainingPipelineOptions> step,
                const G3MoEFitMemoryPassOptions &options)
      : Base(options), step(std::move(step)) {}

  void runOnOperation() override;

  /// A dynamic pipeline loads no dialects of its own: the ops the step
  /// pipeline creates (arith constants, g3rt) must be loaded before it runs.
  void getDependentDialects(DialectRegistry &registry) const override {
    TrainingPipelineOptions defaults;
    OpPassManager pm(ModuleOp::getOperationName());
    buildFixedStepPipeline(pm, step ? *step : defaults);
    pm.getDependentDialects(registry);
  }

  /// Runs the candidate's pipeline as a dynamic pipeline of this pass, so
  /// that instrumentation (--mlir-print-ir-after-all, timing) sees it. A
  /// dynamic pipeline must run on this pass's module or inside it: the
  /// candidate is nested in the module while it compiles.
  LogicalResult runNested(ModuleOp candidate, PopulateFn populate) {
    OpPassManager pm(ModuleOp::getOperationName());
    populate(pm);
    getOperation().getBody()->push_back(candidate);
    LogicalResult result = runPipeline(pm, candidate);
    candidate->remove();
    // The analyses cached for the candidate would outlive it, keyed by an
    // address the next candidate may reuse.
    getAnalysisManager().clear();
    return result;
  }

  /// The pipeline options the plans do not decide; shared by clones of the
  /// pass (options are not copyable). Null: the defaults.
  std::shared_ptr<const TrainingPipelineOptions> step;
};

/// Moves `chosen`'s body and attributes into `module`, in place of its own.
void replaceModule(ModuleOp module, ModuleOp chosen) {
  module.getBody()->clear();
  module.getBody()->getOperations().splice(module.getBody()->end(),
                                           chosen.getBody()->getOperations());
  module->setAttrs(chosen->getAttrDictionary());
}

// Diagnostics go to the module's location, not the module: attached to the op
// they would print the whole module (--mlir-print-op-on-diagnostic).
void FitMemoryPass::runOnOperation() {
  ModuleOp module = getOperation();
  std::optional<RecomputePolicy> policy = parseRecomputePolicy(recompute);
  if (!policy) {
    emitError(module.getLoc()) << "recompute must be auto, none, mlp or layers, got '" << recompute
                               << "'";
    return signalPassFailure();
  }
  // The frontend's bound on memory_budget_gb, so that the bytes cannot overflow.
  if (!(memoryBudgetGb >= 0.0 && memoryBudgetGb <= 1e6)) {
    emitError(module.getLoc()) << "memory-budget-gb must be in [0, 1e6], got " << memoryBudgetGb;
    return signalPassFailure();
  }
  if (!(hostMemoryBudgetGb == -1.0 || (hostMemoryBudgetGb >= 0.0 && hostMemoryBudgetGb <= 1e6))) {
    emitError(module.getLoc()) << "host-memory-budget-gb must be -1 or in [0, 1e6], got "
                               << hostMemoryBudgetGb;
    return signalPassFailure();
  }
  TrainingPipelineOptions defaults;
  const TrainingPipelineOptions &pipeline = step ? *step : defaults;
  if (!pipeline.recomputeScopes.empty() || !pipeline.checkpointScopes.empty() ||
      !pipeline.keepAttentionScopes.empty() || !pipeline.saveAttentionStats) {
    emitError(module.getLoc())
        << "the memory fit chooses recompute-scopes, checkpoint-scopes, keep-attention-scopes "
           "and save-attention-stats; give either them or memory-budget-gb and recompute";
    return signalPassFailure();
  }

  MemoryFitOptions options;
  // As the frontend converts memory_budget_gb, so that both tools agree.
  options.budgetBytes = g3rt::gibToBytes(memoryBudgetGb);
  options.policy = *policy;
  if (hostMemoryBudgetGb >= 0)
    options.hostBudgetBytes = g3rt::gibToBytes(hostMemoryBudgetGb);
  // The module is the forward every candidate is cloned from; none is nested
  // in it while it is cloned.
  FailureOr<MemoryFit> fit =
      fitMemory(module, pipeline, options, [&](ModuleOp candidate, PopulateFn populate) {
        return runNested(candidate, populate);
      });
  if (failed(fit))
    return signalPassFailure();
  if (!fit->fits()) {
    emitError(module.getLoc()) << describeMisfit(*fit);
    return signalPassFailure();
  }
  emitRemark(module.getLoc()) << describeFit(*fit);
  replaceModule(module, *fit->step);
}

} // namespace

std::unique_ptr<Pass> g3moe::createFitMemoryPass(const TrainingPipelineOptions &step) {
  auto options = std::make_shared<TrainingPipelineOptions>();
  options->copyOptionValuesFrom(step);
  G3MoEFitMemoryPassOptions fit;
  fit.memoryBudgetGb = step.memoryBudgetGb;
  fit.recompute = step.recompute;
  fit.hostMemoryBudgetGb = step.hostMemoryBudgetGb;
  return std::make_unique<FitMemoryPass>(std::move(options), fit);
}
