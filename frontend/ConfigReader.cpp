//===- ConfigReader.cpp - JSON, origins, messages and typed reads ---------===//
//
// The config reader's plumbing: parsing JSON safely, numbers and messages
// that name the file and field a value came from, the field store that
// settles two sources of one field, and the typed Reader that resolution
// reads the collected fields through.
//
//===----------------------------------------------------------------------===//

#include "frontend/ConfigInternal.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/FormatVariadic.h"

#include <cmath>
#include <cstdio>

using namespace llvm;

namespace g3moe::frontend::detail {

//===----------------------------------------------------------------------===//
// Values and messages
//===----------------------------------------------------------------------===//

std::string render(const json::Value &v) {
  std::string s = formatv("{0}", v).str();
  if (s.size() > 60)
    s = s.substr(0, 57) + "...";
  return s;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

std::string fieldText(const Origin &o) { return o.file + ": field '" + o.path + "'"; }

std::string describe(const Origin &o, const Twine &what) {
  std::string msg = (fieldText(o) + ": " + what).str();
  if (o.priority == Priority::Override)
    msg += " (from " + o.setText + ")";
  return msg;
}

Error fail(const Origin &o, const Twine &what) {
  return createStringError(describe(o, what), inconvertibleErrorCode());
}

Error failFile(StringRef file, const Twine &what) {
  return createStringError((Twine(file) + ": " + what).str(), inconvertibleErrorCode());
}

std::vector<std::string> sortedKeys(const json::Object &o) {
  std::vector<std::string> keys;
  for (const auto &kv : o)
    keys.push_back(kv.first.str());
  llvm::sort(keys);
  return keys;
}

std::optional<int64_t> asInt(const json::Value &v) {
  std::optional<double> d = v.getAsNumber();
  if (!d || !(std::fabs(*d) < 9.0e18))
    return std::nullopt;
  return v.getAsInteger();
}

bool isWholeNumber(const json::Value &v) {
  std::optional<double> d = v.getAsNumber();
  return d && std::isfinite(*d) && *d == std::trunc(*d);
}

std::optional<double> asFiniteNumber(const json::Value &v) {
  std::optional<double> d = v.getAsNumber();
  if (!d || !std::isfinite(*d))
    return std::nullopt;
  return d;
}

/// The JSON parser recurses once per nesting level and so does json::Value's
/// destructor; a hostile file of nested brackets must not exhaust the stack.
constexpr unsigned kMaxJsonDepth = 200;

Expected<json::Value> parseJson(StringRef text, StringRef file) {
  unsigned depth = 0;
  bool inString = false, escaped = false;
  for (char ch : text) {
    if (inString) {
      if (escaped)
        escaped = false;
      else if (ch == '\\')
        escaped = true;
      else if (ch == '"')
        inString = false;
      continue;
    }
    if (ch == '"') {
      inString = true;
    } else if (ch == '[' || ch == '{') {
      if (++depth > kMaxJsonDepth)
        return failFile(file,
                        "invalid JSON: nested deeper than " + Twine(kMaxJsonDepth) + " levels");
    } else if ((ch == ']' || ch == '}') && depth > 0) {
      --depth;
    }
  }
  Expected<json::Value> v = json::parse(text);
  if (!v)
    return failFile(file, "invalid JSON: " + toString(v.takeError()));
  return v;
}

//===----------------------------------------------------------------------===//
// The field store
//===----------------------------------------------------------------------===//

void Ctx::warn(const Origin &o, const Twine &what) { warnings.push_back(describe(o, what)); }

Origin Ctx::defaultOrigin(StringRef key) const {
  if (!moeFile.empty() && (key == "n_routed_experts" || inTable(kMoEFields, key)))
    return Origin{moeFile, (Twine(moePrefix) + key).str(), Priority::Preset, ""};
  return Origin{modelFile, (Twine(modelPrefix) + key).str(), Priority::File, ""};
}

StringRef textClass(const Ctx &c) {
  return c.textType == "g3moe_text" ? "G3MoETextConfig" : "Gemma3TextConfig";
}

Error setField(FieldMap &map, StringRef canonical, json::Value value, Origin origin) {
  auto it = map.find(canonical.str());
  if (it != map.end()) {
    const Entry &old = it->second;
    if (old.origin.priority > origin.priority)
      return Error::success();
    if (old.origin.priority == origin.priority && origin.priority != Priority::Override &&
        old.value != value)
      return fail(origin, "conflicts with '" + old.origin.path + "' (" + render(old.value) +
                              ") in " + old.origin.file);
  }
  map[canonical.str()] = Entry{std::move(value), std::move(origin)};
  return Error::success();
}

//===----------------------------------------------------------------------===//
// Reader
//===----------------------------------------------------------------------===//

const Entry *Reader::find(StringRef key) const {
  auto it = map.find(key.str());
  return it == map.end() ? nullptr : &it->second;
}

bool Reader::has(StringRef key) const { return find(key) != nullptr; }

bool Reader::isNull(StringRef key) const {
  const Entry *e = find(key);
  return e && e->value.kind() == json::Value::Null;
}

Origin Reader::origin(StringRef key) const {
  if (const Entry *e = find(key))
    return e->origin;
  if (isModel)
    return c.defaultOrigin(key);
  return Origin{c.topFile, key.str(), Priority::File, ""};
}

std::string Reader::defaulted(StringRef key) const {
  return has(key) ? "" : " (the default; the field is absent)";
}

void Reader::noteDefault(StringRef key, const Twine &value, StringRef cls) const {
  if (!has(key))
    c.warn(origin(key), "absent; using " + cls + "'s default, " + value);
}

Error Reader::integer(StringRef key, int64_t &out, bool nullable) const {
  const Entry *e = find(key);
  if (!e || (nullable && e->value.kind() == json::Value::Null))
    return Error::success();
  std::optional<int64_t> v = asInt(e->value);
  if (!v && isWholeNumber(e->value))
    return fail(e->origin, "must be an integer between -9e18 and 9e18, got " + render(e->value));
  if (!v)
    return fail(e->origin, "must be an integer, got " + render(e->value));
  out = *v;
  return Error::success();
}

Error Reader::integerIn(StringRef key, int64_t &out, int64_t lo, int64_t hi, StringRef why,
                        bool nullable) const {
  const Entry *e = find(key);
  std::string got;
  if (e && !(nullable && e->value.kind() == json::Value::Null)) {
    std::optional<int64_t> v = asInt(e->value);
    if (!v && !isWholeNumber(e->value))
      return fail(e->origin, "must be an integer, got " + render(e->value));
    if (v)
      out = *v;
    else
      got = render(e->value);
  }
  if (got.empty() && out >= lo && out <= hi)
    return Error::success();
  if (got.empty())
    got = std::to_string(out);
  return fail(origin(key), "must be an integer in [" + Twine(lo) + ", " + Twine(hi) + "]" + why +
                               ", got " + got + defaulted(key));
}

Error Reader::number(StringRef key, double &out, bool nullable) const {
  const Entry *e = find(key);
  if (!e || (nullable && e->value.kind() == json::Value::Null))
    return Error::success();
  std::optional<double> v = asFiniteNumber(e->value);
  if (!v)
    return fail(e->origin, "must be a number, got " + render(e->value));
  out = *v;
  return Error::success();
}

Error Reader::boolean(StringRef key, bool &out, bool nullable) const {
  const Entry *e = find(key);
  if (!e || (nullable && e->value.kind() == json::Value::Null))
    return Error::success();
  std::optional<bool> v = e->value.getAsBoolean();
  if (!v)
    return fail(e->origin, "must be true or false, got " + render(e->value));
  out = *v;
  return Error::success();
}

Error Reader::string(StringRef key, std::string &out, bool nullable) const {
  const Entry *e = find(key);
  if (!e || (nullable && e->value.kind() == json::Value::Null))
    return Error::success();
  std::optional<StringRef> v = e->value.getAsString();
  if (!v)
    return fail(e->origin, "must be a string, got " + render(e->value));
  out = v->str();
  return Error::success();
}

} // namespace g3moe::frontend::detail
