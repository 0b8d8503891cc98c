//===- CompileMain.cpp - the g3moe-compile driver -------------------------===//
//
// model.json -> configuration -> g3moe graph -> (passes) -> output. The MLIR
// pass-manager, context and printer options are registered so that
// --mlir-print-ir-after-all, --mlir-timing and --mlir-print-debuginfo work in
// the real compiler, not only in g3moe-opt.
//
//===----------------------------------------------------------------------===//

#include "compiler/Driver/CompileMain.h"

#include "compiler/Driver/InitAll.h"
#include "compiler/Pipelines/TrainingPipeline.h"
#include "compiler/Serialize/StepWriter.h"
#include "dialects/G3RT/Transforms/MemoryPlan.h"
#include "runtime/schemas/container.h"
#include "frontend/Config.h"
#include "frontend/ModelBuilder.h"

#include "mlir/IR/AsmState.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/WithColor.h"

#include <set>

using namespace llvm;

namespace {

enum class Emit { Mlir, TrainMlir, G3RTMlir, Step };

int fail(const Twine &message) {
  WithColor::error(errs(), "g3moe-compile") << message << "\n";
  return 1;
}

std::string mib(int64_t bytes) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << llvm::format("%.2f MiB", double(bytes) / (1 << 20));
  return s;
}

/// The arena size and, per function, where live memory peaks and what the
/// largest live buffers there are (the kernel that writes each and the HF
/// module it belongs to).
void printMemoryReport(mlir::ModuleOp module, raw_ostream &os) {
  int64_t arena = 0;
  if (auto a = module->getAttrOfType<mlir::IntegerAttr>("g3rt.arena_bytes"))
    arena = a.getInt();
  os << "g3moe-compile: arena " << arena << " bytes (" << mib(arena) << ")\n";
  for (auto func : module.getOps<mlir::func::FuncOp>()) {
    g3rt_ir::MemoryReport r = g3rt_ir::reportMemory(func);
    os << "  @" << func.getSymName() << ": arena " << mib(r.arenaBytes)
       << ", peak live " << mib(r.peakLiveBytes) << " at launch " << r.peakLaunch
       << "; largest live there:\n";
    for (size_t i = 0; i < r.liveAtPeak.size() && i < 5; ++i) {
      g3rt_ir::BufferLife l = r.liveAtPeak[i];
      os << "    " << mib(l.bytes) << "  " << l.buffer.getType();
      if (l.producer) {
        os << " from " << l.producer.getKernel();
        if (auto name = dyn_cast<mlir::NameLoc>(l.producer.getLoc()))
          os << " (" << name.getName() << ")";
      }
      os << "\n";
    }
  }
}

/// What the backward recomputes (the scopes of --g3moe-recompute), and
/// whether attention outputs are kept for it (--g3moe-save-attention-stats).
struct Recompute {
  std::string name;
  std::vector<std::string> scopes;
  bool saveAttentionStats = true;
};

/// The feed-forward blocks (dense MLPs, MoE experts) of the first `layers` of
/// `numLayers` layers.
Recompute feedForwardOf(int64_t layers, int64_t numLayers, bool saveAttentionStats) {
  Recompute r{"mlp in " + std::to_string(layers) + " of " + std::to_string(numLayers) + " layers",
              {}, saveAttentionStats};
  for (int64_t l = 0; l < layers; ++l)
    for (const char *block : {".moe", ".mlp"})
      r.scopes.push_back("model.layers." + std::to_string(l) + block);
  return r;
}

/// Bytes a step holds on the device: the arena plus every persistent tensor
/// (weights, LoRA masters, gradient accumulators, Adam moments, inputs).
int64_t deviceBytes(mlir::ModuleOp module) {
  int64_t bytes = 0;
  if (auto a = module->getAttrOfType<mlir::IntegerAttr>("g3rt.arena_bytes"))
    bytes = a.getInt();
  std::set<std::pair<std::string, std::string>> seen;
  module.walk([&](g3rt_ir::BufferOp buffer) {
    if (buffer.getKind() == g3rt_ir::kArena)
      return;
    if (seen.insert({buffer.getKind().str(), buffer.getName().value_or("").str()}).second)
      bytes += g3rt_ir::bufferBytes(buffer.getType());
  });
  return bytes;
}

std::string gib(int64_t bytes) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << llvm::format("%.1f GiB", double(bytes) / double(1ll << 30));
  return s;
}

/// The training pipeline's options for a resolved configuration.
void setTrainingOptions(const g3moe::frontend::CompileConfig &config,
                        g3moe::TrainingPipelineOptions &options) {
  const auto &t = config.training;
  options.fullFinetune = t.finetuning == "full";
  options.loraRank = t.lora.rank;
  options.loraAlpha = t.lora.alpha;
  options.loraDropout = t.lora.dropout;
  options.loraTargets = t.lora.targetModules;
  options.trainRouter = t.trainRouter;
  options.freezeSharedExperts = config.model.freezeSharedExperts;
  options.learningRate = t.learningRate;
  options.schedule = t.lrSchedulerType;
  options.weightDecay = t.weightDecay;
  options.beta1 = t.adamBeta1;
  options.beta2 = t.adamBeta2;
  options.epsilon = t.adamEpsilon;
  options.maxGradNorm = t.maxGradNorm;
}

} // namespace

int g3moe::compiler::runCompileMain(int argc, char **argv) {
  InitLLVM init(argc, argv);
  static cl::OptionCategory category("g3moe-compile options");
  cl::opt<std::string> input(cl::Positional, cl::Required,
                             cl::desc("<model.json: an HF config.json or a training preset>"),
                             cl::cat(category));
  cl::opt<std::string> output("o", cl::desc("Output file ('-' for stdout)"),
                              cl::value_desc("file"), cl::init("-"),
                              cl::cat(category));
  cl::opt<Emit> emit(
      "emit", cl::desc("What to produce"), cl::init(Emit::Step),
      cl::values(clEnumValN(Emit::Mlir, "mlir",
                            "the forward + loss graph of one micro-batch (g3moe dialect)"),
                 clEnumValN(Emit::TrainMlir, "train-mlir",
                            "the whole training step: adapters, backward, optimizer"),
                 clEnumValN(Emit::G3RTMlir, "g3rt-mlir",
                            "the step lowered to kernel launches, memory planned"),
                 clEnumValN(Emit::Step, "step", "step.bin (default; needs -o)")),
      cl::cat(category));
  cl::opt<int> seqLen("seq-len", cl::desc("Tokens per row (overrides max_seq_length)"),
                      cl::init(0), cl::cat(category));
  cl::opt<int> microBatch(
      "micro-batch", cl::desc("Rows per micro-batch (overrides per_device_train_batch_size)"),
      cl::init(0), cl::cat(category));
  cl::list<std::string> sets(
      "set",
      cl::desc("Override a configuration field, as key=value (repeatable; prefix "
               "the key with model. or training. to choose the part)"),
      cl::value_desc("key=value"), cl::cat(category));
  cl::opt<bool> fp32("fp32",
                     cl::desc("Build weights and activations in fp32 instead of bf16 "
                              "(the exact reference for gradient checks)"),
                     cl::cat(category));
  cl::opt<bool> emitLogits(
      "emit-logits",
      cl::desc("Add the eval_logits entry point (logits of the evaluation forward), "
               "for comparisons with other implementations"),
      cl::cat(category));
  cl::opt<std::string> recompute(
      "recompute",
      cl::desc("Activations the backward recomputes instead of keeping: auto (the "
               "least that fits memory_budget_gb, down to the MLPs of the fewest layers; "
               "none without a budget), none, mlp (the MLPs and experts), layers (every "
               "decoder layer's linear parts); attention outputs are kept for the "
               "backward where they fit"),
      cl::init("auto"), cl::cat(category));
  cl::opt<bool> quiet("quiet", cl::desc("Do not print the memory report"),
                      cl::cat(category));
  cl::opt<bool> evalMode("eval",
                         cl::desc("Build the deterministic evaluation step (no jitter, "
                                  "argmax routing)"),
                         cl::cat(category));

  mlir::registerAsmPrinterCLOptions();
  mlir::registerMLIRContextCLOptions();
  mlir::registerPassManagerCLOptions();
  // LLVM's and MLIR's own options stay usable, but --help lists ours
  // (--help-hidden shows everything).
  cl::HideUnrelatedOptions(category);
  cl::ParseCommandLineOptions(
      argc, argv,
      "g3moe-compile: compile a G3MoE / Gemma-3 model configuration into one "
      "training step\n");

  std::vector<g3moe::frontend::ConfigOverride> overrides;
  for (const std::string &s : sets) {
    size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0)
      return fail("--set expects key=value, got '" + s + "'");
    overrides.push_back({s.substr(0, eq), s.substr(eq + 1)});
  }
  if (seqLen.getNumOccurrences())
    overrides.push_back({"training.max_seq_length", std::to_string(seqLen)});
  if (microBatch.getNumOccurrences())
    overrides.push_back(
        {"training.per_device_train_batch_size", std::to_string(microBatch)});

  auto config = g3moe::frontend::loadCompileConfig(input, overrides);
  if (!config)
    return fail(toString(config.takeError()));
  for (const std::string &warning : config->warnings)
    WithColor::warning(errs(), "g3moe-compile") << warning << "\n";

  if (emit == Emit::Step && output == "-")
    return fail("step.bin is binary: give an output file with -o");

  if (emit != Emit::Mlir && evalMode)
    return fail("--eval builds the evaluation step, which has no training step; "
                "use --emit=mlir");

  mlir::DialectRegistry registry;
  g3moe::registerAllDialects(registry);
  mlir::MLIRContext context(registry);
  g3moe::frontend::BuildOptions buildOptions;
  buildOptions.training = !evalMode;
  buildOptions.fp32 = fp32;
  buildOptions.withEval = emit != Emit::Mlir;
  buildOptions.withLogits = emitLogits && emit != Emit::Mlir;
  auto module = g3moe::frontend::buildStepModule(context, *config, buildOptions);
  if (failed(mlir::verify(*module)))
    return fail("internal error: the built graph does not verify (see above)");

  // What the backward recomputes, from the least to the most: nothing; the
  // feed-forward blocks (dense MLPs, MoE experts) of the first k layers; those
  // of every layer (`mlp`); whole layers. `auto` takes the least whose step
  // fits the memory budget. At each choice the attention outputs kept for the
  // backward (--g3moe-save-attention-stats) go first: a faster backward, but
  // more memory than recomputing them.
  const std::vector<std::pair<std::string, std::vector<std::string>>> levels = {
      {"none", {}}, {"mlp", {"moe", "mlp"}}, {"layers", {"model.layers"}}};
  std::vector<size_t> tried;
  if (recompute == "auto") {
    tried = {0};
    if (config->training.memoryBudgetBytes > 0)
      tried = {0, 1, 2};
  } else {
    for (size_t i = 0; i < levels.size(); ++i)
      if (levels[i].first == recompute)
        tried = {i};
    if (tried.empty())
      return fail("--recompute must be auto, none, mlp or layers, got '" + recompute + "'");
  }
  const bool lowered = emit == Emit::G3RTMlir || emit == Emit::Step;
  const int64_t budget = config->training.memoryBudgetBytes;
  const bool fitting = lowered && budget > 0;

  // Runs the pipeline for `r` on a copy of the module (the pipeline consumes
  // it) into `out`; `need` is the step's device memory when lowered.
  auto build = [&](const Recompute &r, mlir::OwningOpRef<mlir::ModuleOp> &out,
                   int64_t &need) -> mlir::LogicalResult {
    out = mlir::OwningOpRef<mlir::ModuleOp>(module->clone());
    mlir::PassManager pm(&context);
    if (failed(mlir::applyPassManagerCLOptions(pm))) {
      errs() << "g3moe-compile: error: bad pass-manager options\n";
      return mlir::failure();
    }
    if (emit != Emit::Mlir) {
      g3moe::TrainingPipelineOptions options;
      setTrainingOptions(*config, options);
      options.recomputeScopes = r.scopes;
      options.saveAttentionStats = r.saveAttentionStats;
      if (emit == Emit::TrainMlir)
        g3moe::buildTrainingPipeline(pm, options);
      else
        g3moe::buildStepPipeline(pm, options);
    }
    if (failed(pm.run(*out)))
      return mlir::failure();
    need = lowered ? deviceBytes(*out) : 0;
    return mlir::success();
  };

  mlir::OwningOpRef<mlir::ModuleOp> chosen;
  Recompute choice;
  std::string attempts;
  bool fits = false;
  for (size_t level : tried) {
    for (bool save : {true, false}) {
      Recompute r{levels[level].first, levels[level].second, save};
      int64_t need = 0;
      if (failed(build(r, chosen, need)))
        return 1;
      choice = r;
      fits = !fitting || need <= budget;
      if (fitting)
        attempts += "\n  recompute " + r.name + (save ? ", attention outputs kept: " : ": ") +
                    gib(need);
      if (fits)
        break;
    }
    if (fits)
      break;
  }
  if (!fits)
    return fail("the step does not fit memory_budget_gb (" + gib(budget) + "):" + attempts +
                "\nshorten --seq-len, lower --micro-batch, train fewer parameters, or "
                "raise the budget");

  // Every layer's feed-forward blocks recomputed fit: the fewest leading
  // layers' that do are enough (memory falls as layers are added), with the
  // attention outputs kept or not as chosen above. (Keeping them is worth
  // about as much as not recomputing a layer or two at 16K, more at 32K.)
  const int64_t numLayers = config->model.numLayers;
  if (fitting && recompute == "auto" && choice.name == "mlp") {
    const bool save = choice.saveAttentionStats;
    for (int64_t lo = 1, hi = numLayers - 1; lo <= hi;) {
      const int64_t k = lo + (hi - lo) / 2;
      Recompute r = feedForwardOf(k, numLayers, save);
      mlir::OwningOpRef<mlir::ModuleOp> candidate;
      int64_t need = 0;
      if (failed(build(r, candidate, need)))
        return 1;
      if (need > budget) {
        lo = k + 1;
        continue;
      }
      chosen = std::move(candidate);
      choice = r;
      hi = k - 1;
    }
  }
  module = std::move(chosen);
  if (lowered && !quiet)
    errs() << "g3moe-compile: device memory " << gib(deviceBytes(*module))
           << " (arena and persistent tensors)"
           << (budget > 0 ? ", budget " + gib(budget) : std::string()) << "; recompute "
           << choice.name << (choice.saveAttentionStats ? "" : ", attention outputs recomputed")
           << "\n";

  if (emit == Emit::G3RTMlir || emit == Emit::Step)
    if (!quiet)
      printMemoryReport(*module, errs());
  if (emit == Emit::Step) {
    std::vector<uint8_t> bytes;
    if (failed(g3moe::writeStep(*module, bytes)))
      return 1;
    g3rt::Status written = g3rt::writeFileAtomically(output, bytes);
    if (!written.ok())
      return fail(written.message());
    return 0;
  }

  std::string errorMessage;
  auto out = mlir::openOutputFile(output, &errorMessage);
  if (!out)
    return fail(errorMessage);
  module->print(out->os());
  out->os() << "\n";
  out->keep();
  return 0;
}
