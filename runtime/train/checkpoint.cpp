//===- checkpoint.cpp - trained parameters, checkpoints and resume --------===//

#include "runtime/train/checkpoint.h"

#include "runtime/base/file.h"
#include "runtime/dist/communicator.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <map>
#include <unistd.h>

namespace g3rt {

namespace fs = std::filesystem;

namespace {

constexpr const char *kAdapterFile = "adapter_model.safetensors";
constexpr const char *kModelFile = "model.safetensors";
constexpr const char *kOptimizerFile = "optimizer.safetensors";

Status writeJson(const std::string &path, const nlohmann::json &j) {
  std::string text = j.dump(2) + "\n";
  return writeFileAtomically(path, std::vector<uint8_t>(text.begin(), text.end()));
}

Status readJson(const std::string &path, nlohmann::json &out) {
  std::vector<uint8_t> bytes;
  G3RT_RETURN_IF_ERROR(readFile(path, bytes));
  out = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  if (out.is_discarded() || !out.is_object())
    return Status::error(path + ": not a JSON object");
  return Status();
}

/// Typed fields of a checkpoint's JSON files; a missing or mistyped field is
/// an error naming the file and the field.
struct JsonReader {
  const std::string &path;
  const nlohmann::json &j;

  const nlohmann::json *find(const char *key) const {
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  }
  Status missing(const char *key, const char *what) const {
    return Status::error(path + ": field '" + key + "' must be " + what);
  }
  Status get(const char *key, int64_t &out) const {
    const nlohmann::json *v = find(key);
    if (!v || !v->is_number_integer())
      return missing(key, "an integer");
    out = v->get<int64_t>();
    return Status();
  }
  Status get(const char *key, uint64_t &out) const {
    const nlohmann::json *v = find(key);
    if (!v || !v->is_number_integer() ||
        (v->is_number_integer() && !v->is_number_unsigned() && v->get<int64_t>() < 0))
      return missing(key, "a non-negative integer");
    out = v->get<uint64_t>();
    return Status();
  }
  Status get(const char *key, double &out) const {
    const nlohmann::json *v = find(key);
    if (!v || !v->is_number())
      return missing(key, "a number");
    out = v->get<double>();
    return Status();
  }
  Status get(const char *key, std::string &out) const {
    const nlohmann::json *v = find(key);
    if (!v || !v->is_string())
      return missing(key, "a string");
    out = v->get<std::string>();
    return Status();
  }
};

/// The pid in a temporary's name, or -1 for any other name: the folders
/// `checkpoint-<n>.tmp-<pid>[-old]` of saveCheckpoint and publish, and the
/// files `<name>.tmp.<pid>` of writeFileAtomically and writeSafetensors.
long temporaryOwner(const std::string &name) {
  auto pidAt = [&](size_t at, bool wholeRest) -> long {
    const char *digits = name.c_str() + at;
    if (!std::isdigit(static_cast<unsigned char>(*digits)))
      return -1;
    char *end = nullptr;
    long pid = std::strtol(digits, &end, 10);
    bool valid = pid > 0 && pid <= INT_MAX && (!wholeRest || *end == '\0');
    return valid ? pid : -1;
  };
  size_t at = name.find(".tmp-");
  if (name.rfind("checkpoint-", 0) == 0 && at != std::string::npos)
    return pidAt(at + 5, /*wholeRest=*/false);
  at = name.rfind(".tmp.");
  if (at != std::string::npos && at > 0)
    return pidAt(at + 5, /*wholeRest=*/true);
  return -1;
}

} // namespace

void removeStaleTemporaries(const std::string &dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    long pid = temporaryOwner(it->path().filename().string());
    if (pid < 0)
      continue;
    bool alive = pid != long(getpid()) && (kill(pid_t(pid), 0) == 0 || errno == EPERM);
    if (!alive) {
      std::error_code ignored;
      fs::remove_all(it->path(), ignored);
    }
  }
}

namespace {

std::string temporaryPath(const std::string &dir, const char *tag = "") {
  return dir + ".tmp-" + std::to_string(long(getpid())) + tag;
}

/// Moves the finished folder `tmp` to `dir`. An existing `dir` (a resumed
/// run saving a step again) is swapped out atomically and then deleted.
Status publish(const std::string &tmp, const std::string &dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    fs::rename(tmp, dir, ec);
    return ec ? Status::error("cannot rename " + tmp + " to " + dir + ": " + ec.message())
              : Status();
  }
#ifdef RENAME_EXCHANGE
  if (renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(tmp, ec);
    return Status();
  }
#endif
  // Without an atomic exchange there is a moment with no `dir`; the old copy
  // is then a temporary folder that the next save removes.
  std::string old = temporaryPath(dir, "-old");
  fs::remove_all(old, ec);
  fs::rename(dir, old, ec);
  if (ec)
    return Status::error("cannot move " + dir + " aside: " + ec.message());
  fs::rename(tmp, dir, ec);
  if (ec)
    return Status::error("cannot rename " + tmp + " to " + dir + ": " + ec.message());
  fs::remove_all(old, ec);
  return Status();
}

/// TEST ONLY: G3MOE_TEST_ABORT_DURING_SAVE=<step> ends the process abruptly
/// (no destructors, no flushing) halfway through writing checkpoint <step>,
/// to test that an interrupted save leaves earlier checkpoints usable. Not a
/// user option; test/Tools/g3moe-run-resume.test uses it.
void testOnlyAbortDuringSave(int64_t step) {
  const char *value = std::getenv("G3MOE_TEST_ABORT_DURING_SAVE");
  if (value && *value && std::strtoll(value, nullptr, 10) == step) {
    std::fflush(stdout);
    std::_Exit(86);
  }
}

nlohmann::json trainerStateJson(const TrainerState &s) {
  auto orNull = [](bool has, nlohmann::json v) { return has ? v : nlohmann::json(); };
  return {
      {"best_global_step", orNull(s.bestGlobalStep >= 0, s.bestGlobalStep)},
      {"best_metric", orNull(s.bestMetric.has_value(), s.bestMetric.value_or(0))},
      {"best_model_checkpoint", orNull(!s.bestModelCheckpoint.empty(), s.bestModelCheckpoint)},
      {"epoch", s.epochProgress},
      {"eval_steps", s.evalSteps},
      {"global_step", s.globalStep},
      {"is_hyper_param_search", false},
      {"is_local_process_zero", true},
      {"is_world_process_zero", true},
      {"log_history", s.logHistory},
      {"logging_steps", s.loggingSteps},
      {"max_steps", s.maxSteps > 0 ? s.maxSteps : s.totalSteps},
      {"num_input_tokens_seen", s.tokensSeen},
      {"num_train_epochs", s.numTrainEpochs},
      {"save_steps", s.saveSteps},
      {"stateful_callbacks", nlohmann::json::object()},
      {"total_flos", 0},
      {"train_batch_size", s.trainBatchSize},
      {"trial_name", nullptr},
      {"trial_params", nullptr},
  };
}

/// The moments `host` holds, by checkpoint name; `missing` receives the
/// first trainable parameter whose moments neither it nor (ZeRO) another
/// process holds.
std::vector<NamedTensor> optimizerTensors(const HostState &host, std::string *missing) {
  std::vector<NamedTensor> out;
  const auto owners = momentOwners(host.program());
  for (const ParamDesc &p : host.program().params) {
    if (!p.trainable)
      continue;
    TensorView m = host.state(BufferKind::ExpAvg, p.name);
    TensorView v = host.state(BufferKind::ExpAvgSq, p.name);
    const bool elsewhere = owners.count({BufferKind::ExpAvg, p.name}) != 0;
    if ((!m.data || !v.data) && !elsewhere && missing && missing->empty())
      *missing = p.name;
    if (m.data)
      out.push_back({"exp_avg/" + p.name, m});
    if (v.data)
      out.push_back({"exp_avg_sq/" + p.name, v});
  }
  return out;
}

/// Checks that `file` holds exactly `plan`'s tensors, fp32 and shaped alike.
Status checkTensors(const SafetensorsFile &file, const std::vector<NamedTensor> &plan) {
  std::map<std::string, const NamedTensor *> wanted;
  for (const NamedTensor &t : plan)
    wanted[t.name] = &t;
  for (const NamedTensor &t : plan) {
    const SafetensorsEntry *e = file.find(t.name);
    if (!e)
      return Status::error(file.path() + ": the step trains '" + t.name + "' " +
                           shapeString(t.view.shape) +
                           ", which the checkpoint lacks: it was saved by another step");
    if (e->shape != t.view.shape)
      return Status::error(file.path() + ": tensor '" + t.name + "' has shape " +
                           shapeString(e->shape) + ", the step's parameter has " +
                           shapeString(t.view.shape));
    if (e->dtype != DType::F32)
      return Status::error(file.path() + ": tensor '" + t.name + "' is " +
                           std::string(dtypeName(e->dtype)) +
                           "; a checkpoint stores trainable parameters and moments in F32");
  }
  for (const SafetensorsEntry &e : file.entries())
    if (!wanted.count(e.name))
      return Status::error(file.path() + ": the checkpoint holds '" + e.name +
                           "', which is not a trainable parameter of this step");
  return Status();
}

/// A sharded checkpoint's file of process `r`'s moments, of `n`.
std::string optimizerShardFile(int r, int n) {
  char name[64];
  std::snprintf(name, sizeof name, "optimizer-%05d-of-%05d.safetensors", r, n);
  return name;
}

constexpr const char *kOptimizerIndex = "optimizer.safetensors.index.json";

/// Writes the moments into `tmp`: one file, or one per process and the
/// index (which records the step's ZeRO stage).
Status writeMoments(const MomentSource &source, int64_t zeroStage, const std::string &tmp) {
  const int processes = source.job ? source.job->size() : 1;
  nlohmann::json weightMap = nlohmann::json::object();
  for (int r = 0; r < processes; ++r) {
    std::vector<NamedTensor> moments;
    std::vector<std::vector<float>> storage;
    G3RT_RETURN_IF_ERROR(shareMoments(source, r, moments, storage));
    const std::string file = source.job ? optimizerShardFile(r, processes) : kOptimizerFile;
    for (const NamedTensor &t : moments)
      weightMap[t.name] = file;
    G3RT_RETURN_IF_ERROR(
        writeSafetensors(tmp + "/" + file, moments, {{"format", "g3moe"}, {"optimizer", "adamw"}}));
  }
  if (!source.job)
    return Status();
  return writeJson(tmp + "/" + kOptimizerIndex,
                   {{"metadata", {{"zero_stage", zeroStage}, {"processes", processes}}},
                    {"weight_map", weightMap}});
}

/// Reads each of `moments` from its file of `files` (name -> file in `dir`),
/// after checking every one of them (present, F32, the step's shape).
Status readMomentFiles(const std::string &dir, const std::map<std::string, std::string> &files,
                       const std::vector<NamedTensor> &moments) {
  std::map<std::string, SafetensorsFile> open;
  std::vector<std::pair<const SafetensorsFile *, const SafetensorsEntry *>> found;
  for (const NamedTensor &t : moments) {
    const std::string &file = files.at(t.name);
    auto it = open.find(file);
    if (it == open.end()) {
      it = open.emplace(file, SafetensorsFile()).first;
      G3RT_RETURN_IF_ERROR(SafetensorsFile::open(dir + "/" + file, it->second));
    }
    const SafetensorsEntry *e = it->second.find(t.name);
    if (!e)
      return Status::error(it->second.path() + ": the step trains '" + t.name +
                           "', which the checkpoint lacks: it was saved by another step");
    if (e->shape != t.view.shape || e->dtype != DType::F32)
      return Status::error(it->second.path() + ": tensor '" + t.name + "' is " +
                           std::string(dtypeName(e->dtype)) + " " + shapeString(e->shape) +
                           ", the step's moment is F32 " + shapeString(t.view.shape));
    found.push_back({&it->second, e});
  }
  for (size_t i = 0; i < moments.size(); ++i)
    G3RT_RETURN_IF_ERROR(found[i].first->read(*found[i].second, moments[i].view));
  return Status();
}

/// Reads the moments `host` holds from checkpoint `dir`: optimizer.safetensors,
/// or the files its index names. Everything is checked before `host` is
/// written.
Status readMoments(const std::string &dir, HostState &host) {
  std::string missing;
  std::vector<NamedTensor> moments = optimizerTensors(host, &missing);
  if (!missing.empty())
    return Status::error("the step has no Adam moments for '" + missing + "'");
  const std::string indexPath = dir + "/" + kOptimizerIndex;
  std::error_code ec;
  if (!fs::exists(indexPath, ec)) {
    // An unsharded step takes the whole file, and nothing but it.
    if (momentOwners(host.program()).empty()) {
      SafetensorsFile optimizer;
      G3RT_RETURN_IF_ERROR(SafetensorsFile::open(dir + "/" + kOptimizerFile, optimizer));
      G3RT_RETURN_IF_ERROR(checkTensors(optimizer, moments));
    }
    std::map<std::string, std::string> all;
    for (const NamedTensor &t : moments)
      all[t.name] = kOptimizerFile;
    return readMomentFiles(dir, all, moments);
  }
  nlohmann::json index;
  G3RT_RETURN_IF_ERROR(readJson(indexPath, index));
  auto map = index.find("weight_map");
  if (map == index.end() || !map->is_object())
    return Status::error(indexPath + ": field 'weight_map' must be an object of tensor -> file");
  std::map<std::string, std::string> files;
  for (const NamedTensor &t : moments) {
    auto f = map->find(t.name);
    if (f == map->end() || !f->is_string() || f->get<std::string>().find('/') != std::string::npos)
      return Status::error(indexPath + ": field 'weight_map' has no file for '" + t.name +
                           "', which the step trains");
    files[t.name] = f->get<std::string>();
  }
  return readMomentFiles(dir, files, moments);
}

} // namespace

Status shareMoments(const MomentSource &source, int owner, std::vector<NamedTensor> &out,
                    std::vector<std::vector<float>> &storage) {
  out.clear();
  const HostState &host = source.host;
  if (!source.job) {
    std::string missing;
    out = optimizerTensors(host, &missing);
    if (!missing.empty())
      return Status::error("the step has no Adam moments for '" + missing + "'");
    return Status();
  }
  Communicator &job = *source.job;
  std::map<std::string, const ParamDesc *> params;
  for (const ParamDesc &p : host.program().params)
    params[p.name] = &p;
  // In momentOwners' order, the same on every process.
  for (const auto &[key, o] : momentOwners(host.program())) {
    if (o != owner)
      continue;
    const std::string name =
        (key.first == BufferKind::ExpAvg ? "exp_avg/" : "exp_avg_sq/") + key.second;
    TensorView v = host.state(key.first, key.second);
    if (owner != 0) {
      auto p = params.find(key.second);
      if (p == params.end())
        return Status::error("the step has Adam moments of '" + key.second +
                             "', which is not one of its parameters");
      if (job.rank() != owner) {
        int64_t n = 1;
        for (int64_t d : p->second->shape)
          n *= d;
        storage.emplace_back(size_t(n));
        v = TensorView{storage.back().data(), DType::F32, p->second->shape};
      }
      G3RT_RETURN_IF_ERROR(job.broadcast(v.data, v.bytes(), owner)
                               .withContext("bringing " + name + " to rank 0 for a checkpoint"));
    }
    if (job.rank() == 0)
      out.push_back({name, v});
    else if (owner != 0 && job.rank() != owner)
      storage.pop_back(); // received only to take part
  }
  return Status();
}

GatheredParameters::~GatheredParameters() {
  for (const std::string &name : received_)
    host_.release(BufferKind::Param, name);
}

Status GatheredParameters::gather(Communicator *job) {
  if (!job || job->size() == 1)
    return Status();
  // In stateOwners' order, the same on every process.
  for (const auto &[key, owner] : stateOwners(host_.program())) {
    if (key.first != BufferKind::Param)
      continue;
    const std::string &name = key.second;
    const bool received = job->rank() != owner;
    TensorView v = host_.hold(BufferKind::Param, name);
    if (!v.data)
      return Status::error("cannot allocate " + std::to_string(v.bytes()) +
                           " bytes to receive parameter '" + name + "' for a save");
    Status sent = job->broadcast(v.data, v.bytes(), owner);
    if (received && job->rank() == 0)
      received_.push_back(name);
    else if (received)
      host_.release(BufferKind::Param, name); // received only to take part
    G3RT_RETURN_IF_ERROR(sent.withContext("bringing parameter " + name + " from process " +
                                          std::to_string(owner) + " for a save"));
  }
  return Status();
}

std::vector<NamedTensor> exportTrainable(const HostState &host, bool lora) {
  std::vector<NamedTensor> out;
  for (const ParamDesc &p : host.program().params) {
    if (!p.trainable)
      continue;
    TensorView t = host.param(p.name);
    // ZeRO stage 3: another process's, named and shaped, without data.
    if (host.heldElsewhere(BufferKind::Param, p.name))
      t = TensorView{nullptr, DType::F32, p.shape};
    std::string name = (lora ? "base_model.model." : "") + p.name;
    size_t at = name.find("{e}");
    if (at == std::string::npos) {
      out.push_back({name, t});
      continue;
    }
    int64_t experts = t.shape[0];
    size_t bytesPerExpert = t.bytes() / size_t(experts);
    for (int64_t e = 0; e < experts; ++e) {
      TensorView slice = t;
      slice.shape.erase(slice.shape.begin());
      slice.data = t.data ? static_cast<uint8_t *>(t.data) + size_t(e) * bytesPerExpert : nullptr;
      out.push_back({name.substr(0, at) + std::to_string(e) + name.substr(at + 3), slice});
    }
  }
  return out;
}

nlohmann::json adapterConfig(const TrainingConfig &training, const std::string &baseModel) {
  return {{"peft_type", "LORA"},
          {"task_type", "CAUSAL_LM"},
          {"r", training.loraR},
          {"lora_alpha", training.loraAlpha},
          {"lora_dropout", training.loraDropout},
          {"target_modules", training.loraTargetModules},
          {"bias", "none"},
          {"fan_in_fan_out", false},
          {"inference_mode", true},
          {"base_model_name_or_path", baseModel}};
}

Status saveTrainedParameters(const HostState &host, const TrainingConfig &training,
                             const std::string &dir, std::vector<std::string> &files,
                             const std::string &baseModel) {
  bool lora = training.isLoRA();
  std::string file = dir + "/" + (lora ? kAdapterFile : kModelFile);
  std::vector<NamedTensor> tensors = exportTrainable(host, lora);
  for (const NamedTensor &t : tensors)
    if (!t.view.data)
      return Status::error("cannot save '" + t.name +
                           "': another process holds it (ZeRO stage 3), and it was not gathered");
  G3RT_RETURN_IF_ERROR(writeSafetensors(file, tensors, {{"format", "pt"}}));
  files.push_back(file);
  if (lora) {
    std::string config = dir + "/adapter_config.json";
    G3RT_RETURN_IF_ERROR(writeJson(config, adapterConfig(training, baseModel)));
    files.push_back(config);
  }
  return Status();
}

std::string checkpointPath(const std::string &outputDir, int64_t step) {
  return outputDir + "/checkpoint-" + std::to_string(step);
}

std::vector<std::pair<int64_t, std::string>> listCheckpoints(const std::string &outputDir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (fs::directory_iterator it(outputDir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    const std::string prefix = "checkpoint-";
    if (name.rfind(prefix, 0) != 0 || name.size() == prefix.size() || name.size() > 30 ||
        !std::all_of(name.begin() + long(prefix.size()), name.end(),
                     [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    std::error_code dirError;
    if (!it->is_directory(dirError))
      continue;
    out.emplace_back(std::stoll(name.substr(prefix.size())), outputDir + "/" + name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Status latestCheckpoint(const std::string &outputDir, std::string &dir) {
  auto all = listCheckpoints(outputDir);
  if (all.empty())
    return Status::error("no checkpoint-<step> folder in '" + outputDir + "' to resume from");
  dir = all.back().second;
  return Status();
}

Status saveCheckpoint(const MomentSource &moments, const TrainingConfig &training,
                      const TrainerState &state, const nlohmann::json &trainingArgs,
                      const std::string &outputDir, std::string &dir,
                      const std::string &baseModel) {
  const HostState &host = moments.host;
  removeStaleTemporaries(outputDir);
  dir = checkpointPath(outputDir, state.globalStep);
  std::string tmp = temporaryPath(dir);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec)
    return Status::error("cannot create " + tmp + ": " + ec.message());

  auto write = [&]() -> Status {
    std::vector<std::string> files;
    G3RT_RETURN_IF_ERROR(saveTrainedParameters(host, training, tmp, files, baseModel));
    testOnlyAbortDuringSave(state.globalStep);

    G3RT_RETURN_IF_ERROR(writeMoments(moments, training.zeroStage, tmp));
    G3RT_RETURN_IF_ERROR(writeJson(tmp + "/scheduler.json", {{"step", state.globalStep},
                                                             {"total_steps", state.totalSteps},
                                                             {"warmup_steps", state.warmupSteps},
                                                             {"learning_rate", state.learningRate},
                                                             {"lr_scheduler_type", state.schedule},
                                                             {"last_lr", state.lastLearningRate}}));
    G3RT_RETURN_IF_ERROR(
        writeJson(tmp + "/rng_state.json", {{"seed", state.seed},
                                            {"micro_batches", state.microBatches},
                                            {"epoch", state.epoch},
                                            {"batch_in_epoch", state.window},
                                            {"train_examples", state.trainExamples},
                                            {"data_fingerprint", state.dataFingerprint},
                                            {"loss_since_last_log", state.lossSinceLastLog}}));
    G3RT_RETURN_IF_ERROR(writeJson(tmp + "/training_args.json", trainingArgs));
    // trainer_state.json last: HF tools take its presence as a complete
    // checkpoint.
    G3RT_RETURN_IF_ERROR(writeJson(tmp + "/trainer_state.json", trainerStateJson(state)));
    return publish(tmp, dir);
  };
  Status s = write();
  if (!s.ok()) {
    fs::remove_all(tmp, ec);
    return s.withContext("saving " + dir);
  }
  return Status();
}

Status rotateCheckpoints(const std::string &outputDir, int64_t limit, const std::string &keep,
                         std::vector<std::string> &deleted) {
  if (limit <= 0)
    return Status();
  auto all = listCheckpoints(outputDir);
  std::vector<std::string> order;
  for (auto &[step, path] : all)
    if (path != keep)
      order.push_back(path);
  bool keepsBest = false;
  for (auto &[step, path] : all)
    if (path == keep)
      keepsBest = true;
  if (keepsBest) {
    // The best one goes to the newest end, where nothing is deleted; with
    // room for one, the newest is kept too so a resume continues from it.
    order.push_back(keep);
    if (limit == 1 && all.back().second != keep)
      limit = 2;
  }
  size_t remove = order.size() > size_t(limit) ? order.size() - size_t(limit) : 0;
  for (size_t i = 0; i < remove; ++i) {
    std::error_code ec;
    std::string aside = temporaryPath(order[i], "-deleted");
    fs::rename(order[i], aside, ec);
    if (ec)
      return Status::error("cannot delete " + order[i] + ": " + ec.message());
    fs::remove_all(aside, ec);
    deleted.push_back(order[i]);
  }
  return Status();
}

Status loadCheckpoint(const std::string &dir, const TrainingConfig &training, HostState &host,
                      TrainerState &state) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return Status::error("cannot resume from '" + dir + "': not a folder");

  // Everything is read and checked before the host state is touched.
  TrainerState s = state;
  nlohmann::json scheduler, rng, trainer;
  std::string schedulerPath = dir + "/scheduler.json", rngPath = dir + "/rng_state.json",
              trainerPath = dir + "/trainer_state.json";
  G3RT_RETURN_IF_ERROR(readJson(schedulerPath, scheduler));
  G3RT_RETURN_IF_ERROR(readJson(rngPath, rng));
  G3RT_RETURN_IF_ERROR(readJson(trainerPath, trainer));
  JsonReader sr{schedulerPath, scheduler}, rr{rngPath, rng}, tr{trainerPath, trainer};
  G3RT_RETURN_IF_ERROR(sr.get("step", s.globalStep));
  G3RT_RETURN_IF_ERROR(sr.get("total_steps", s.totalSteps));
  G3RT_RETURN_IF_ERROR(sr.get("warmup_steps", s.warmupSteps));
  G3RT_RETURN_IF_ERROR(sr.get("learning_rate", s.learningRate));
  G3RT_RETURN_IF_ERROR(sr.get("lr_scheduler_type", s.schedule));
  G3RT_RETURN_IF_ERROR(sr.get("last_lr", s.lastLearningRate));
  G3RT_RETURN_IF_ERROR(rr.get("seed", s.seed));
  G3RT_RETURN_IF_ERROR(rr.get("micro_batches", s.microBatches));
  G3RT_RETURN_IF_ERROR(rr.get("epoch", s.epoch));
  G3RT_RETURN_IF_ERROR(rr.get("batch_in_epoch", s.window));
  G3RT_RETURN_IF_ERROR(rr.get("train_examples", s.trainExamples));
  G3RT_RETURN_IF_ERROR(rr.get("data_fingerprint", s.dataFingerprint));
  G3RT_RETURN_IF_ERROR(rr.get("loss_since_last_log", s.lossSinceLastLog));
  int64_t globalStep = 0;
  G3RT_RETURN_IF_ERROR(tr.get("global_step", globalStep));
  if (globalStep != s.globalStep)
    return Status::error(trainerPath + ": global_step " + std::to_string(globalStep) +
                         " disagrees with scheduler.json's step " + std::to_string(s.globalStep));
  if (s.globalStep < 0 || s.epoch < 0 || s.window < 0)
    return Status::error(rngPath + ": negative step, epoch or batch position");
  G3RT_RETURN_IF_ERROR(tr.get("epoch", s.epochProgress));
  if (const nlohmann::json *h = tr.find("log_history"); h && h->is_array())
    s.logHistory = *h;
  else
    return tr.missing("log_history", "an array");
  if (const nlohmann::json *v = tr.find("num_input_tokens_seen"); v && v->is_number_integer())
    s.tokensSeen = v->get<int64_t>();
  if (const nlohmann::json *v = tr.find("best_metric"); v && v->is_number())
    s.bestMetric = v->get<double>();
  if (const nlohmann::json *v = tr.find("best_global_step"); v && v->is_number_integer())
    s.bestGlobalStep = v->get<int64_t>();
  if (const nlohmann::json *v = tr.find("best_model_checkpoint"); v && v->is_string())
    s.bestModelCheckpoint = v->get<std::string>();

  bool lora = training.isLoRA();
  std::string modelPath = dir + "/" + (lora ? kAdapterFile : kModelFile);
  std::string otherPath = dir + "/" + (lora ? kModelFile : kAdapterFile);
  if (!fs::exists(modelPath, ec) && fs::exists(otherPath, ec))
    return Status::error(dir + " holds " + (lora ? kModelFile : kAdapterFile) +
                         ": it was saved by a " + (lora ? "full fine-tuning" : "LoRA") +
                         " step, and this step trains " + (lora ? "LoRA adapters" : "all weights"));
  SafetensorsFile model;
  G3RT_RETURN_IF_ERROR(SafetensorsFile::open(modelPath, model));
  std::vector<NamedTensor> params = exportTrainable(host, lora);
  G3RT_RETURN_IF_ERROR(checkTensors(model, params));
  // The moments are checked and read before the parameters are: a bad
  // moment file then leaves `host` untouched.
  G3RT_RETURN_IF_ERROR(readMoments(dir, host));
  for (const NamedTensor &t : params)
    if (t.view.data) // else another process's (ZeRO stage 3)
      G3RT_RETURN_IF_ERROR(model.read(*model.find(t.name), t.view));
  state = s;
  return Status();
}

uint64_t fingerprintRows(const std::vector<Row> &rows) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](const std::vector<int32_t> &v) {
    h = (h ^ uint64_t(v.size())) * 0x100000001b3ull;
    for (int32_t x : v)
      h = (h ^ uint64_t(uint32_t(x))) * 0x100000001b3ull;
  };
  for (const Row &r : rows) {
    mix(r.inputIds);
    mix(r.labels);
    mix(r.segmentIds);
  }
  return h;
}

} // namespace g3rt
