//===- Rope.cpp - RoPE of the global and the sliding layers ---------------===//
//
// Resolves the rotary embeddings from every way transformers has written
// them: rope_scaling (4.x), rope_parameters (5.x, one dict or one per layer
// type), g3moe's rope_scaling_factor, and the thetas rope_theta and
// rope_local_base_freq. Sources that say the same thing are settled by
// priority and must agree at equal priority.
//
//===----------------------------------------------------------------------===//

#include "frontend/ConfigInternal.h"

using namespace llvm;

namespace g3moe::frontend::detail {

namespace {

/// A RoPE description from rope_scaling, rope_parameters or
/// rope_scaling_factor.
struct RopeSource {
  bool present = false;
  /// "default" or "linear" after validation.
  std::string type = "default";
  double factor = 1.0;
  std::optional<double> theta;
  Origin origin;
  /// Path of this description, for conflict messages.
  std::string path;
};

/// Parses one dict of rope_type / type / factor (/ rope_theta).
Error parseRopeDict(Ctx &c, const json::Value &v, const Origin &at, bool allowTheta,
                    RopeSource &out) {
  const json::Object *obj = v.getAsObject();
  if (!obj)
    return fail(at, "must be an object, got " + render(v));
  out.present = true;
  out.origin = at;
  out.path = at.path;
  auto sub = [&](StringRef key) {
    Origin o = at;
    o.path = at.path + "." + key.str();
    return o;
  };
  const json::Value *typeValue = obj->get("rope_type");
  StringRef typeKey = "rope_type";
  if (!typeValue || typeValue->kind() == json::Value::Null) {
    typeValue = obj->get("type");
    typeKey = "type";
  }
  const json::Value *factorValue = obj->get("factor");
  if (factorValue && factorValue->kind() == json::Value::Null)
    factorValue = nullptr;
  std::string type = "default";
  if (typeValue && typeValue->kind() != json::Value::Null) {
    std::optional<StringRef> t = typeValue->getAsString();
    if (!t)
      return fail(sub(typeKey), "must be a string, got " + render(*typeValue));
    type = t->str();
  } else if (factorValue) {
    return fail(sub("rope_type"), "missing; a factor needs a rope_type "
                                  "('linear')");
  }
  if (type != "default" && type != "linear")
    return fail(sub(typeKey), "RoPE type '" + type +
                                  "' is not supported (only 'default' "
                                  "and 'linear' are; yarn, dynamic, llama3 and longrope "
                                  "change the rotary frequencies in ways g3moe does not "
                                  "implement)");
  out.type = type;
  out.factor = 1.0;
  if (type == "linear") {
    if (!factorValue)
      return fail(sub("factor"), "missing; rope_type 'linear' needs a factor");
    std::optional<double> f = asFiniteNumber(*factorValue);
    if (!f)
      return fail(sub("factor"), "must be a number, got " + render(*factorValue));
    if (*f <= 0)
      return fail(sub("factor"), "must be > 0, got " + render(*factorValue));
    out.factor = *f;
  } else if (factorValue) {
    std::optional<double> f = asFiniteNumber(*factorValue);
    if (!f || *f != 1.0)
      c.warn(sub("factor"), "ignored: rope_type 'default' does not scale");
  }
  if (const json::Value *p = obj->get("partial_rotary_factor")) {
    std::optional<double> f = asFiniteNumber(*p);
    if (p->kind() != json::Value::Null && (!f || *f != 1.0))
      return fail(sub("partial_rotary_factor"),
                  "partial rotary embeddings are not supported (Gemma-3 "
                  "rotates the whole head)");
  }
  if (const json::Value *t = obj->get("rope_theta")) {
    if (!allowTheta)
      return fail(sub("rope_theta"), "is not read inside rope_scaling; set "
                                     "rope_theta next to it");
    if (t->kind() != json::Value::Null) {
      std::optional<double> theta = asFiniteNumber(*t);
      if (!theta)
        return fail(sub("rope_theta"), "must be a number, got " + render(*t));
      if (*theta <= 0)
        return fail(sub("rope_theta"), "must be > 0, got " + render(*t));
      out.theta = *theta;
    }
  }
  for (const std::string &key : sortedKeys(*obj))
    if (key != "rope_type" && key != "type" && key != "factor" && key != "rope_theta" &&
        key != "partial_rotary_factor")
      c.warn(sub(key), "ignored: only used by RoPE types g3moe does not "
                       "support");
  return Error::success();
}

/// Picks among sources that describe the same thing: the strongest source
/// wins; equal sources must agree.
template <typename Same>
Expected<const RopeSource *> pickRope(ArrayRef<const RopeSource *> sources, StringRef what,
                                      Same same) {
  const RopeSource *best = nullptr;
  for (const RopeSource *s : sources) {
    if (!s->present)
      continue;
    if (!best || s->origin.priority > best->origin.priority) {
      best = s;
      continue;
    }
    if (s->origin.priority == best->origin.priority && !same(*best, *s))
      return fail(s->origin, "conflicts with '" + best->path + "' about the " + what);
  }
  return best;
}

/// rope_scaling_factor: a linear factor (1 for the default RoPE).
Error readRopeFactorField(const Reader &r, RopeSource &factorField) {
  if (const Entry *e = r.find("rope_scaling_factor"))
    if (e->value.kind() != json::Value::Null) {
      std::optional<double> f = asFiniteNumber(e->value);
      if (!f)
        return fail(e->origin, "must be a number, got " + render(e->value));
      if (*f <= 0)
        return fail(e->origin, "must be > 0, got " + render(e->value));
      factorField.present = true;
      factorField.type = *f == 1.0 ? "default" : "linear";
      factorField.factor = *f;
      factorField.origin = e->origin;
      factorField.path = e->origin.path;
    }
  return Error::success();
}

/// rope_parameters: one dict for the whole model (it describes the global
/// layers) or one per layer type.
Error readRopeParameters(Ctx &c, const Reader &r, RopeSource &params, RopeSource &paramsSliding) {
  const Entry *e = r.find("rope_parameters");
  if (!e || e->value.kind() == json::Value::Null)
    return Error::success();
  const json::Object *obj = e->value.getAsObject();
  if (!obj)
    return fail(e->origin, "must be an object, got " + render(e->value));
  bool perType = false;
  for (const auto &kv : *obj)
    if (kv.first == "full_attention" || kv.first == "sliding_attention" || kv.second.getAsObject())
      perType = true;
  if (!perType) {
    // One dict for the whole model: it describes the global layers.
    return parseRopeDict(c, e->value, e->origin, true, params);
  }
  for (const std::string &key : sortedKeys(*obj)) {
    Origin o = e->origin;
    o.path += "." + key;
    const json::Value &v = *obj->get(key);
    if (key == "full_attention") {
      if (Error err = parseRopeDict(c, v, o, true, params))
        return err;
    } else if (key == "sliding_attention") {
      if (Error err = parseRopeDict(c, v, o, true, paramsSliding))
        return err;
    } else {
      return fail(o, "unknown layer type '" + key +
                         "' (expected "
                         "full_attention or sliding_attention)");
    }
  }
  return Error::success();
}

/// One layer kind's theta: rope_parameters.<type>.rope_theta against
/// rope_theta / rope_local_base_freq (`field`), by the rule of pickRope.
Error pickTheta(Ctx &c, const Reader &r, const RopeSource &fromParams, StringRef field,
                double &out) {
  RopeSource plain;
  if (const Entry *e = r.find(field))
    if (e->value.kind() != json::Value::Null) {
      std::optional<double> t = asFiniteNumber(e->value);
      if (!t)
        return fail(e->origin, "must be a number, got " + render(e->value));
      if (*t <= 0)
        return fail(e->origin, "must be > 0, got " + render(e->value));
      plain.present = true;
      plain.theta = *t;
      plain.origin = e->origin;
      plain.path = e->origin.path;
    }
  RopeSource withTheta;
  if (fromParams.present && fromParams.theta) {
    withTheta = fromParams;
    withTheta.path = fromParams.path + ".rope_theta";
  }
  Expected<const RopeSource *> best =
      pickRope({&withTheta, &plain}, "RoPE base frequency",
               [](const RopeSource &a, const RopeSource &b) { return a.theta == b.theta; });
  if (!best)
    return best.takeError();
  if (*best)
    out = *(*best)->theta;
  else
    r.noteDefault(field, std::to_string(static_cast<int64_t>(out)), textClass(c));
  return Error::success();
}

} // namespace

Error resolveRope(Ctx &c, const Reader &r, ModelConfig &m) {
  RopeSource scaling, params, paramsSliding, factorField;

  if (const Entry *e = r.find("rope_scaling"))
    if (e->value.kind() != json::Value::Null)
      if (Error err = parseRopeDict(c, e->value, e->origin, false, scaling))
        return err;
  if (Error e = readRopeFactorField(r, factorField))
    return e;
  if (Error e = readRopeParameters(c, r, params, paramsSliding))
    return e;

  auto sameScaling = [](const RopeSource &a, const RopeSource &b) {
    return a.type == b.type && a.factor == b.factor;
  };
  Expected<const RopeSource *> global =
      pickRope({&params, &scaling, &factorField}, "global RoPE scaling", sameScaling);
  if (!global)
    return global.takeError();
  if (*global)
    m.globalRope.factor = (*global)->factor;

  if (Error e = pickTheta(c, r, params, "rope_theta", m.globalRope.theta))
    return e;
  if (Error e = pickTheta(c, r, paramsSliding, "rope_local_base_freq", m.slidingRope.theta))
    return e;
  // Sliding layers are scaled only when the file says so per layer type
  // (transformers 5.x); rope_scaling never reaches them (§7 D21).
  if (paramsSliding.present)
    m.slidingRope.factor = paramsSliding.factor;
  return Error::success();
}

} // namespace g3moe::frontend::detail
