//===- weights.cpp - a step's parameters from an HF checkpoint ------------===//
//
// Everything is checked before anything is written, so a checkpoint that does
// not fit leaves the seeded parameters untouched and the user gets the whole
// list of problems at once instead of one per attempt.
//
//===----------------------------------------------------------------------===//

#include "runtime/train/weights.h"

#include "runtime/io/hf_checkpoint.h"
#include "runtime/train/derived.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <map>
#include <ostream>
#include <set>

namespace g3rt {

namespace {

bool startsWith(const std::string &s, const std::string &prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

bool isLoraName(const std::string &name) {
  return name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos;
}

/// Splits "model.layers.<N>.<rest>".
bool splitLayer(const std::string &name, int64_t &layer, std::string &rest) {
  static const std::string prefix = "model.layers.";
  if (!startsWith(name, prefix))
    return false;
  size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size())
    return false;
  layer = 0;
  for (size_t i = prefix.size(); i < dot; ++i) {
    if (name[i] < '0' || name[i] > '9')
      return false;
    layer = layer * 10 + (name[i] - '0');
  }
  rest = name.substr(dot + 1);
  return true;
}

/// The projection ("gate_proj", ...) an upcycled MoE tensor name takes from
/// the dense MLP, or "" when `rest` (after "model.layers.N.") is not one:
/// "moe.X_proj.weight" (a dense layer of G3MoE), "moe.experts.E.X_proj.weight",
/// "moe.shared_experts.X_proj.weight".
std::string upcycledProjection(const std::string &rest, bool &shared) {
  shared = false;
  std::string tail;
  if (startsWith(rest, "moe.experts.")) {
    size_t dot = rest.find('.', std::strlen("moe.experts."));
    if (dot == std::string::npos)
      return "";
    tail = rest.substr(dot + 1);
  } else if (startsWith(rest, "moe.shared_experts.")) {
    shared = true;
    tail = rest.substr(std::strlen("moe.shared_experts."));
  } else if (startsWith(rest, "moe.")) {
    tail = rest.substr(4);
  } else {
    return "";
  }
  for (const char *p : {"gate_proj", "up_proj", "down_proj"})
    if (tail == std::string(p) + ".weight")
      return p;
  return "";
}

bool isRouterRest(const std::string &rest) {
  return rest == "moe.gate.weight" || rest == "moe.gate.e_score_correction_bias";
}

/// "model.layers.3.moe.experts.{e}.up_proj.weight" with e substituted.
std::string expertName(const std::string &name, int64_t e) {
  size_t at = name.find("{e}");
  return name.substr(0, at) + std::to_string(e) + name.substr(at + 3);
}

TensorView expertSlice(const TensorView &t, int64_t e) {
  TensorView s = t;
  s.shape.erase(s.shape.begin());
  s.data = static_cast<uint8_t *>(t.data) + size_t(e) * (t.bytes() / size_t(t.shape[0]));
  return s;
}

std::string jsonText(const nlohmann::json &v) { return v.dump(); }

/// config.json's sizes against the step's model configuration.
void compareConfig(const HFCheckpoint &ckpt, const ModelConfig &step,
                   std::vector<std::string> &problems) {
  const nlohmann::json &root = ckpt.config();
  if (!root.is_object())
    return;
  std::string file = (std::filesystem::path(ckpt.dir()) / "config.json").string();
  const nlohmann::json *text = &root;
  std::string prefix;
  if (auto it = root.find("text_config"); it != root.end() && it->is_object()) {
    text = &*it;
    prefix = "text_config.";
  }
  // `s`: the step's value as JSON, to compare with config.json's and print.
  auto compare = [&](const char *field, const nlohmann::json &s,
                     const std::vector<const char *> &aliases) {
    for (const char *alias : aliases) {
      auto c = text->find(alias);
      const nlohmann::json *value = c != text->end() ? &*c : nullptr;
      std::string where = prefix + alias;
      // A wrapper may state tie_word_embeddings at its top level only.
      if (!value && !prefix.empty() && std::string(field) == "tie_word_embeddings") {
        if (auto top = root.find(alias); top != root.end()) {
          value = &*top;
          where = alias;
        }
      }
      if (!value || value->is_null())
        continue;
      bool same = (value->is_number() && s.is_number()) ? value->get<double>() == s.get<double>()
                                                        : *value == s;
      if (!same)
        problems.push_back(file + ": field '" + where + "' is " + jsonText(*value) +
                           ", the step has " + jsonText(s));
      return;
    }
  };
  // A size of 0 is one the step does not state (a compiled step states
  // them all).
  auto compareSize = [&](const char *field, int64_t value) {
    if (value > 0)
      compare(field, value, {field});
  };
  compareSize("vocab_size", step.vocabSize);
  compareSize("hidden_size", step.hiddenSize);
  compareSize("intermediate_size", step.intermediateSize);
  compareSize("num_hidden_layers", step.numHiddenLayers);
  compareSize("num_attention_heads", step.numAttentionHeads);
  compareSize("num_key_value_heads", step.numKeyValueHeads);
  compareSize("head_dim", step.headDim);
  compare("tie_word_embeddings", step.tieWordEmbeddings, {"tie_word_embeddings"});
  // Only a MoE checkpoint states an expert count; a dense one is upcycled.
  bool ckptMoE = false;
  for (const char *alias : {"n_routed_experts", "num_experts", "num_local_experts"})
    if (auto c = text->find(alias); c != text->end() && c->is_number() && c->get<double>() > 0)
      ckptMoE = true;
  if (ckptMoE)
    compare("n_routed_experts", step.nRoutedExperts,
            {"n_routed_experts", "num_experts", "num_local_experts"});
}

/// A checkpoint stores each expert as a tensor of its own, so a stacked
/// "{e}" parameter is matched one expert slice at a time.
std::vector<std::pair<std::string, TensorView>> paramTargets(const ParamDesc &p,
                                                             const TensorView &t) {
  std::vector<std::pair<std::string, TensorView>> targets;
  if (p.name.find("{e}") != std::string::npos && !t.shape.empty()) {
    for (int64_t e = 0; e < t.shape[0]; ++e)
      targets.push_back({expertName(p.name, e), expertSlice(t, e)});
  } else {
    targets.push_back({p.name, t});
  }
  return targets;
}

/// "'a', 'b', ..." of at most eight names: a full list of a large
/// checkpoint's unused tensors would drown the other notes.
std::string shortList(const std::vector<std::string> &names) {
  std::string list;
  for (size_t i = 0; i < names.size() && i < 8; ++i)
    list += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > 8)
    list += ", ...";
  return list;
}

/// The whole match of a checkpoint against a step, gathered before anything
/// is read into the step so that all problems are reported together (see the
/// file comment).
struct LoadPlan {
  struct Copy {
    TensorView dst;
    std::string source;
  };

  LoadPlan(const HFCheckpoint &ckpt, const std::string &dir) : ckpt(ckpt), dir(dir) {}

  const HFCheckpoint &ckpt;
  const std::string &dir;
  // Step name -> checkpoint name.
  std::map<std::string, std::string> byStepName;
  int64_t vision = 0;
  std::vector<std::string> problems;
  std::vector<Copy> copies;
  std::set<std::string> used;
  std::set<int64_t> upcycledLayers;
  std::vector<std::string> routersKept;

  void indexTextTensors();
  Status planParam(HostState &host, const ParamDesc &p);
  void planTarget(const std::string &name, const TensorView &dst);
  bool planUpcycled(const std::string &name, const TensorView &dst, int64_t layer,
                    const std::string &rest, const std::string &mlpPrefix);
  void check(const std::string &source, const TensorView &dst, const std::string &target);
  Status problemsStatus() const;
  void addNotes(std::vector<std::string> &notes) const;
};

/// The text model's tensors by step name; the vision tower is only counted,
/// since text-only training never reads it.
void LoadPlan::indexTextTensors() {
  for (const auto &[name, loc] : ckpt.tensors()) {
    std::string stepName;
    if (classifyCheckpointTensor(name, stepName) == TensorRole::Vision) {
      ++vision;
      continue;
    }
    auto [it, inserted] = byStepName.emplace(stepName, name);
    if (!inserted)
      problems.push_back(dir + ": tensors '" + it->second + "' and '" + name +
                         "' are both the text model's '" + stepName + "'");
  }
}

/// LoRA adapters are skipped: they start from their own initialisation, not
/// from a base checkpoint.
Status LoadPlan::planParam(HostState &host, const ParamDesc &p) {
  // ZeRO stage 3: another process loads a parameter it owns.
  if (isLoraName(p.name) || host.heldElsewhere(BufferKind::Param, p.name))
    return Status();
  TensorView t = host.param(p.name);
  if (!t.data)
    return Status::error("parameter '" + p.name + "' has no storage");
  for (const auto &[name, dst] : paramTargets(p, t))
    planTarget(name, dst);
  return Status();
}

/// A tensor of the checkpoint by name, else one upcycled from a dense MLP,
/// else a router that keeps its seeded values; anything else is missing.
void LoadPlan::planTarget(const std::string &name, const TensorView &dst) {
  if (auto it = byStepName.find(name); it != byStepName.end()) {
    check(it->second, dst, name);
    return;
  }
  int64_t layer = -1;
  std::string rest;
  bool layered = splitLayer(name, layer, rest);
  std::string mlpPrefix = "model.layers." + std::to_string(layer) + ".mlp.";
  bool denseLayer = layered && byStepName.count(mlpPrefix + "gate_proj.weight");
  if (denseLayer && planUpcycled(name, dst, layer, rest, mlpPrefix))
    return;
  if (layered && isRouterRest(rest) && denseLayer) {
    routersKept.push_back(name);
    return;
  }
  problems.push_back(dir + ": missing tensor '" + name + "'");
}

/// False when `name` is no projection the dense MLP of `layer` has. Shared
/// experts must match the MLP's shape exactly: a wider one cannot be filled
/// from it, and a shape problem is reported rather than a missing tensor.
bool LoadPlan::planUpcycled(const std::string &name, const TensorView &dst, int64_t layer,
                            const std::string &rest, const std::string &mlpPrefix) {
  bool shared = false;
  std::string proj = upcycledProjection(rest, shared);
  if (proj.empty() || !byStepName.count(mlpPrefix + proj + ".weight"))
    return false;
  std::string source = byStepName[mlpPrefix + proj + ".weight"];
  const SafetensorsEntry *e = ckpt.find(source);
  if (shared && e->shape != dst.shape) {
    problems.push_back(ckpt.fileOf(source) + ": tensor '" + source + "' has shape " +
                       shapeString(e->shape) + ", but the shared experts '" + name + "' are " +
                       shapeString(dst.shape) +
                       ": shared experts wider than the MLP cannot be upcycled from it");
    used.insert(source);
    return true;
  }
  check(source, dst, name);
  upcycledLayers.insert(layer);
  return true;
}

/// Queues the copy of `source` into `dst` when dtype and shape fit. The
/// source counts as used either way, so that a mismatch is not also
/// reported as an unused tensor.
void LoadPlan::check(const std::string &source, const TensorView &dst, const std::string &target) {
  const SafetensorsEntry *e = ckpt.find(source);
  std::string what = ckpt.fileOf(source) + ": tensor '" + source + "'";
  std::string into = source == target ? "" : " (for '" + target + "')";
  if (!isFloat(e->dtype))
    problems.push_back(what + into + " has dtype " + std::string(dtypeName(e->dtype)) +
                       ", the step's parameter is " + std::string(dtypeName(dst.dtype)));
  else if (e->shape != dst.shape)
    problems.push_back(what + into + " has shape " + shapeString(e->shape) + ", the step expects " +
                       shapeString(dst.shape));
  else
    copies.push_back({dst, source});
  used.insert(source);
}

/// One error listing every problem, so that one attempt shows them all.
Status LoadPlan::problemsStatus() const {
  if (problems.empty())
    return Status();
  std::string message = dir + ": the checkpoint does not fit the step (" +
                        std::to_string(problems.size()) +
                        (problems.size() == 1 ? " problem)" : " problems)");
  for (const std::string &p : problems)
    message += "\n  " + p;
  return Status::error(message);
}

/// What the load did besides copying, for the user to check it is what
/// they meant: ignored, upcycled, seeded and unused tensors.
void LoadPlan::addNotes(std::vector<std::string> &notes) const {
  if (vision)
    notes.push_back(std::to_string(vision) +
                    " vision tower / projector tensors ignored (text-only training)");
  if (!upcycledLayers.empty())
    notes.push_back("upcycled the dense MLPs of " + std::to_string(upcycledLayers.size()) +
                    " layers into the G3MoE's dense FFNs and experts (G3MOE_SPEC.md 3.8)");
  if (!routersKept.empty())
    notes.push_back(std::to_string(routersKept.size()) +
                    " router tensors are not in the checkpoint and keep their seeded "
                    "N(0, initializer_range) initialisation (e.g. '" +
                    routersKept.front() + "')");
  std::vector<std::string> unused;
  for (const auto &[name, loc] : ckpt.tensors()) {
    std::string stepName;
    if (classifyCheckpointTensor(name, stepName) == TensorRole::Text && !used.count(name))
      unused.push_back(name);
  }
  if (!unused.empty())
    notes.push_back(std::to_string(unused.size()) +
                    " checkpoint tensors are not used by the step: " + shortList(unused));
}

} // namespace

Status loadWeights(HostState &host, const std::string &dir, std::vector<std::string> &notes) {
  HFCheckpoint ckpt;
  G3RT_RETURN_IF_ERROR(HFCheckpoint::open(dir, ckpt));
  const StepProgram &program = host.program();

  LoadPlan plan(ckpt, dir);
  plan.indexTextTensors();
  for (const ParamDesc &p : program.params)
    G3RT_RETURN_IF_ERROR(plan.planParam(host, p));
  compareConfig(ckpt, program.model, plan.problems);
  G3RT_RETURN_IF_ERROR(plan.problemsStatus());

  for (const LoadPlan::Copy &c : plan.copies)
    G3RT_RETURN_IF_ERROR(ckpt.read(c.source, c.dst));
  plan.addNotes(notes);
  return deriveParameters(host);
}

Status loadWeights(HostState &host, const std::string &dir, std::ostream &log) {
  std::vector<std::string> notes;
  G3RT_RETURN_IF_ERROR(loadWeights(host, dir, notes));
  log << "weights: loaded " << dir << "\n";
  for (const std::string &n : notes)
    log << "note: " << n << "\n";
  return Status();
}

} // namespace g3rt
