//===- kernel.cpp - kernel attributes and arguments -----------------------===//

#include "runtime/kernels/kernel.h"

#include <algorithm>

namespace g3rt {

AttrValue AttrValue::ofInt(int64_t v) {
  AttrValue a;
  a.kind = Kind::Int;
  a.i = v;
  return a;
}
AttrValue AttrValue::ofFloat(double v) {
  AttrValue a;
  a.kind = Kind::Float;
  a.f = v;
  return a;
}
AttrValue AttrValue::ofBool(bool v) {
  AttrValue a;
  a.kind = Kind::Bool;
  a.b = v;
  return a;
}
AttrValue AttrValue::ofString(std::string v) {
  AttrValue a;
  a.kind = Kind::String;
  a.s = std::move(v);
  return a;
}
AttrValue AttrValue::ofFloats(std::vector<double> v) {
  AttrValue a;
  a.kind = Kind::FloatArray;
  a.floats = std::move(v);
  return a;
}

void KernelAttrs::set(std::string name, AttrValue value) {
  for (auto &e : entries_)
    if (e.first == name) {
      e.second = std::move(value);
      return;
    }
  entries_.emplace_back(std::move(name), std::move(value));
}

const AttrValue *KernelAttrs::find(std::string_view name) const {
  for (const auto &e : entries_)
    if (e.first == name)
      return &e.second;
  return nullptr;
}

std::optional<int64_t> KernelAttrs::getInt(std::string_view name) const {
  const AttrValue *a = find(name);
  if (!a || a->kind != AttrValue::Kind::Int)
    return std::nullopt;
  return a->i;
}

std::optional<double> KernelAttrs::getFloat(std::string_view name) const {
  const AttrValue *a = find(name);
  if (!a)
    return std::nullopt;
  if (a->kind == AttrValue::Kind::Float)
    return a->f;
  if (a->kind == AttrValue::Kind::Int)
    return double(a->i);
  return std::nullopt;
}

bool KernelAttrs::getFlag(std::string_view name) const {
  const AttrValue *a = find(name);
  return a && (a->kind != AttrValue::Kind::Bool || a->b);
}

std::optional<std::string_view> KernelAttrs::getString(std::string_view name) const {
  const AttrValue *a = find(name);
  if (!a || a->kind != AttrValue::Kind::String)
    return std::nullopt;
  return std::string_view(a->s);
}

const std::vector<double> *KernelAttrs::getFloats(std::string_view name) const {
  const AttrValue *a = find(name);
  return a && a->kind == AttrValue::Kind::FloatArray ? &a->floats : nullptr;
}

Status KernelArgs::requireInt(std::string_view attr, int64_t &out) const {
  auto v = attrs ? attrs->getInt(attr) : std::nullopt;
  if (!v)
    return fail("missing integer attribute '" + std::string(attr) + "'");
  out = *v;
  return Status();
}

Status KernelArgs::requireFloat(std::string_view attr, double &out) const {
  auto v = attrs ? attrs->getFloat(attr) : std::nullopt;
  if (!v)
    return fail("missing float attribute '" + std::string(attr) + "'");
  out = *v;
  return Status();
}

Status KernelArgs::fail(const std::string &message) const {
  return Status::error(std::string(name) + ": " + message);
}

Status runAsPart(const KernelArgs &args, KernelFn fn, const char *name,
                 std::vector<TensorView> inputs, std::vector<TensorView> outputs,
                 const KernelAttrs *attrs) {
  KernelArgs part;
  part.inputs = std::move(inputs);
  part.outputs = std::move(outputs);
  part.attrs = attrs;
  part.name = name;
  part.backend = args.backend;
  return fn(part).withContext(std::string(args.name));
}

KernelTable::KernelTable(std::vector<std::pair<std::string, KernelFn>> entries)
    : entries_(std::move(entries)) {
  std::sort(entries_.begin(), entries_.end());
}

KernelFn KernelTable::find(std::string_view name) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                             [](const auto &e, std::string_view n) { return e.first < n; });
  return it != entries_.end() && it->first == name ? it->second : nullptr;
}

std::vector<std::string> KernelTable::names() const {
  std::vector<std::string> names;
  for (const auto &e : entries_)
    names.push_back(e.first);
  return names;
}

} // namespace g3rt
