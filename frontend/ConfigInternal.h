//===- ConfigInternal.h - shared internals of the config reader -*- C++ -*-===//
//
// What the files of the config reader share and Config.h does not publish:
// values with their origin, the field tables, the collection context, the
// typed Reader, and the entry point of each stage (collecting HF configs,
// presets and --set overrides into field maps; resolving the model, its RoPE,
// the training options and the step's size from them).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_FRONTEND_CONFIGINTERNAL_H
#define G3MOE_FRONTEND_CONFIGINTERNAL_H

#include "frontend/Config.h"

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/ADT/Twine.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/JSON.h"

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace g3moe::frontend::detail {

//===----------------------------------------------------------------------===//
// Values with provenance (ConfigReader.cpp)
//===----------------------------------------------------------------------===//

/// Where a value came from. Two fields that say the same thing are settled by
/// priority (a preset's g3moe_params beat the model file, --set beats both);
/// at equal priority they must agree.
enum class Priority { File = 0, Preset = 1, Override = 2 };

/// The file and field a value was read from, for messages.
struct Origin {
  std::string file;
  /// Dotted path of the field inside `file`, or the --set key.
  std::string path;
  Priority priority = Priority::File;
  /// "--set key=value" for overrides, to point the user at the command line.
  std::string setText;
};

/// One collected field: its JSON value and where it came from.
struct Entry {
  llvm::json::Value value = nullptr;
  Origin origin;
};

/// Fields by canonical name. A std::map keeps warnings and errors in a stable
/// order; json::Object iterates in hash order.
using FieldMap = std::map<std::string, Entry>;

/// A JSON value for messages, cut to 60 characters.
std::string render(const llvm::json::Value &v);

/// A number for messages: 1e-05, 0.25, 131072.
std::string num(double v);

/// "<file>: field '<path>'", where a field was read.
std::string fieldText(const Origin &o);

/// "<file>: field '<path>': <what>", naming the --set that gave an override.
std::string describe(const Origin &o, const llvm::Twine &what);

/// An error about the field at `o` (see describe).
llvm::Error fail(const Origin &o, const llvm::Twine &what);

/// An error about a whole file: "<file>: <what>".
llvm::Error failFile(llvm::StringRef file, const llvm::Twine &what);

/// The keys of `o`, sorted, so that files are read in a stable order.
std::vector<std::string> sortedKeys(const llvm::json::Object &o);

/// An integer that fits int64_t with room to spare. json::Value::getAsInteger
/// would convert doubles at the very edge of the range, which is undefined.
std::optional<int64_t> asInt(const llvm::json::Value &v);

/// A whole number, whether or not it fits int64_t (1e300 is one).
bool isWholeNumber(const llvm::json::Value &v);

/// A number that is neither infinite nor NaN.
std::optional<double> asFiniteNumber(const llvm::json::Value &v);

/// Parses `text`, refusing nesting deep enough to exhaust the stack; errors
/// name `file`.
llvm::Expected<llvm::json::Value> parseJson(llvm::StringRef text, llvm::StringRef file);

//===----------------------------------------------------------------------===//
// Field tables (ConfigFields.cpp)
//===----------------------------------------------------------------------===//

/// Text-model fields g3moe honours (resolveModel reads each one).
extern const llvm::ArrayRef<const char *> kModelFields;
/// Other spellings of n_routed_experts (Qwen-MoE / Mixtral style).
extern const llvm::ArrayRef<const char *> kExpertAliases;
/// MoE fields; they mean nothing for a dense model.
extern const llvm::ArrayRef<const char *> kMoEFields;
/// HF bookkeeping, inference-only and generation settings: no effect on a
/// training step.
extern const llvm::ArrayRef<const char *> kModelMetadata;
/// DeepSeek-V3 MLA leftovers in G3MoETextConfig; nothing ever read them.
extern const llvm::ArrayRef<const char *> kDeepSeekLeftovers;
/// Fields of later G3MoE designs (G3MOE_SPEC.md §6), rejected unless off.
extern const llvm::ArrayRef<const char *> kLaterEraFields;
/// Top-level keys of a multimodal wrapper that concern the vision tower or
/// generation.
extern const llvm::ArrayRef<const char *> kWrapperKeys;
/// The projections LoRA may target.
extern const llvm::ArrayRef<const char *> kLoraModules;

/// Whether `key` is one of `table`'s names.
inline bool inTable(llvm::ArrayRef<const char *> table, llvm::StringRef key) {
  for (const char *name : table)
    if (key == name)
      return true;
  return false;
}

/// transformers' private attributes (`_name_or_path`, `_attn_implementation`,
/// and `_sliding_window_pattern`, which transformers 5 writes next to
/// `layer_types` but never reads back: it derives the layer types from
/// `sliding_window_pattern` or 6). None describes the model.
inline bool isPrivateKey(llvm::StringRef key) { return key.starts_with("_"); }

/// How a training option's value is checked and stored.
enum class TK {
  Int,
  Number,
  Bool,
  String,
  /// A string or a list of strings (LoRA target modules).
  Targets,
  /// An integer or the string "auto" (data_parallel).
  IntOrAuto,
  /// use_lora: true -> finetuning "lora", false -> "full".
  UseLora,
  /// Accepted, no effect on the compiled step or the run.
  Ignore,
  /// Accepted and ignored, with a warning when it is switched on.
  IgnoreNotable,
  /// Must be false / must be true / must be null.
  MustBeFalse,
  MustBeTrue,
  MustBeNull,
};

/// One spelling of a training option.
struct TrainKey {
  const char *name;
  /// The option's name in the training field map; null for ignored keys.
  const char *canonical;
  TK kind;
  /// g3moe's own options, accepted in model config files too.
  bool anyConfig;
  /// Why an ignored key is ignored or a rejected value rejected.
  const char *note;
};

/// The training option spelled `key`, or null when there is none.
const TrainKey *findTrainKey(llvm::StringRef key);

/// Off, empty or zero: the value a switch or a coefficient has when it does
/// nothing.
bool isOffValue(const llvm::json::Value &v);

//===----------------------------------------------------------------------===//
// Collection: files, presets and overrides into two field maps
//===----------------------------------------------------------------------===//

/// Everything collected from the given file, the model file it names and the
/// overrides, before resolution.
struct Ctx {
  /// The file that was given (a preset or a model config).
  std::string topFile;
  std::vector<std::string> warnings;
  /// Text-model fields, canonical names.
  FieldMap model;
  /// Training options, canonical names, type-checked.
  FieldMap train;

  /// Where the text config lives, to name fields left at their defaults.
  std::string modelFile;
  std::string modelPrefix;
  /// gemma3_text or g3moe_text.
  std::string textType;
  std::string checkpointPrefix;
  /// The text model is a wrapper's text_config (gemma3 / g3moe).
  bool wrapper = false;
  /// G3MoETextConfig's MoE defaults apply (g3moe files and upcycled presets).
  bool g3moeDefaults = false;
  /// Where MoE fields left at their defaults are named when a preset's
  /// g3moe_params upcycled the model: that is where the user adds them.
  std::string moeFile;
  std::string moePrefix;

  /// Records a warning about the field at `o`.
  void warn(const Origin &o, const llvm::Twine &what);

  /// Where an absent model field would be written: in g3moe_params for the
  /// MoE fields of an upcycled model, else in the text config.
  Origin defaultOrigin(llvm::StringRef key) const;
};

/// The transformers class whose defaults fill in the text model's backbone.
llvm::StringRef textClass(const Ctx &c);

/// Stores a value under its canonical name. A weaker source never replaces a
/// stronger one; two spellings in one source must agree.
llvm::Error setField(FieldMap &map, llvm::StringRef canonical, llvm::json::Value value,
                     Origin origin);

/// Accepts a later-era field only at its off value (ConfigFields.cpp).
llvm::Error checkLaterEra(llvm::StringRef key, const llvm::json::Value &v, const Origin &o);

/// Type-checks one training option and stores it under its canonical name,
/// or warns or fails as its kind says (ConfigFields.cpp).
llvm::Error setTrainKey(Ctx &c, const TrainKey &tk, const llvm::json::Value &v, const Origin &o);

/// Adds one field of a text config (or of g3moe_params, or a top-level key of
/// a flat config file) to the maps. `allowTraining` accepts g3moe's own
/// training options (HFConfig.cpp).
llvm::Error collectModelKey(Ctx &c, llvm::StringRef key, const llvm::json::Value &v,
                            const Origin &o, bool allowTraining);

/// Reads an HF config.json (already parsed) into the context (HFConfig.cpp).
llvm::Error collectHFConfig(Ctx &c, const llvm::json::Object &root, llvm::StringRef file);

/// Reads the model config at `path`, which the field at `pointer` names
/// (HFConfig.cpp).
llvm::Error collectModelFile(Ctx &c, llvm::StringRef path, const Origin &pointer);

/// Whether a file without model_type looks like a flat preset that forgot
/// model_name_or_path (Presets.cpp).
bool looksLikePreset(const llvm::json::Object &root);

/// Reads a training preset, flat or nested, and the model it names; paths
/// are relative to `baseDir` (Presets.cpp).
llvm::Error collectPreset(Ctx &c, const llvm::json::Object &root, llvm::StringRef file,
                          llvm::StringRef baseDir);

/// Applies one --set. The value is JSON when it parses, else a string
/// (Overrides.cpp).
llvm::Error applyOverride(Ctx &c, const ConfigOverride &ov);

//===----------------------------------------------------------------------===//
// Resolution: field maps to ModelConfig / TrainingOptions
//===----------------------------------------------------------------------===//

/// Typed access to one field map; absent fields keep the caller's default
/// (ConfigReader.cpp).
struct Reader {
  Ctx &c;
  FieldMap &map;
  /// For fields absent from `map`: the training options are named in the
  /// given file; the model fields at their place in the text config.
  bool isModel;

  /// The entry of `key`, or null when it is absent.
  const Entry *find(llvm::StringRef key) const;
  /// Whether `key` was given (null included).
  bool has(llvm::StringRef key) const;
  /// Whether `key` was given as null.
  bool isNull(llvm::StringRef key) const;
  /// Where `key` was given, or where it would be.
  Origin origin(llvm::StringRef key) const;
  /// " (the default)" when the field was not given, for messages about
  /// defaults that fail validation.
  std::string defaulted(llvm::StringRef key) const;
  /// Warns, naming the field, that an absent field takes the default `value`
  /// of the config class `cls` (as transformers would).
  void noteDefault(llvm::StringRef key, const llvm::Twine &value, llvm::StringRef cls) const;

  /// An integer; an absent field (or, where `nullable`, a null one) keeps
  /// `out`.
  llvm::Error integer(llvm::StringRef key, int64_t &out, bool nullable = false) const;
  /// An integer in [lo, hi]. An absent field (or, where `nullable`, a null
  /// one) keeps `out`, which is checked all the same. `why` says where the
  /// bound comes from; the message states the bound, also for numbers too
  /// large for int64_t.
  llvm::Error integerIn(llvm::StringRef key, int64_t &out, int64_t lo, int64_t hi,
                        llvm::StringRef why = "", bool nullable = false) const;
  /// A finite number; absent (or nullable null) keeps `out`.
  llvm::Error number(llvm::StringRef key, double &out, bool nullable = false) const;
  /// true or false; absent (or nullable null) keeps `out`.
  llvm::Error boolean(llvm::StringRef key, bool &out, bool nullable = false) const;
  /// A string; absent (or nullable null) keeps `out`.
  llvm::Error string(llvm::StringRef key, std::string &out, bool nullable = false) const;
};

/// The largest dimension: token ids and positions are int32, and no
/// dimension of a real model comes near it. Products of dimensions are bounded
/// separately (checkStepSize).
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();
/// One LayerSpec per layer is allocated; keep a hostile value from doing so.
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxExperts = 65536;

/// The global and sliding layers' RoPE from rope_scaling, rope_parameters,
/// rope_scaling_factor, rope_theta and rope_local_base_freq (Rope.cpp).
llvm::Error resolveRope(Ctx &c, const Reader &r, ModelConfig &m);

/// The validated text model (ModelResolution.cpp).
llvm::Error resolveModel(Ctx &c, ModelConfig &m);

/// The validated training options (TrainingResolution.cpp).
llvm::Error resolveTraining(Ctx &c, const ModelConfig &m, TrainingOptions &t);

/// Warns about MoE loss coefficients left at their default when the loss they
/// scale is switched on (TrainingResolution.cpp).
void noteLossCoefficientDefaults(Ctx &c, const ModelConfig &m, const TrainingOptions &t);

/// Refuses sizes whose product makes the step's byte counts overflow
/// (StepSize.cpp).
llvm::Error checkStepSize(Ctx &c, const ModelConfig &m, const TrainingOptions &t);

} // namespace g3moe::frontend::detail

#endif // G3MOE_FRONTEND_CONFIGINTERNAL_H
