//===- checkpoint.h - trained parameters, checkpoints and resume -*- C++ -*-===//
//
// The files g3moe-run writes in the layout HF users know (G3MOE_SPEC.md
// 4.10): the trained parameters under PEFT / HF names, and periodic
// `checkpoint-<step>/` folders holding everything a resumed run needs to
// continue bit for bit on the CPU backend:
//
//   adapter_model.safetensors + adapter_config.json   (LoRA; PEFT loads them)
//   model.safetensors                                  (full fine-tuning)
//   optimizer.safetensors   "exp_avg/<param>", "exp_avg_sq/<param>" (fp32,
//                           the step's parameter names, experts stacked)
//   scheduler.json          step, total_steps, warmup_steps, learning_rate,
//                           lr_scheduler_type, last_lr
//   rng_state.json          seed, micro-batch counter (the rng key), epoch and
//                           batch within it, the data's size and fingerprint,
//                           the loss accumulated since the last log line
//   trainer_state.json      HF's TrainerState (global_step, epoch, log_history,
//                           best_metric, ...)
//   training_args.json      the run's resolved options, for reference
//
// The trainable parameters are fp32 masters and the adapter / model file
// stores them in fp32, so it doubles as their exact copy. A checkpoint is
// written into `checkpoint-<step>.tmp-<pid>/` and renamed into place: a kill
// at any moment leaves earlier checkpoints intact and never a partial
// `checkpoint-<step>`.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_CHECKPOINT_H
#define G3MOE_RUNTIME_TRAIN_CHECKPOINT_H

#include "runtime/exec/state.h"
#include "runtime/io/safetensors.h"
#include "runtime/step/config.h"
#include "runtime/train/data.h"

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace g3rt {

class Communicator;

/// The trainable parameters under the names HF / PEFT files use: stacked
/// expert tensors are split into per-expert views, LoRA names get PEFT's
/// `base_model.model.` prefix. The views alias the host state's storage.
/// Those another process holds (ZeRO stage 3) come without data.
std::vector<NamedTensor> exportTrainable(const HostState &host, bool lora);

/// PEFT's adapter_config.json for the adapters of this step;
/// `base_model_name_or_path` is `baseModel` (the --weights folder).
nlohmann::json adapterConfig(const TrainingConfig &training, const std::string &baseModel = "");

/// Writes the trainable parameters into `dir`: adapter_model.safetensors and
/// adapter_config.json for LoRA, model.safetensors for full fine-tuning. The
/// paths written are appended to `files`.
Status saveTrainedParameters(const HostState &host, const TrainingConfig &training,
                             const std::string &dir, std::vector<std::string> &files,
                             const std::string &baseModel = "");

/// Where a run stands between two optimizer steps: what --resume restores
/// besides the tensors.
struct TrainerState {
  // Progress and data position.
  int64_t globalStep = 0;
  /// Epoch and accumulation window (within that epoch) the next step uses.
  int64_t epoch = 0, window = 0;
  /// HF's fractional epoch after `globalStep` steps.
  double epochProgress = 0;
  /// Micro-batches run so far: the counter half of the rng key.
  uint64_t microBatches = 0;
  uint64_t seed = 42;
  int64_t trainExamples = 0;
  /// FNV-1a of the training rows (in file order): resuming on other data is
  /// reported.
  uint64_t dataFingerprint = 0;
  /// The sum of step losses since the last log line.
  double lossSinceLastLog = 0;
  int64_t tokensSeen = 0;

  // Scheduler.
  int64_t totalSteps = 0, warmupSteps = 0;
  double learningRate = 0, lastLearningRate = 0;
  std::string schedule;

  // HF's TrainerState fields.
  nlohmann::json logHistory = nlohmann::json::array();
  std::optional<double> bestMetric;
  int64_t bestGlobalStep = -1;
  std::string bestModelCheckpoint;
  int64_t loggingSteps = 1, evalSteps = 0, saveSteps = 0, trainBatchSize = 1;
  int64_t maxSteps = -1;
  double numTrainEpochs = 0;
};

/// `<outputDir>/checkpoint-<step>`.
std::string checkpointPath(const std::string &outputDir, int64_t step);

/// The complete checkpoints in `outputDir` (folders `checkpoint-<n>`), by step.
std::vector<std::pair<int64_t, std::string>> listCheckpoints(const std::string &outputDir);

/// The checkpoint with the highest step in `outputDir`; an error when none.
Status latestCheckpoint(const std::string &outputDir, std::string &dir);

/// Removes from `dir` the temporaries that saves of killed processes left
/// behind, and those of failed saves of this one: `checkpoint-<n>.tmp-<pid>`
/// folders and `<file>.tmp.<pid>` files (adapter_model.safetensors.tmp.<pid>).
/// Those of live processes stay.
void removeStaleTemporaries(const std::string &dir);

/// Where a checkpoint's Adam moments come from. Of an unsharded step, the
/// host state holds them all (one optimizer.safetensors). Of a ZeRO-sharded
/// one (momentOwners), each process holds its own: every process of `job`
/// calls shareMoments at each save, rank 0 from within saveCheckpoint, which
/// then writes one optimizer-<r>-of-<N>.safetensors per process and an
/// index (optimizer.safetensors.index.json, tensor -> file).
struct MomentSource {
  const HostState &host;
  /// The job of a sharded step's processes; null otherwise.
  Communicator *job = nullptr;
};

/// Brings the moments process `owner` holds to rank 0: on rank 0 `out`
/// receives them (their data in `storage` where they came from another
/// process); every process of the job calls it with the same `owner`, in
/// the same order. Without a job, `out` is every moment of the host state.
Status shareMoments(const MomentSource &source, int owner, std::vector<NamedTensor> &out,
                    std::vector<std::vector<float>> &storage);

/// ZeRO stage 3: each trained parameter lives on its owning process alone
/// (HostState::heldElsewhere), but rank 0 writes them all. While a
/// GatheredParameters lives, rank 0's host state holds every one of them:
/// gather() brings each from its owner (every process of the job calls it,
/// in the same order), and the destructor gives rank 0's copies back.
class GatheredParameters {
public:
  explicit GatheredParameters(HostState &host) : host_(host) {}
  ~GatheredParameters();
  GatheredParameters(const GatheredParameters &) = delete;
  GatheredParameters &operator=(const GatheredParameters &) = delete;

  /// Nothing to do without a job (null) or without sharded parameters.
  Status gather(Communicator *job);

private:
  HostState &host_;
  std::vector<std::string> received_;
};

/// Writes checkpoint `state.globalStep` into `outputDir` atomically (see the
/// file comment) and returns its folder in `dir`. `trainingArgs` goes to
/// training_args.json. Temporary folders left by killed runs are removed
/// first. `baseModel` as for adapterConfig.
Status saveCheckpoint(const MomentSource &moments, const TrainingConfig &training,
                      const TrainerState &state, const nlohmann::json &trainingArgs,
                      const std::string &outputDir, std::string &dir,
                      const std::string &baseModel = "");

/// Deletes the oldest checkpoints of `outputDir` until at most `limit` are
/// left, never `keep` (the best one; with limit 1 and a best checkpoint that
/// is not the newest, two stay, as HF does). Each is renamed away before it is
/// deleted, so a kill never leaves a half-deleted `checkpoint-<n>`.
Status rotateCheckpoints(const std::string &outputDir, int64_t limit, const std::string &keep,
                         std::vector<std::string> &deleted);

/// Loads checkpoint `dir` into `host` (trainable parameters and Adam moments)
/// and `state`. The checkpoint must match the step: the same trainable
/// parameters with the same shapes (an error names the first difference),
/// LoRA or full fine-tuning alike. Its moments may be one file or sharded
/// (any number of processes, with the index): `host` takes those it holds,
/// so a run resumes on another number of processes or ZeRO stage. Every
/// file is checked before anything is loaded, so a mismatch leaves `host`
/// and `state` untouched.
Status loadCheckpoint(const std::string &dir, const TrainingConfig &training, HostState &host,
                      TrainerState &state);

/// FNV-1a over rows' tokens, labels and document layout
/// (TrainerState::dataFingerprint).
uint64_t fingerprintRows(const std::vector<Row> &rows);

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_CHECKPOINT_H
