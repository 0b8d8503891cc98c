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

/// The parameters training would start from: seeded, then the base weights,
/// then the trained parameters of a checkpoint on top (the frozen ones are
/// not in a LoRA checkpoint).
Status setUpParameters(const StepProgram &program, const TrainOptions &options, uint64_t seed,
                       int64_t padId, HostState &host, std::ostream &log) {
  G3RT_RETURN_IF_ERROR(initializeParameters(host, seed, padId, options.weightsDir.empty()));
  if (!options.weightsDir.empty())
    G3RT_RETURN_IF_ERROR(loadWeights(host, options.weightsDir, log));
  if (!options.resume)
    return Status();
  std::string dir = *options.resume;
  if (dir.empty())
    G3RT_RETURN_IF_ERROR(
        latestCheckpoint(outputDirFor(options, program.training), dir).withContext("--resume"));
  TrainerState state;
  G3RT_RETURN_IF_ERROR(loadCheckpoint(dir, program.training, host, state));
  log << "parameters: checkpoint " << dir << " (step " << state.globalStep << ")\n";
  return Status();
}

/// The first `rows` examples in file order (see the file comment), as the
/// micro-batch training would assemble from them, and its loss denominator.
Status firstMicroBatch(const StepProgram &program, const TrainOptions &options, int64_t rows,
                       int64_t seqLen, int64_t padId, uint64_t seed, MicroBatch &batch,
                       float &numItems, std::ostream &log) {
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
  assembleMicroBatch(data.train, first, rows, seqLen, int32_t(padId), batch);
  LossDenominator denominator;
  G3RT_RETURN_IF_ERROR(lossDenominatorFor(options, program.training, denominator));
  numItems = float(std::max<int64_t>(1, batch.lossItems(denominator)));
  return Status();
}

/// The step inputs a training micro-step would get; inputs the step lacks
/// are skipped, as an eval_logits step has fewer.
void setStepInputs(HostState &host, const MicroBatch &batch, float numItems, uint64_t seed) {
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
}

/// Outputs of the last run, copied to the host. The copies live until the
/// file is written, in a list because its elements never move. An unknown
/// output is an empty view, so the caller words the error.
struct OutputReader {
  Backend &backend;
  const FunctionDesc &fn;
  const char *function;
  std::list<std::vector<uint8_t>> bytes;

  Status read(const std::string &name, TensorView &view) {
    view = TensorView{};
    if (fn.findOutput(name) < 0)
      return Status();
    bytes.emplace_back();
    return backend.readOutput(function, name, bytes.back(), view);
  }
};

/// The loss into `loss` (which `out` then points at) and every trainable
/// parameter's gradient under its HF name; stacked experts are split, as a
/// transformers model holds one tensor per expert.
Status gatherGradients(const StepProgram &program, OutputReader &output, float &loss,
                       std::vector<NamedTensor> &out) {
  TensorView lossView;
  G3RT_RETURN_IF_ERROR(output.read("loss", lossView));
  if (!lossView.data)
    return Status::error("forward_backward has no loss output");
  loss = lossView.load(0);
  out.push_back({"loss", TensorView{&loss, DType::F32, {1}}});
  for (const ParamDesc &p : program.params) {
    if (!p.trainable)
      continue;
    TensorView g;
    G3RT_RETURN_IF_ERROR(output.read("grad:" + p.name, g));
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
  return Status();
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
    G3RT_RETURN_IF_ERROR(
        selectBackend(program, host, options.device, options.placement, backend, description));
    log << "backend: " << description << "\n";
  }
  uint64_t seed = uint64_t(options.seed.value_or(program.training.seed));
  int64_t padId = program.model.padTokenId;
  G3RT_RETURN_IF_ERROR(setUpParameters(program, options, seed, padId, host, log));

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

  MicroBatch batch;
  float numItems = 0;
  G3RT_RETURN_IF_ERROR(
      firstMicroBatch(program, options, rows, seqLen, padId, seed, batch, numItems, log));
  setStepInputs(host, batch, numItems, seed);
  OutputReader output{*backend, *program.findFunction(function), function, {}};
  G3RT_RETURN_IF_ERROR(backend->uploadState(host));
  G3RT_RETURN_IF_ERROR(backend->run(function));

  std::vector<NamedTensor> out;
  std::vector<float> scalars = {0.0f, numItems};
  std::string file;
  if (!what.dumpGradients.empty()) {
    file = what.dumpGradients;
    G3RT_RETURN_IF_ERROR(gatherGradients(program, output, scalars[0], out));
    log << "loss " << scalars[0] << " over " << numItems << " labels\n";
  } else {
    file = what.dumpLogits;
    TensorView logits;
    G3RT_RETURN_IF_ERROR(output.read("logits", logits));
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
