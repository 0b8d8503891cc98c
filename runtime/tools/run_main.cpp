//===- run_main.cpp - the g3moe-run command -------------------------------===//

#include "runtime/tools/run_main.h"

#include "runtime/base/parallel.h"
#include "runtime/dist/load_communicator.h"
#include "runtime/step/program.h"
#include "runtime/tools/launch.h"
#include "runtime/train/inspect.h"
#include "runtime/train/progress.h"
#include "runtime/train/trainer.h"

#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdlib>
#include <iostream>
#include <new>
#include <ostream>

namespace g3rt {

namespace {

template <typename T>
void optional(CLI::App &app, const char *flag, std::optional<T> &target, const char *help) {
  app.add_option_function<T>(flag, [&target](const T &v) { target = v; }, help);
}

/// What g3moe-run's command line fills in.
struct RunFlags {
  std::string stepPath;
  TrainOptions options;
  InspectOptions inspect;
  int threads = 0;
  int nprocPerNode = 1;
  std::string resumeDir;
  CLI::Option *resumeOption = nullptr;
  bool noProgressBar = false;
};

/// The step, its data file and output folder, the schedule, checkpoints and
/// evaluation.
void addRunOptions(CLI::App &app, RunFlags &f) {
  app.add_option("step", f.stepPath, "step.bin written by g3moe-compile")->required();
  app.add_option("--data", f.options.dataPath,
                 "training data: JSONL of {\"messages\": [...]}, {\"text\": ...}, "
                 "{\"prompt\", \"completion\"} or {\"input_ids\", \"labels\"} "
                 "(default: the step's dataset)");
  app.add_option("--output-dir", f.options.outputDir,
                 "where the trained parameters and metrics.jsonl go "
                 "(default: the step's output_dir, else g3moe-output)");
  optional(app, "--epochs", f.options.epochs, "training epochs (default: compiled)");
  optional(app, "--max-steps", f.options.maxSteps, "stop after this many optimizer steps");
  optional(app, "--gradient-accumulation-steps", f.options.gradientAccumulationSteps,
           "micro-batches per optimizer step");
  optional(app, "--learning-rate", f.options.learningRate, "peak learning rate");
  optional(app, "--lr-scheduler-type", f.options.lrSchedulerType,
           "cosine, linear, constant or constant_with_warmup");
  optional(app, "--warmup-ratio", f.options.warmupRatio, "warmup as a fraction of the steps");
  optional(app, "--warmup-steps", f.options.warmupSteps, "warmup steps (overrides the ratio)");
  optional(app, "--seed", f.options.seed, "seed of initialisation, shuffling and dropout");
  optional(app, "--logging-steps", f.options.loggingSteps, "optimizer steps per log line");
  optional(app, "--eval-steps", f.options.evalSteps,
           "optimizer steps between evaluations on the eval split (0: only at the end)");
  optional(app, "--save-steps", f.options.saveSteps,
           "optimizer steps between checkpoints (output-dir/checkpoint-<step>; 0: none)");
  optional(app, "--save-total-limit", f.options.saveTotalLimit,
           "checkpoints to keep; older ones are deleted (0: all)");
  f.resumeOption =
      app.add_option("--resume", f.resumeDir,
                     "continue from checkpoint DIR (no value: the latest checkpoint-<step> "
                     "in --output-dir)")
          ->expected(0, 1);
  optional(app, "--stop-after-steps", f.options.stopAfterSteps,
           "end the run after this many optimizer steps as if interrupted (the schedule "
           "still spans the whole run; resume it with --resume)");
  app.add_flag("--eval-only", f.options.evalOnly,
               "evaluate the step (with --weights / --resume parameters) on the whole data "
               "file and print eval_loss and eval_mean_token_accuracy as JSON");
  app.add_option("--metrics-file", f.options.metricsFile,
                 "with --eval-only: write the JSON metrics to this file instead");
  app.add_flag("--no-progress-bar", f.noProgressBar, "plain log lines even on a terminal");
  app.add_option("--nproc-per-node", f.nprocPerNode,
                 "start N processes of this command on this machine that train the job "
                 "together (data parallel, as torchrun --no-python would start "
                 "them; ignored inside a launched job)")
      ->check(CLI::Range(1, 1024));
}

/// How the data file's lines become training rows.
void addDataOptions(CLI::App &app, TrainOptions &options) {
  app.add_flag("--skip-bad-lines", options.skipBadLines,
               "skip malformed data lines with a warning instead of stopping");
  optional(app, "--max-line-bytes", options.maxLineBytes,
           "longest data line in bytes; a longer one is a bad line, never read into "
           "memory whole (default: the step's max_line_bytes, else 64 MiB)");
  app.add_option("--tokenizer", options.tokenizerPath,
                 "SentencePiece tokenizer.model (or its folder) for text data "
                 "(default: the --weights folder's tokenizer.model)");
  app.add_option("--data-format", options.dataFormat,
                 "auto (per line), tokenized, messages, text or prompt_completion")
      ->check(CLI::IsMember({"auto", "tokenized", "messages", "text", "prompt_completion"}));
  app.add_flag_function(
      "--packing", [&options](int64_t) { options.packing = true; },
      "pack examples into full rows (documents isolated by segment ids)");
  app.add_flag_function(
      "--assistant-only-loss", [&options](int64_t) { options.assistantOnlyLoss = true; },
      "train on assistant turns (and completions) only, not on the whole sequence");
  app.add_option_function<std::string>(
         "--loss-denominator", [&options](const std::string &v) { options.lossDenominator = v; },
         "what divides a window's summed loss: shifted (the cross-entropy terms, as "
         "transformers' Trainer counts them today) or unshifted (the labels before the "
         "shift, as transformers 4.46-4.5x did) (default: the step's loss_denominator)")
      ->check(CLI::IsMember({"shifted", "unshifted"}));
  app.add_option("--images", options.images,
                 "chat samples with image parts: drop them, or mask the placeholder tokens")
      ->check(CLI::IsMember({"drop", "mask"}));
  optional(app, "--test-size", options.testSize,
           "fraction of the examples held out for evaluation, seeded (default: the "
           "step's test_size, else 0)");
  app.add_option("--dump-data", options.dumpDataPath,
                 "write the loaded train rows as JSONL {input_ids, labels, segment_ids, "
                 "positions} to FILE and exit");
}

/// Threads and device, the base weights, and the inspection modes that
/// write something and exit.
void addDeviceAndWeightOptions(CLI::App &app, RunFlags &f) {
  app.add_option("--threads", f.threads, "CPU threads (default: all)");
  // The environment variable lets a test suite pin the CPU reference
  // backend (bit-exact resume checks) on a machine that has a GPU.
  f.options.device = "auto";
  app.add_option("--device", f.options.device,
                 "where the steps run: cuda (the first visible GPU; in a job of several "
                 "processes the GPU of the local rank), cpu, or auto (cuda when "
                 "this g3moe-run was built with CUDA and a GPU is visible, else cpu); also "
                 "for --eval-only, --dump-gradients and --dump-logits. Default: "
                 "$G3MOE_DEVICE, else auto")
      ->envname("G3MOE_DEVICE")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  app.add_option("--weights", f.options.weightsDir,
                 "HF checkpoint folder (model.safetensors or a sharded index, config.json) "
                 "to load the base weights from after the seeded initialisation; a dense "
                 "Gemma-3 checkpoint is upcycled into a G3MoE step");
  app.add_flag("--merge", f.options.merge,
               "at the end, also write output-dir/merged/: a full HF checkpoint with the "
               "LoRA adapters merged in");
  app.add_option("--save-initial-weights", f.inspect.saveInitialWeights,
                 "write the initialised (or --weights) base model as an HF checkpoint into "
                 "DIR and exit");
  app.add_option("--dump-gradients", f.inspect.dumpGradients,
                 "run forward_backward on the first micro-batch, write loss and gradients "
                 "to FILE (safetensors) and exit");
  app.add_option("--dump-logits", f.inspect.dumpLogits,
                 "run eval_logits (g3moe-compile --emit-logits) on the first micro-batch, "
                 "write the logits to FILE (safetensors) and exit");
}

/// A job of several processes (torchrun's or Slurm's environment): the
/// communicator that joins them (Gloo; the CUDA backend sums gradients with
/// NCCL and each process uses the GPU of its local rank). Rank 0 alone writes the log,
/// checkpoints and the trained files; the others train quietly beside it.
/// A step compiled for a number of processes (data_parallel) runs on that
/// many.
Status joinJob(const StepProgram &program, const World &world, RunFlags &f,
               std::unique_ptr<Communicator> &comm) {
  const int64_t wanted = program.training.dataParallel;
  if (wanted > 0 && wanted != world.size)
    return Status::error(f.stepPath + ": compiled for data_parallel " + std::to_string(wanted) +
                         " processes, but the job has " + std::to_string(world.size) +
                         " (start it with torchrun --nproc-per-node " + std::to_string(wanted) +
                         " or --nproc-per-node " + std::to_string(wanted) +
                         ", or compile with data_parallel auto)");
  f.options.placement = Placement{world.localRank, world.rank, world.size};
  if (world.size == 1)
    return Status();
  // A peer that dies closes its sockets: a write to one must fail the
  // collective with an error naming it, not end this process with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  GlooOptions gloo;
  if (const char *t = std::getenv("G3MOE_DIST_TIMEOUT_S"); t && std::atoi(t) > 0)
    gloo.timeout = std::chrono::seconds(std::atoi(t));
  // Called on the watchdog's thread while this one is blocked in Gloo: the
  // log so far is flushed, and the process ends as a failed collective would.
  gloo.onStuck = [](const std::string &message) {
    std::cout.flush();
    std::cerr << "g3moe-run: error: " << message << std::endl;
    std::_Exit(1);
  };
  G3RT_RETURN_IF_ERROR(loadGlooCommunicator(world, gloo, comm));
  f.options.communicator = comm.get();
  f.options.placement.job = comm.get();
  if (world.rank != 0) {
    f.options.writer = false;
    f.options.progressBar = false;
  }
  return Status();
}

/// Discards what is written to it (the log of ranks other than 0).
struct NullStream : std::ostream {
  NullStream() : std::ostream(nullptr) {}
};

/// runMain's work; errors are Status values printed here.
int runCommand(int argc, char **argv) {
  CLI::App app{"g3moe-run: train a compiled G3MoE / Gemma-3 step (step.bin) on a CUDA GPU or "
               "the CPU"};
  RunFlags f;
  addRunOptions(app, f);
  addDataOptions(app, f.options);
  addDeviceAndWeightOptions(app, f);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  // The launcher: this process only starts the ranks (unless it is one).
  if (f.nprocPerNode > 1 && !std::getenv("RANK") && !std::getenv("SLURM_PROCID")) {
    std::vector<std::string> args;
    for (int i = 0; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--nproc-per-node") {
        ++i;
        continue;
      }
      if (a.rfind("--nproc-per-node=", 0) != 0)
        args.push_back(a);
    }
    return launchLocalRanks(f.nprocPerNode, args);
  }
  if (f.threads > 0)
    setParallelThreads(f.threads);
  if (f.resumeOption->count() > 0)
    f.options.resume = f.resumeDir;
  f.options.progressBar = !f.noProgressBar && stdoutIsTerminal();

  StepProgram program;
  Status s = loadStep(f.stepPath, program);
  if (!s.ok()) {
    std::cerr << "g3moe-run: error: " << s.message() << "\n";
    return 1;
  }
  if (f.inspect.any()) {
    s = runInspection(program, f.options, f.inspect, std::cout);
    if (!s.ok()) {
      std::cerr << "g3moe-run: error: " << s.message() << "\n";
      return 1;
    }
    return 0;
  }
  World world;
  std::unique_ptr<Communicator> comm;
  s = worldFromEnvironment(processEnvironment(), world);
  if (s.ok())
    s = joinJob(program, world, f, comm);
  const std::string who =
      world.size > 1 ? "g3moe-run (rank " + std::to_string(world.rank) + "): " : "g3moe-run: ";
  if (!s.ok()) {
    std::cerr << who << "error: " << s.message() << "\n";
    return 1;
  }
  TrainResult result;
  NullStream quiet;
  s = train(program, f.options, world.rank == 0 ? std::cout : quiet, result);
  if (!s.ok()) {
    std::cerr << who << "error: " << s.message() << "\n";
    return 1;
  }
  return 0;
}

} // namespace

int runMain(int argc, char **argv) {
  // The runtime reports failures as Status values; an exception that escapes
  // all the same (memory exhausted) still ends with a message and exit code
  // 1, not an abort.
  try {
    return runCommand(argc, argv);
  } catch (const std::bad_alloc &) {
    std::cerr << "g3moe-run: error: out of memory\n";
  } catch (const std::exception &e) {
    std::cerr << "g3moe-run: error: " << e.what() << "\n";
  }
  return 1;
}

} // namespace g3rt
