//===- run_main.cpp - the g3moe-run command -------------------------------===//

#include "runtime/tools/run_main.h"

#include "runtime/base/parallel.h"
#include "runtime/step/program.h"
#include "runtime/train/trainer.h"

#include <CLI/CLI.hpp>

#include <iostream>

namespace g3rt {

namespace {

template <typename T>
void optional(CLI::App &app, const char *flag, std::optional<T> &target, const char *help) {
  app.add_option_function<T>(flag, [&target](const T &v) { target = v; }, help);
}

} // namespace

int runMain(int argc, char **argv) {
  CLI::App app{"g3moe-run: train a compiled G3MoE / Gemma-3 step (step.bin) on the CPU"};
  std::string stepPath;
  TrainOptions options;
  int threads = 0;
  app.add_option("step", stepPath, "step.bin written by g3moe-compile")->required();
  app.add_option("--data", options.dataPath,
                 "training data: JSONL of {\"input_ids\": [...], \"labels\": [...]} "
                 "(default: the step's dataset)");
  app.add_option("--output-dir", options.outputDir,
                 "where the trained parameters and metrics.jsonl go "
                 "(default: the step's output_dir, else g3moe-output)");
  optional(app, "--epochs", options.epochs, "training epochs (default: compiled)");
  optional(app, "--max-steps", options.maxSteps, "stop after this many optimizer steps");
  optional(app, "--gradient-accumulation-steps", options.gradientAccumulationSteps,
           "micro-batches per optimizer step");
  optional(app, "--learning-rate", options.learningRate, "peak learning rate");
  optional(app, "--lr-scheduler-type", options.lrSchedulerType,
           "cosine, linear, constant or constant_with_warmup");
  optional(app, "--warmup-ratio", options.warmupRatio, "warmup as a fraction of the steps");
  optional(app, "--warmup-steps", options.warmupSteps, "warmup steps (overrides the ratio)");
  optional(app, "--seed", options.seed, "seed of initialisation, shuffling and dropout");
  optional(app, "--logging-steps", options.loggingSteps, "optimizer steps per log line");
  app.add_flag("--skip-bad-lines", options.skipBadLines,
               "skip malformed data lines with a warning instead of stopping");
  app.add_option("--threads", threads, "CPU threads (default: all)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (threads > 0)
    setParallelThreads(threads);

  StepProgram program;
  Status s = loadStep(stepPath, program);
  if (!s.ok()) {
    std::cerr << "g3moe-run: error: " << s.message() << "\n";
    return 1;
  }
  TrainResult result;
  s = train(program, options, std::cout, result);
  if (!s.ok()) {
    std::cerr << "g3moe-run: error: " << s.message() << "\n";
    return 1;
  }
  return 0;
}

} // namespace g3rt
