//===- HFConfig.cpp - HF config.json layouts into the field maps ----------===//
//
// Reads a transformers config.json: a text config (gemma3_text, g3moe_text)
// or a multimodal wrapper (gemma3, g3moe) whose text model is text_config,
// with the fields transformers 4.x and 5.x write, into the model and training
// field maps.
//
//===----------------------------------------------------------------------===//

#include "frontend/ConfigInternal.h"

#include "llvm/Support/MemoryBuffer.h"

using namespace llvm;

namespace g3moe::frontend::detail {

Error collectModelKey(Ctx &c, StringRef key, const json::Value &v, const Origin &o,
                      bool allowTraining) {
  if (inTable(kModelFields, key))
    return setField(c.model, key, v, o);
  if (inTable(kExpertAliases, key))
    return setField(c.model, "n_routed_experts", v, o);
  if (key == "model_type" || inTable(kModelMetadata, key) || inTable(kDeepSeekLeftovers, key) ||
      isPrivateKey(key))
    return Error::success();
  if (inTable(kLaterEraFields, key))
    return checkLaterEra(key, v, o);
  if (key == "quantization_config")
    return fail(o, "quantized checkpoints are not supported; g3moe reads "
                   "bf16/fp32 safetensors");
  if (allowTraining)
    if (const TrainKey *tk = findTrainKey(key); tk && tk->anyConfig)
      return setTrainKey(c, *tk, v, o);
  c.warn(o, "unknown field, ignored");
  return Error::success();
}

namespace {

Error collectTextConfig(Ctx &c, const json::Object &obj, StringRef file, StringRef prefix) {
  for (const std::string &key : sortedKeys(obj)) {
    Origin o{file.str(), (prefix + key).str(), Priority::File, ""};
    if (Error e = collectModelKey(c, key, *obj.get(key), o, true))
      return e;
  }
  return Error::success();
}

/// The top-level keys of a wrapper besides text_config: vision and
/// generation keys are skipped, a top-level tie_word_embeddings must agree
/// with the text model's, and text-model fields are refused there.
Error collectWrapperKeys(Ctx &c, const json::Object &root, StringRef file, StringRef type) {
  for (const std::string &key : sortedKeys(root)) {
    const json::Value &v = *root.get(key);
    Origin o{file.str(), key, Priority::File, ""};
    if (key == "text_config" || key == "model_type" || inTable(kWrapperKeys, key) ||
        inTable(kModelMetadata, key) || isPrivateKey(key))
      continue;
    if (key == "tie_word_embeddings") {
      // Newer Gemma3Config carries the flag at the top too; it must agree
      // with the text model's, and fills in when the text model has none.
      auto it = c.model.find("tie_word_embeddings");
      if (it != c.model.end() && it->second.value != v)
        return fail(o, "is " + render(v) + " but text_config.tie_word_embeddings is " +
                           render(it->second.value));
      if (Error e = setField(c.model, key, v, o))
        return e;
      continue;
    }
    if (inTable(kLaterEraFields, key)) {
      if (Error e = checkLaterEra(key, v, o))
        return e;
      continue;
    }
    if (inTable(kModelFields, key) || inTable(kExpertAliases, key))
      return fail(o, "is a text-model field at the top level of a " + type +
                         " config; put it in text_config (upstream merged "
                         "top-level fields into text_config and clobbered "
                         "the real ones, G3MOE_SPEC.md §7 D3)");
    if (key == "quantization_config")
      return fail(o, "quantized checkpoints are not supported; g3moe reads "
                     "bf16/fp32 safetensors");
    if (const TrainKey *tk = findTrainKey(key); tk && tk->anyConfig) {
      if (Error e = setTrainKey(c, *tk, v, o))
        return e;
      continue;
    }
    c.warn(o, "unknown field, ignored");
  }
  return Error::success();
}

} // namespace

Error collectHFConfig(Ctx &c, const json::Object &root, StringRef file) {
  Origin typeOrigin{file.str(), "model_type", Priority::File, ""};
  const json::Value *typeValue = root.get("model_type");
  if (!typeValue)
    return fail(typeOrigin, "missing; expected an HF config.json with model_type "
                            "gemma3_text, gemma3, g3moe or g3moe_text, or a training "
                            "preset with model_name_or_path or model_config");
  std::optional<StringRef> type = typeValue->getAsString();
  if (!type)
    return fail(typeOrigin, "must be a string, got " + render(*typeValue));

  c.modelFile = file.str();
  if (*type == "gemma3_text" || *type == "g3moe_text") {
    c.textType = type->str();
    c.g3moeDefaults = *type == "g3moe_text";
    c.modelPrefix = "";
    c.checkpointPrefix = "";
    return collectTextConfig(c, root, file, "");
  }
  if (*type != "gemma3" && *type != "g3moe")
    return fail(typeOrigin, "unknown model type '" + *type +
                                "'; supported: gemma3_text, gemma3, g3moe, "
                                "g3moe_text");

  // Multimodal wrapper: the text model is text_config.
  std::string textType = *type == "gemma3" ? "gemma3_text" : "g3moe_text";
  c.textType = textType;
  c.g3moeDefaults = *type == "g3moe";
  c.modelPrefix = "text_config.";
  c.checkpointPrefix = "language_model.";
  c.wrapper = true;
  Origin textOrigin{file.str(), "text_config", Priority::File, ""};
  const json::Value *textValue = root.get("text_config");
  if (!textValue || textValue->kind() == json::Value::Null)
    return fail(textOrigin, "missing; a " + *type +
                                " config describes its text model in "
                                "text_config");
  const json::Object *text = textValue->getAsObject();
  if (!text)
    return fail(textOrigin, "must be an object, got " + render(*textValue));
  if (const json::Value *inner = text->get("model_type")) {
    std::optional<StringRef> innerType = inner->getAsString();
    if (!innerType || *innerType != textType)
      return fail(Origin{file.str(), "text_config.model_type", Priority::File, ""},
                  "must be '" + textType + "' inside a " + *type + " config, got " +
                      render(*inner));
  }
  if (Error e = collectTextConfig(c, *text, file, "text_config."))
    return e;
  return collectWrapperKeys(c, root, file, *type);
}

Error collectModelFile(Ctx &c, StringRef path, const Origin &pointer) {
  ErrorOr<std::unique_ptr<MemoryBuffer>> buffer = MemoryBuffer::getFile(path);
  if (!buffer)
    return fail(pointer, "cannot read '" + path + "': " + buffer.getError().message());
  Expected<json::Value> doc = parseJson((*buffer)->getBuffer(), path);
  if (!doc)
    return doc.takeError();
  const json::Object *root = doc->getAsObject();
  if (!root)
    return failFile(path, "expected a JSON object at the top level");
  if (root->get("model_name_or_path") || root->get("model_config"))
    return fail(pointer, "'" + path + "' is a training preset, not a model config");
  return collectHFConfig(c, *root, path);
}

} // namespace g3moe::frontend::detail
