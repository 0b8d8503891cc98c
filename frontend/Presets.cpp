//===- Presets.cpp - training presets into the field maps -----------------===//
//
// Reads a seed-recipe training preset, flat or nested (model_config,
// data_config, training_config): its training options, the model it names
// with model_name_or_path (a local checkpoint directory or config.json), and
// its g3moe_params, which upcycle a dense Gemma-3 into a G3MoE.
//
//===----------------------------------------------------------------------===//

#include "frontend/ConfigInternal.h"

#include "llvm/ADT/SmallString.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"

using namespace llvm;

namespace g3moe::frontend::detail {

namespace {

/// g3moe_params of a preset: MoE fields (and any other text-model field)
/// applied over the model's text config; a dense Gemma-3 becomes a G3MoE.
Error applyG3MoEParams(Ctx &c, const json::Value &paramsValue, const Origin &base) {
  if (paramsValue.kind() == json::Value::Null)
    return Error::success();
  const json::Object *params = paramsValue.getAsObject();
  if (!params)
    return fail(base, "must be an object, got " + render(paramsValue));
  c.g3moeDefaults = true;
  c.moeFile = base.file;
  c.moePrefix = base.path + ".";
  for (const std::string &key : sortedKeys(*params)) {
    const json::Value &v = *params->get(key);
    Origin o{base.file, base.path + "." + key, Priority::Preset, ""};
    if (key == "attn_implementation")
      continue;
    if (Error e = collectModelKey(c, key, v, o, false))
      return e;
  }
  return Error::success();
}

/// The config.json that model_name_or_path names: the file itself or the
/// config.json of a directory, relative to `baseDir`.
Expected<std::string> resolveModelPath(const json::Value &v, const Origin &o, StringRef baseDir) {
  std::optional<StringRef> name = v.getAsString();
  if (!name)
    return fail(o, "must be a string (a local checkpoint directory or "
                   "config.json), got " +
                       render(v));
  if (name->empty())
    return fail(o, "is empty; point it at a local checkpoint directory");
  SmallString<256> path;
  if (sys::path::is_absolute(*name) || baseDir.empty()) {
    path = *name;
  } else {
    path = baseDir;
    sys::path::append(path, *name);
  }
  sys::path::remove_dots(path, /*remove_dot_dot=*/true);
  // "." beside a preset named without a directory ("train.json") leaves
  // nothing: the working directory.
  if (path.empty())
    path = ".";
  if (sys::fs::is_directory(path)) {
    SmallString<256> config = path;
    sys::path::append(config, "config.json");
    if (!sys::fs::is_regular_file(config))
      return fail(o, "directory '" + path + "' has no config.json");
    return std::string(config);
  }
  if (sys::fs::is_regular_file(path))
    return std::string(path);
  return fail(o, "'" + *name + "' does not exist locally (looked for '" + path +
                     "'); g3moe does not download from the Hugging "
                     "Face Hub: point it at a local checkpoint directory "
                     "that contains config.json");
}

/// The training options of one section (or of the top level); model fields
/// belong in g3moe_params.
Error collectPresetSection(Ctx &c, const json::Object &section, StringRef file, StringRef prefix) {
  for (const std::string &key : sortedKeys(section)) {
    if (key == "model_name_or_path" || key == "g3moe_params")
      continue;
    const json::Value &v = *section.get(key);
    Origin o{file.str(), (prefix + key).str(), Priority::Preset, ""};
    if (const TrainKey *tk = findTrainKey(key)) {
      if (Error e = setTrainKey(c, *tk, v, o))
        return e;
      continue;
    }
    if (inTable(kModelFields, key) || inTable(kExpertAliases, key) || key == "rope_scaling_factor")
      return fail(o, "is a model field; in a training preset model fields "
                     "go in g3moe_params");
    c.warn(o, "unknown field, ignored");
  }
  return Error::success();
}

} // namespace

bool looksLikePreset(const json::Object &root) {
  for (const auto &kv : root) {
    StringRef key = kv.first;
    if (key == "model_type" || key == "_comment")
      continue;
    if (const TrainKey *tk = findTrainKey(key); tk && !tk->anyConfig)
      return true;
    if (key == "data_config" || key == "training_config" || key == "g3moe_params")
      return true;
  }
  return false;
}

Error collectPreset(Ctx &c, const json::Object &root, StringRef file, StringRef baseDir) {
  const json::Value *modelConfigValue = root.get("model_config");
  bool nested = modelConfigValue != nullptr;
  const json::Value *nameValue = nullptr;
  Origin nameOrigin{file.str(), "model_name_or_path", Priority::Preset, ""};
  const json::Value *paramsValue = root.get("g3moe_params");
  Origin paramsOrigin{file.str(), "g3moe_params", Priority::Preset, ""};

  if (nested) {
    const json::Object *modelConfig = modelConfigValue->getAsObject();
    if (!modelConfig)
      return fail(Origin{file.str(), "model_config", Priority::Preset, ""},
                  "must be an object, got " + render(*modelConfigValue));
    if ((nameValue = modelConfig->get("model_name_or_path")))
      nameOrigin.path = "model_config.model_name_or_path";
    else
      nameValue = root.get("model_name_or_path");
    if (!nameValue)
      return fail(Origin{file.str(), "model_config.model_name_or_path", Priority::Preset, ""},
                  "missing; a training preset must name the model (a local "
                  "checkpoint directory)");
    if (const json::Value *inner = modelConfig->get("g3moe_params")) {
      if (paramsValue)
        return fail(Origin{file.str(), "model_config.g3moe_params", Priority::Preset, ""},
                    "given twice (also at the top level)");
      paramsValue = inner;
      paramsOrigin.path = "model_config.g3moe_params";
    }
    if (Error e = collectPresetSection(c, *modelConfig, file, "model_config."))
      return e;
  } else {
    nameValue = root.get("model_name_or_path");
    if (!nameValue)
      return fail(nameOrigin, "missing; a training preset must name the "
                              "model (a local checkpoint directory)");
  }

  for (const std::string &key : sortedKeys(root)) {
    const json::Value &v = *root.get(key);
    if (key == "model_config")
      continue;
    if (nested && (key == "data_config" || key == "training_config")) {
      const json::Object *section = v.getAsObject();
      if (!section)
        return fail(Origin{file.str(), key, Priority::Preset, ""},
                    "must be an object, got " + render(v));
      if (Error e = collectPresetSection(c, *section, file, key + "."))
        return e;
      continue;
    }
    if (key == "model_name_or_path" || key == "g3moe_params")
      continue;
    json::Object single;
    single[key] = v;
    if (Error e = collectPresetSection(c, single, file, ""))
      return e;
  }

  if (nameValue->kind() == json::Value::Null)
    return fail(nameOrigin, "missing; a training preset must name the model "
                            "(a local checkpoint directory)");
  Expected<std::string> modelPath = resolveModelPath(*nameValue, nameOrigin, baseDir);
  if (!modelPath)
    return modelPath.takeError();
  if (Error e = collectModelFile(c, *modelPath, nameOrigin))
    return e;
  if (paramsValue)
    if (Error e = applyG3MoEParams(c, *paramsValue, paramsOrigin))
      return e;
  return Error::success();
}

} // namespace g3moe::frontend::detail
