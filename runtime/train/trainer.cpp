//===- trainer.cpp - the training loop of g3moe-run -----------------------===//
//
// The schedule horizon counts the updates the run will really make (every
// accumulation window of every epoch, the shorter last window of an epoch
// included, or --max-steps), so a cosine schedule ends at 0 instead of
// turning back up.
//
// Everything a step depends on besides the tensors is a function of the
// seed, the epoch, the window within the epoch and the micro-batch counter;
// checkpoints save exactly those, which is what makes a resumed run repeat
// an uninterrupted one bit for bit.
//
//===----------------------------------------------------------------------===//

#include "runtime/train/trainer.h"

#include "runtime/base/file.h"
#include "runtime/base/random.h"
#include "runtime/dist/communicator.h"
#include "runtime/io/hf_checkpoint.h"
#include "runtime/io/safetensors.h"
#include "runtime/io/tensorboard.h"
#include "runtime/train/backend_choice.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/data.h"
#include "runtime/train/init.h"
#include "runtime/train/output_dir.h"
#include "runtime/train/progress.h"
#include "runtime/train/run_options.h"
#include "runtime/train/weights.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <ostream>

namespace g3rt {

namespace {

/// Stream of the per-epoch shuffle draws.
constexpr uint32_t kShuffleStream = 0xfffffff0u;
/// fp32 gradients per pack summed while the window's last micro-step runs
/// (16 MiB): the first leave while the backward is still far from done, and
/// a LoRA model's hundreds of small gradients still travel in a few round
/// trips.
constexpr size_t kPackFloats = size_t(4) << 20;
/// fp32 gradients per bucket summed after the micro-steps (64 MiB).
constexpr size_t kBucketFloats = size_t(16) << 20;

std::vector<size_t> shuffled(size_t n, uint64_t seed, uint64_t epoch) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i)
    order[i] = i;
  // Fisher-Yates with the counter-based generator: the same order everywhere.
  for (size_t i = n; i > 1; --i) {
    size_t j = size_t(uniformAt(seed, epoch, kShuffleStream, i) * double(i));
    std::swap(order[i - 1], order[std::min(j, i - 1)]);
  }
  return order;
}

void copyInts(const TensorView &t, const std::vector<int32_t> &v) {
  std::memcpy(t.data, v.data(), v.size() * sizeof(int32_t));
}

double secondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

/// One evaluation over a set of rows.
struct EvalMetrics {
  /// Token-weighted mean loss and Σcorrect / Σcounted (TRL's
  /// mean_token_accuracy over the whole set).
  double loss = 0, accuracy = 0;
  int64_t tokens = 0, samples = 0;
  double seconds = 0;
};

/// MoE statistics the training forward returns, summed between log lines:
/// the expert load per MoE layer ("moe_load:<layer>") and the load-balancing
/// loss.
struct MoEStats {
  std::vector<std::pair<std::string, std::vector<double>>> loads;
  double auxSum = 0;
  int64_t microBatches = 0;
};

/// The training loop's running totals: tokens since the last log line and
/// over the run, with their clocks, and the MoE statistics.
struct LoopMeters {
  double loggedTokens = 0, runTokens = 0;
  std::chrono::steady_clock::time_point windowStart, runStart;
  MoEStats moe;
};

/// What one optimizer step reports.
struct StepReport {
  int64_t step = 0;
  double loss = 0, gradNorm = 0, learningRate = 0;
};

/// A training run: the step's state and backend, the data, the schedule and the
/// outputs. The entry point below drives it.
///
/// `host` owns the state; `backend` (the CPU or a GPU) runs the entry
/// points on it. The state is uploaded once prepare() has initialised, loaded
/// or resumed it; each call uploads the inputs written into `host` and runs;
/// outputs are read from the backend; and the changed tensors are downloaded
/// into `host` (syncHost) before anything reads them there. On the CPU those
/// copies cost nothing: it runs on `host` itself.
class Trainer {
public:
  Trainer(const StepProgram &program, double lr, std::string schedule, const TrainOptions &options,
          std::ostream &log, TrainResult &result)
      : program(program), training(program.training), options(options), log(log), result(result),
        host(program, options.placement.rank), lr(lr), schedule(std::move(schedule)) {}

  /// Opens the backend --device asks for (before any weights are read, so
  /// that a missing GPU fails at once rather than after loading a
  /// checkpoint).
  Status openBackend();
  /// Parameters (seeded, then a checkpoint's when resuming), data, schedule.
  Status prepare();
  /// --eval-only: evaluate the whole data file and report.
  Status evaluateOnly();
  /// The training loop and the final save.
  Status run();

private:
  Status loadData();
  Status resume();
  Status evaluate(const std::vector<Row> &rows, EvalMetrics &out);
  Status evaluateAndLog(Progress &progress);
  Status saveCheckpointNow(Progress &progress);
  /// Logs the run's length and its evaluation plan (the start of run()).
  void announcePlan();
  /// The run's bookkeeping in `state`; a resumed run keeps the checkpoint's
  /// position and is warned about data or a schedule that differ.
  void recordRunInState(int64_t maxSteps);
  /// Opens metrics.jsonl and the TensorBoard events where the run saves.
  void openOutputs();
  /// One accumulation window of `epoch`: its micro-batches, the optimizer
  /// step, and the log line, evaluation and checkpoint that fall on the step.
  Status trainWindow(const std::vector<size_t> &order, int64_t epoch, int64_t window,
                     Progress &progress, LoopMeters &meters);
  /// The micro-batches of window `window` of the epoch's `order`, with their
  /// share of the loss denominator and their tokens.
  void assembleWindow(const std::vector<size_t> &order, int64_t window,
                      std::vector<MicroBatch> &batches, int64_t &labels, int64_t &tokens);
  /// Runs train_micro_step on each micro-batch, summing the losses and the
  /// MoE statistics.
  Status runMicroBatches(const std::vector<MicroBatch> &batches, int64_t labels, MoEStats &moe,
                         double &loss);
  /// Runs optimizer_step and moves `state` past window `window` of `epoch`.
  Status optimizerStep(int64_t epoch, int64_t window, int64_t tokens, double loss, StepReport &out);
  /// The log line of the steps since the last one: text, metrics.jsonl, the
  /// log history and TensorBoard.
  Status logTraining(const StepReport &report, Progress &progress, LoopMeters &meters);
  /// The MoE statistics' log line (summed over the processes); then they
  /// start afresh.
  Status logMoE(int64_t step, Progress &progress, MoEStats &moe);
  /// After the last step: the trained parameters (and --merge's checkpoint).
  Status saveFinal();
  void setScalar(const char *name, double value);
  void scalar(const std::string &tag, double value, int64_t step);
  void recordMetrics(const nlohmann::json &entry);
  nlohmann::json trainingArgs() const;
  /// Runs entry point `function` on the inputs written into `host`; with
  /// `sumGradients`, summing the gradients over the processes as it runs
  /// where the backend can (then `gradientsSummed`).
  Status runFunction(const char *function, bool sumGradients = false);
  /// Output `name` of the last run of `function`, as floats / its first value.
  Status outputValues(const char *function, const std::string &name, std::vector<float> &values);
  Status outputScalar(const char *function, const std::string &name, double &value);
  /// Zeroes the gradient accumulators where the steps run.
  Status zeroGradients();
  /// Makes `host` hold the backend's trainable parameters, moments and
  /// accumulators (nothing to do when nothing ran since).
  Status syncHost();
  /// With several processes: `values` (`what`, for an error) summed over the
  /// ranks; nothing to do for one.
  Status sumOverRanks(std::vector<double> &values, const char *what);
  /// With several processes: every gradient accumulator summed over the
  /// ranks, where the steps run.
  Status sumGradients();
  int ranks() const { return options.communicator ? options.communicator->size() : 1; }
  /// Whether the window's gradients are summed over the ranks after its
  /// micro-steps (sumGradients); at ZeRO stage 2 and 3 the steps sum them
  /// into their owners' accumulators themselves (g3moe.reduce).
  bool sumsGradientsAfterTheSteps() const { return ranks() > 1 && training.zeroStage < 2; }
  int rank() const { return options.communicator ? options.communicator->rank() : 0; }
  /// This process writes files (rank 0 of a job, unless --no-save).
  bool writes() const { return options.writer && !options.noSave; }

  const StepProgram &program;
  /// The step's compiled training options (program.training).
  const TrainingConfig &training;
  const TrainOptions &options;
  std::ostream &log;
  TrainResult &result;
  HostState host;
  /// Declared after `host`, which the CPU backend refers to.
  std::unique_ptr<Backend> backend;
  /// The backend ran an entry point since the last download.
  bool hostStale = false;
  /// Whether the window's last micro-step summed the gradients over the
  /// processes as it ran (Backend::runSummingGradients).
  bool gradientsSummed = false;

  int64_t rows = 0, seqLen = 0, padId = 0;
  uint64_t seed = 42;
  std::string dataPath, outputDir;
  DataSpec spec;
  DataSplit data;

  double lr = 0;
  std::string schedule;
  LossDenominator lossDenominator = LossDenominator::Shifted;
  int64_t ga = 1, total = 0, warmup = 0, logEvery = 1, evalEvery = 0, saveEvery = 0, saveLimit = 0;
  double epochs = 0;
  int64_t batchesPerEpoch = 0, updatesPerEpoch = 0;
  bool hasEval = false;

  TrainerState state;
  /// Held from prepare() to the end of the run: no other run writes into
  /// outputDir meanwhile. Declared before the writers below, so that they
  /// close before it is released.
  OutputDirLock outputLock;
  std::ofstream metrics;
  TensorBoardWriter tensorboard;
};

Status Trainer::openBackend() {
  G3RT_RETURN_IF_ERROR(
      selectBackend(program, host, options.device, options.placement, backend, result.backend));
  log << "backend: " << result.backend << "\n";
  return Status();
}

Status Trainer::runFunction(const char *function, bool sumGradients) {
  G3RT_RETURN_IF_ERROR(backend->uploadInputs(host));
  hostStale = true;
  if (!sumGradients)
    return backend->run(function);
  return backend->runSummingGradients(function, *options.communicator, kPackFloats,
                                      gradientsSummed);
}

Status Trainer::outputValues(const char *function, const std::string &name,
                             std::vector<float> &values) {
  return backend->readOutput(function, name, values);
}

Status Trainer::outputScalar(const char *function, const std::string &name, double &value) {
  std::vector<float> values;
  G3RT_RETURN_IF_ERROR(backend->readOutput(function, name, values));
  if (values.empty())
    return Status::error("output '" + name + "' of '" + function + "' is empty");
  value = values[0];
  return Status();
}

Status Trainer::zeroGradients() { return backend->zeroGradients(); }

Status Trainer::sumOverRanks(std::vector<double> &values, const char *what) {
  if (ranks() == 1)
    return Status();
  return options.communicator->allReduceSum(values.data(), values.size())
      .withContext(std::string("summing ") + what + " over the processes");
}

Status Trainer::sumGradients() {
  Communicator *comm = options.communicator;
  if (!sumsGradientsAfterTheSteps())
    return Status();
  if (gradientsSummed) {
    gradientsSummed = false;
    return Status();
  }
  bool done = false;
  G3RT_RETURN_IF_ERROR(backend->sumGradients(*comm, done));
  // Summed on the device: the host's copies are stale already (the window's
  // micro-steps ran there since the last download).
  if (done)
    return Status();
  G3RT_RETURN_IF_ERROR(syncHost());
  // A LoRA model has hundreds of small accumulators: packed into buckets,
  // they cost a few round trips between the processes instead of one each.
  std::vector<std::pair<std::string, TensorView>> grads;
  host.forEach(BufferKind::GradAcc, [&](const std::string &name, const TensorView &g) {
    grads.emplace_back("the gradient of " + name, g);
  });
  G3RT_RETURN_IF_ERROR(sumInBuckets(*comm, grads, kBucketFloats));
  return backend->uploadState(host).withContext("copying the summed gradients to the backend");
}

Status Trainer::syncHost() {
  if (!hostStale)
    return Status();
  G3RT_RETURN_IF_ERROR(
      backend->downloadState(host).withContext("copying the state from the backend"));
  hostStale = false;
  return Status();
}

void Trainer::setScalar(const char *name, double value) {
  TensorView t = host.input(name);
  if (t.data) {
    if (t.dtype == DType::I64)
      *t.i64() = int64_t(value);
    else
      t.store(0, float(value));
  }
}

Status Trainer::prepare() {
  outputDir = outputDirFor(options, training);
  // A run that writes claims its output folder before it spends any time: a
  // folder another run is writing into, or one it cannot write into, ends it
  // here rather than at the first save.
  if (writes() && !options.evalOnly && options.dumpDataPath.empty()) {
    std::string warning;
    G3RT_RETURN_IF_ERROR(claimOutputDir(outputDir, outputLock, warning));
    if (!warning.empty())
      log << "warning: " << warning << "\n";
  }
  TensorView ids = host.input("input_ids");
  if (!ids.data || ids.shape.size() != 2)
    return Status::error("the step has no [batch, seq] input_ids input");
  rows = ids.shape[0];
  seqLen = ids.shape[1];
  seed = uint64_t(options.seed.value_or(training.seed));
  padId = program.model.padTokenId;
  G3RT_RETURN_IF_ERROR(lossDenominatorFor(options, training, lossDenominator));
  // The data first: a bad line ends the run before minutes of initialising
  // a large model, and --dump-data needs no parameters at all.
  G3RT_RETURN_IF_ERROR(loadData());
  if (!options.dumpDataPath.empty())
    return Status();
  // Loading weights derives the e4m3 copies from them: once, at 4B tens of
  // seconds of host time.
  G3RT_RETURN_IF_ERROR(initializeParameters(host, seed, padId, options.weightsDir.empty()));
  if (!options.weightsDir.empty())
    G3RT_RETURN_IF_ERROR(loadWeights(host, options.weightsDir, log));
  if (options.resume)
    G3RT_RETURN_IF_ERROR(resume());
  // The state is complete on the host: one copy to the backend, which keeps
  // it from here on.
  G3RT_RETURN_IF_ERROR(backend->uploadState(host).withContext("copying the state to the backend"));
  return Status();
}

Status Trainer::loadData() {
  spec = dataSpecFor(options, program.model, training, seqLen, int32_t(padId), seed);
  dataPath = spec.path;
  if (dataPath.empty())
    return Status::error("no training data: pass --data FILE");
  // --eval-only evaluates the whole file: no split.
  if (options.evalOnly)
    spec.testSize = 0;
  G3RT_RETURN_IF_ERROR(loadTrainingData(spec, data));
  // Unpacked rows are one example each, then padding.
  if (backend)
    backend->setOneDocumentPerRow(!spec.packing);
  const std::vector<Row> &examples = data.train;
  for (const std::string &w : data.warnings)
    log << "warning: " << w << "\n";
  log << "data: " << data.stats.trainExamples << " examples from " << dataPath;
  if (spec.packing)
    log << " packed into " << examples.size() << " rows";
  if (data.stats.skipped)
    log << ", " << data.stats.skipped << " bad lines skipped";
  if (data.stats.truncated)
    log << ", " << data.stats.truncated << " truncated to " << seqLen << " tokens";
  if (data.stats.imageSamples)
    log << ", " << data.stats.imageSamples << " samples with images "
        << (spec.images == "mask" ? "kept with their placeholders masked" : "dropped");
  log << "\n";
  if (!options.dumpDataPath.empty()) {
    G3RT_RETURN_IF_ERROR(writeRowsJsonl(options.dumpDataPath, examples));
    log << "wrote " << examples.size() << " rows to " << options.dumpDataPath << "\n";
  }
  if (!data.eval.empty())
    log << "eval: " << data.eval.size() << " examples held out\n";
  return Status();
}

Status Trainer::resume() {
  std::string dir = *options.resume;
  if (dir.empty())
    G3RT_RETURN_IF_ERROR(latestCheckpoint(outputDir, dir).withContext("--resume"));
  TrainerState loaded;
  G3RT_RETURN_IF_ERROR(loadCheckpoint(dir, training, host, loaded));
  // The frozen weights are re-initialised from the seed: another seed would
  // continue on another base model.
  if (loaded.seed != seed)
    return Status::error(dir + " was trained with seed " + std::to_string(loaded.seed) +
                         ", this run uses seed " + std::to_string(seed) + ": pass --seed " +
                         std::to_string(loaded.seed));
  state = loaded;
  log << "resumed from " << dir << " at step " << state.globalStep << " (epoch " << state.epoch
      << ", accumulation window " << state.window << ")\n";
  return Status();
}

Status Trainer::evaluate(const std::vector<Row> &evalRows, EvalMetrics &out) {
  if (!program.findFunction("eval_forward"))
    return Status::error("the step has no eval_forward entry point: compile it with "
                         "g3moe-compile's default --emit=step");
  auto start = std::chrono::steady_clock::now();
  double lossSum = 0, correct = 0, counted = 0;
  int64_t labelled = 0;
  MicroBatch batch;
  // Over several processes each evaluates every ranks()-th batch, from its
  // rank on, and the sums are summed.
  for (size_t first = size_t(rows) * size_t(rank()); first < evalRows.size();
       first += size_t(rows) * size_t(ranks())) {
    std::vector<size_t> idx;
    for (size_t r = first; r < std::min(first + size_t(rows), evalRows.size()); ++r)
      idx.push_back(r);
    assembleMicroBatch(evalRows, idx, rows, seqLen, int32_t(padId), batch);
    // eval_forward divides by num_items: with the batch's own count of
    // shifted targets its loss is the batch mean, and loss x count its sum.
    int64_t count = batch.targetCount;
    if (count == 0)
      continue;
    copyInts(host.input("input_ids"), batch.inputIds);
    copyInts(host.input("targets"), batch.targets);
    copyInts(host.input("positions"), batch.positions);
    copyInts(host.input("segment_ids"), batch.segmentIds);
    setScalar("num_items", double(count));
    G3RT_RETURN_IF_ERROR(runFunction("eval_forward"));
    double loss = 0, batchCorrect = 0, batchCounted = 0;
    G3RT_RETURN_IF_ERROR(outputScalar("eval_forward", "loss", loss));
    G3RT_RETURN_IF_ERROR(outputScalar("eval_forward", "correct_tokens", batchCorrect));
    G3RT_RETURN_IF_ERROR(outputScalar("eval_forward", "counted_tokens", batchCounted));
    lossSum += loss * double(count);
    correct += batchCorrect;
    counted += batchCounted;
    labelled += count;
  }
  std::vector<double> sums = {lossSum, correct, counted, double(labelled)};
  G3RT_RETURN_IF_ERROR(sumOverRanks(sums, "the evaluation"));
  lossSum = sums[0];
  correct = sums[1];
  counted = sums[2];
  labelled = int64_t(sums[3]);
  if (labelled == 0)
    return Status::error("the evaluation data have no labelled tokens");
  out.loss = lossSum / double(labelled);
  out.accuracy = counted > 0 ? correct / counted : 0;
  out.tokens = labelled;
  out.samples = int64_t(evalRows.size());
  out.seconds = secondsSince(start);
  return Status();
}

Status Trainer::evaluateOnly() {
  EvalMetrics m;
  G3RT_RETURN_IF_ERROR(evaluate(data.train, m));
  result.evalSteps.push_back(state.globalStep);
  result.evalLosses.push_back(m.loss);
  result.evalAccuracies.push_back(m.accuracy);
  nlohmann::json j = {{"eval_loss", m.loss},       {"eval_mean_token_accuracy", m.accuracy},
                      {"eval_tokens", m.tokens},   {"eval_samples", m.samples},
                      {"eval_runtime", m.seconds}, {"step", state.globalStep}};
  if (!options.metricsFile.empty()) {
    std::string text = j.dump() + "\n";
    G3RT_RETURN_IF_ERROR(
        writeFileAtomically(options.metricsFile, std::vector<uint8_t>(text.begin(), text.end())));
    log << "wrote " << options.metricsFile << "\n";
  } else {
    log << j.dump() << "\n";
  }
  return Status();
}

void Trainer::scalar(const std::string &tag, double value, int64_t step) {
  if (!tensorboard.isOpen())
    return;
  Status s = tensorboard.scalar(tag, value, step);
  if (!s.ok()) {
    // A full disk should not end a long run over its logs.
    log << "warning: " << s.message() << "; TensorBoard logging stops\n";
    tensorboard.close();
  }
}

void Trainer::recordMetrics(const nlohmann::json &entry) {
  if (metrics.is_open())
    metrics << entry.dump() << "\n" << std::flush;
}

Status Trainer::evaluateAndLog(Progress &progress) {
  EvalMetrics m;
  G3RT_RETURN_IF_ERROR(evaluate(data.eval, m));
  int64_t step = state.globalStep;
  result.evalSteps.push_back(step);
  result.evalLosses.push_back(m.loss);
  result.evalAccuracies.push_back(m.accuracy);
  char line[256];
  std::snprintf(line, sizeof line,
                "eval step %lld/%lld  epoch %.2f  eval_loss %.4f  eval_mean_token_accuracy %.4f",
                (long long)step, (long long)total, state.epochProgress, m.loss, m.accuracy);
  progress.line(line);
  nlohmann::json entry = {
      {"step", step},
      {"epoch", state.epochProgress},
      {"eval_loss", m.loss},
      {"eval_mean_token_accuracy", m.accuracy},
      {"eval_runtime", m.seconds},
      {"eval_samples_per_second", double(m.samples) / std::max(m.seconds, 1e-9)}};
  recordMetrics(entry);
  state.logHistory.push_back(entry);
  scalar("eval/loss", m.loss, step);
  scalar("eval/mean_token_accuracy", m.accuracy, step);
  // eval_loss, lower is better (HF's default metric_for_best_model).
  if (!state.bestMetric || m.loss < *state.bestMetric) {
    state.bestMetric = m.loss;
    state.bestGlobalStep = step;
  }
  return Status();
}

nlohmann::json Trainer::trainingArgs() const {
  return {{"data", dataPath},
          {"output_dir", outputDir},
          {"learning_rate", lr},
          {"lr_scheduler_type", schedule},
          {"warmup_steps", warmup},
          {"gradient_accumulation_steps", ga},
          {"per_device_train_batch_size", rows},
          {"max_seq_length", seqLen},
          {"num_train_epochs", epochs},
          {"max_steps", total},
          {"seed", seed},
          {"logging_steps", logEvery},
          {"eval_steps", evalEvery},
          {"save_steps", saveEvery},
          {"save_total_limit", saveLimit},
          {"weights", options.weightsDir},
          {"finetuning", finetuningName(training.finetuning)},
          {"loss_denominator", lossDenominatorName(lossDenominator)}};
}

Status Trainer::saveCheckpointNow(Progress &progress) {
  if (state.bestGlobalStep == state.globalStep)
    state.bestModelCheckpoint = checkpointPath(outputDir, state.globalStep);
  // A ZeRO-sharded step's moments are spread over the processes: each sends
  // its own to rank 0, which writes them (checkpoint.h, MomentSource).
  const bool sharded = ranks() > 1 && !momentOwners(program).empty();
  if (!options.writer && !sharded)
    return Status();
  std::string dir;
  G3RT_RETURN_IF_ERROR(syncHost());
  GatheredParameters params(host);
  G3RT_RETURN_IF_ERROR(params.gather(sharded ? options.communicator : nullptr));
  MomentSource moments{host, sharded ? options.communicator : nullptr};
  if (!options.writer) {
    std::vector<NamedTensor> none;
    std::vector<std::vector<float>> storage;
    for (int r = 0; sharded && r < ranks(); ++r)
      G3RT_RETURN_IF_ERROR(shareMoments(moments, r, none, storage));
    return Status();
  }
  G3RT_RETURN_IF_ERROR(
      saveCheckpoint(moments, training, state, trainingArgs(), outputDir, dir, options.weightsDir));
  result.checkpoints.push_back(dir);
  progress.line("saved " + dir);
  std::vector<std::string> deleted;
  G3RT_RETURN_IF_ERROR(rotateCheckpoints(outputDir, saveLimit, state.bestModelCheckpoint, deleted));
  for (const std::string &d : deleted)
    progress.line("deleted " + d + " (save_total_limit " + std::to_string(saveLimit) + ")");
  return Status();
}

Status Trainer::run() {
  const std::vector<Row> &examples = data.train;
  ga = options.gradientAccumulationSteps.value_or(training.gradientAccumulationSteps);
  epochs = options.epochs.value_or(training.numTrainEpochs);
  if (ga < 1 || epochs <= 0)
    return Status::error("gradient accumulation steps must be >= 1 and epochs > 0");
  batchesPerEpoch = (int64_t(examples.size()) + rows * ranks() - 1) / (rows * ranks());
  updatesPerEpoch = (batchesPerEpoch + ga - 1) / ga;
  int64_t maxSteps = options.maxSteps.value_or(training.maxSteps);
  total = maxSteps > 0 ? maxSteps : int64_t(std::ceil(epochs * double(updatesPerEpoch)));
  warmup = options.warmupSteps.value_or(training.warmupSteps);
  if (warmup <= 0)
    warmup = int64_t(std::ceil(options.warmupRatio.value_or(training.warmupRatio) * double(total)));
  logEvery = std::max<int64_t>(1, options.loggingSteps.value_or(training.loggingSteps));
  evalEvery = std::max<int64_t>(0, options.evalSteps.value_or(training.evalSteps));
  saveEvery = std::max<int64_t>(0, options.saveSteps.value_or(training.saveSteps));
  saveLimit = std::max<int64_t>(0, options.saveTotalLimit.value_or(training.saveTotalLimit));
  if (options.noSave)
    saveEvery = 0;
  hasEval = !data.eval.empty();
  announcePlan();
  recordRunInState(maxSteps);
  openOutputs();

  int64_t stopAt = std::min(total, options.stopAfterSteps.value_or(total));
  Progress progress(log, options.progressBar, total, state.globalStep);
  result.firstStep = state.globalStep;
  LoopMeters meters;
  for (const auto &[name, buffer] : program.findFunction("train_micro_step")->outputs)
    if (name.rfind("moe_load:", 0) == 0)
      meters.moe.loads.emplace_back(name.substr(9), std::vector<double>());
  meters.windowStart = meters.runStart = std::chrono::steady_clock::now();
  for (int64_t epoch = state.epoch; state.globalStep < stopAt; ++epoch) {
    std::vector<size_t> order = shuffled(examples.size(), seed, uint64_t(epoch));
    int64_t firstWindow = epoch == state.epoch ? state.window : 0;
    for (int64_t window = firstWindow; window < updatesPerEpoch && state.globalStep < stopAt;
         ++window)
      G3RT_RETURN_IF_ERROR(trainWindow(order, epoch, window, progress, meters));
  }
  progress.finish();
  result.optimizerSteps = state.globalStep;
  result.arenaHighWater = backend->arenaHighWater();
  if (state.globalStep < total) {
    log << "stopped after step " << state.globalStep << " of " << total << "\n";
    return Status();
  }
  return saveFinal();
}

void Trainer::announcePlan() {
  log << "training: " << total << " optimizer steps, " << ga << " micro-batches of [" << rows
      << ", " << seqLen << "] each, lr " << lr << " (" << schedule << ", " << warmup
      << " warmup steps)\n";
  if (hasEval && !program.findFunction("eval_forward")) {
    log << "warning: the step has no eval_forward entry point: no evaluation\n";
    hasEval = false;
  } else if (hasEval) {
    log << "evaluation: "
        << (evalEvery > 0 ? "every " + std::to_string(evalEvery) + " steps and " : std::string())
        << "after the last step\n";
  } else if (options.evalSteps && *options.evalSteps > 0) {
    log << "warning: --eval-steps without an eval split (test_size): no evaluation\n";
  }
}

void Trainer::recordRunInState(int64_t maxSteps) {
  const std::vector<Row> &examples = data.train;
  // A new run's bookkeeping; a resumed one keeps the checkpoint's.
  uint64_t fingerprint = fingerprintRows(examples);
  if (options.resume) {
    if (state.trainExamples != int64_t(examples.size()) || state.dataFingerprint != fingerprint)
      log << "warning: the training data differ from the checkpoint's (" << state.trainExamples
          << " examples then, " << examples.size()
          << " now): the run will not repeat an uninterrupted one\n";
    if (state.totalSteps != total || state.warmupSteps != warmup || state.learningRate != lr ||
        state.schedule != schedule)
      log << "warning: the checkpoint's schedule (" << state.totalSteps << " steps, "
          << state.warmupSteps << " warmup, lr " << state.learningRate << ", " << state.schedule
          << ") differs from this run's\n";
    if (state.window >= updatesPerEpoch) {
      ++state.epoch;
      state.window = 0;
    }
  }
  state.seed = seed;
  state.trainExamples = int64_t(examples.size());
  state.dataFingerprint = fingerprint;
  state.totalSteps = total;
  state.warmupSteps = warmup;
  state.learningRate = lr;
  state.schedule = schedule;
  state.loggingSteps = logEvery;
  state.evalSteps = evalEvery;
  state.saveSteps = saveEvery;
  state.trainBatchSize = rows;
  state.maxSteps = total;
  state.numTrainEpochs =
      maxSteps > 0 ? std::ceil(double(total) / double(std::max<int64_t>(1, updatesPerEpoch)))
                   : epochs;
}

void Trainer::openOutputs() {
  if (writes()) {
    // prepare() created and claimed outputDir.
    metrics.open(outputDir + "/metrics.jsonl", std::ios::app);
    Status s = tensorboard.open(outputDir + "/runs");
    if (!s.ok())
      log << "warning: " << s.message() << "; no TensorBoard events\n";
    if (saveEvery > 0)
      log << "checkpoints: every " << saveEvery << " steps in " << outputDir
          << (saveLimit > 0 ? ", keeping the last " + std::to_string(saveLimit) : std::string())
          << "\n";
  }
}

Status Trainer::trainWindow(const std::vector<size_t> &order, int64_t epoch, int64_t window,
                            Progress &progress, LoopMeters &meters) {
  // The window's loss denominator normalises every micro-batch loss (HF).
  std::vector<MicroBatch> batches;
  int64_t labels = 0, tokens = 0;
  assembleWindow(order, window, batches, labels, tokens);
  // Over several processes the denominator is the whole window's (HF).
  std::vector<double> counts = {double(labels), double(tokens)};
  G3RT_RETURN_IF_ERROR(sumOverRanks(counts, "the window's label counts"));
  labels = int64_t(counts[0]);
  tokens = int64_t(counts[1]);
  G3RT_RETURN_IF_ERROR(zeroGradients());
  std::vector<double> loss = {0.0};
  G3RT_RETURN_IF_ERROR(runMicroBatches(batches, labels, meters.moe, loss[0]));
  G3RT_RETURN_IF_ERROR(sumOverRanks(loss, "the window's loss"));
  G3RT_RETURN_IF_ERROR(sumGradients());
  StepReport report;
  G3RT_RETURN_IF_ERROR(optimizerStep(epoch, window, tokens, loss[0], report));
  int64_t step = report.step;
  state.lossSinceLastLog += loss[0];
  meters.loggedTokens += double(tokens);
  meters.runTokens += double(tokens);
  progress.step(step, loss[0], report.learningRate,
                meters.runTokens / std::max(secondsSince(meters.runStart), 1e-9));
  if (step % logEvery == 0 || step == total)
    G3RT_RETURN_IF_ERROR(logTraining(report, progress, meters));
  if (hasEval && ((evalEvery > 0 && step % evalEvery == 0) || step == total))
    G3RT_RETURN_IF_ERROR(evaluateAndLog(progress));
  if (saveEvery > 0 && step % saveEvery == 0)
    G3RT_RETURN_IF_ERROR(saveCheckpointNow(progress));
  return Status();
}

void Trainer::assembleWindow(const std::vector<size_t> &order, int64_t window,
                             std::vector<MicroBatch> &batches, int64_t &labels, int64_t &tokens) {
  int64_t firstBatch = window * ga;
  int64_t lastBatch = std::min(batchesPerEpoch, firstBatch + ga);
  // Global micro-batch mb holds ranks() x rows examples of the order; this
  // rank takes every ranks()-th of them, from its rank on.
  const int64_t n = ranks(), global = rows * n;
  MicroBatch batch;
  for (int64_t mb = firstBatch; mb < lastBatch; ++mb) {
    std::vector<size_t> idx;
    for (int64_t r = mb * global + rank();
         r < std::min<int64_t>((mb + 1) * global, int64_t(order.size())); r += n)
      idx.push_back(order[size_t(r)]);
    assembleMicroBatch(data.train, idx, rows, seqLen, int32_t(padId), batch);
    labels += batch.lossItems(lossDenominator);
    tokens += batch.tokens;
    batches.push_back(batch);
  }
}

Status Trainer::runMicroBatches(const std::vector<MicroBatch> &batches, int64_t labels,
                                MoEStats &moe, double &loss) {
  // The micro-batch counter keys the random draws. It counts the micro-
  // batches of one process with ranks() times the accumulation, of which
  // this rank's i-th is number i * ranks() + rank(): any number of processes
  // (and a resume with another) draws what that one process draws.
  for (size_t i = 0; i < batches.size(); ++i) {
    const MicroBatch &mb = batches[i];
    copyInts(host.input("input_ids"), mb.inputIds);
    copyInts(host.input("targets"), mb.targets);
    copyInts(host.input("positions"), mb.positions);
    copyInts(host.input("segment_ids"), mb.segmentIds);
    setScalar("num_items", double(std::max<int64_t>(1, labels)));
    if (TensorView key = host.input("rng_key"); key.data) {
      key.i64()[0] = int64_t(seed);
      key.i64()[1] = int64_t(state.microBatches) + int64_t(i) * ranks() + rank();
    }
    // The window's last micro-step sums the gradients as its backward
    // finishes them (ZeRO stage 2 sums each micro-step's within the step).
    const bool sumAsItRuns = i + 1 == batches.size() && sumsGradientsAfterTheSteps();
    G3RT_RETURN_IF_ERROR(runFunction("train_micro_step", sumAsItRuns));
    double microLoss = 0;
    G3RT_RETURN_IF_ERROR(outputScalar("train_micro_step", "loss", microLoss));
    loss += microLoss;
    if (!moe.loads.empty()) {
      for (auto &[layer, counts] : moe.loads) {
        std::vector<float> c;
        G3RT_RETURN_IF_ERROR(outputValues("train_micro_step", "moe_load:" + layer, c));
        counts.resize(c.size(), 0.0);
        for (size_t e = 0; e < c.size(); ++e)
          counts[e] += c[e];
      }
      double aux = 0;
      G3RT_RETURN_IF_ERROR(outputScalar("train_micro_step", "moe_aux_loss", aux));
      moe.auxSum += aux;
      ++moe.microBatches;
    }
  }
  state.microBatches += int64_t(batches.size()) * ranks();
  return Status();
}

Status Trainer::optimizerStep(int64_t epoch, int64_t window, int64_t tokens, double loss,
                              StepReport &out) {
  int64_t step = state.globalStep;
  setScalar("step", double(step));
  setScalar("total_steps", double(total));
  setScalar("warmup_steps", double(warmup));
  G3RT_RETURN_IF_ERROR(runFunction("optimizer_step"));
  double gradNorm = 0, usedLr = 0;
  G3RT_RETURN_IF_ERROR(outputScalar("optimizer_step", "grad_norm", gradNorm));
  G3RT_RETURN_IF_ERROR(outputScalar("optimizer_step", "learning_rate", usedLr));
  step = ++state.globalStep;
  // The next step's position: what a checkpoint taken now resumes from.
  state.epoch = window + 1 < updatesPerEpoch ? epoch : epoch + 1;
  state.window = window + 1 < updatesPerEpoch ? window + 1 : 0;
  state.epochProgress = double(epoch) + double(window + 1) / double(updatesPerEpoch);
  state.lastLearningRate = usedLr;
  state.tokensSeen += tokens;
  result.losses.push_back(loss);
  result.gradNorms.push_back(gradNorm);
  result.learningRates.push_back(usedLr);
  out = StepReport{step, loss, gradNorm, usedLr};
  if (!std::isfinite(loss))
    return Status::error("the loss is not finite at step " + std::to_string(step));
  return Status();
}

Status Trainer::logTraining(const StepReport &report, Progress &progress, LoopMeters &meters) {
  int64_t step = report.step;
  double usedLr = report.learningRate, gradNorm = report.gradNorm;
  double seconds = secondsSince(meters.windowStart);
  int64_t n = (step % logEvery) ? step % logEvery : logEvery;
  double meanLoss = state.lossSinceLastLog / double(n);
  double tokensPerSecond = meters.loggedTokens / std::max(seconds, 1e-9);
  char line[256];
  std::snprintf(line, sizeof line,
                "step %lld/%lld  epoch %.2f  loss %.4f  lr %.3e  grad_norm %.4f  "
                "tokens/s %.0f",
                (long long)step, (long long)total, state.epochProgress, meanLoss, usedLr, gradNorm,
                tokensPerSecond);
  progress.line(line);
  recordMetrics({{"step", step},
                 {"epoch", state.epochProgress},
                 {"loss", meanLoss},
                 {"learning_rate", usedLr},
                 {"grad_norm", gradNorm},
                 {"tokens_per_second", tokensPerSecond}});
  state.logHistory.push_back({{"step", step},
                              {"epoch", state.epochProgress},
                              {"loss", meanLoss},
                              {"learning_rate", usedLr},
                              {"grad_norm", gradNorm}});
  scalar("train/loss", meanLoss, step);
  scalar("train/learning_rate", usedLr, step);
  scalar("train/grad_norm", gradNorm, step);
  scalar("train/tokens_per_second", tokensPerSecond, step);
  scalar("train/epoch", state.epochProgress, step);
  if (meters.moe.microBatches > 0)
    G3RT_RETURN_IF_ERROR(logMoE(step, progress, meters.moe));
  state.lossSinceLastLog = 0;
  meters.loggedTokens = 0;
  meters.windowStart = std::chrono::steady_clock::now();
  return Status();
}

Status Trainer::logMoE(int64_t step, Progress &progress, MoEStats &moe) {
  // Over several processes, the statistics of all of them.
  if (ranks() > 1) {
    std::vector<double> all = {moe.auxSum, double(moe.microBatches)};
    for (const auto &[layer, counts] : moe.loads)
      all.insert(all.end(), counts.begin(), counts.end());
    G3RT_RETURN_IF_ERROR(sumOverRanks(all, "the MoE statistics"));
    moe.auxSum = all[0];
    moe.microBatches = int64_t(all[1]);
    size_t at = 2;
    for (auto &[layer, counts] : moe.loads)
      for (double &c : counts)
        c = all[at++];
  }
  // Each layer's share of routing slots per expert, and the mean
  // load-balancing loss (k at perfect balance).
  nlohmann::json loads = nlohmann::json::object();
  std::string moeLine = "moe  aux_loss " + std::to_string(moe.auxSum / double(moe.microBatches)) +
                        "  largest expert share by layer:";
  for (auto &[layer, counts] : moe.loads) {
    double slots = 0, largest = 0;
    for (double c : counts)
      slots += c;
    std::vector<double> share;
    for (double c : counts) {
      share.push_back(slots > 0 ? c / slots : 0.0);
      largest = std::max(largest, share.back());
    }
    loads[layer] = share;
    char part[48];
    std::snprintf(part, sizeof part, " %s:%.2f", layer.c_str(), largest);
    moeLine += part;
    scalar("moe/layer_" + layer + "/largest_expert_share", largest, step);
    std::fill(counts.begin(), counts.end(), 0.0);
  }
  progress.line(moeLine);
  recordMetrics({{"step", step},
                 {"moe_aux_loss", moe.auxSum / double(moe.microBatches)},
                 {"moe_expert_share", loads}});
  scalar("moe/aux_loss", moe.auxSum / double(moe.microBatches), step);
  moe.auxSum = 0;
  moe.microBatches = 0;
  return Status();
}

Status Trainer::saveFinal() {
  // At ZeRO stage 3 every process sends rank 0 the parameters it owns.
  Communicator *owners =
      ranks() > 1 && training.zeroStage == 3 && !options.noSave ? options.communicator : nullptr;
  if (writes() || owners) {
    G3RT_RETURN_IF_ERROR(syncHost());
    GatheredParameters params(host);
    G3RT_RETURN_IF_ERROR(params.gather(owners));
    if (!writes())
      return Status();
    G3RT_RETURN_IF_ERROR(
        saveTrainedParameters(host, training, outputDir, result.savedFiles, options.weightsDir));
    for (const std::string &f : result.savedFiles)
      log << "saved " << f << "\n";
    if (options.merge) {
      G3RT_RETURN_IF_ERROR(saveHFCheckpoint(host, outputDir + "/merged", /*mergeLora=*/true));
      log << "saved " << outputDir << "/merged (LoRA merged into the base weights)\n";
    }
  }
  return Status();
}

} // namespace

Status train(const StepProgram &compiled, const TrainOptions &options, std::ostream &log,
             TrainResult &result) {
  // Run-time overrides that live in the optimizer's instructions.
  StepProgram program = compiled;
  double lr = options.learningRate.value_or(program.training.learningRate);
  std::string schedule =
      options.lrSchedulerType.value_or(lrScheduleName(program.training.lrSchedulerType));
  if (schedule != "cosine" && schedule != "linear" && schedule != "constant" &&
      schedule != "constant_with_warmup")
    return Status::error("unknown learning-rate schedule '" + schedule + "'");
  for (FunctionDesc &fn : program.functions)
    for (InstrDesc &in : fn.instrs)
      if (in.kernel == "lr_schedule") {
        in.attrs.set("learning_rate", AttrValue::ofFloat(lr));
        in.attrs.set("kind", AttrValue::ofString(schedule));
      }

  const FunctionDesc *micro = program.findFunction("train_micro_step");
  const FunctionDesc *optim = program.findFunction("optimizer_step");
  if (!options.evalOnly && (!micro || !optim))
    return Status::error("the step has no train_micro_step/optimizer_step: compile "
                         "it with g3moe-compile (default --emit=step)");

  Trainer trainer(program, lr, schedule, options, log, result);
  // Where the steps run; not needed to dump the data.
  if (options.dumpDataPath.empty())
    G3RT_RETURN_IF_ERROR(trainer.openBackend());
  G3RT_RETURN_IF_ERROR(trainer.prepare());
  if (!options.dumpDataPath.empty())
    return Status();
  if (options.evalOnly)
    return trainer.evaluateOnly();
  return trainer.run();
}

} // namespace g3rt
