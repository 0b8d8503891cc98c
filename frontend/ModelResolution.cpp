//===- ModelResolution.cpp - the text model from its fields ---------------===//
//
// Resolves the collected model fields into a ModelConfig: Gemma3TextConfig's
// (and G3MoETextConfig's) defaults, the shape, the fixed features Gemma-3
// has, the token ids, the MoE block and its router, the RoPE and the layer
// kinds. Each absent field that changes the step is warned about by name.
//
//===----------------------------------------------------------------------===//

#include "frontend/ConfigInternal.h"

using namespace llvm;

namespace g3moe::frontend::detail {

namespace {

/// Each layer's attention kind (from layer_types or sliding_window_pattern)
/// and whether its FFN is the MoE block.
Error resolveLayers(Ctx &c, const Reader &r, ModelConfig &m) {
  int64_t pattern = 6;
  if (Error e = r.integerIn("sliding_window_pattern", pattern, 1, kMaxSize, "",
                            /*nullable=*/true))
    return e;
  if ((!r.has("layer_types") || r.isNull("layer_types")) &&
      (!r.has("sliding_window_pattern") || r.isNull("sliding_window_pattern")))
    c.warn(r.origin("sliding_window_pattern"),
           Twine(r.has("sliding_window_pattern") ? "null" : "absent") + "; using " + textClass(c) +
               "'s default, 6 (there are no layer_types either; every "
               "sixth layer is global)");
  std::vector<AttentionKind> fromPattern;
  for (int64_t l = 0; l < m.numLayers; ++l)
    fromPattern.push_back((l + 1) % pattern != 0 ? AttentionKind::Sliding : AttentionKind::Global);

  std::vector<AttentionKind> kinds = fromPattern;
  const Entry *typesEntry = r.find("layer_types");
  if (typesEntry && typesEntry->value.kind() != json::Value::Null) {
    const json::Array *types = typesEntry->value.getAsArray();
    if (!types)
      return fail(typesEntry->origin, "must be a list of \"sliding_attention\" "
                                      "/ \"full_attention\", got " +
                                          render(typesEntry->value));
    if (static_cast<int64_t>(types->size()) != m.numLayers)
      return fail(typesEntry->origin, "has " + Twine(types->size()) +
                                          " entries but num_hidden_layers is " +
                                          Twine(m.numLayers));
    std::vector<AttentionKind> fromTypes;
    for (size_t i = 0; i < types->size(); ++i) {
      std::optional<StringRef> t = (*types)[i].getAsString();
      if (t && *t == "sliding_attention")
        fromTypes.push_back(AttentionKind::Sliding);
      else if (t && *t == "full_attention")
        fromTypes.push_back(AttentionKind::Global);
      else
        return fail(typesEntry->origin, "entry " + Twine(i) + " is " + render((*types)[i]) +
                                            "; expected \"sliding_attention\" or "
                                            "\"full_attention\"");
    }
    const Entry *patternEntry = r.find("sliding_window_pattern");
    bool patternWins = patternEntry && patternEntry->value.kind() != json::Value::Null &&
                       patternEntry->origin.priority > typesEntry->origin.priority;
    if (!patternWins) {
      if (patternEntry && patternEntry->value.kind() != json::Value::Null &&
          fromTypes != fromPattern)
        c.warn(patternEntry->origin, "ignored: layer_types takes precedence and disagrees with it");
      kinds = std::move(fromTypes);
    }
  }

  m.layers.clear();
  for (int64_t l = 0; l < m.numLayers; ++l) {
    LayerSpec spec;
    spec.attention = kinds[l];
    spec.moe = m.numExperts > 0 && l >= m.firstKDenseReplace;
    m.layers.push_back(spec);
  }
  return Error::success();
}

/// The activation must be Gemma-3's tanh GELU.
Error checkActivation(const Reader &r, StringRef key) {
  const Entry *e = r.find(key);
  if (!e || e->value.kind() == json::Value::Null)
    return Error::success();
  std::optional<StringRef> s = e->value.getAsString();
  if (!s)
    return fail(e->origin, "must be a string, got " + render(e->value));
  if (*s != "gelu_pytorch_tanh" && *s != "gelu_tanh")
    return fail(e->origin, "activation '" + *s +
                               "' is not supported; Gemma-3 uses the tanh "
                               "GELU (gelu_pytorch_tanh or gelu_tanh)");
  return Error::success();
}

/// A token id in [0, vocab); eos_token_id may be a list.
Error checkTokenId(const Reader &r, StringRef key, int64_t &out, int64_t vocab) {
  const Entry *e = r.find(key);
  if (e && e->value.getAsArray()) {
    // eos_token_id may list several stop tokens; the first is the one the
    // data pipeline appends.
    const json::Array &a = *e->value.getAsArray();
    if (a.empty())
      return fail(e->origin, "must be a token id or a non-empty list of ids");
    for (const json::Value &item : a)
      if (!asInt(item) || *asInt(item) < 0 || *asInt(item) >= vocab)
        return fail(e->origin,
                    "entry " + render(item) + " is not a token id in [0, " + Twine(vocab) + ")");
    out = *asInt(a[0]);
    return Error::success();
  }
  if (Error err = r.integer(key, out))
    return err;
  if (out < 0 || out >= vocab)
    return fail(r.origin(key), "must be a token id in [0, " + Twine(vocab) + "), got " +
                                   Twine(out) + r.defaulted(key));
  return Error::success();
}

/// A fresh ModelConfig with Gemma3TextConfig's defaults (G3MoETextConfig has
/// the same) for the fields that may be absent.
void setBackboneDefaults(const Ctx &c, ModelConfig &m) {
  m = ModelConfig();
  m.modelType = c.textType;
  m.checkpointPrefix = c.checkpointPrefix;
  m.queryPreAttnScalar = 256;
  m.slidingWindow = 4096;
  m.rmsNormEps = 1e-6;
  m.tieWordEmbeddings = true;
  m.initializerRange = 0.02;
  m.padTokenId = 0;
  m.eosTokenId = 1;
  m.bosTokenId = 2;
  m.maxPositionEmbeddings = 131072;
  m.globalRope = RopeSpec{1000000.0, 1.0};
  m.slidingRope = RopeSpec{10000.0, 1.0};
}

/// The sizes, heads and head_dim.
Error resolveShape(Ctx &c, const Reader &r, ModelConfig &m) {
  // The shape. Checkpoint configs always give the first three: the class
  // defaults (2304, 9216, 26) are placeholders, and a config without them is
  // incomplete. transformers writes the other four in every text config, but
  // 4.x left fields equal to the class default out of a wrapper's
  // text_config, and the Hub's Gemma-3-4B relies on that for its heads,
  // head_dim and vocabulary: there the default is used, with a warning.
  struct SizeField {
    const char *key;
    int64_t *out;
    int64_t classDefault;
    int64_t max;
    const char *why;
    bool defaultInWrapper;
  };
  SizeField sizes[] = {
      {"vocab_size", &m.vocabSize, 262208, kMaxSize, " (token ids are int32)", true},
      {"hidden_size", &m.hiddenSize, 2304, kMaxSize, "", false},
      {"intermediate_size", &m.intermediateSize, 9216, kMaxSize, "", false},
      {"num_hidden_layers", &m.numLayers, 26, kMaxLayers, "", false},
      {"num_attention_heads", &m.numHeads, 8, kMaxSize, "", true},
      {"num_key_value_heads", &m.numKVHeads, 4, kMaxSize, "", true},
      {"head_dim", &m.headDim, 256, kMaxSize, "", true},
  };
  for (const SizeField &f : sizes) {
    if (!r.has(f.key)) {
      if (!f.defaultInWrapper)
        return fail(r.origin(f.key), "missing; a model config must give the model's shape, and "
                                     "every checkpoint's does (" +
                                         textClass(c) + "'s default, " + Twine(f.classDefault) +
                                         ", is a placeholder)");
      if (!c.wrapper)
        return fail(r.origin(f.key), "missing; a " + c.textType +
                                         " config must give the model's shape, and "
                                         "transformers writes every field of one (" +
                                         textClass(c) + "'s default, " + Twine(f.classDefault) +
                                         ", is taken only in a multimodal config's "
                                         "text_config, which transformers 4.x wrote without "
                                         "the fields equal to it)");
      c.warn(r.origin(f.key), "absent; using " + textClass(c) + "'s default, " +
                                  Twine(f.classDefault) +
                                  ", as transformers does (4.x left fields equal to it out "
                                  "of text_config)");
      *f.out = f.classDefault;
    }
    if (Error e = r.integerIn(f.key, *f.out, 1, f.max, f.why))
      return e;
  }
  // Only an upper bound of the sequence length: the default changes nothing
  // else.
  if (Error e = r.integerIn("max_position_embeddings", m.maxPositionEmbeddings, 1, kMaxSize,
                            " (positions are int32)"))
    return e;
  if (m.numHeads % m.numKVHeads != 0)
    return fail(r.origin("num_key_value_heads"),
                "num_attention_heads (" + Twine(m.numHeads) +
                    ") must be a multiple of num_key_value_heads (" + Twine(m.numKVHeads) + ")" +
                    r.defaulted("num_key_value_heads"));
  if (m.headDim % 2 != 0)
    return fail(r.origin("head_dim"),
                "must be even (RoPE rotates pairs of dimensions), got " + Twine(m.headDim));
  return Error::success();
}

/// The sliding window and the numerical constants of attention and norms.
Error resolveScalars(Ctx &c, const Reader &r, ModelConfig &m) {
  if (r.isNull("sliding_window"))
    return fail(r.origin("sliding_window"),
                "must be an integer >= 1; null (no sliding window) is not "
                "supported for Gemma-3");
  r.noteDefault("sliding_window", Twine(m.slidingWindow), textClass(c));
  if (Error e = r.integerIn("sliding_window", m.slidingWindow, 1, kMaxSize))
    return e;

  r.noteDefault("query_pre_attn_scalar", num(m.queryPreAttnScalar), textClass(c));
  if (Error e = r.number("query_pre_attn_scalar", m.queryPreAttnScalar))
    return e;
  if (m.queryPreAttnScalar <= 0)
    return fail(r.origin("query_pre_attn_scalar"), "must be > 0, got " + num(m.queryPreAttnScalar));
  r.noteDefault("rms_norm_eps", num(m.rmsNormEps), textClass(c));
  if (Error e = r.number("rms_norm_eps", m.rmsNormEps))
    return e;
  if (m.rmsNormEps <= 0)
    return fail(r.origin("rms_norm_eps"), "must be > 0, got " + num(m.rmsNormEps));
  if (Error e = r.number("initializer_range", m.initializerRange))
    return e;
  if (m.initializerRange <= 0)
    return fail(r.origin("initializer_range"), "must be > 0, got " + num(m.initializerRange));
  return Error::success();
}

/// What Gemma-3 fixes (activation, no biases, no attention dropout, causal
/// attention), the soft-caps and tied embeddings.
Error resolveFixedFeatures(const Reader &r, ModelConfig &m) {
  if (Error e = checkActivation(r, "hidden_activation"))
    return e;
  if (Error e = checkActivation(r, "hidden_act"))
    return e;

  bool attentionBias = false;
  if (Error e = r.boolean("attention_bias", attentionBias, true))
    return e;
  if (attentionBias)
    return fail(r.origin("attention_bias"), "must be false; Gemma-3 attention has no biases");
  double attentionDropout = 0;
  if (Error e = r.number("attention_dropout", attentionDropout, true))
    return e;
  if (attentionDropout != 0)
    return fail(r.origin("attention_dropout"), "must be 0; attention dropout is not implemented");
  bool bidirectional = false;
  if (Error e = r.boolean("use_bidirectional_attention", bidirectional, true))
    return e;
  if (bidirectional)
    return fail(r.origin("use_bidirectional_attention"),
                "must be false; g3moe trains causal decoders");

  for (const char *key : {"final_logit_softcapping", "attn_logit_softcapping"}) {
    const Entry *e = r.find(key);
    if (!e || e->value.kind() == json::Value::Null)
      continue;
    std::optional<double> v = asFiniteNumber(e->value);
    if (!v || *v <= 0)
      return fail(e->origin, "must be null or a positive number, got " + render(e->value));
    (StringRef(key) == "final_logit_softcapping" ? m.finalLogitSoftcap : m.attnLogitSoftcap) = *v;
  }
  if (Error e = r.boolean("tie_word_embeddings", m.tieWordEmbeddings))
    return e;
  return Error::success();
}

/// The pad, eos and bos token ids, inside the vocabulary.
Error resolveTokenIds(const Reader &r, ModelConfig &m) {
  if (Error e = checkTokenId(r, "pad_token_id", m.padTokenId, m.vocabSize))
    return e;
  if (Error e = checkTokenId(r, "eos_token_id", m.eosTokenId, m.vocabSize))
    return e;
  if (Error e = checkTokenId(r, "bos_token_id", m.bosTokenId, m.vocabSize))
    return e;
  return Error::success();
}

/// G3MoETextConfig's MoE defaults, for a model with routed experts.
void setMoEDefaults(ModelConfig &m) {
  // The other G3MoETextConfig defaults; n_shared_experts defaults to 0
  // because the R0/R1 block had no shared expert (§7 A2).
  m.topK = 8;
  m.firstKDenseReplace = 3;
  m.router = RouterKind::SparseMixer;
  m.routerJitterNoise = 0.01;
  m.inputJitterNoise = 0.01;
  m.routerAuxLossCoef = 0.001;
  m.routerZLossCoef = 0.0001;
  m.numSharedExperts = 0;
  m.freezeSharedExperts = true;
  m.routedScalingFactor = 2.5;
  m.numGroups = 8;
  m.topkGroup = 4;
  m.normTopkProb = true;
}

/// The routing width and the router.
Error resolveRouter(const Reader &r, ModelConfig &m) {
  // The routing width is as much the model's as the expert count; the class
  // default 8 is DeepSeek-V3's (and SparseMixer needs 2).
  if (!r.has("num_experts_per_tok"))
    return fail(r.origin("num_experts_per_tok"),
                "missing; a G3MoE model must give the experts each token is "
                "routed to (2 for router 'sparsemixer'); G3MoETextConfig's "
                "default, 8, is not used silently");
  if (Error e = r.integerIn("num_experts_per_tok", m.topK, 1, kMaxExperts))
    return e;
  if (m.topK > m.numExperts)
    return fail(r.origin("num_experts_per_tok"), "is " + Twine(m.topK) +
                                                     r.defaulted("num_experts_per_tok") +
                                                     " but there are only " + Twine(m.numExperts) +
                                                     " routed experts (n_routed_experts)");
  std::string router = "sparsemixer";
  if (Error e = r.string("router_type", router, true))
    return e;
  if (router == "sparsemixer")
    m.router = RouterKind::SparseMixer;
  else if (router == "softmax_topk")
    m.router = RouterKind::SoftmaxTopK;
  else if (router == "sigmoid_grouped")
    m.router = RouterKind::SigmoidGrouped;
  else
    return fail(r.origin("router_type"), "unknown router '" + router +
                                             "'; supported: sparsemixer, softmax_topk, "
                                             "sigmoid_grouped");
  if (m.router == RouterKind::SparseMixer && m.topK != 2)
    return fail(r.origin("num_experts_per_tok"),
                "is " + Twine(m.topK) + r.defaulted("num_experts_per_tok") +
                    " but router 'sparsemixer' is defined only for top-2 "
                    "routing (G3MOE_SPEC.md §7 A3); set it to 2");
  return Error::success();
}

/// Warns about the MoE fields left at their defaults where they matter.
void noteMoEDefaults(Ctx &c, const Reader &r, const ModelConfig &m) {
  // The MoE fields a G3MoE checkpoint normally states; an absent one takes
  // G3MoETextConfig's default, with a warning where it changes the step.
  r.noteDefault("first_k_dense_replace", Twine(m.firstKDenseReplace), "G3MoETextConfig");
  if (m.router == RouterKind::SparseMixer)
    r.noteDefault("router_jitter_noise", num(m.routerJitterNoise), "G3MoETextConfig");
  r.noteDefault("input_jitter_noise", num(m.inputJitterNoise), "G3MoETextConfig");
  if (!r.has("n_shared_experts"))
    c.warn(r.origin("n_shared_experts"),
           "absent; using 0 (no shared expert, as in the R0/R1 block); "
           "G3MoETextConfig's default, 1, was never used (G3MOE_SPEC.md §7 "
           "A2)");
  if (m.router == RouterKind::SigmoidGrouped) {
    r.noteDefault("routed_scaling_factor", num(m.routedScalingFactor), "G3MoETextConfig");
    r.noteDefault("n_group", Twine(m.numGroups), "G3MoETextConfig");
    r.noteDefault("topk_group", Twine(m.topkGroup), "G3MoETextConfig");
  }
  if (m.router != RouterKind::SparseMixer)
    r.noteDefault("norm_topk_prob", "true", "G3MoETextConfig");
}

/// The dense prefix, the jitter and loss coefficients, the shared experts
/// and the scaling of the routing weights.
Error resolveMoENumbers(const Reader &r, ModelConfig &m) {
  if (Error e = r.integerIn("first_k_dense_replace", m.firstKDenseReplace, 0, m.numLayers,
                            " (num_hidden_layers)"))
    return e;

  struct NonNegative {
    const char *key;
    double *out;
    double below;
  };
  NonNegative coefs[] = {
      {"router_jitter_noise", &m.routerJitterNoise, 1.0},
      {"input_jitter_noise", &m.inputJitterNoise, 1.0},
      {"router_aux_loss_coef", &m.routerAuxLossCoef, 0},
      {"router_z_loss_coef", &m.routerZLossCoef, 0},
  };
  for (const NonNegative &f : coefs) {
    if (Error e = r.number(f.key, *f.out))
      return e;
    if (*f.out < 0 || (f.below > 0 && *f.out >= f.below))
      return fail(r.origin(f.key),
                  (f.below > 0 ? "must be in [0, 1), got " : "must be >= 0, got ") + num(*f.out));
  }

  if (Error e = r.integerIn("n_shared_experts", m.numSharedExperts, 0, kMaxExperts, "",
                            /*nullable=*/true))
    return e;
  if (m.numSharedExperts > 0)
    r.noteDefault("freeze_shared_experts", "true", "G3MoETextConfig");
  if (Error e = r.boolean("freeze_shared_experts", m.freezeSharedExperts))
    return e;
  if (Error e = r.number("routed_scaling_factor", m.routedScalingFactor))
    return e;
  if (m.routedScalingFactor <= 0)
    return fail(r.origin("routed_scaling_factor"),
                "must be > 0, got " + num(m.routedScalingFactor));
  if (Error e = r.boolean("norm_topk_prob", m.normTopkProb))
    return e;
  return Error::success();
}

/// Group-limited routing, and the fields the chosen router ignores.
Error resolveGroups(Ctx &c, const Reader &r, ModelConfig &m) {
  // Group-limited routing. topk_group > n_group is rejected whatever the
  // router, as in the seed's g3moe_params (§7 D12).
  if (Error e = r.integerIn("n_group", m.numGroups, 1, kMaxExperts))
    return e;
  if (Error e = r.integerIn("topk_group", m.topkGroup, 1, kMaxExperts))
    return e;
  if (m.topkGroup > m.numGroups)
    return fail(r.origin("topk_group"), "is " + Twine(m.topkGroup) + r.defaulted("topk_group") +
                                            " but there are only " + Twine(m.numGroups) +
                                            " groups (n_group); topk_group must be <= n_group "
                                            "(G3MOE_SPEC.md §7 D12)");
  if (m.router == RouterKind::SigmoidGrouped) {
    if (m.numExperts % m.numGroups != 0)
      return fail(r.origin("n_group"), "is " + Twine(m.numGroups) + r.defaulted("n_group") +
                                           ", which does not divide n_routed_experts (" +
                                           Twine(m.numExperts) +
                                           "); router 'sigmoid_grouped' splits the experts "
                                           "into equal groups");
    int64_t reachable = m.topkGroup * (m.numExperts / m.numGroups);
    if (m.topK > reachable)
      return fail(r.origin("num_experts_per_tok"), "is " + Twine(m.topK) + " but topk_group (" +
                                                       Twine(m.topkGroup) + ") groups hold only " +
                                                       Twine(reachable) + " experts");
  } else {
    const char *unused[] = {"n_group", "topk_group", "routed_scaling_factor"};
    for (const char *key : unused)
      if (const Entry *e = r.find(key))
        c.warn(e->origin, "has no effect with router '" + stringifyRouterKind(m.router) + "'");
    if (m.router == RouterKind::SparseMixer)
      if (const Entry *e = r.find("norm_topk_prob"))
        c.warn(e->origin, "has no effect with router 'sparsemixer'");
  }
  return Error::success();
}

/// The number of routed experts and, for a MoE model, its block.
Error resolveExperts(Ctx &c, const Reader &r, ModelConfig &m) {
  // MoE. A G3MoE config (or a preset's g3moe_params) must say how many
  // experts there are: G3MoETextConfig's default, 256, is DeepSeek-V3's and
  // would be a silent change of shape. Elsewhere absent means dense.
  m.numExperts = 0;
  if (c.g3moeDefaults && !r.has("n_routed_experts"))
    return fail(r.origin("n_routed_experts"),
                "missing; a G3MoE model must give its number of routed "
                "experts (0 or null for a dense model); G3MoETextConfig's "
                "default, 256, is not used silently");
  if (Error e =
          r.integerIn("n_routed_experts", m.numExperts, 0, kMaxExperts, "", /*nullable=*/true))
    return e;
  if (m.numExperts > 0 && m.modelType == "gemma3_text")
    m.modelType = "g3moe_text";

  if (m.numExperts == 0) {
    // A dense model keeps ModelConfig's neutral MoE values.
    for (const char *key : kMoEFields)
      if (const Entry *e = r.find(key); e && !isOffValue(e->value))
        c.warn(e->origin, "ignored: the model is dense (n_routed_experts is "
                          "0 or absent)");
    return Error::success();
  }
  setMoEDefaults(m);
  if (Error e = resolveRouter(r, m))
    return e;
  noteMoEDefaults(c, r, m);
  if (Error e = resolveMoENumbers(r, m))
    return e;
  return resolveGroups(c, r, m);
}

} // namespace

Error resolveModel(Ctx &c, ModelConfig &m) {
  Reader r{c, c.model, true};
  setBackboneDefaults(c, m);
  if (Error e = resolveShape(c, r, m))
    return e;
  if (Error e = resolveScalars(c, r, m))
    return e;
  if (Error e = resolveFixedFeatures(r, m))
    return e;
  if (Error e = resolveTokenIds(r, m))
    return e;
  if (Error e = resolveExperts(c, r, m))
    return e;
  if (Error e = resolveRope(c, r, m))
    return e;
  return resolveLayers(c, r, m);
}

} // namespace g3moe::frontend::detail
