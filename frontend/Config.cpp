//===- Config.cpp - model and training configuration ----------------------===//
//
// The config reader's entry points: reads an HF config.json (gemma3_text,
// gemma3, g3moe, g3moe_text) or a seed recipe training preset (flat or
// nested) that names one, applies --set overrides, and resolves everything
// into a validated CompileConfig; and ModelConfig's derived constants.
// docs/config.md lists every field and what happens to it; the stages live in
// the files ConfigInternal.h names.
//
//===----------------------------------------------------------------------===//

#include "frontend/Config.h"
#include "frontend/ConfigInternal.h"

#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"

#include <cmath>
#include <cstring>

using namespace llvm;
using namespace g3moe::frontend;
using namespace g3moe::frontend::detail;

//===----------------------------------------------------------------------===//
// Public API
//===----------------------------------------------------------------------===//

double ModelConfig::embedScale(bool bf16) const {
  // HF keeps √H as a buffer in the model's dtype: the double goes to fp32,
  // then, in a bf16 model, rounds to nearest-even bf16.
  float f = static_cast<float>(std::sqrt(static_cast<double>(hiddenSize)));
  if (!bf16)
    return f;
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  bits &= 0xFFFF0000u;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

double ModelConfig::attentionScale() const { return 1.0 / std::sqrt(queryPreAttnScalar); }

StringRef g3moe::frontend::stringifyRouterKind(RouterKind kind) {
  switch (kind) {
  case RouterKind::SparseMixer:
    return "sparsemixer";
  case RouterKind::SoftmaxTopK:
    return "softmax_topk";
  case RouterKind::SigmoidGrouped:
    return "sigmoid_grouped";
  }
  return "sparsemixer";
}

Expected<CompileConfig> g3moe::frontend::parseCompileConfig(StringRef jsonText,
                                                            StringRef displayName,
                                                            StringRef baseDir,
                                                            ArrayRef<ConfigOverride> overrides) {
  Ctx c;
  c.topFile = displayName.str();
  Expected<json::Value> doc = parseJson(jsonText, displayName);
  if (!doc)
    return doc.takeError();
  const json::Object *root = doc->getAsObject();
  if (!root)
    return failFile(displayName, "expected a JSON object at the top level, "
                                 "got " +
                                     render(*doc));

  CompileConfig result;
  if (root->get("model_name_or_path") || root->get("model_config") ||
      (!root->get("model_type") && looksLikePreset(*root))) {
    if (Error e = collectPreset(c, *root, displayName, baseDir))
      return e;
  } else {
    if (Error e = collectHFConfig(c, *root, displayName))
      return e;
  }
  for (const ConfigOverride &ov : overrides)
    if (Error e = applyOverride(c, ov))
      return e;

  if (Error e = resolveModel(c, result.model))
    return e;
  if (Error e = resolveTraining(c, result.model, result.training))
    return e;
  if (Error e = checkStepSize(c, result.model, result.training))
    return e;
  noteLossCoefficientDefaults(c, result.model, result.training);
  result.modelSource = c.modelFile;
  result.warnings = std::move(c.warnings);
  return result;
}

Expected<CompileConfig> g3moe::frontend::loadCompileConfig(StringRef path,
                                                           ArrayRef<ConfigOverride> overrides) {
  ErrorOr<std::unique_ptr<MemoryBuffer>> buffer = MemoryBuffer::getFile(path, /*IsText=*/true);
  if (!buffer)
    return failFile(path, "cannot read: " + buffer.getError().message());
  StringRef baseDir = sys::path::parent_path(path);
  return parseCompileConfig((*buffer)->getBuffer(), path, baseDir, overrides);
}
