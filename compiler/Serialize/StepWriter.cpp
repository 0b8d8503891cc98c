//===- StepWriter.cpp - planned g3rt module to step.bin -------------------===//
//
// Builds the FlatBuffer of step.fbs from the g3rt IR: one Function per
// func.func (buffers in declaration order, launches in program order), the
// parameter table gathered from the `param` buffers, and the configuration as
// JSON. How a parameter is initialised is decided here, from its name, so that
// the runtime needs no knowledge of HF naming conventions.
//
//===----------------------------------------------------------------------===//

#include "compiler/Serialize/StepWriter.h"

#include "dialects/G3RT/IR/G3RTDialect.h"
#include "runtime/schemas/container.h"
#include "runtime/schemas/step_generated.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/Support/JSON.h"

#include <map>

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
  return failure();
}

fbs::BufferKind kindOf(StringRef kind) {
  return llvm::StringSwitch<fbs::BufferKind>(kind)
      .Case("param", fbs::BufferKind::Param)
      .Case("grad_acc", fbs::BufferKind::GradAcc)
      .Case("exp_avg", fbs::BufferKind::ExpAvg)
      .Case("exp_avg_sq", fbs::BufferKind::ExpAvgSq)
      .Case("input", fbs::BufferKind::Input)
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

llvm::json::Value toJson(Attribute a) {
  if (auto b = dyn_cast<BoolAttr>(a))
    return b.getValue();
  if (auto i = dyn_cast<IntegerAttr>(a))
    return i.getInt();
  if (auto f = dyn_cast<FloatAttr>(a))
    return f.getValueAsDouble();
  if (auto s = dyn_cast<StringAttr>(a))
    return s.str();
  if (auto arr = dyn_cast<ArrayAttr>(a)) {
    llvm::json::Array out;
    for (Attribute e : arr)
      out.push_back(toJson(e));
    return out;
  }
  if (auto d = dyn_cast<DictionaryAttr>(a)) {
    llvm::json::Object out;
    for (NamedAttribute e : d)
      out[e.getName().str()] = toJson(e.getValue());
    return out;
  }
  return nullptr;
}

std::string jsonString(Attribute a) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << toJson(a);
  return s;
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
};

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
    out.push_back(fbs::CreateAttr(fb, name, fbs::AttrKind::String, 0, 0, false,
                                  fb.CreateString(s.str())));
  } else if (isa<UnitAttr>(v)) {
    out.push_back(fbs::CreateAttr(fb, name, fbs::AttrKind::Bool, 0, 0, true));
  } else if (auto arr = dyn_cast<DenseF64ArrayAttr>(v)) {
    std::vector<double> values(arr.asArrayRef().begin(), arr.asArrayRef().end());
    out.push_back(fbs::CreateAttr(fb, name, fbs::AttrKind::FloatArray, 0, 0, false, 0,
                                  fb.CreateVector(values)));
  } else {
    return at->emitOpError("step.bin cannot represent attribute '")
           << a.getName() << "' = " << v;
  }
  return success();
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
    if (kind == fbs::BufferKind::Param || kind == fbs::BufferKind::GradAcc) {
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
    if (auto buffer = dyn_cast<g3rt_ir::BufferOp>(op)) {
      fbs::BufferKind kind = kindOf(buffer.getKind());
      if (kind == fbs::BufferKind::Arena && !buffer.getOffset())
        return buffer.emitOpError("has no offset: run --g3rt-plan-memory first");
      if (failed(addBuffer(buffer, kind, buffer.getName().value_or(""),
                           uint64_t(buffer.getOffset().value_or(0)), -1)))
        return failure();
    } else if (auto view = dyn_cast<g3rt_ir::ViewOp>(op)) {
      g3rt_ir::BufferOp root = g3rt_ir::rootBuffer(view);
      if (failed(addBuffer(view, kindOf(root.getKind()), root.getName().value_or(""),
                           uint64_t(root.getOffset().value_or(0)),
                           int32_t(index.lookup(view.getSource())))))
        return failure();
    } else if (auto launch = dyn_cast<g3rt_ir::LaunchOp>(op)) {
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
    } else if (auto output = dyn_cast<g3rt_ir::OutputOp>(op)) {
      outputs.push_back(fbs::CreateBinding(fb, fb.CreateString(output.getName().str()),
                                           index.lookup(output.getBuffer())));
    } else if (!isa<func::ReturnOp>(op)) {
      return op.emitOpError("step.bin cannot represent this op; lower to g3rt first");
    }
  }
  uint64_t arenaBytes = 0;
  if (auto a = func->getAttrOfType<IntegerAttr>("g3rt.arena_bytes"))
    arenaBytes = uint64_t(a.getInt());
  functions.push_back(fbs::CreateFunction(
      fb, fb.CreateString(func.getSymName().str()), fb.CreateVector(buffers),
      fb.CreateVector(instrs), fb.CreateVector(outputs), arenaBytes));
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
                                          fb.CreateVector(info.shape), info.trainable,
                                          initOf(name), initStd));
  auto training = module->getAttrOfType<DictionaryAttr>("g3moe.training");
  uint64_t arenaBytes = 0;
  uint32_t alignment = 256;
  if (auto a = module->getAttrOfType<IntegerAttr>("g3rt.arena_bytes"))
    arenaBytes = uint64_t(a.getInt());
  if (auto a = module->getAttrOfType<IntegerAttr>("g3rt.arena_alignment"))
    alignment = uint32_t(a.getInt());
  auto step = fbs::CreateStep(
      fb, fb.CreateString(model ? jsonString(model) : "{}"),
      fb.CreateString(training ? jsonString(training) : "{}"),
      fb.CreateVector(paramTable), fb.CreateVector(functions), arenaBytes, alignment);
  fb.Finish(step, fbs::StepIdentifier());
  out = g3rt::wrapStepPayload(fb.GetBufferPointer(), fb.GetSize());
  return success();
}

} // namespace

LogicalResult g3moe::writeStep(ModuleOp module, std::vector<uint8_t> &out) {
  return Writer(module).write(out);
}
