//===- ResumeTest.cpp - checkpoints, resume, evaluation and log formats ---===//
//
// A run interrupted at a checkpoint and resumed repeats the uninterrupted
// run bit for bit on the CPU backend (losses ==, parameters byte-equal);
// checkpoints that do not fit the step are refused by name; evaluation is
// the token-weighted loss of eval_forward; the TensorBoard record format and
// the progress line.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/file.h"
#include "runtime/io/safetensors.h"
#include "runtime/io/tensorboard.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/data.h"
#include "runtime/train/init.h"
#include "runtime/train/progress.h"
#include "runtime/train/trainer.h"
#include "test/e2e/StepFixtures.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

using namespace g3rt;
using namespace g3moe_test;
namespace fs = std::filesystem;

namespace {

/// Eleven examples of varied length: with [2, 16] micro-batches and two per
/// window, an epoch has six micro-batches in three windows, the last one
/// short, and the last micro-batch holds a single example.
std::string writeData(const std::string &dir) { return g3moe_test::writeData(dir, 11, 6, 11); }

TrainOptions baseOptions(const std::string &data, const std::string &out) {
  TrainOptions o;
  o.dataPath = data;
  o.outputDir = out;
  o.maxSteps = 8;
  o.gradientAccumulationSteps = 2;
  o.learningRate = 1e-2;
  o.lrSchedulerType = "cosine";
  o.warmupSteps = 2;
  o.loggingSteps = 3;
  o.seed = 7;
  return o;
}

/// Interrupts a run after `stopAt` steps (checkpoints every `saveEvery`),
/// resumes it from the latest checkpoint and compares the continuation with
/// an uninterrupted run: the same losses, gradient norms, learning rates and
/// evaluations, and byte-equal final parameters.
void checkResumeIsBitIdentical(const std::string &stepName, int64_t stopAt, int64_t saveEvery,
                               double testSize) {
  StepProgram program = loadProgram(stepName);
  std::string dir = scratch("g3moe-resume", stepName + "-" + std::to_string(stopAt));
  std::string data = writeData(dir);

  TrainOptions whole = baseOptions(data, dir + "/whole");
  if (testSize > 0) {
    whole.testSize = testSize;
    whole.evalSteps = 2;
  }
  TrainResult a;
  ASSERT_TRUE(runTraining(program, whole, a).ok());
  ASSERT_EQ(a.losses.size(), 8u);

  TrainOptions first = whole;
  first.outputDir = dir + "/parts";
  first.saveSteps = saveEvery;
  first.stopAfterSteps = stopAt;
  TrainResult b;
  ASSERT_TRUE(runTraining(program, first, b).ok());
  ASSERT_EQ(b.optimizerSteps, stopAt);
  EXPECT_TRUE(b.savedFiles.empty()) << "an interrupted run writes no final parameters";
  int64_t resumeAt = stopAt / saveEvery * saveEvery;
  ASSERT_FALSE(b.checkpoints.empty());
  EXPECT_EQ(b.checkpoints.back(), checkpointPath(first.outputDir, resumeAt));

  TrainOptions second = whole;
  second.outputDir = first.outputDir;
  second.saveSteps = saveEvery;
  second.resume = "";
  TrainResult c;
  std::string log;
  ASSERT_TRUE(runTraining(program, second, c, &log).ok()) << log;
  EXPECT_NE(log.find("resumed from " + checkpointPath(first.outputDir, resumeAt)),
            std::string::npos)
      << log;
  ASSERT_EQ(c.firstStep, resumeAt);
  ASSERT_EQ(c.losses.size(), size_t(8 - resumeAt));
  for (size_t i = 0; i < c.losses.size(); ++i) {
    size_t at = size_t(resumeAt) + i;
    EXPECT_EQ(c.losses[i], a.losses[at]) << "step " << at + 1;
    EXPECT_EQ(c.gradNorms[i], a.gradNorms[at]) << "step " << at + 1;
    EXPECT_EQ(c.learningRates[i], a.learningRates[at]) << "step " << at + 1;
  }
  // The interrupted part repeated the whole run too.
  for (size_t i = 0; i < b.losses.size(); ++i)
    EXPECT_EQ(b.losses[i], a.losses[i]) << "step " << i + 1;

  if (testSize > 0) {
    ASSERT_FALSE(c.evalSteps.empty());
    EXPECT_EQ(c.evalSteps.back(), 8);
    EXPECT_EQ(c.evalLosses.back(), a.evalLosses.back());
    EXPECT_EQ(c.evalAccuracies.back(), a.evalAccuracies.back());
  }

  bool lora = program.training.isLoRA();
  std::string file = lora ? "/adapter_model.safetensors" : "/model.safetensors";
  EXPECT_EQ(bytesOf(whole.outputDir + file), bytesOf(second.outputDir + file))
      << "the final parameters differ";
}

} // namespace

TEST(Resume, LoRAWithDropoutAndSparseMixerIsBitIdentical) {
  // From step 5: mid-epoch (3-window epochs), with the rng key's counter in
  // play.
  checkResumeIsBitIdentical("g3moe_lora", 6, 5, 0);
}

TEST(Resume, FullFineTuningIsBitIdentical) { checkResumeIsBitIdentical("gemma3_full", 5, 2, 0); }

TEST(Resume, WithEvaluationsIsBitIdentical) { checkResumeIsBitIdentical("g3moe_lora", 6, 3, 0.2); }

TEST(Resume, ResavingAnExistingCheckpointReplacesItWhole) {
  StepProgram program = loadProgram("g3moe_lora");
  std::string dir = scratch("g3moe-resume", "resave");
  std::string data = writeData(dir);
  TrainOptions o = baseOptions(data, dir + "/out");
  o.saveSteps = 2;
  o.stopAfterSteps = 6;
  TrainResult r;
  ASSERT_TRUE(runTraining(program, o, r).ok());
  std::string four = checkpointPath(o.outputDir, 4);
  auto optimizer = bytesOf(four + "/optimizer.safetensors");
  auto adapter = bytesOf(four + "/adapter_model.safetensors");
  // Damage checkpoint-4's copy to see it replaced, not kept.
  {
    std::ofstream(four + "/stale-file") << "x";
  }

  o.resume = checkpointPath(o.outputDir, 2);
  o.stopAfterSteps = 4;
  TrainResult again;
  ASSERT_TRUE(runTraining(program, o, again).ok());
  EXPECT_EQ(bytesOf(four + "/optimizer.safetensors"), optimizer);
  EXPECT_EQ(bytesOf(four + "/adapter_model.safetensors"), adapter);
  EXPECT_FALSE(fs::exists(four + "/stale-file"));
  for (const auto &entry : fs::directory_iterator(o.outputDir))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos)
        << "left behind: " << entry.path();
}

TEST(Resume, CheckpointStateFiles) {
  StepProgram program = loadProgram("g3moe_lora");
  std::string dir = scratch("g3moe-resume", "state");
  std::string data = writeData(dir);
  TrainOptions o = baseOptions(data, dir + "/out");
  o.saveSteps = 4;
  o.testSize = 0.2;
  o.evalSteps = 2;
  TrainResult r;
  ASSERT_TRUE(runTraining(program, o, r).ok());
  std::string ckpt = checkpointPath(o.outputDir, 4);
  for (const char *f :
       {"adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors",
        "scheduler.json", "rng_state.json", "trainer_state.json", "training_args.json"})
    EXPECT_TRUE(fs::exists(ckpt + "/" + f)) << f;

  std::ifstream in(ckpt + "/trainer_state.json");
  nlohmann::json state = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(state.is_discarded());
  EXPECT_EQ(state["global_step"], 4);
  EXPECT_EQ(state["save_steps"], 4);
  EXPECT_EQ(state["eval_steps"], 2);
  EXPECT_EQ(state["logging_steps"], 3);
  EXPECT_EQ(state["max_steps"], 8);
  // Logs at step 3, evaluations at 2 and 4.
  ASSERT_EQ(state["log_history"].size(), 3u);
  EXPECT_EQ(state["log_history"][0]["step"], 2);
  EXPECT_TRUE(state["log_history"][0].contains("eval_loss"));
  EXPECT_EQ(state["log_history"][1]["step"], 3);
  EXPECT_EQ(state["log_history"][1]["loss"].get<double>(),
            (r.losses[0] + r.losses[1] + r.losses[2]) / 3);
  EXPECT_TRUE(state["log_history"][2].contains("eval_mean_token_accuracy"));
  ASSERT_TRUE(state["best_metric"].is_number());
  double best = std::min(r.evalLosses[0], r.evalLosses[1]);
  EXPECT_EQ(state["best_metric"].get<double>(), best);
  int64_t bestStep = r.evalLosses[0] <= r.evalLosses[1] ? 2 : 4;
  EXPECT_EQ(state["best_global_step"], bestStep);
  // Only a saved step can be the best checkpoint.
  if (bestStep == 4)
    EXPECT_EQ(state["best_model_checkpoint"], ckpt);
  else
    EXPECT_TRUE(state["best_model_checkpoint"].is_null());

  // The optimizer file holds both moments of every trainable parameter, fp32.
  SafetensorsFile optimizer;
  ASSERT_TRUE(SafetensorsFile::open(ckpt + "/optimizer.safetensors", optimizer).ok());
  size_t trainable = 0;
  for (const ParamDesc &p : program.params)
    if (p.trainable) {
      ++trainable;
      const SafetensorsEntry *m = optimizer.find("exp_avg/" + p.name);
      const SafetensorsEntry *v = optimizer.find("exp_avg_sq/" + p.name);
      ASSERT_TRUE(m && v) << p.name;
      EXPECT_EQ(m->shape, p.shape);
      EXPECT_EQ(v->dtype, DType::F32);
    }
  EXPECT_EQ(optimizer.entries().size(), 2 * trainable);
}

TEST(Resume, MismatchedCheckpointsAreRefusedByName) {
  StepProgram lora = loadProgram("g3moe_lora");
  std::string dir = scratch("g3moe-resume", "mismatch");
  std::string data = writeData(dir);
  TrainOptions o = baseOptions(data, dir + "/out");
  o.saveSteps = 2;
  o.stopAfterSteps = 2;
  TrainResult r;
  ASSERT_TRUE(runTraining(lora, o, r).ok());
  std::string ckpt = checkpointPath(o.outputDir, 2);

  auto resumeWith = [&](const StepProgram &program, const std::string &from) {
    TrainOptions again = baseOptions(data, dir + "/again");
    again.resume = from;
    TrainResult ignored;
    std::string log;
    Status s = runTraining(program, again, ignored, &log);
    EXPECT_FALSE(s.ok()) << log;
    return s.message();
  };

  // Adapters on every linear layer: the checkpoint lacks the attention ones.
  std::string msg = resumeWith(loadProgram("g3moe_lora_fp32"), ckpt);
  EXPECT_NE(msg.find("adapter_model.safetensors: the step trains '"), std::string::npos) << msg;
  EXPECT_NE(msg.find("which the checkpoint lacks"), std::string::npos) << msg;

  msg = resumeWith(loadProgram("g3moe_full"), ckpt);
  EXPECT_NE(msg.find("saved by a LoRA step"), std::string::npos) << msg;

  // A tensor of another shape.
  std::string reshaped = dir + "/reshaped";
  fs::copy(ckpt, reshaped, fs::copy_options::recursive);
  {
    SafetensorsFile file;
    ASSERT_TRUE(SafetensorsFile::open(ckpt + "/adapter_model.safetensors", file).ok());
    std::vector<std::vector<float>> storage;
    std::vector<NamedTensor> tensors;
    for (const SafetensorsEntry &e : file.entries()) {
      storage.emplace_back();
      ASSERT_TRUE(file.readFloats(e.name, storage.back()).ok());
    }
    std::string changed;
    for (size_t i = 0; i < file.entries().size(); ++i) {
      const SafetensorsEntry &e = file.entries()[i];
      TensorView v{storage[i].data(), DType::F32, e.shape};
      if (changed.empty() && e.shape.size() == 2) {
        v.shape = {e.shape[0] * e.shape[1]};
        changed = e.name;
      }
      tensors.push_back({e.name, v});
    }
    ASSERT_TRUE(writeSafetensors(reshaped + "/adapter_model.safetensors", tensors).ok());
    msg = resumeWith(lora, reshaped);
    EXPECT_NE(msg.find("tensor '" + changed + "' has shape ["), std::string::npos) << msg;
    EXPECT_NE(msg.find("the step's parameter has"), std::string::npos) << msg;
  }

  // Damaged files are named.
  std::string cut = dir + "/cut";
  fs::copy(ckpt, cut, fs::copy_options::recursive);
  auto bytes = bytesOf(ckpt + "/optimizer.safetensors");
  bytes.resize(bytes.size() / 2);
  ASSERT_TRUE(writeFileAtomically(cut + "/optimizer.safetensors", bytes).ok());
  msg = resumeWith(lora, cut);
  EXPECT_NE(msg.find("cut/optimizer.safetensors"), std::string::npos) << msg;

  std::string noState = dir + "/nostate";
  fs::copy(ckpt, noState, fs::copy_options::recursive);
  fs::remove(noState + "/rng_state.json");
  msg = resumeWith(lora, noState);
  EXPECT_NE(msg.find("nostate/rng_state.json"), std::string::npos) << msg;

  std::string badField = dir + "/badfield";
  fs::copy(ckpt, badField, fs::copy_options::recursive);
  {
    std::ofstream(badField + "/scheduler.json") << "{\"step\": \"two\"}";
  }
  msg = resumeWith(lora, badField);
  EXPECT_NE(msg.find("scheduler.json: field 'step' must be an integer"), std::string::npos) << msg;

  msg = resumeWith(lora, dir + "/missing");
  EXPECT_NE(msg.find("not a folder"), std::string::npos) << msg;

  // --resume without a folder: the output folder has no checkpoint.
  msg = resumeWith(lora, "");
  EXPECT_NE(msg.find("no checkpoint-<step> folder in"), std::string::npos) << msg;

  // Another seed would continue on another base model.
  TrainOptions seeded = baseOptions(data, dir + "/seeded");
  seeded.resume = ckpt;
  seeded.seed = 8;
  TrainResult ignored;
  std::string log;
  Status s = runTraining(lora, seeded, ignored, &log);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("pass --seed 7"), std::string::npos) << s.message();
}

TEST(Checkpoints, SaveTotalLimitKeepsTheNewestAndTheBest) {
  std::string dir = scratch("g3moe-resume", "rotate");
  for (int step : {2, 4, 6, 8})
    fs::create_directories(checkpointPath(dir, step));
  fs::create_directories(dir + "/checkpoint-9.tmp-1"); // not a checkpoint
  std::vector<std::string> deleted;
  ASSERT_TRUE(rotateCheckpoints(dir, 2, checkpointPath(dir, 4), deleted).ok());
  EXPECT_EQ(deleted, (std::vector<std::string>{checkpointPath(dir, 2), checkpointPath(dir, 6)}));
  auto left = listCheckpoints(dir);
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].first, 4);
  EXPECT_EQ(left[1].first, 8);

  // Room for one but the best is older: the newest stays too.
  deleted.clear();
  ASSERT_TRUE(rotateCheckpoints(dir, 1, checkpointPath(dir, 4), deleted).ok());
  EXPECT_TRUE(deleted.empty());
  ASSERT_TRUE(rotateCheckpoints(dir, 1, "", deleted).ok());
  EXPECT_EQ(deleted, (std::vector<std::string>{checkpointPath(dir, 4)}));
  std::string latest;
  ASSERT_TRUE(latestCheckpoint(dir, latest).ok());
  EXPECT_EQ(latest, checkpointPath(dir, 8));
}

TEST(Checkpoints, TrainingRotatesCheckpoints) {
  StepProgram program = loadProgram("gemma3_full");
  std::string dir = scratch("g3moe-resume", "limit");
  TrainOptions o = baseOptions(writeData(dir), dir + "/out");
  o.saveSteps = 2;
  o.saveTotalLimit = 2;
  TrainResult r;
  ASSERT_TRUE(runTraining(program, o, r).ok());
  EXPECT_EQ(r.checkpoints.size(), 4u);
  auto left = listCheckpoints(o.outputDir);
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].first, 6);
  EXPECT_EQ(left[1].first, 8);
  EXPECT_TRUE(fs::exists(o.outputDir + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(o.outputDir + "/checkpoint-8/model.safetensors"));
  // The final model is the last checkpoint's.
  EXPECT_EQ(bytesOf(o.outputDir + "/model.safetensors"),
            bytesOf(o.outputDir + "/checkpoint-8/model.safetensors"));
}

TEST(Evaluation, EvalOnlyIsTheTokenWeightedLossOfTheForward) {
  // gemma3_full's @forward has no randomness, so it is the eval forward.
  StepProgram program = loadProgram("gemma3_full");
  std::string dir = scratch("g3moe-resume", "eval");
  std::string data = writeData(dir);
  TrainOptions o;
  o.dataPath = data;
  o.evalOnly = true;
  o.seed = 3;
  o.metricsFile = dir + "/eval.json";
  TrainResult r;
  std::string log;
  ASSERT_TRUE(runTraining(program, o, r, &log).ok()) << log;
  ASSERT_EQ(r.evalLosses.size(), 1u);

  CpuStep ex(program);
  ASSERT_TRUE(initializeParameters(ex.state, 3, 0).ok());
  DataSpec spec;
  spec.path = data;
  spec.seqLen = 16;
  spec.vocabSize = 512;
  DataSplit split;
  ASSERT_TRUE(loadTrainingData(spec, split).ok());
  double sum = 0;
  int64_t count = 0;
  for (size_t first = 0; first < split.train.size(); first += 2) {
    std::vector<size_t> idx = {first};
    if (first + 1 < split.train.size())
      idx.push_back(first + 1);
    MicroBatch mb;
    assembleMicroBatch(split.train, idx, 2, 16, 0, mb);
    int64_t n = 0;
    for (int32_t t : mb.targets)
      n += t != kIgnoreIndex;
    std::memcpy(ex.state.input("input_ids").data, mb.inputIds.data(), mb.inputIds.size() * 4);
    std::memcpy(ex.state.input("targets").data, mb.targets.data(), mb.targets.size() * 4);
    std::memcpy(ex.state.input("positions").data, mb.positions.data(), mb.positions.size() * 4);
    std::memcpy(ex.state.input("segment_ids").data, mb.segmentIds.data(), mb.segmentIds.size() * 4);
    ex.state.input("num_items").store(0, 1.0f);
    ASSERT_TRUE(ex.cpu->run("forward").ok());
    sum += ex.cpu->output("forward", "loss").load(0);
    count += n;
  }
  EXPECT_NEAR(r.evalLosses[0], sum / double(count), 1e-5 * sum / double(count));
  EXPECT_GE(r.evalAccuracies[0], 0.0);
  EXPECT_LE(r.evalAccuracies[0], 1.0);

  std::ifstream in(o.metricsFile);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["eval_loss"].get<double>(), r.evalLosses[0]);
  EXPECT_EQ(j["eval_mean_token_accuracy"].get<double>(), r.evalAccuracies[0]);
  EXPECT_EQ(j["eval_tokens"].get<int64_t>(), count);
}

TEST(Evaluation, MemorisedDataReachFullAccuracy) {
  StepProgram program = loadProgram("gemma3_full");
  std::string dir = scratch("g3moe-resume", "accuracy");
  TrainOptions o;
  o.dataPath = std::string(G3MOE_EXAMPLES_DIR) + "/data/memorize.jsonl";
  o.outputDir = dir + "/out";
  o.maxSteps = 150;
  o.learningRate = 5e-3;
  o.lrSchedulerType = "constant";
  o.gradientAccumulationSteps = 2;
  o.saveSteps = 150;
  TrainResult r;
  ASSERT_TRUE(runTraining(program, o, r).ok());
  ASSERT_LT(r.losses.back(), 0.05);

  TrainOptions e;
  e.dataPath = o.dataPath;
  e.evalOnly = true;
  e.resume = checkpointPath(o.outputDir, 150);
  TrainResult er;
  std::string log;
  ASSERT_TRUE(runTraining(program, e, er, &log).ok()) << log;
  EXPECT_EQ(er.evalAccuracies.at(0), 1.0) << log;
  EXPECT_LT(er.evalLosses.at(0), 0.05);
  // The log's last line is the JSON.
  EXPECT_NE(log.find("{\"eval_loss\":"), std::string::npos) << log;
}

TEST(TensorBoard, Crc32cAndRecordFraming) {
  // The CRC-32C check value, and RFC 3720's 32 zero bytes.
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);
  std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8a9136aau);
  std::string payload = "abc";
  std::string record = tfRecord(payload);
  ASSERT_EQ(record.size(), 8 + 4 + 3 + 4u);
  EXPECT_EQ(uint8_t(record[0]), 3);
  EXPECT_EQ(record.substr(12, 3), "abc");
  uint32_t crc;
  std::memcpy(&crc, record.data() + 15, 4);
  EXPECT_EQ(crc, maskedCrc32c("abc", 3));
  uint32_t plain = crc32c("abc", 3);
  EXPECT_EQ(crc, ((plain >> 15) | (plain << 17)) + 0xa282ead8u);
}

TEST(TensorBoard, ScalarEventEncoding) {
  std::string e = encodeScalarEvent(1.5, 300, "train/loss", 2.0f);
  // wall_time (field 1, fixed64), step (field 2, varint 300 = ac 02),
  // summary (field 5) { value (field 1) { tag (1), simple_value (2, fixed32) } }.
  std::string expected = "\x09";
  double wall = 1.5;
  expected.append(reinterpret_cast<const char *>(&wall), 8);
  expected += "\x10\xac\x02";
  std::string value = "\x0a\x0atrain/loss\x15";
  float two = 2.0f;
  value.append(reinterpret_cast<const char *>(&two), 4);
  std::string summary = "\x0a" + std::string(1, char(value.size())) + value;
  expected += "\x2a" + std::string(1, char(summary.size())) + summary;
  EXPECT_EQ(e, expected);
  std::string v = encodeFileVersionEvent(0, "brain.Event:2");
  EXPECT_EQ(v.substr(9), std::string("\x1a\x0d") + "brain.Event:2");
}

TEST(Progress, LineShowsStepBarLossLearningRateSpeedAndETA) {
  ProgressState st;
  st.step = 25;
  st.total = 100;
  st.loss = 1.23456;
  st.learningRate = 2e-4;
  st.tokensPerSecond = 1234.4;
  st.etaSeconds = 3725;
  std::string line = formatProgressLine(st, 120);
  EXPECT_EQ(line.rfind("step 25/100 [", 0), 0u) << line;
  EXPECT_NE(line.find("loss 1.2346  lr 2.000e-04  tokens/s 1234  ETA 1:02:05"), std::string::npos)
      << line;
  size_t open = line.find('['), close = line.find(']');
  std::string bar = line.substr(open + 1, close - open - 1);
  EXPECT_EQ(std::count(bar.begin(), bar.end(), '#'), int64_t(bar.size()) / 4) << bar;
  EXPECT_LE(formatProgressLine(st, 50).size(), 50u);
  EXPECT_EQ(formatDuration(-1), "?");
  EXPECT_EQ(formatDuration(65), "1:05");
}

TEST(Progress, TerminalRedrawsOneLineAndPrintsLogLinesAboveIt) {
  std::ostringstream tty, plain;
  {
    Progress p(tty, /*terminal=*/true, 10, 0);
    p.step(1, 2.0, 1e-3, 100);
    p.line("step 1/10  loss 2.0000");
    p.step(2, 1.5, 1e-3, 100);
    p.finish();
  }
  std::string out = tty.str();
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 2) << out;
  EXPECT_NE(out.find("\rstep 2/10 ["), std::string::npos) << out;
  EXPECT_NE(out.find("\r\x1b[2Kstep 1/10  loss 2.0000\n"), std::string::npos) << out;
  {
    Progress p(plain, /*terminal=*/false, 10, 0);
    p.step(1, 2.0, 1e-3, 100);
    p.line("step 1/10  loss 2.0000");
    p.finish();
  }
  EXPECT_EQ(plain.str(), "step 1/10  loss 2.0000\n");
}
