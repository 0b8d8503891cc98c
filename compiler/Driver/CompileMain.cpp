//===- CompileMain.cpp - the g3moe-compile driver -------------------------===//
//
// model.json -> configuration -> g3moe graph -> (passes) -> output. The
// memory planner (compiler/Pipelines/MemoryFit.h) chooses what the lowered
// step recomputes, within memory_budget_gb or, without it, the visible GPU's
// memory (DeviceBudget.h); the driver prints its report. The MLIR pass-manager,
// context and printer options are registered so that
// --mlir-print-ir-after-all, --mlir-timing and --mlir-print-debuginfo work in
// the real compiler, not only in g3moe-opt.
//
//===----------------------------------------------------------------------===//

#include "compiler/Driver/CompileMain.h"

#include "compiler/Driver/DeviceBudget.h"
#include "compiler/Driver/InitAll.h"
#include "compiler/Pipelines/MemoryFit.h"
#include "compiler/Pipelines/TrainingPipeline.h"
#include "compiler/Serialize/StepWriter.h"
#include "dialects/G3RT/Transforms/MemoryPlan.h"
#include "frontend/Config.h"
#include "frontend/ModelBuilder.h"
#include "runtime/base/file.h"
#include "runtime/base/units.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/WithColor.h"

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
  if (auto h = module->getAttrOfType<mlir::IntegerAttr>("g3rt.host_bytes"))
    os << "g3moe-compile: host arena " << h.getInt() << " bytes (" << mib(h.getInt())
       << "): offloaded activations, in pinned host memory on the GPU\n";
  for (auto func : module.getOps<mlir::func::FuncOp>()) {
    g3moe::lowered::MemoryReport r = g3moe::lowered::reportMemory(func);
    os << "  @" << func.getSymName() << ": arena " << mib(r.arenaBytes) << ", peak live "
       << mib(r.peakLiveBytes) << " at launch " << r.peakLaunch << "; largest live there:\n";
    for (size_t i = 0; i < r.liveAtPeak.size() && i < 5; ++i) {
      g3moe::lowered::BufferLife l = r.liveAtPeak[i];
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
  options.fp8Base = t.fp8Base;
  options.freezeSharedExperts = config.model.freezeSharedExperts;
  options.learningRate = t.learningRate;
  options.schedule = t.lrSchedulerType;
  options.weightDecay = t.weightDecay;
  options.beta1 = t.adamBeta1;
  options.beta2 = t.adamBeta2;
  options.epsilon = t.adamEpsilon;
  options.maxGradNorm = t.maxGradNorm;
  options.zeroStage = t.zeroStage;
  options.processes = std::max<int64_t>(t.dataParallel, 1);
}

/// Where the budget comes from, for --help (the reserve as DeviceBudget.h
/// sets it).
std::string budgetHelp() {
  return "memory_budget_gb (a config field or --set memory_budget_gb=N, in GiB; 0: no "
         "budget), else the visible GPU's total memory less a " +
         g3rt::gibText(uint64_t(g3moe::compiler::kDeviceReserveBytes)) +
         " reserve for the CUDA runtime";
}

/// The tool's overview and --recompute's description. cl keeps StringRefs
/// to them, so they live as long as the process.
const std::string &overviewHelp() {
  static const std::string text = "g3moe-compile: compile a G3MoE / Gemma-3 model configuration "
                                  "into one training step, planned to fit " +
                                  budgetHelp() + "\n";
  return text;
}
const std::string &recomputeHelp() {
  static const std::string text =
      "Activations the backward recomputes instead of keeping: auto (the least that fits the "
      "memory budget, down to the MLPs of the fewest layers; none without a budget), none, mlp "
      "(the MLPs and experts), layers (every decoder layer from its input: only the layer "
      "boundaries are kept); attention outputs are kept for the backward where they fit. The "
      "budget: " +
      budgetHelp();
  return text;
}

cl::OptionCategory &compileCategory() {
  static cl::OptionCategory category("g3moe-compile options");
  return category;
}

/// g3moe-compile's command line.
struct Flags {
  cl::opt<std::string> input{cl::Positional, cl::Required,
                             cl::desc("<model.json: an HF config.json or a training preset>"),
                             cl::cat(compileCategory())};
  cl::opt<std::string> output{"o", cl::desc("Output file ('-' for stdout)"), cl::value_desc("file"),
                              cl::init("-"), cl::cat(compileCategory())};
  cl::opt<Emit> emit{
      "emit", cl::desc("What to produce"), cl::init(Emit::Step),
      cl::values(clEnumValN(Emit::Mlir, "mlir",
                            "the forward + loss graph of one micro-batch (g3moe dialect)"),
                 clEnumValN(Emit::TrainMlir, "train-mlir",
                            "the whole training step: adapters, backward, optimizer"),
                 clEnumValN(Emit::G3RTMlir, "g3rt-mlir",
                            "the step lowered to kernel launches, memory planned"),
                 clEnumValN(Emit::Step, "step", "step.bin (default; needs -o)")),
      cl::cat(compileCategory())};
  cl::opt<int> seqLen{"seq-len", cl::desc("Tokens per row (overrides max_seq_length)"), cl::init(0),
                      cl::cat(compileCategory())};
  cl::opt<int> microBatch{"micro-batch",
                          cl::desc("Rows per micro-batch (overrides per_device_train_batch_size)"),
                          cl::init(0), cl::cat(compileCategory())};
  cl::list<std::string> sets{
      "set",
      cl::desc("Override a configuration field, as key=value (repeatable; prefix "
               "the key with model. or training. to choose the part)"),
      cl::value_desc("key=value"), cl::cat(compileCategory())};
  cl::opt<bool> fp32{"fp32",
                     cl::desc("Build weights and activations in fp32 instead of bf16 "
                              "(the exact reference for gradient checks)"),
                     cl::cat(compileCategory())};
  cl::opt<bool> emitLogits{
      "emit-logits",
      cl::desc("Add the eval_logits entry point (logits of the evaluation forward), "
               "for comparisons with other implementations"),
      cl::cat(compileCategory())};
  cl::opt<std::string> recompute{"recompute", cl::desc(recomputeHelp()), cl::init("auto"),
                                 cl::cat(compileCategory())};
  cl::opt<int64_t> tileTokens{
      "tile-tokens",
      cl::desc("Run the feed-forward blocks on chunks of this many tokens: -1 (default) lets "
               "the memory planner choose under a budget, 0 keeps them whole"),
      cl::init(-1), cl::cat(compileCategory())};
  cl::opt<int64_t> offload{
      "offload",
      cl::desc("Keep this many long-idle activations (layer checkpoints first) in host memory "
               "between the forward and the backward: -1 (default) lets the memory planner "
               "choose when nothing else fits the budget (within host_memory_budget_gb), 0 "
               "keeps every activation on the device"),
      cl::init(-1), cl::cat(compileCategory())};
  cl::opt<int64_t> offloadMinBytes{
      "offload-min-bytes",
      cl::desc("The smallest activation kept in host memory, in bytes (default 64 MiB)"),
      cl::init(g3moe::kOffloadMinBytes), cl::cat(compileCategory())};
  cl::opt<bool> lmHeadOnePass{
      "lm-head-one-pass",
      cl::desc("Compute the LM head's loss and input gradient in one pass over the logits "
               "where the table is frozen (LoRA training: each tile of logits once instead of "
               "twice; default on, =false for two passes)"),
      cl::init(true), cl::cat(compileCategory())};
  cl::opt<bool> dropoutInProducts{
      "dropout-in-products",
      cl::desc("Apply the LoRA dropouts inside the low-rank products that read or write the "
               "dropped tensor, from one mask of bits per draw, so that the dropped tensor is "
               "never stored (default on; =false for separate keyed_dropout ops)"),
      cl::init(true), cl::cat(compileCategory())};
  cl::opt<bool> quiet{"quiet", cl::desc("Do not print the memory report"),
                      cl::cat(compileCategory())};
  cl::opt<bool> evalMode{"eval",
                         cl::desc("Build the deterministic evaluation step (no jitter, "
                                  "argmax routing)"),
                         cl::cat(compileCategory())};

  /// Whether the output is lowered to g3rt, where memory is planned.
  bool lowered() const { return emit == Emit::G3RTMlir || emit == Emit::Step; }
};

/// The pipeline's options: the configuration's, and the chunk and host
/// offload the flags fix.
void setPipelineOptions(const Flags &flags, const g3moe::frontend::CompileConfig &config,
                        g3moe::TrainingPipelineOptions &options) {
  setTrainingOptions(config, options);
  options.tileTokens = int64_t(flags.tileTokens);
  options.offloadCount = int64_t(flags.offload);
  options.offloadMinBytes = int64_t(flags.offloadMinBytes);
  options.lmHeadOnePass = bool(flags.lmHeadOnePass);
  options.dropoutInProducts = bool(flags.dropoutInProducts);
}

/// The configuration the flags name, with --set, --seq-len and --micro-batch
/// applied.
Expected<g3moe::frontend::CompileConfig> loadConfig(const Flags &flags) {
  std::vector<g3moe::frontend::ConfigOverride> overrides;
  for (const std::string &s : flags.sets) {
    size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0)
      return createStringError("--set expects key=value, got '" + s + "'");
    overrides.push_back({s.substr(0, eq), s.substr(eq + 1)});
  }
  if (flags.seqLen.getNumOccurrences())
    overrides.push_back({"training.max_seq_length", std::to_string(flags.seqLen)});
  if (flags.microBatch.getNumOccurrences())
    overrides.push_back({"training.per_device_train_batch_size", std::to_string(flags.microBatch)});
  return g3moe::frontend::loadCompileConfig(flags.input, overrides);
}

/// Runs a pipeline in a pass manager of its own that takes the command line's
/// --mlir-* pass-manager options, as every pipeline g3moe-compile runs does.
mlir::LogicalResult runWithCLOptions(mlir::ModuleOp module, g3moe::PopulateFn populate) {
  mlir::PassManager pm(module.getContext());
  if (failed(mlir::applyPassManagerCLOptions(pm))) {
    errs() << "g3moe-compile: error: bad pass-manager options\n";
    return mlir::failure();
  }
  populate(pm);
  return pm.run(module);
}

/// Compiles the lowered step with the memory planner, within memory_budget_gb
/// or the visible GPU's default, and prints its report; `module` becomes the
/// chosen step. Returns the exit code (0: go on).
int fitStep(const Flags &flags, const g3moe::frontend::CompileConfig &config,
            g3moe::RecomputePolicy policy, const g3moe::compiler::DeviceQuery &queryDevice,
            mlir::OwningOpRef<mlir::ModuleOp> &module) {
  using g3moe::compiler::MemoryBudget;
  g3moe::TrainingPipelineOptions pipeline;
  setPipelineOptions(flags, config, pipeline);
  const MemoryBudget budget = g3moe::compiler::resolveMemoryBudget(config.training, queryDevice);
  g3moe::MemoryFitOptions options;
  options.budgetBytes = budget.bytes;
  options.policy = policy;
  options.hostBudgetBytes = config.training.hostMemoryBudgetBytes;
  mlir::FailureOr<g3moe::MemoryFit> fit =
      g3moe::fitMemory(*module, pipeline, options, runWithCLOptions);
  if (failed(fit))
    return 1;
  if (!fit->fits())
    return fail(g3moe::describeMisfit(*fit) +
                "\nshorten --seq-len, lower --micro-batch, train fewer parameters, or " +
                (budget.origin == MemoryBudget::Origin::Device
                     ? "give memory_budget_gb for a larger card (--set memory_budget_gb=N)"
                     : "raise the budget") +
                "\n" + g3moe::compiler::describeBudget(budget));
  module = std::move(fit->step);
  if (!flags.quiet) {
    errs() << "g3moe-compile: " << g3moe::compiler::describeBudget(budget) << "\n";
    errs() << "g3moe-compile: " << g3moe::describeFit(*fit) << "\n";
    if (const int64_t processes = config.training.dataParallel; processes > 1) {
      if (config.training.zeroStage == 0)
        errs() << "g3moe-compile: per process: each of the " << processes
               << " data-parallel processes holds the whole state and needs the memory above "
                  "(zero_stage 0)\n";
      else
        errs() << "g3moe-compile: per process: the Adam moments"
               << (config.training.zeroStage == 2   ? " and the gradients"
                   : config.training.zeroStage == 3 ? ", the gradients and the trained parameters"
                                                    : "")
               << " are divided among the " << processes << " data-parallel processes (zero_stage "
               << config.training.zeroStage
               << "); the memory above is that of the process holding the most\n";
    }
    printMemoryReport(*module, errs());
  }
  return 0;
}

/// Runs what the unlowered outputs need: nothing for the forward graph, the
/// training pipeline for the training step (which recomputes nothing yet).
int runUnlowered(const Flags &flags, const g3moe::frontend::CompileConfig &config,
                 mlir::OwningOpRef<mlir::ModuleOp> &module) {
  g3moe::TrainingPipelineOptions pipeline;
  setPipelineOptions(flags, config, pipeline);
  auto populate = [&](mlir::OpPassManager &pm) {
    if (flags.emit == Emit::TrainMlir)
      g3moe::buildTrainingPipeline(pm, pipeline);
  };
  return failed(runWithCLOptions(*module, populate)) ? 1 : 0;
}

/// Writes step.bin or the IR, as --emit asks.
int writeOutput(const Flags &flags, mlir::ModuleOp module) {
  if (flags.emit == Emit::Step) {
    std::vector<uint8_t> bytes;
    if (failed(g3moe::writeStep(module, bytes)))
      return 1;
    g3rt::Status written = g3rt::writeFileAtomically(flags.output, bytes);
    if (!written.ok())
      return fail(written.message());
    return 0;
  }
  std::string errorMessage;
  auto out = mlir::openOutputFile(flags.output, &errorMessage);
  if (!out)
    return fail(errorMessage);
  module->print(out->os());
  out->os() << "\n";
  out->keep();
  return 0;
}

} // namespace

int g3moe::compiler::runCompileMain(int argc, char **argv, const DeviceQuery &queryDevice) {
  InitLLVM init(argc, argv);
  Flags flags;
  mlir::registerAsmPrinterCLOptions();
  mlir::registerMLIRContextCLOptions();
  mlir::registerPassManagerCLOptions();
  // LLVM's and MLIR's own options stay usable, but --help lists ours
  // (--help-hidden shows everything).
  cl::HideUnrelatedOptions(compileCategory());
  cl::ParseCommandLineOptions(argc, argv, overviewHelp());

  auto config = loadConfig(flags);
  if (!config)
    return fail(toString(config.takeError()));
  for (const std::string &warning : config->warnings)
    WithColor::warning(errs(), "g3moe-compile") << warning << "\n";
  if (flags.emit == Emit::Step && flags.output == "-")
    return fail("step.bin is binary: give an output file with -o");
  if (flags.emit != Emit::Mlir && flags.evalMode)
    return fail("--eval builds the evaluation step, which has no training step; "
                "use --emit=mlir");

  if (flags.fp32 && config->training.fp8Base)
    return fail("fp8_base quantizes the frozen bf16 weights, and --fp32 builds them in fp32: "
                "drop one of the two");

  mlir::DialectRegistry registry;
  g3moe::registerAllDialects(registry);
  mlir::MLIRContext context(registry);
  g3moe::frontend::BuildOptions buildOptions;
  buildOptions.training = !flags.evalMode;
  buildOptions.fp32 = flags.fp32;
  buildOptions.withEval = flags.emit != Emit::Mlir;
  buildOptions.withLogits = flags.emitLogits && flags.emit != Emit::Mlir;
  auto module = g3moe::frontend::buildStepModule(context, *config, buildOptions);
  if (failed(mlir::verify(*module)))
    return fail("internal error: the built graph does not verify (see above)");

  std::optional<g3moe::RecomputePolicy> policy = g3moe::parseRecomputePolicy(flags.recompute);
  if (!policy)
    return fail("--recompute must be auto, none, mlp or layers, got '" + flags.recompute + "'");
  if (flags.tileTokens < -1)
    return fail("--tile-tokens must be -1 (the planner's choice), 0 (whole) or a chunk size, "
                "got " +
                std::to_string(flags.tileTokens));
  if (flags.offload < -1 || flags.offloadMinBytes < 0)
    return fail("--offload must be -1 (the planner's choice), 0 (none) or a count, and "
                "--offload-min-bytes not negative");
  if (int rc = flags.lowered() ? fitStep(flags, *config, *policy, queryDevice, module)
                               : runUnlowered(flags, *config, module))
    return rc;
  return writeOutput(flags, *module);
}
