//===- inspect.cpp - g3moe-run's one-shot inspection modes ----------------===//
//
// The dumps take the data in file order rather than the first epoch's
// shuffled order: a comparison script then knows which examples it holds
// without re-implementing the shuffle, and the inputs are in the file anyway.
//
//===----------------------------------------------------------------------===//

#include "runtime/train/inspect.h"

#include "runtime/io/hf_checkpoint.h"
#include "runtime/io/safetensors.h"
#include "runtime/train/backend_choice.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/data.h"
#include "runtime/train/init.h"
#include "runtime/train/run_options.h"
#include "runtime/train/weights.h"

#include <cstring>
#include <filesystem>
#include <list>
#include <ostream>

namespace g3rt {

namespace {

/// Writes `values` into the step input `name` when the step has it.
void setInts(HostState &host, const char *name, const std::vector<int32_t> &values) {
  TensorView t = host.input(name);
  if (t.data && size_t(t.numel()) == values.size())
    std::memcpy(t.data, values.data(), values.size() * sizeof(int32_t));
}

TensorView hostView(std::vector<int32_t> &v, int64_t rows, int64_t cols) {
  return TensorView{v.data(), DType::I32, {rows, cols}};
}

} // namespace

Status runInspection(const StepProgram &program, const TrainOptions &options,
                     const InspectOptions &what, std::ostream &log) {
  // Writing the base model runs nothing; the dumps run one entry point where
  // --device says, from the host's state.
  HostState host(program);
  std::unique_ptr<Backend> backend;
  if (what.saveInitialWeights.empty()) {
    std::string description;
    G3RT_RETURN_IF_ERROR(selectBackend(program, host, options.device, backend, description));
    log << "backend: " << description << "\n";
  }
  uint64_t seed = uint64_t(options.seed.value_or(program.training.seed));
  int64_t padId = program.model.padTokenId;
  G3RT_RETURN_IF_ERROR(initializeParameters(host, seed, padId));
  if (!options.weightsDir.empty())
    G3RT_RETURN_IF_ERROR(loadWeights(host, options.weightsDir, log));
  if (options.resume) {
    // The trained parameters of a checkpoint, on top of the base weights
    // (the frozen ones are not in a LoRA checkpoint).
    std::string dir = *options.resume;
    if (dir.empty())
      G3RT_RETURN_IF_ERROR(
          latestCheckpoint(outputDirFor(options, program.training), dir).withContext("--resume"));
    TrainerState state;
    G3RT_RETURN_IF_ERROR(loadCheckpoint(dir, program.training, host, state));
    log << "parameters: checkpoint " << dir << " (step " << state.globalStep << ")\n";
  }

  if (!what.saveInitialWeights.empty()) {
    G3RT_RETURN_IF_ERROR(saveHFCheckpoint(host, what.saveInitialWeights, /*mergeLora=*/false));
    log << "saved the base model as an HF checkpoint in " << what.saveInitialWeights << "\n";
    return Status();
  }

  const char *function = what.dumpGradients.empty() ? "eval_logits" : "forward_backward";
  if (!program.findFunction(function))
    return Status::error(std::string("the step has no ") + function +
                         (what.dumpGradients.empty()
                              ? " entry point: compile it with g3moe-compile --emit-logits"
                              : " entry point: compile a training step with g3moe-compile"));
  TensorView ids = host.input("input_ids");
  if (!ids.data || ids.shape.size() != 2)
    return Status::error("the step has no [batch, seq] input_ids input");
  int64_t rows = ids.shape[0], seqLen = ids.shape[1];

  DataSpec spec =
      dataSpecFor(options, program.model, program.training, seqLen, int32_t(padId), seed);
  if (spec.path.empty())
    return Status::error("no data: pass --data FILE");
  DataSplit data;
  G3RT_RETURN_IF_ERROR(loadTrainingData(spec, data));
  for (const std::string &w : data.warnings)
    log << "warning: " << w << "\n";
  std::vector<size_t> first;
  for (size_t i = 0; i < data.train.size() && int64_t(i) < rows; ++i)
    first.push_back(i);
  MicroBatch batch;
  assembleMicroBatch(data.train, first, rows, seqLen, int32_t(padId), batch);
  LossDenominator denominator;
  G3RT_RETURN_IF_ERROR(lossDenominatorFor(options, program.training, denominator));
  float numItems = float(std::max<int64_t>(1, batch.lossItems(denominator)));

  setInts(host, "input_ids", batch.inputIds);
  setInts(host, "targets", batch.targets);
  setInts(host, "positions", batch.positions);
  setInts(host, "segment_ids", batch.segmentIds);
  if (TensorView n = host.input("num_items"); n.data)
    n.store(0, numItems);
  if (TensorView key = host.input("rng_key"); key.data) {
    key.i64()[0] = int64_t(seed);
    key.i64()[1] = 0;
  }
  // Outputs are copied here and live until the file is written (a list: its
  // elements never move). An unknown output is an empty view.
  std::list<std::vector<uint8_t>> outputBytes;
  auto output = [&](const std::string &name, TensorView &view) -> Status {
    view = TensorView{};
    if (program.findFunction(function)->findOutput(name) < 0)
      return Status();
    outputBytes.emplace_back();
    return backend->readOutput(function, name, outputBytes.back(), view);
  };
  G3RT_RETURN_IF_ERROR(backend->uploadState(host));
  G3RT_RETURN_IF_ERROR(backend->run(function));

  std::vector<NamedTensor> out;
  std::vector<float> scalars = {0.0f, numItems};
  std::string file;
  if (!what.dumpGradients.empty()) {
    file = what.dumpGradients;
    TensorView loss;
    G3RT_RETURN_IF_ERROR(output("loss", loss));
    if (!loss.data)
      return Status::error("forward_backward has no loss output");
    scalars[0] = loss.load(0);
    out.push_back({"loss", TensorView{&scalars[0], DType::F32, {1}}});
    for (const ParamDesc &p : program.params) {
      if (!p.trainable)
        continue;
      TensorView g;
      G3RT_RETURN_IF_ERROR(output("grad:" + p.name, g));
      if (!g.data)
        return Status::error("forward_backward has no gradient of '" + p.name + "'");
      size_t at = p.name.find("{e}");
      if (at == std::string::npos) {
        out.push_back({"grad/" + p.name, g});
        continue;
      }
      for (int64_t e = 0; e < g.shape[0]; ++e) {
        TensorView s = g;
        s.shape.erase(s.shape.begin());
        s.data = static_cast<uint8_t *>(g.data) + size_t(e) * (g.bytes() / size_t(g.shape[0]));
        out.push_back(
            {"grad/" + p.name.substr(0, at) + std::to_string(e) + p.name.substr(at + 3), s});
      }
    }
    log << "loss " << scalars[0] << " over " << numItems << " labels\n";
  } else {
    file = what.dumpLogits;
    TensorView logits;
    G3RT_RETURN_IF_ERROR(output("logits", logits));
    if (!logits.data)
      return Status::error("eval_logits has no logits output");
    out.push_back({"logits", logits});
  }
  out.push_back({"inputs/input_ids", hostView(batch.inputIds, rows, seqLen)});
  out.push_back({"inputs/targets", hostView(batch.targets, rows, seqLen)});
  out.push_back({"inputs/num_items", TensorView{&scalars[1], DType::F32, {1}}});
  G3RT_RETURN_IF_ERROR(writeSafetensors(file, out, {{"format", "pt"}}));
  log << "wrote " << file << "\n";
  return Status();
}

} // namespace g3rt
