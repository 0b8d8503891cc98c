//===- Overrides.cpp - --set overrides into the field maps ----------------===//
//
// Applies g3moe-compile's --set key=value: a model field (also a dotted path
// inside one, e.g. rope_parameters.full_attention.factor) or a training
// option, forced either way by a model. or training. prefix. Overrides beat
// every file.
//
//===----------------------------------------------------------------------===//

#include "frontend/ConfigInternal.h"

#include "llvm/ADT/SmallVector.h"

using namespace llvm;

namespace g3moe::frontend::detail {

namespace {

/// Sets `rest` (dotted) inside the object field `canonical` to `value`,
/// starting from the field's current value.
Error setModelSubField(Ctx &c, StringRef canonical, StringRef rest, json::Value value, Origin o) {
  // Sub-fields are named below the field itself.
  o.path = canonical.str();
  // A dotted key edits inside an object field, e.g.
  // rope_parameters.full_attention.factor.
  json::Value whole = json::Object();
  auto it = c.model.find(canonical.str());
  if (it != c.model.end() && it->second.value.kind() != json::Value::Null)
    whole = it->second.value;
  json::Value *cursor = &whole;
  SmallVector<StringRef, 4> parts;
  rest.split(parts, '.');
  for (size_t i = 0; i < parts.size(); ++i) {
    json::Object *obj = cursor->getAsObject();
    if (!obj)
      return fail(o, "cannot set '" + parts[i] + "' inside a value that is not an object");
    if (i + 1 == parts.size()) {
      (*obj)[parts[i]] = std::move(value);
      break;
    }
    json::Value *next = obj->get(parts[i]);
    if (!next || next->kind() == json::Value::Null) {
      (*obj)[parts[i]] = json::Object();
      next = obj->get(parts[i]);
    }
    cursor = next;
  }
  return setField(c.model, canonical, std::move(whole), o);
}

} // namespace

Error applyOverride(Ctx &c, const ConfigOverride &ov) {
  std::string setText = "--set " + ov.key + "=" + ov.value;
  StringRef key = StringRef(ov.key).trim();
  bool forceModel = key.consume_front("model.");
  bool forceTraining = !forceModel && key.consume_front("training.");
  Origin o{c.topFile, key.str(), Priority::Override, setText};
  if (key.empty())
    return fail(o, "empty key");
  // llvm::json asserts that keys and strings are UTF-8; the command line
  // may hold any bytes.
  if (!json::isUTF8(ov.key) || !json::isUTF8(ov.value))
    return fail(o, "is not valid UTF-8");

  json::Value value(ov.value);
  if (!ov.value.empty()) {
    Expected<json::Value> parsed = parseJson(ov.value, "");
    if (parsed)
      value = std::move(*parsed);
    else
      consumeError(parsed.takeError());
  }

  auto [head, rest] = key.split('.');
  bool isModelKey = inTable(kModelFields, head) || inTable(kExpertAliases, head) ||
                    inTable(kLaterEraFields, head) || inTable(kDeepSeekLeftovers, head);
  const TrainKey *tk = findTrainKey(key);

  if (forceModel || (!forceTraining && isModelKey)) {
    if (!isModelKey)
      return fail(o, "unknown model field");
    if (inTable(kDeepSeekLeftovers, head))
      return Error::success();
    if (inTable(kLaterEraFields, head))
      return checkLaterEra(head, value, o);
    StringRef canonical = inTable(kExpertAliases, head) ? "n_routed_experts" : head;
    if (rest.empty())
      return setField(c.model, canonical, std::move(value), o);
    return setModelSubField(c, canonical, rest, std::move(value), o);
  }
  if (!tk)
    return fail(o, forceTraining ? "unknown training option"
                                 : "unknown field (neither a model field nor "
                                   "a training option)");
  if (!tk->canonical && tk->kind == TK::Ignore)
    return Error::success();
  return setTrainKey(c, *tk, value, o);
}

} // namespace g3moe::frontend::detail
