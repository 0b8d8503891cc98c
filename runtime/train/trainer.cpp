//===- trainer.cpp - the training loop of g3moe-run -----------------------===//
//
// The schedule horizon counts the updates the run will really make (every
// accumulation window of every epoch, the shorter last window of an epoch
// included, or --max-steps), so a cosine schedule ends at 0 instead of
// turning back up.
//
//===----------------------------------------------------------------------===//

#include "runtime/train/trainer.h"

#include "runtime/base/random.h"
#include "runtime/exec/executor.h"
#include "runtime/io/safetensors.h"
#include "runtime/train/data.h"
#include "runtime/train/init.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <ostream>

namespace g3rt {

namespace {

/// Stream of the per-epoch shuffle draws.
constexpr uint32_t kShuffleStream = 0xfffffff0u;

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

template <typename T>
T option(const nlohmann::json &j, const char *key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null())
    return fallback;
  if constexpr (std::is_same_v<T, std::string>)
    return it->is_string() ? it->get<std::string>() : fallback;
  else
    return it->is_number() || it->is_boolean() ? it->get<T>() : fallback;
}

void copyInts(const TensorView &t, const std::vector<int32_t> &v) {
  std::memcpy(t.data, v.data(), v.size() * sizeof(int32_t));
}

/// The trainable parameters under the names HF / PEFT files use: stacked
/// expert tensors are split per expert, LoRA names get PEFT's prefix.
std::vector<NamedTensor> exportTensors(const Executor &ex, bool lora) {
  std::vector<NamedTensor> out;
  for (const ParamDesc &p : ex.program().params) {
    if (!p.trainable)
      continue;
    TensorView t = ex.param(p.name);
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
      slice.data = static_cast<uint8_t *>(t.data) + size_t(e) * bytesPerExpert;
      out.push_back({name.substr(0, at) + std::to_string(e) + name.substr(at + 3), slice});
    }
  }
  return out;
}

/// PEFT's adapter_config.json for the adapters of this step.
nlohmann::json adapterConfig(const nlohmann::json &training) {
  nlohmann::json targets = training.value("lora_target_modules", nlohmann::json::array());
  return {{"peft_type", "LORA"},
          {"task_type", "CAUSAL_LM"},
          {"r", training.value("lora_r", 16)},
          {"lora_alpha", training.value("lora_alpha", 32.0)},
          {"lora_dropout", training.value("lora_dropout", 0.0)},
          {"target_modules", targets},
          {"bias", "none"},
          {"fan_in_fan_out", false},
          {"inference_mode", true},
          {"base_model_name_or_path", training.value("model_name_or_path", "")}};
}

} // namespace

Status train(const StepProgram &compiled, const TrainOptions &options, std::ostream &log,
             TrainResult &result) {
  nlohmann::json training =
      nlohmann::json::parse(compiled.trainingOptionsJson, nullptr, false);
  nlohmann::json model = nlohmann::json::parse(compiled.modelConfigJson, nullptr, false);
  if (training.is_discarded() || model.is_discarded())
    return Status::error("the step's configuration is not valid JSON");

  // Run-time overrides that live in the optimizer's instructions.
  StepProgram program = compiled;
  double lr = options.learningRate.value_or(option(training, "learning_rate", 2e-5));
  std::string schedule =
      options.lrSchedulerType.value_or(option<std::string>(training, "lr_scheduler_type", "cosine"));
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
  if (!micro || !optim)
    return Status::error("the step has no train_micro_step/optimizer_step: compile "
                         "it with g3moe-compile (default --emit=step)");

  Executor ex(program);
  TensorView ids = ex.input("input_ids");
  if (!ids.data || ids.shape.size() != 2)
    return Status::error("the step has no [batch, seq] input_ids input");
  int64_t rows = ids.shape[0], seqLen = ids.shape[1];
  uint64_t seed = uint64_t(options.seed.value_or(option<int64_t>(training, "seed", 42)));
  int64_t padId = option<int64_t>(model, "pad_token_id", 0);
  G3RT_RETURN_IF_ERROR(initializeParameters(ex, seed, padId));

  std::string dataPath = options.dataPath.empty()
                             ? option<std::string>(training, "dataset", "")
                             : options.dataPath;
  if (dataPath.empty())
    return Status::error("no training data: pass --data FILE");
  DataSpec spec;
  spec.path = dataPath;
  spec.seqLen = seqLen;
  spec.vocabSize = option<int64_t>(model, "vocab_size", 0);
  spec.padId = int32_t(padId);
  spec.seed = seed;
  spec.skipBadLines = options.skipBadLines;
  DataSplit data;
  G3RT_RETURN_IF_ERROR(loadTrainingData(spec, data));
  const std::vector<Row> &examples = data.train;
  for (const std::string &w : data.warnings)
    log << "warning: " << w << "\n";
  log << "data: " << examples.size() << " examples from " << dataPath;
  if (data.stats.skipped)
    log << ", " << data.stats.skipped << " bad lines skipped";
  if (data.stats.truncated)
    log << ", " << data.stats.truncated << " truncated to " << seqLen << " tokens";
  log << "\n";

  int64_t ga = options.gradientAccumulationSteps.value_or(
      option<int64_t>(training, "gradient_accumulation_steps", 1));
  double epochs = options.epochs.value_or(option(training, "num_train_epochs", 3.0));
  if (ga < 1 || epochs <= 0)
    return Status::error("gradient accumulation steps must be >= 1 and epochs > 0");
  int64_t batchesPerEpoch = (int64_t(examples.size()) + rows - 1) / rows;
  int64_t updatesPerEpoch = (batchesPerEpoch + ga - 1) / ga;
  int64_t maxSteps = options.maxSteps.value_or(option<int64_t>(training, "max_steps", -1));
  int64_t total = maxSteps > 0 ? maxSteps : int64_t(std::ceil(epochs * double(updatesPerEpoch)));
  int64_t warmup = options.warmupSteps.value_or(option<int64_t>(training, "warmup_steps", 0));
  if (warmup <= 0)
    warmup = int64_t(std::ceil(options.warmupRatio.value_or(option(training, "warmup_ratio", 0.0)) *
                               double(total)));
  int64_t logEvery = std::max<int64_t>(1, options.loggingSteps.value_or(
                                              option<int64_t>(training, "logging_steps", 1)));
  log << "training: " << total << " optimizer steps, " << ga
      << " micro-batches of [" << rows << ", " << seqLen << "] each, lr " << lr << " ("
      << schedule << ", " << warmup << " warmup steps)\n";

  std::string outputDir = options.outputDir.empty()
                              ? option<std::string>(training, "output_dir", "")
                              : options.outputDir;
  std::ofstream metrics;
  if (!options.noSave) {
    if (outputDir.empty())
      outputDir = "g3moe-output";
    std::error_code ec;
    std::filesystem::create_directories(outputDir, ec);
    if (ec)
      return Status::error("cannot create " + outputDir + ": " + ec.message());
    metrics.open(outputDir + "/metrics.jsonl", std::ios::app);
  }

  auto setScalar = [&](const char *name, const auto &value) {
    TensorView t = ex.input(name);
    if (t.data) {
      if (t.dtype == DType::I64)
        *t.i64() = int64_t(value);
      else
        t.store(0, float(value));
    }
  };

  MicroBatch batch;
  uint64_t microCounter = 0;
  int64_t step = 0;
  double loggedLoss = 0, loggedTokens = 0;
  auto windowStart = std::chrono::steady_clock::now();
  for (int64_t epoch = 0; step < total; ++epoch) {
    std::vector<size_t> order = shuffled(examples.size(), seed, uint64_t(epoch));
    for (int64_t window = 0; window < updatesPerEpoch && step < total; ++window) {
      // The window's label count normalises every micro-batch loss (HF).
      int64_t firstBatch = window * ga;
      int64_t lastBatch = std::min(batchesPerEpoch, firstBatch + ga);
      std::vector<MicroBatch> batches;
      int64_t labels = 0, tokens = 0;
      for (int64_t mb = firstBatch; mb < lastBatch; ++mb) {
        std::vector<size_t> idx;
        for (int64_t r = mb * rows; r < std::min<int64_t>((mb + 1) * rows, int64_t(order.size())); ++r)
          idx.push_back(order[size_t(r)]);
        assembleMicroBatch(examples, idx, rows, seqLen, int32_t(padId), batch);
        labels += batch.labelCount;
        tokens += batch.tokens;
        batches.push_back(batch);
      }
      ex.zeroGradients();
      double loss = 0;
      for (const MicroBatch &mb : batches) {
        copyInts(ex.input("input_ids"), mb.inputIds);
        copyInts(ex.input("targets"), mb.targets);
        copyInts(ex.input("positions"), mb.positions);
        copyInts(ex.input("segment_ids"), mb.segmentIds);
        setScalar("num_items", double(std::max<int64_t>(1, labels)));
        if (TensorView key = ex.input("rng_key"); key.data) {
          key.i64()[0] = int64_t(seed);
          key.i64()[1] = int64_t(microCounter);
        }
        ++microCounter;
        G3RT_RETURN_IF_ERROR(ex.run("train_micro_step"));
        loss += ex.output("train_micro_step", "loss").load(0);
      }
      setScalar("step", step);
      setScalar("total_steps", total);
      setScalar("warmup_steps", warmup);
      G3RT_RETURN_IF_ERROR(ex.run("optimizer_step"));
      double gradNorm = ex.output("optimizer_step", "grad_norm").load(0);
      double usedLr = ex.output("optimizer_step", "learning_rate").load(0);
      ++step;
      result.losses.push_back(loss);
      result.gradNorms.push_back(gradNorm);
      result.learningRates.push_back(usedLr);
      if (!std::isfinite(loss))
        return Status::error("the loss is not finite at step " + std::to_string(step));
      loggedLoss += loss;
      loggedTokens += double(tokens);
      if (step % logEvery == 0 || step == total) {
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                       windowStart)
                             .count();
        int64_t n = (step % logEvery) ? step % logEvery : logEvery;
        double epochPos = double(epoch) + double(window + 1) / double(updatesPerEpoch);
        char line[256];
        std::snprintf(line, sizeof line,
                      "step %lld/%lld  epoch %.2f  loss %.4f  lr %.3e  grad_norm %.4f  "
                      "tokens/s %.0f",
                      (long long)step, (long long)total, epochPos, loggedLoss / double(n),
                      usedLr, gradNorm, loggedTokens / std::max(seconds, 1e-9));
        log << line << "\n";
        if (metrics.is_open())
          metrics << nlohmann::json{{"step", step},        {"epoch", epochPos},
                                    {"loss", loggedLoss / double(n)}, {"learning_rate", usedLr},
                                    {"grad_norm", gradNorm}, {"tokens_per_second", loggedTokens / std::max(seconds, 1e-9)}}
                         .dump()
                  << "\n";
        loggedLoss = loggedTokens = 0;
        windowStart = std::chrono::steady_clock::now();
      }
    }
  }
  result.optimizerSteps = step;
  result.arenaHighWater = ex.arenaHighWater();

  if (!options.noSave) {
    bool lora = option<std::string>(training, "finetuning", "lora") == "lora";
    std::string file = outputDir + (lora ? "/adapter_model.safetensors" : "/model.safetensors");
    G3RT_RETURN_IF_ERROR(writeSafetensors(file, exportTensors(ex, lora), {{"format", "pt"}}));
    result.savedFiles.push_back(file);
    if (lora) {
      std::string config = outputDir + "/adapter_config.json";
      std::ofstream out(config);
      out << adapterConfig(training).dump(2) << "\n";
      if (!out)
        return Status::error("cannot write " + config);
      result.savedFiles.push_back(config);
    }
    for (const std::string &f : result.savedFiles)
      log << "saved " << f << "\n";
  }
  return Status();
}

} // namespace g3rt
