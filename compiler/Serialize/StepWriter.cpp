//===- StepWriter.cpp - planned g3rt module to step.bin -------------------===//
//
// Builds the FlatBuffer of step.fbs from the g3rt IR: one Function per
// func.func (buffers in declaration order, launches in program order), the
// parameter table gathered from the `param` buffers (derived ones in a table
// of their own, their sources in the parameter table), and the configuration
// (the module attributes g3moe.model and g3moe.training) as the typed
// ModelConfig and TrainingOptions tables. How a parameter is initialised is
// decided here, from its name, so that the runtime needs no knowledge of HF
// naming conventions.
//
//===----------------------------------------------------------------------===//

#include "compiler/Serialize/StepWriter.h"

#include "dialects/G3RT/IR/G3RTDialect.h"
#include "runtime/schemas/container.h"
#include "runtime/schemas/step_generated.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/StringSet.h"

#include <map>
#include <optional>

using namespace mlir;
namespace fbs = g3rt::schema;

namespace {

FailureOr<fbs::DType> dtypeOf(Type t) {
  if (t.isF32())
    return fbs::DType::F32;
  if (t.isBF16())
    return fbs::DType::BF16;
  if (t.isF16())
    return fbs::DType::F16;
  if (t.isInteger(32))
    return fbs::DType::I32;
  if (t.isInteger(64))
    return fbs::DType::I64;
  if (isa<Float8E4M3FNType>(t))
    return fbs::DType::F8E4M3;
  return failure();
}

fbs::BufferKind kindOf(StringRef kind) {
  return llvm::StringSwitch<fbs::BufferKind>(kind)
      .Case("param", fbs::BufferKind::Param)
      .Case("grad_acc", fbs::BufferKind::GradAcc)
      .Case("exp_avg", fbs::BufferKind::ExpAvg)
      .Case("exp_avg_sq", fbs::BufferKind::ExpAvgSq)
      .Case("input", fbs::BufferKind::Input)
      .Case("host", fbs::BufferKind::Host)
      .Default(fbs::BufferKind::Arena);
}

/// HF's initialisation of weights missing from a checkpoint (G3MOE_SPEC.md 3.8),
/// with PEFT's for LoRA and the Gemma convention (0) for norms (D14).
fbs::InitKind initOf(StringRef name) {
  if (name.ends_with(".lora_B.weight") || name.contains("norm") ||
      name.ends_with("e_score_correction_bias"))
    return fbs::InitKind::Zeros;
  if (name.ends_with(".lora_A.weight"))
    return fbs::InitKind::KaimingUniform;
  if (name == "model.embed_tokens.weight")
    return fbs::InitKind::NormalPaddingRowZero;
  return fbs::InitKind::Normal;
}

/// Typed reads of a configuration dictionary (g3moe.model, g3moe.training).
/// Every key must be read as the type the schema gives it: a key the
/// schema has no field for, or a value of another type, fails the write
/// (finish()) instead of vanishing from the step.
class ConfigDict {
public:
  ConfigDict(ModuleOp module, StringRef attrName)
      : module(module), attrName(attrName), dict(module->getAttrOfType<DictionaryAttr>(attrName)) {}

  /// Whether the module has the dictionary at all.
  explicit operator bool() const { return bool(dict); }

  std::optional<int64_t> integer(StringRef key) {
    if (Attribute a = take(key)) {
      if (auto i = dyn_cast<IntegerAttr>(a); i && !i.getType().isInteger(1))
        return i.getInt();
      wrongType(key, "an integer");
    }
    return std::nullopt;
  }
  std::optional<double> number(StringRef key) {
    if (Attribute a = take(key)) {
      if (auto f = dyn_cast<FloatAttr>(a))
        return f.getValueAsDouble();
      if (auto i = dyn_cast<IntegerAttr>(a); i && !i.getType().isInteger(1))
        return double(i.getInt());
      wrongType(key, "a number");
    }
    return std::nullopt;
  }
  std::optional<bool> boolean(StringRef key) {
    if (Attribute a = take(key)) {
      if (auto b = dyn_cast<BoolAttr>(a))
        return b.getValue();
      wrongType(key, "a boolean");
    }
    return std::nullopt;
  }
  std::optional<std::string> string(StringRef key) {
    if (Attribute a = take(key)) {
      if (auto str = dyn_cast<StringAttr>(a))
        return str.str();
      wrongType(key, "a string");
    }
    return std::nullopt;
  }
  std::optional<std::vector<std::string>> strings(StringRef key) {
    if (Attribute a = take(key)) {
      auto arr = dyn_cast<ArrayAttr>(a);
      std::vector<std::string> out;
      for (Attribute e : arr ? arr.getValue() : ArrayRef<Attribute>()) {
        auto str = dyn_cast<StringAttr>(e);
        if (!str)
          break;
        out.push_back(str.str());
      }
      if (arr && out.size() == arr.size())
        return out;
      wrongType(key, "an array of strings");
    }
    return std::nullopt;
  }
  /// A string naming one of `names` (the enum's values in order).
  template <typename E> std::optional<E> enumeration(StringRef key, ArrayRef<StringRef> names) {
    std::optional<std::string> name = string(key);
    if (!name)
      return std::nullopt;
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i] == *name)
        return E(i);
    problems.push_back("'" + key.str() + "' is '" + *name + "', which step.bin cannot represent");
    return std::nullopt;
  }

  /// Fails on keys not read and on values of the wrong type.
  LogicalResult finish() {
    if (dict)
      for (NamedAttribute a : dict)
        if (!read.count(a.getName().strref()))
          problems.push_back("step.bin has no field for '" + a.getName().str() + "'");
    if (problems.empty())
      return success();
    InFlightDiagnostic d = module.emitError("cannot write ") << attrName << " into step.bin:";
    for (const std::string &p : problems)
      d << " " << p << ";";
    return failure();
  }

private:
  Attribute take(StringRef key) {
    read.insert(key);
    return dict ? dict.get(key) : Attribute();
  }
  void wrongType(StringRef key, const char *what) {
    problems.push_back("'" + key.str() + "' is not " + what);
  }

  ModuleOp module;
  StringRef attrName;
  DictionaryAttr dict;
  llvm::StringSet<> read;
  std::vector<std::string> problems;
};

/// Calls the generated builder's add_<key>(value) where the dictionary `d`
/// has `key`, read as `kind` (integer, number, boolean).
#define G3MOE_FIELD(kind, key)                                                                     \
  if (auto v = d.kind(#key))                                                                       \
    b.add_##key(*v);

/// g3moe.model as step.fbs's ModelConfig; null where the module has none.
flatbuffers::Offset<fbs::ModelConfig> buildModelConfig(flatbuffers::FlatBufferBuilder &fb,
                                                       ConfigDict &d) {
  if (!d)
    return 0;
  // Strings first: a table is built without nested objects in between.
  auto str = [&](std::optional<std::string> v) {
    return v ? fb.CreateString(*v) : flatbuffers::Offset<flatbuffers::String>();
  };
  auto modelType = str(d.string("model_type"));
  auto prefix = str(d.string("checkpoint_prefix"));
  fbs::ModelConfigBuilder b(fb);
  b.add_model_type(modelType);
  b.add_checkpoint_prefix(prefix);
  G3MOE_FIELD(integer, vocab_size)
  G3MOE_FIELD(integer, hidden_size)
  G3MOE_FIELD(integer, intermediate_size)
  G3MOE_FIELD(integer, num_hidden_layers)
  G3MOE_FIELD(integer, num_attention_heads)
  G3MOE_FIELD(integer, num_key_value_heads)
  G3MOE_FIELD(integer, head_dim)
  G3MOE_FIELD(boolean, tie_word_embeddings)
  G3MOE_FIELD(number, initializer_range)
  G3MOE_FIELD(integer, pad_token_id)
  G3MOE_FIELD(integer, bos_token_id)
  G3MOE_FIELD(integer, eos_token_id)
  G3MOE_FIELD(integer, max_position_embeddings)
  G3MOE_FIELD(number, rms_norm_eps)
  G3MOE_FIELD(integer, sliding_window)
  G3MOE_FIELD(number, query_pre_attn_scalar)
  G3MOE_FIELD(number, rope_theta)
  G3MOE_FIELD(number, rope_local_base_freq)
  G3MOE_FIELD(number, final_logit_softcapping)
  G3MOE_FIELD(number, attn_logit_softcapping)
  G3MOE_FIELD(integer, n_routed_experts)
  G3MOE_FIELD(integer, num_experts_per_tok)
  G3MOE_FIELD(integer, first_k_dense_replace)
  G3MOE_FIELD(number, router_jitter_noise)
  G3MOE_FIELD(number, input_jitter_noise)
  G3MOE_FIELD(number, router_aux_loss_coef)
  G3MOE_FIELD(number, router_z_loss_coef)
  G3MOE_FIELD(number, routed_scaling_factor)
  G3MOE_FIELD(integer, n_group)
  G3MOE_FIELD(integer, topk_group)
  G3MOE_FIELD(boolean, norm_topk_prob)
  G3MOE_FIELD(integer, n_shared_experts)
  G3MOE_FIELD(boolean, freeze_shared_experts)
  if (auto v = d.enumeration<fbs::RouterType>("router_type",
                                              {"sparsemixer", "softmax_topk", "sigmoid_grouped"}))
    b.add_router_type(*v);
  return b.Finish();
}

/// g3moe.training as step.fbs's TrainingOptions; null where the module has
/// none.
flatbuffers::Offset<fbs::TrainingOptions> buildTrainingOptions(flatbuffers::FlatBufferBuilder &fb,
                                                               ConfigDict &d) {
  if (!d)
    return 0;
  auto str = [&](std::optional<std::string> v) {
    return v ? fb.CreateString(*v) : flatbuffers::Offset<flatbuffers::String>();
  };
  auto dataset = str(d.string("dataset"));
  auto outputDir = str(d.string("output_dir"));
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>> targets;
  if (auto v = d.strings("lora_target_modules"))
    targets = fb.CreateVectorOfStrings(*v);
  fbs::TrainingOptionsBuilder b(fb);
  b.add_dataset(dataset);
  b.add_output_dir(outputDir);
  b.add_lora_target_modules(targets);
  if (auto v = d.enumeration<fbs::StepMode>("mode", {"train", "eval"}))
    b.add_mode(*v);
  if (auto v = d.enumeration<fbs::Precision>("precision", {"bf16", "fp32"}))
    b.add_precision(*v);
  if (auto v = d.enumeration<fbs::Finetuning>("finetuning", {"lora", "full"}))
    b.add_finetuning(*v);
  if (auto v = d.enumeration<fbs::LRSchedule>(
          "lr_scheduler_type", {"cosine", "linear", "constant", "constant_with_warmup"}))
    b.add_lr_scheduler_type(*v);
  if (auto v = d.enumeration<fbs::LossDenominator>("loss_denominator", {"shifted", "unshifted"}))
    b.add_loss_denominator(*v);
  G3MOE_FIELD(integer, seq_len)
  G3MOE_FIELD(integer, micro_batch)
  G3MOE_FIELD(integer, lora_r)
  G3MOE_FIELD(number, lora_alpha)
  G3MOE_FIELD(number, lora_dropout)
  G3MOE_FIELD(boolean, train_router)
  G3MOE_FIELD(boolean, dense_ffn_no_grad)
  G3MOE_FIELD(integer, seed)
  G3MOE_FIELD(number, learning_rate)
  G3MOE_FIELD(number, warmup_ratio)
  G3MOE_FIELD(integer, warmup_steps)
  G3MOE_FIELD(number, weight_decay)
  G3MOE_FIELD(number, adam_beta1)
  G3MOE_FIELD(number, adam_beta2)
  G3MOE_FIELD(number, adam_epsilon)
  G3MOE_FIELD(number, max_grad_norm)
  G3MOE_FIELD(integer, gradient_accumulation_steps)
  G3MOE_FIELD(number, num_train_epochs)
  G3MOE_FIELD(integer, max_steps)
  G3MOE_FIELD(integer, logging_steps)
  G3MOE_FIELD(integer, save_steps)
  G3MOE_FIELD(integer, save_total_limit)
  G3MOE_FIELD(integer, eval_steps)
  G3MOE_FIELD(number, test_size)
  G3MOE_FIELD(integer, max_line_bytes)
  G3MOE_FIELD(integer, data_parallel)
  G3MOE_FIELD(integer, zero_stage)
  G3MOE_FIELD(boolean, packing)
  G3MOE_FIELD(boolean, assistant_only_loss)
#undef G3MOE_FIELD
  return b.Finish();
}

class Writer {
public:
  explicit Writer(ModuleOp module) : module(module) {}
  LogicalResult write(std::vector<uint8_t> &out);

private:
  LogicalResult addFunction(func::FuncOp func);
  LogicalResult addAttr(Operation *at, NamedAttribute a,
                        std::vector<flatbuffers::Offset<fbs::Attr>> &out);

  ModuleOp module;
  flatbuffers::FlatBufferBuilder fb;
  std::vector<flatbuffers::Offset<fbs::Function>> functions;
  /// Parameters by name: dtype, shape, trainable.
  struct ParamInfo {
    fbs::DType dtype;
    std::vector<int64_t> shape;
    bool trainable = false;
  };
  std::map<std::string, ParamInfo> params;
  /// Derived parameters by name: their source, derivation, dtype, shape.
  struct DerivedInfo {
    std::string source;
    fbs::Derivation derivation;
    fbs::DType dtype;
    std::vector<int64_t> shape;
  };
  std::map<std::string, DerivedInfo> derived;
  /// Records `buffer`, a derived parameter's declaration, and its source.
  LogicalResult addDerived(g3moe::lowered::BufferOp buffer);
};

LogicalResult Writer::addDerived(g3moe::lowered::BufferOp buffer) {
  auto type = cast<MemRefType>(buffer.getType());
  auto source = cast<RankedTensorType>(*buffer.getSourceType());
  FailureOr<fbs::DType> dtype = dtypeOf(type.getElementType()),
                        sourceDtype = dtypeOf(source.getElementType());
  if (failed(dtype) || failed(sourceDtype))
    return buffer.emitOpError("step.bin has no element type for this derived parameter");
  // The verifier admits only kDerivations, which follow the enum's order.
  const auto *at = llvm::find(g3moe::lowered::kDerivations, *buffer.getDerivation());
  auto derivation = fbs::Derivation(at - std::begin(g3moe::lowered::kDerivations));
  std::string name = buffer.getName()->str();
  derived[name] = {buffer.getDerivedFrom()->str(), derivation, *dtype,
                   std::vector<int64_t>(type.getShape().begin(), type.getShape().end())};
  // The source: a frozen parameter, whether or not a function reads it.
  ParamInfo &info = params[buffer.getDerivedFrom()->str()];
  info.dtype = *sourceDtype;
  info.shape.assign(source.getShape().begin(), source.getShape().end());
  return success();
}

LogicalResult Writer::addAttr(Operation *at, NamedAttribute a,
                              std::vector<flatbuffers::Offset<fbs::Attr>> &out) {
  auto name = fb.CreateString(a.getName().str());
  Attribute v = a.getValue();
  if (auto b = dyn_cast<BoolAttr>(v)) {
    out.push_back(fbs::CreateAttr(fb, name, fbs::AttrKind::Bool, 0, 0, b.getValue()));
  } else if (auto i = dyn_cast<IntegerAttr>(v)) {
    out.push_back(fbs::CreateAttr(fb, name, fbs::AttrKind::Int, i.getInt()));
  } else if (auto f = dyn_cast<FloatAttr>(v)) {
    out.push_back(fbs::CreateAttr(fb, name, fbs::AttrKind::Float, 0, f.getValueAsDouble()));
  } else if (auto s = dyn_cast<StringAttr>(v)) {
    out.push_back(
        fbs::CreateAttr(fb, name, fbs::AttrKind::String, 0, 0, false, fb.CreateString(s.str())));
  } else if (isa<UnitAttr>(v)) {
    out.push_back(fbs::CreateAttr(fb, name, fbs::AttrKind::Bool, 0, 0, true));
  } else if (auto arr = dyn_cast<DenseF64ArrayAttr>(v)) {
    std::vector<double> values(arr.asArrayRef().begin(), arr.asArrayRef().end());
    out.push_back(fbs::CreateAttr(fb, name, fbs::AttrKind::FloatArray, 0, 0, false, 0,
                                  fb.CreateVector(values)));
  } else {
    return at->emitOpError("step.bin cannot represent attribute '") << a.getName() << "' = " << v;
  }
  return success();
}

/// The memory planner's byte count `name` on `op` (0 where it set none).
uint64_t bytesAttr(Operation *op, StringRef name) {
  auto a = op->getAttrOfType<IntegerAttr>(name);
  return a ? uint64_t(a.getInt()) : 0;
}

LogicalResult Writer::addFunction(func::FuncOp func) {
  DenseMap<Value, uint32_t> index;
  std::vector<flatbuffers::Offset<fbs::Buffer>> buffers;
  std::vector<flatbuffers::Offset<fbs::Instr>> instrs;
  std::vector<flatbuffers::Offset<fbs::Binding>> outputs;

  auto addBuffer = [&](Value v, fbs::BufferKind kind, StringRef name, uint64_t offset,
                       int32_t viewOf) -> LogicalResult {
    auto type = cast<MemRefType>(v.getType());
    FailureOr<fbs::DType> dtype = dtypeOf(type.getElementType());
    if (failed(dtype))
      return v.getDefiningOp()->emitOpError("step.bin has no element type ")
             << type.getElementType();
    std::vector<int64_t> shape(type.getShape().begin(), type.getShape().end());
    index[v] = uint32_t(buffers.size());
    buffers.push_back(fbs::CreateBuffer(fb, kind, name.empty() ? 0 : fb.CreateString(name.str()),
                                        *dtype, fb.CreateVector(shape), offset, viewOf));
    if ((kind == fbs::BufferKind::Param && !derived.count(name.str())) ||
        kind == fbs::BufferKind::GradAcc) {
      ParamInfo &info = params[name.str()];
      if (kind == fbs::BufferKind::Param) {
        info.dtype = *dtype;
        info.shape = shape;
      } else {
        info.trainable = true;
      }
    }
    return success();
  };

  for (Operation &op : func.getBody().front()) {
    if (auto buffer = dyn_cast<g3moe::lowered::BufferOp>(op)) {
      fbs::BufferKind kind = kindOf(buffer.getKind());
      if ((kind == fbs::BufferKind::Arena || kind == fbs::BufferKind::Host) && !buffer.getOffset())
        return buffer.emitOpError("has no offset: run --g3rt-plan-memory first");
      if (buffer.getDerivedFrom() && failed(addDerived(buffer)))
        return failure();
      if (failed(addBuffer(buffer, kind, buffer.getName().value_or(""),
                           uint64_t(buffer.getOffset().value_or(0)), -1)))
        return failure();
    } else if (auto view = dyn_cast<g3moe::lowered::ViewOp>(op)) {
      g3moe::lowered::BufferOp root = g3moe::lowered::rootBuffer(view);
      if (failed(addBuffer(view, kindOf(root.getKind()), root.getName().value_or(""),
                           uint64_t(root.getOffset().value_or(0)),
                           int32_t(index.lookup(view.getSource())))))
        return failure();
    } else if (auto launch = dyn_cast<g3moe::lowered::LaunchOp>(op)) {
      std::vector<uint32_t> ins, outs;
      for (Value v : launch.getIns())
        ins.push_back(index.lookup(v));
      for (Value v : launch.getOuts())
        outs.push_back(index.lookup(v));
      std::vector<flatbuffers::Offset<fbs::Attr>> attrs;
      for (NamedAttribute a : launch.getAttrs())
        if (failed(addAttr(launch, a, attrs)))
          return failure();
      instrs.push_back(fbs::CreateInstr(fb, fb.CreateString(launch.getKernel().str()),
                                        fb.CreateVector(ins), fb.CreateVector(outs),
                                        fb.CreateVector(attrs)));
    } else if (auto output = dyn_cast<g3moe::lowered::OutputOp>(op)) {
      outputs.push_back(fbs::CreateBinding(fb, fb.CreateString(output.getName().str()),
                                           index.lookup(output.getBuffer())));
    } else if (!isa<func::ReturnOp>(op)) {
      return op.emitOpError("step.bin cannot represent this op; lower to g3rt first");
    }
  }
  functions.push_back(
      fbs::CreateFunction(fb, fb.CreateString(func.getSymName().str()), fb.CreateVector(buffers),
                          fb.CreateVector(instrs), fb.CreateVector(outputs),
                          bytesAttr(func, "g3rt.arena_bytes"), bytesAttr(func, "g3rt.host_bytes")));
  return success();
}

LogicalResult Writer::write(std::vector<uint8_t> &out) {
  for (auto func : module.getOps<func::FuncOp>())
    if (failed(addFunction(func)))
      return failure();

  double initStd = 0.02;
  auto model = module->getAttrOfType<DictionaryAttr>("g3moe.model");
  if (model)
    if (auto r = model.getAs<FloatAttr>("initializer_range"))
      initStd = r.getValueAsDouble();
  std::vector<flatbuffers::Offset<fbs::Param>> paramTable;
  for (auto &[name, info] : params)
    paramTable.push_back(fbs::CreateParam(fb, fb.CreateString(name), info.dtype,
                                          fb.CreateVector(info.shape), info.trainable, initOf(name),
                                          initStd));
  std::vector<flatbuffers::Offset<fbs::DerivedParam>> derivedTable;
  for (auto &[name, info] : derived)
    derivedTable.push_back(fbs::CreateDerivedParam(fb, fb.CreateString(name),
                                                   fb.CreateString(info.source), info.derivation,
                                                   info.dtype, fb.CreateVector(info.shape)));
  uint32_t alignment = 256;
  if (auto a = module->getAttrOfType<IntegerAttr>("g3rt.arena_alignment"))
    alignment = uint32_t(a.getInt());
  ConfigDict modelDict(module, "g3moe.model"), trainingDict(module, "g3moe.training");
  auto modelTable = buildModelConfig(fb, modelDict);
  auto trainingTable = buildTrainingOptions(fb, trainingDict);
  if (failed(modelDict.finish()) || failed(trainingDict.finish()))
    return failure();
  auto step = fbs::CreateStep(fb, modelTable, trainingTable, fb.CreateVector(paramTable),
                              fb.CreateVector(functions), bytesAttr(module, "g3rt.arena_bytes"),
                              alignment, bytesAttr(module, "g3rt.host_bytes"),
                              derivedTable.empty() ? 0 : fb.CreateVector(derivedTable));
  fb.Finish(step, fbs::StepIdentifier());
  out = g3rt::wrapStepPayload(fb.GetBufferPointer(), fb.GetSize());
  return success();
}

} // namespace

LogicalResult g3moe::writeStep(ModuleOp module, std::vector<uint8_t> &out) {
  return Writer(module).write(out);
}
