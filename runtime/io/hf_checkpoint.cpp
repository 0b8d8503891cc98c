//===- hf_checkpoint.cpp - HF checkpoint directories ----------------------===//

#include "runtime/io/hf_checkpoint.h"

#include "runtime/base/file.h"
#include "runtime/base/parallel.h"
#include "runtime/exec/state.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>

namespace g3rt {

namespace fs = std::filesystem;

namespace {

bool startsWith(const std::string &s, const std::string &prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

bool endsWith(const std::string &s, const std::string &suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Status readJsonFile(const std::string &path, nlohmann::json &out) {
  std::vector<uint8_t> bytes;
  G3RT_RETURN_IF_ERROR(readFile(path, bytes));
  out = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, false);
  if (out.is_discarded())
    return Status::error(path + ": invalid JSON");
  return Status();
}

} // namespace

TensorRole classifyCheckpointTensor(const std::string &name, std::string &stepName) {
  static const char *const vision[] = {"vision_tower.",       "multi_modal_projector.",
                                       "model.vision_tower.", "model.multi_modal_projector.",
                                       "vision_model.",       "model.vision_model."};
  for (const char *p : vision)
    if (startsWith(name, p)) {
      stepName.clear();
      return TensorRole::Vision;
    }
  // transformers 4.x nests the text model as language_model.{model,lm_head};
  // 5.x as model.language_model with the head at the top.
  if (startsWith(name, "language_model.model."))
    stepName = "model." + name.substr(std::strlen("language_model.model."));
  else if (startsWith(name, "model.language_model."))
    stepName = "model." + name.substr(std::strlen("model.language_model."));
  else if (startsWith(name, "language_model.lm_head."))
    stepName = "lm_head." + name.substr(std::strlen("language_model.lm_head."));
  else
    stepName = name;
  return TensorRole::Text;
}

Status HFCheckpoint::open(const std::string &path, HFCheckpoint &out) {
  out = HFCheckpoint();
  std::error_code ec;
  std::vector<std::string> shardPaths;
  std::map<std::string, std::string> weightMap; // tensor -> shard file name
  std::string indexPath;
  if (fs::is_regular_file(path, ec) && endsWith(path, ".safetensors")) {
    out.dir_ = fs::path(path).parent_path().string();
    if (out.dir_.empty())
      out.dir_ = ".";
    shardPaths.push_back(path);
  } else if (fs::is_directory(path, ec)) {
    out.dir_ = path;
    std::string single = (fs::path(path) / "model.safetensors").string();
    indexPath = (fs::path(path) / "model.safetensors.index.json").string();
    if (fs::exists(single, ec)) {
      shardPaths.push_back(single);
      indexPath.clear();
    } else if (fs::exists(indexPath, ec)) {
      nlohmann::json index;
      G3RT_RETURN_IF_ERROR(readJsonFile(indexPath, index));
      auto map = index.is_object() ? index.find("weight_map") : index.end();
      if (map == index.end() || !map->is_object())
        return Status::error(indexPath + ": field 'weight_map': missing or not an object");
      std::set<std::string> seen;
      for (auto it = map->begin(); it != map->end(); ++it) {
        if (!it.value().is_string())
          return Status::error(indexPath + ": field 'weight_map." + it.key() +
                               "': not a file name");
        std::string file = it.value().get<std::string>();
        if (file.empty() || file.find('/') != std::string::npos || file == "..")
          return Status::error(indexPath + ": field 'weight_map." + it.key() + "': '" + file +
                               "' is not a file name in the directory");
        weightMap[it.key()] = file;
        if (seen.insert(file).second) {
          std::string shard = (fs::path(path) / file).string();
          if (!fs::exists(shard, ec))
            return Status::error(indexPath + ": shard '" + file + "' (holding tensor '" + it.key() +
                                 "') does not exist in " + path);
          shardPaths.push_back(shard);
        }
      }
    } else {
      return Status::error(path + ": no model.safetensors or model.safetensors.index.json");
    }
  } else if (fs::exists(path, ec)) {
    return Status::error(path + ": not a checkpoint directory or a .safetensors file");
  } else {
    return Status::error(path + ": no such checkpoint directory");
  }

  std::string configPath = (fs::path(out.dir_) / "config.json").string();
  if (fs::exists(configPath, ec))
    G3RT_RETURN_IF_ERROR(readJsonFile(configPath, out.config_));

  out.files_.resize(shardPaths.size());
  for (size_t i = 0; i < shardPaths.size(); ++i)
    G3RT_RETURN_IF_ERROR(SafetensorsFile::open(shardPaths[i], out.files_[i]));
  // Locations are taken once files_ stops moving.
  std::map<std::string, size_t> fileIndex;
  for (size_t i = 0; i < shardPaths.size(); ++i)
    fileIndex[fs::path(shardPaths[i]).filename().string()] = i;
  if (!weightMap.empty()) {
    for (const auto &[tensor, file] : weightMap) {
      size_t f = fileIndex[file];
      const SafetensorsEntry *e = out.files_[f].find(tensor);
      if (!e)
        return Status::error(indexPath + ": tensor '" + tensor + "' is listed in shard '" + file +
                             "', which does not hold it");
      out.tensors_[tensor] = Location{f, e};
    }
  } else {
    for (size_t f = 0; f < out.files_.size(); ++f)
      for (const SafetensorsEntry &e : out.files_[f].entries())
        out.tensors_[e.name] = Location{f, &e};
  }
  return Status();
}

std::string HFCheckpoint::fileOf(const std::string &name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? "" : files_[it->second.file].path();
}

const SafetensorsEntry *HFCheckpoint::find(const std::string &name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second.entry;
}

Status HFCheckpoint::read(const std::string &name, const TensorView &dst) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end())
    return Status::error(dir_ + ": no tensor '" + name + "'");
  return files_[it->second.file].read(*it->second.entry, dst);
}

//===----------------------------------------------------------------------===//
// config.json of a step
//===----------------------------------------------------------------------===//

namespace {

/// The settings of the model that only the instructions carry.
struct StepModelFacts {
  std::vector<bool> sliding; // per layer
  int64_t slidingWindow = -1;
  double attentionScale = 0;
  std::optional<double> attnSoftcap, finalSoftcap;
  std::optional<double> rmsEps;
  std::optional<double> globalTheta, globalFactor, localTheta, localFactor;
  std::string router;
  KernelAttrs routerAttrs;
  std::optional<double> inputJitter;
  std::optional<double> auxCoef, zCoef;
};

/// `v` rounded to 12 significant digits: 1.03 - 1 is written as 0.03, not
/// 0.030000000000000027.
double tidy(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.12g", v);
  return std::strtod(text, nullptr);
}

StepModelFacts collectFacts(const StepProgram &program, int64_t layers) {
  StepModelFacts f;
  const FunctionDesc *fn = program.findFunction("forward");
  if (!fn)
    fn = program.findFunction("eval_forward");
  if (!fn && !program.functions.empty())
    fn = &program.functions.front();
  if (!fn)
    return f;
  std::vector<const InstrDesc *> attention, rope;
  std::map<uint32_t, std::string> producer;
  for (const InstrDesc &in : fn->instrs) {
    for (uint32_t o : in.outputs)
      producer[o] = in.kernel;
    // The fused norms carry the attributes of the ops they fuse.
    if (in.kernel == "attention")
      attention.push_back(&in);
    else if ((in.kernel == "rope" && !in.attrs.getFlag("transpose")) ||
             in.kernel == "rms_norm_rope")
      rope.push_back(&in);
    if ((in.kernel == "rms_norm" || in.kernel == "add_rms_norm" || in.kernel == "rms_norm_rope") &&
        !f.rmsEps)
      f.rmsEps = in.attrs.getFloat("eps");
    else if (in.kernel == "lm_head" || in.kernel == "lm_head_cross_entropy" ||
             in.kernel == "lm_head_cross_entropy_and_grad")
      f.finalSoftcap = in.attrs.getFloat("softcap");
    else if (in.kernel == "sparsemixer_router" || in.kernel == "softmax_topk_router" ||
             in.kernel == "sigmoid_grouped_router") {
      f.router = in.kernel;
      f.routerAttrs = in.attrs;
    } else if (in.kernel == "random_uniform") {
      // The input jitter is the one draw centred on 1: U(1 - j, 1 + j).
      double lo = in.attrs.getFloat("low").value_or(0), hi = in.attrs.getFloat("high").value_or(0);
      if (lo < 1 && hi > 1 && std::fabs((1 - lo) - (hi - 1)) < 1e-12)
        f.inputJitter = tidy(hi - 1);
    } else if (in.kernel == "loss_sum") {
      const std::vector<double> *c = in.attrs.getFloats("coefficients");
      for (size_t i = 0; c && i < in.inputs.size() && i < c->size(); ++i) {
        const std::string &k = producer[in.inputs[i]];
        if (k == "load_balancing_loss")
          f.auxCoef = (*c)[i];
        else if (k == "router_z_loss")
          f.zCoef = (*c)[i];
      }
    }
  }
  if (int64_t(attention.size()) == layers) {
    for (const InstrDesc *a : attention) {
      std::optional<int64_t> w = a->attrs.getInt("sliding_window");
      f.sliding.push_back(w.has_value());
      if (w)
        f.slidingWindow = *w;
      f.attentionScale = a->attrs.getFloat("scale").value_or(0);
      if (auto c = a->attrs.getFloat("softcap"))
        f.attnSoftcap = c;
    }
  }
  // Two rotations (queries, keys) per layer, in layer order.
  if (int64_t(rope.size()) == 2 * layers && int64_t(f.sliding.size()) == layers) {
    for (int64_t l = 0; l < layers; ++l) {
      const InstrDesc *r = rope[size_t(2 * l)];
      auto theta = r->attrs.getFloat("theta");
      auto factor = r->attrs.getFloat("scaling_factor");
      if (f.sliding[size_t(l)]) {
        f.localTheta = theta;
        f.localFactor = factor;
      } else {
        f.globalTheta = theta;
        f.globalFactor = factor;
      }
    }
  }
  return f;
}

nlohmann::ordered_json ropeEntry(double theta, double factor) {
  nlohmann::ordered_json r;
  if (factor != 1.0) {
    r["factor"] = factor;
    r["rope_theta"] = theta;
    r["rope_type"] = "linear";
  } else {
    r["rope_theta"] = theta;
    r["rope_type"] = "default";
  }
  return r;
}

/// A number that is an integer is written as one (query_pre_attn_scalar 256).
nlohmann::ordered_json number(double v) {
  if (std::fabs(v - std::round(v)) < 1e-6 * std::max(1.0, std::fabs(v)) && std::fabs(v) < 1e15)
    return int64_t(std::llround(v));
  return v;
}

} // namespace

Status hfConfigFromStep(const StepProgram &program, nlohmann::ordered_json &out) {
  const ModelConfig &m = program.model;
  int64_t layers = m.numHiddenLayers;
  bool moe = m.isMoE();
  StepModelFacts f = collectFacts(program, layers);

  bool anyFp32 = false;
  for (const ParamDesc &p : program.params)
    if (p.name.find("lora_") == std::string::npos && p.dtype == DType::F32 &&
        p.name.find(".moe.gate.") == std::string::npos)
      anyFp32 = true;

  out = nlohmann::ordered_json::object();
  out["architectures"] = {moe ? "G3MoEForCausalLM" : "Gemma3ForCausalLM"};
  out["model_type"] = moe ? "g3moe_text" : "gemma3_text";
  out["vocab_size"] = m.vocabSize;
  out["hidden_size"] = m.hiddenSize;
  out["intermediate_size"] = m.intermediateSize;
  out["num_hidden_layers"] = layers;
  out["num_attention_heads"] = m.numAttentionHeads;
  out["num_key_value_heads"] = m.numKeyValueHeads;
  out["head_dim"] = m.headDim;
  // The step's own value, else the scale its attention uses, else Gemma's.
  double qpas = m.queryPreAttnScalar.value_or(
      f.attentionScale > 0 ? 1.0 / (f.attentionScale * f.attentionScale) : 256.0);
  out["query_pre_attn_scalar"] = number(qpas);
  int64_t window = f.slidingWindow > 0 ? f.slidingWindow : m.slidingWindow;
  out["sliding_window"] = window;
  std::vector<bool> sliding = f.sliding;
  if (int64_t(sliding.size()) != layers) {
    // No attention layout in the instructions: Gemma-3's default pattern
    // (every sixth layer global).
    const int64_t pattern = 6;
    sliding.clear();
    for (int64_t l = 0; l < layers; ++l)
      sliding.push_back(pattern <= 0 || (l + 1) % pattern != 0);
  }
  nlohmann::ordered_json types = nlohmann::ordered_json::array();
  for (bool s : sliding)
    types.push_back(s ? "sliding_attention" : "full_attention");
  out["layer_types"] = types;
  double globalTheta = f.globalTheta.value_or(m.ropeTheta);
  double globalFactor = f.globalFactor.value_or(1.0);
  double localTheta = f.localTheta.value_or(m.ropeLocalBaseFreq);
  double localFactor = f.localFactor.value_or(1.0);
  out["rope_parameters"] = {{"full_attention", ropeEntry(globalTheta, globalFactor)},
                            {"sliding_attention", ropeEntry(localTheta, localFactor)}};
  out["max_position_embeddings"] = std::max(program.training.seqLen, m.maxPositionEmbeddings);
  out["rms_norm_eps"] = f.rmsEps.value_or(m.rmsNormEps);
  out["hidden_activation"] = "gelu_pytorch_tanh";
  out["attention_bias"] = false;
  out["attention_dropout"] = 0.0;
  out["final_logit_softcapping"] =
      f.finalSoftcap ? nlohmann::ordered_json(*f.finalSoftcap) : nlohmann::ordered_json();
  out["attn_logit_softcapping"] =
      f.attnSoftcap ? nlohmann::ordered_json(*f.attnSoftcap) : nlohmann::ordered_json();
  out["tie_word_embeddings"] = m.tieWordEmbeddings;
  out["initializer_range"] = m.initializerRange;
  out["pad_token_id"] = m.padTokenId;
  out["eos_token_id"] = m.eosTokenId;
  out["bos_token_id"] = m.bosTokenId;
  out["use_bidirectional_attention"] = false;
  out["use_cache"] = true;
  out["dtype"] = anyFp32 ? "float32" : "bfloat16";
  if (moe) {
    const KernelAttrs &r = f.routerAttrs;
    out["n_routed_experts"] = m.nRoutedExperts;
    out["num_experts_per_tok"] = m.numExpertsPerTok;
    out["first_k_dense_replace"] = m.firstKDenseReplace;
    out["router_type"] = routerTypeName(m.routerType);
    out["router_jitter_noise"] = f.router == "sparsemixer_router"
                                     ? r.getFloat("epsilon").value_or(0.01)
                                     : m.routerJitterNoise;
    out["input_jitter_noise"] = f.inputJitter.value_or(m.inputJitterNoise);
    out["router_aux_loss_coef"] = f.auxCoef.value_or(m.routerAuxLossCoef);
    out["router_z_loss_coef"] = f.zCoef.value_or(m.routerZLossCoef);
    out["n_shared_experts"] = m.nSharedExperts;
    out["freeze_shared_experts"] = m.freezeSharedExperts;
    bool grouped = f.router == "sigmoid_grouped_router";
    out["routed_scaling_factor"] =
        grouped ? r.getFloat("routed_scaling_factor").value_or(2.5) : m.routedScalingFactor;
    out["n_group"] = grouped ? r.getInt("n_group").value_or(8) : m.nGroup;
    out["topk_group"] = grouped ? r.getInt("topk_group").value_or(4) : m.topkGroup;
    bool norm = true;
    if (const AttrValue *a = r.find("norm_topk_prob"))
      norm = a->b;
    out["norm_topk_prob"] = norm;
  }
  return Status();
}

//===----------------------------------------------------------------------===//
// Writing
//===----------------------------------------------------------------------===//

namespace {

bool isLoraName(const std::string &name) {
  return name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos;
}

/// "X.weight" -> "X.lora_A.weight".
std::string loraName(const std::string &base, const char *which) {
  if (!endsWith(base, ".weight"))
    return "";
  return base.substr(0, base.size() - 7) + "." + which + ".weight";
}

/// Views of expert `e` of a stacked tensor.
TensorView expertSlice(const TensorView &t, int64_t e) {
  TensorView s = t;
  s.shape.erase(s.shape.begin());
  s.data = static_cast<uint8_t *>(t.data) + size_t(e) * (t.bytes() / size_t(t.shape[0]));
  return s;
}

} // namespace

Status saveHFCheckpoint(const HostState &host, const std::string &dir, bool mergeLora) {
  const StepProgram &program = host.program();
  nlohmann::ordered_json config;
  G3RT_RETURN_IF_ERROR(hfConfigFromStep(program, config));
  double scale = 1;
  if (mergeLora) {
    if (program.training.loraR <= 0)
      return Status::error("the step's lora_r is not positive");
    scale = program.training.loraAlpha / double(program.training.loraR);
  }

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return Status::error("cannot create " + dir + ": " + ec.message());

  // Merged weights need their own storage; everything else is written from
  // the host state's parameters directly.
  std::vector<std::vector<uint8_t>> merged;
  merged.reserve(program.params.size());
  std::vector<NamedTensor> tensors;
  for (const ParamDesc &p : program.params) {
    if (isLoraName(p.name))
      continue;
    TensorView w = host.param(p.name);
    if (!w.data)
      return Status::error("parameter '" + p.name + "' has no storage");
    TensorView a, b;
    if (mergeLora) {
      std::string an = loraName(p.name, "lora_A"), bn = loraName(p.name, "lora_B");
      if (!an.empty()) {
        a = host.param(an);
        b = host.param(bn);
      }
    }
    if (a.data && b.data) {
      bool stacked = p.name.find("{e}") != std::string::npos;
      int64_t experts = stacked ? w.shape[0] : 1;
      int64_t out = w.dim(-2), in = w.dim(-1), r = a.dim(-2);
      if (a.dim(-1) != in || b.dim(-2) != out || b.dim(-1) != r)
        return Status::error("LoRA of '" + p.name + "': shapes " + shapeString(a.shape) + " and " +
                             shapeString(b.shape) + " do not fit the weight's " +
                             shapeString(w.shape));
      merged.emplace_back(w.bytes());
      TensorView m = w;
      m.data = merged.back().data();
      // Rows of all experts are independent: one parallel loop over them.
      parallelFor(experts * out, [&](int64_t first, int64_t last) {
        for (int64_t row = first; row < last; ++row) {
          int64_t e = row / out, o = row % out;
          int64_t wOff = e * out * in, aOff = e * r * in, bOff = e * out * r;
          for (int64_t i = 0; i < in; ++i) {
            double acc = 0;
            for (int64_t k = 0; k < r; ++k)
              acc += double(b.load(bOff + o * r + k)) * double(a.load(aOff + k * in + i));
            m.store(wOff + o * in + i, float(double(w.load(wOff + o * in + i)) + scale * acc));
          }
        }
      });
      w = m;
    }
    size_t at = p.name.find("{e}");
    if (at == std::string::npos) {
      tensors.push_back({p.name, w});
      continue;
    }
    for (int64_t e = 0; e < w.shape[0]; ++e)
      tensors.push_back(
          {p.name.substr(0, at) + std::to_string(e) + p.name.substr(at + 3), expertSlice(w, e)});
  }

  G3RT_RETURN_IF_ERROR(writeSafetensors((fs::path(dir) / "model.safetensors").string(), tensors,
                                        {{"format", "pt"}}));
  std::string text = config.dump(2) + "\n";
  return writeFileAtomically((fs::path(dir) / "config.json").string(),
                             std::vector<uint8_t>(text.begin(), text.end()));
}

} // namespace g3rt
