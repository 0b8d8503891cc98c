//===- trainer.h - the training loop of g3moe-run ---------------*- C++ -*-===//
//
// Epochs of shuffled examples, micro-batches accumulated into optimizer
// steps with HF's loss normalisation, evaluation every `eval_steps`,
// checkpoints every `save_steps` (resumable bit for bit), logs as text (a
// progress bar on a terminal), metrics.jsonl and TensorBoard events, and the
// trained parameters written at the end.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_TRAINER_H
#define G3MOE_RUNTIME_TRAIN_TRAINER_H

#include "runtime/exec/backend.h"
#include "runtime/step/program.h"

#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

namespace g3rt {

class Communicator;

/// Run-time options; unset ones come from the step's compiled defaults.
struct TrainOptions {
  std::string dataPath;
  std::string outputDir;
  std::optional<double> epochs;
  std::optional<int64_t> maxSteps;
  std::optional<int64_t> gradientAccumulationSteps;
  std::optional<double> learningRate;
  std::optional<std::string> lrSchedulerType;
  std::optional<double> warmupRatio;
  std::optional<int64_t> warmupSteps;
  std::optional<int64_t> seed;
  std::optional<int64_t> loggingSteps;
  /// Optimizer steps between evaluations on the eval split; 0 = only after
  /// the last step (when there is an eval split).
  std::optional<int64_t> evalSteps;
  /// Optimizer steps between checkpoints; 0 = none.
  std::optional<int64_t> saveSteps;
  /// Checkpoints kept (the oldest are deleted); 0 = all.
  std::optional<int64_t> saveTotalLimit;
  /// Continue from a checkpoint folder; an empty string means the latest
  /// `checkpoint-<step>` in the output folder.
  std::optional<std::string> resume;
  /// End the run after this many optimizer steps (counted from step 0) as if
  /// it had been interrupted: the schedule still spans the whole run and no
  /// final parameters are written. For chunked runs and resume tests.
  std::optional<int64_t> stopAfterSteps;
  /// Only evaluate: the whole data file (no split) through eval_forward with
  /// the initial, loaded (--weights) or resumed parameters; the metrics go to
  /// `metricsFile` as JSON, or as the last line of the log.
  bool evalOnly = false;
  std::string metricsFile;
  /// Redraw a progress bar on the log stream (a terminal) after every step.
  bool progressBar = false;
  bool skipBadLines = false;
  /// Data options (runtime/train/data.h's DataSpec). The tokenizer: a
  /// tokenizer.model or its folder; empty = the --weights folder's, if any.
  std::string tokenizerPath;
  /// auto, tokenized, messages, text or prompt_completion.
  std::string dataFormat = "auto";
  /// Unset: the step's `packing` / `assistant_only_loss` / `test_size`
  /// where the step records them, else off / off / 0.
  std::optional<bool> packing;
  std::optional<bool> assistantOnlyLoss;
  std::optional<double> testSize;
  /// The longest data line in bytes; unset: the step's `max_line_bytes`,
  /// else 64 MiB.
  std::optional<int64_t> maxLineBytes;
  /// "shifted" or "unshifted" (step/config.h's LossDenominator); unset: the step's
  /// `loss_denominator`, else shifted.
  std::optional<std::string> lossDenominator;
  /// Image parts of chat samples: "drop" the sample or "mask" the placeholders.
  std::string images = "drop";
  /// Write the loaded train rows as JSONL to this file and stop (no training).
  std::string dumpDataPath;
  /// An HF checkpoint folder to load the base weights from after the seeded
  /// initialisation (train/weights.h); empty = none.
  std::string weightsDir;
  /// At the end, also write <outputDir>/merged/: a full HF checkpoint with
  /// the LoRA adapters merged into the base weights.
  bool merge = false;
  /// Skip writing the trained parameters, checkpoints, metrics.jsonl and
  /// TensorBoard events (for tests that only want losses).
  bool noSave = false;
  /// This process writes the job's files (checkpoints, trained parameters,
  /// metrics): false on ranks other than 0, which still take part in what a
  /// checkpoint of a ZeRO-sharded step exchanges (their Adam moments).
  bool writer = true;
  /// Where the step runs: "cpu", "cuda" or "auto" (runtime/exec/
  /// backend_choice.h's selectBackend). The CPU here, so that library callers
  /// get the reference backend unless they ask; g3moe-run's --device
  /// defaults to auto. On CUDA the host keeps the state (initialisation,
  /// --weights, resume, checkpoints and the final files work on it as on the
  /// CPU) and the device runs every entry point.
  std::string device = "cpu";
  /// This process's place in the job: its rank, the job's size, and the
  /// CUDA device it uses (its local rank; backend_choice.h).
  Placement placement;
  /// The job's communicator when several processes train together (data
  /// parallel, every rank holding the whole state): each global micro-batch
  /// of `ranks` x rows examples is dealt out row by row (rank r takes the
  /// rows r, r + ranks, ...; HF's distributed sampler within it), the loss
  /// denominator and the window's loss are summed over the ranks and the
  /// gradient accumulators are summed before each optimizer step (on the
  /// CUDA backend with NCCL, else through this communicator), so that N
  /// ranks give the steps of one process with N times the accumulation.
  /// Null: one process.
  Communicator *communicator = nullptr;
};

/// What a run did, for callers and tests.
struct TrainResult {
  /// The step the run started from (0, or a resumed checkpoint's step).
  int64_t firstStep = 0;
  int64_t optimizerSteps = 0;
  /// The loss of every optimizer step this run took (the window's summed
  /// micro-batch losses), from step firstStep + 1 on.
  std::vector<double> losses;
  std::vector<double> gradNorms, learningRates;
  /// Evaluations: the step after which each ran, eval_loss (the token mean)
  /// and eval_mean_token_accuracy.
  std::vector<int64_t> evalSteps;
  std::vector<double> evalLosses, evalAccuracies;
  /// The highest arena byte written (CPU backend; 0 on a device).
  uint64_t arenaHighWater = 0;
  /// The backend that ran: "CPU (<n> threads)" or "CUDA on <device name>".
  std::string backend;
  /// Checkpoint folders written, and the final parameter files.
  std::vector<std::string> checkpoints;
  std::vector<std::string> savedFiles;
};

/// Trains the step in `program` and reports on `log`.
Status train(const StepProgram &program, const TrainOptions &options, std::ostream &log,
             TrainResult &result);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_TRAINER_H
