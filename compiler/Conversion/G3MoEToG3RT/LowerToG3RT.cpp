//===- LowerToG3RT.cpp - tensor step to kernel launches on buffers --------===//
//
// Implements --g3moe-lower-to-g3rt. A step function is one straight-line
// block, so the lowering is a single walk with a tensor -> buffer map rather
// than a pattern-driven dialect conversion: every value is defined once,
// before its uses, and the only decision per op is where its results live.
//
//===----------------------------------------------------------------------===//

#include "compiler/Conversion/Passes.h"

#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3RT/IR/G3RTDialect.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/StringMap.h"

namespace g3moe {
#define GEN_PASS_DEF_G3MOELOWERTOG3RTPASS
#include "compiler/Conversion/Passes.h.inc"
} // namespace g3moe

using namespace mlir;

namespace {

/// Argument and result tags that bind a value to state the runtime keeps.
constexpr std::pair<StringLiteral, StringLiteral> kPersistentTags[] = {
    {"g3moe.input", "input"},
    {"g3moe.param", "param"},
    {"g3moe.grad_acc", "grad_acc"},
    {"g3moe.exp_avg", "exp_avg"},
    {"g3moe.exp_avg_sq", "exp_avg_sq"}};

/// (kind, name) of a persistent buffer.
using Binding = std::pair<std::string, std::string>;

std::optional<Binding> persistentBinding(DictionaryAttr attrs) {
  if (!attrs)
    return std::nullopt;
  for (auto [tag, kind] : kPersistentTags)
    if (auto name = attrs.getAs<StringAttr>(tag))
      return Binding{kind.str(), name.str()};
  return std::nullopt;
}

MemRefType bufferType(Type tensorType) {
  auto t = cast<RankedTensorType>(tensorType);
  return MemRefType::get(t.getShape(), t.getElementType());
}

/// Pristine copies of the module's functions, for lowering calls inline.
using CalleeTable = llvm::StringMap<func::FuncOp>;

class FunctionLowering {
public:
  FunctionLowering(func::FuncOp func, const CalleeTable &callees)
      : func(func), b(func.getContext()), callees(callees) {}

  LogicalResult run();

private:
  Value persistent(const Binding &binding, Type type, Location loc);
  Value arena(Type tensorType, Location loc);
  LogicalResult lowerOp(Operation *op);
  /// Lowers the callee's body in place of the call: the runtime executes one
  /// straight-line program per entry point.
  LogicalResult lowerCall(func::CallOp call);
  LogicalResult lowerReturn(func::ReturnOp ret);
  /// A frozen_e4m3's values and scales: two parameters the runtime derives
  /// from the named weight when it loads it (G3RTDialect.td, g3rt.buffer).
  void lowerFrozenE4M3(g3moe::FrozenE4M3Op op);
  /// The persistent buffer a result should be written into in place, if the
  /// op is elementwise and reads that buffer only here.
  Value inPlaceTarget(Operation *op, unsigned resultIndex);

  func::FuncOp func;
  OpBuilder b;
  const CalleeTable &callees;
  IRMapping map;
  std::map<Binding, Value> persistentBuffers;
  /// Returned values that end in a persistent buffer.
  DenseMap<Value, Binding> returnedInto;
};

Value FunctionLowering::persistent(const Binding &binding, Type type, Location loc) {
  auto it = persistentBuffers.find(binding);
  if (it != persistentBuffers.end())
    return it->second;
  auto buffer =
      g3moe::lowered::BufferOp::create(b, loc, bufferType(type), b.getStringAttr(binding.first),
                                       b.getStringAttr(binding.second), IntegerAttr());
  persistentBuffers[binding] = buffer;
  return buffer;
}

void FunctionLowering::lowerFrozenE4M3(g3moe::FrozenE4M3Op op) {
  const bool t = op.getTranspose();
  const std::string name = op.getName().str() + (t ? "@e4m3t" : "@e4m3");
  for (auto [result, scales] : {std::pair(op.getResult(), false), std::pair(op.getScale(), true)}) {
    Value buffer =
        persistent({"param", name + (scales ? ".scale" : "")}, result.getType(), op.getLoc());
    auto decl = buffer.getDefiningOp<g3moe::lowered::BufferOp>();
    decl.setDerivedFromAttr(op.getNameAttr());
    decl.setSourceTypeAttr(op.getSourceTypeAttr());
    decl.setDerivationAttr(b.getStringAttr(g3moe::lowered::derivationName(t, scales)));
    map.map(result, buffer);
  }
}

Value FunctionLowering::arena(Type tensorType, Location loc) {
  return g3moe::lowered::BufferOp::create(b, loc, bufferType(tensorType),
                                          b.getStringAttr(g3moe::lowered::kArena), StringAttr(),
                                          IntegerAttr());
}

Value FunctionLowering::inPlaceTarget(Operation *op, unsigned resultIndex) {
  auto it = returnedInto.find(op->getResult(resultIndex));
  if (it == returnedInto.end())
    return Value();
  // Which operand a result may overwrite: add writes over either summand,
  // adamw's (p', m', v') of tensor i over its (p, m, v).
  SmallVector<unsigned> candidates;
  if (isa<g3moe::AddOp>(op)) {
    candidates = {0, 1};
  } else if (auto adamw = dyn_cast<g3moe::AdamWOp>(op)) {
    unsigned n = adamw.getNumTensors(), role = resultIndex / n, i = resultIndex % n;
    candidates = {(role == 0 ? 0u : role + 1) * n + i};
  }
  for (unsigned i : candidates) {
    Value operand = op->getOperand(i);
    auto arg = dyn_cast<BlockArgument>(operand);
    if (!arg || !operand.hasOneUse())
      continue;
    if (persistentBinding(func.getArgAttrDict(arg.getArgNumber())) == it->second)
      return map.lookup(operand);
  }
  return Value();
}

LogicalResult FunctionLowering::lowerCall(func::CallOp call) {
  func::FuncOp callee = callees.lookup(call.getCallee());
  if (!callee)
    return call.emitOpError("g3moe-lower-to-g3rt: unknown callee @") << call.getCallee();
  Block &body = callee.getBody().front();
  for (auto [arg, operand] : llvm::zip(body.getArguments(), call.getOperands()))
    map.map(arg, map.lookup(operand));
  for (Operation &op : body.without_terminator())
    if (failed(lowerOp(&op)))
      return failure();
  for (auto [result, value] : llvm::zip(call.getResults(), body.getTerminator()->getOperands()))
    map.map(result, map.lookup(value));
  return success();
}

LogicalResult FunctionLowering::lowerOp(Operation *op) {
  Location loc = op->getLoc();
  if (auto call = dyn_cast<func::CallOp>(op))
    return lowerCall(call);
  if (auto param = dyn_cast<g3moe::ParamOp>(op)) {
    map.map(param.getResult(), persistent({"param", param.getName().str()}, param.getType(), loc));
    return success();
  }
  if (auto frozen = dyn_cast<g3moe::FrozenE4M3Op>(op)) {
    lowerFrozenE4M3(frozen);
    return success();
  }
  if (isa<g3moe::ReshapeOp, g3moe::StopGradientOp>(op)) {
    Value view = g3moe::lowered::ViewOp::create(b, loc, bufferType(op->getResult(0).getType()),
                                                map.lookup(op->getOperand(0)));
    map.map(op->getResult(0), view);
    return success();
  }
  if (auto cst = dyn_cast<arith::ConstantOp>(op)) {
    auto dense = dyn_cast<DenseElementsAttr>(cst.getValue());
    if (!dense || !dense.isSplat() || !isa<FloatType>(dense.getElementType()))
      return op->emitOpError("g3moe-lower-to-g3rt: only float splat constants are supported");
    Value buffer = arena(cst.getType(), loc);
    double value = dense.getSplatValue<APFloat>().convertToDouble();
    g3moe::lowered::LaunchOp::create(
        b, loc, b.getStringAttr("fill"), ValueRange(), ValueRange{buffer},
        b.getDictionaryAttr(b.getNamedAttr("value", b.getF64FloatAttr(value))));
    map.map(cst.getResult(), buffer);
    return success();
  }
  if (op->getDialect() != op->getContext()->getLoadedDialect<g3moe::G3MoEDialect>())
    return op->emitOpError("g3moe-lower-to-g3rt: cannot lower this op");
  if (isa<g3moe::AllToAllOp>(op))
    return op->emitOpError("g3moe-lower-to-g3rt: no kernel yet (expert parallelism is not built)");

  SmallVector<Value> ins, outs;
  for (Value operand : op->getOperands())
    ins.push_back(map.lookup(operand));
  for (auto [i, result] : llvm::enumerate(op->getResults())) {
    Value out = inPlaceTarget(op, i);
    // broadcast overwrites each tensor where it is, when nothing else reads
    // it and it is not a parameter as the step found it (ZeRO stage 3: only
    // its owner holds that one).
    Value sent = op->getOperand(i);
    if (!out && isa<g3moe::BroadcastOp>(op) && sent.hasOneUse() &&
        !sent.getDefiningOp<g3moe::ParamOp>() && !isa<BlockArgument>(sent))
      out = ins[i];
    if (!out)
      out = arena(result.getType(), loc);
    outs.push_back(out);
    map.map(result, out);
  }
  // The kernel is the op's mnemonic; its inherent attributes are the kernel's.
  SmallVector<NamedAttribute> attrs;
  for (NamedAttribute a : op->getAttrs())
    if (a.getName() != "operandSegmentSizes" && a.getName() != "resultSegmentSizes")
      attrs.push_back(a);
  StringRef kernel = op->getName().stripDialect();
  g3moe::lowered::LaunchOp::create(b, loc, b.getStringAttr(kernel), ins, outs,
                                   b.getDictionaryAttr(attrs));
  return success();
}

LogicalResult FunctionLowering::lowerReturn(func::ReturnOp ret) {
  for (auto [i, value] : llvm::enumerate(ret.getOperands())) {
    DictionaryAttr attrs = func.getResultAttrDict(i);
    Value buffer = map.lookup(value);
    Location loc = ret.getLoc();
    if (auto binding = persistentBinding(attrs)) {
      Value target = persistent(*binding, value.getType(), loc);
      if (buffer != target)
        g3moe::lowered::LaunchOp::create(b, loc, b.getStringAttr("copy"), ValueRange{buffer},
                                         ValueRange{target}, b.getDictionaryAttr({}));
      continue;
    }
    std::string name;
    if (auto out = attrs ? attrs.getAs<StringAttr>("g3moe.output") : StringAttr())
      name = out.str();
    else if (auto grad = attrs ? attrs.getAs<StringAttr>("g3moe.grad") : StringAttr())
      name = "grad:" + grad.str();
    else
      return func.emitOpError("g3moe-lower-to-g3rt: result ")
             << i << " has no g3moe.output, g3moe.grad or persistent tag";
    g3moe::lowered::OutputOp::create(b, loc, b.getStringAttr(name), buffer);
  }
  return success();
}

LogicalResult FunctionLowering::run() {
  if (!func.getBody().hasOneBlock())
    return func.emitOpError("g3moe-lower-to-g3rt: expects a single-block function");
  Block &body = func.getBody().front();
  auto ret = cast<func::ReturnOp>(body.getTerminator());
  for (auto [i, value] : llvm::enumerate(ret.getOperands()))
    if (auto binding = persistentBinding(func.getResultAttrDict(i))) {
      returnedInto[value] = *binding;
      // A broadcast tensor is sent from where its owner's update wrote it
      // (broadcast works in place), so that update may write the returned
      // buffer too.
      if (auto sent = value.getDefiningOp<g3moe::BroadcastOp>()) {
        Value input = sent.getInputs()[cast<OpResult>(value).getResultNumber()];
        if (input.hasOneUse())
          returnedInto[input] = *binding;
      }
    }

  // The lowered function is built in a fresh block and swapped in at the end.
  Block *lowered = new Block();
  b.setInsertionPointToStart(lowered);
  for (BlockArgument arg : body.getArguments()) {
    auto binding = persistentBinding(func.getArgAttrDict(arg.getArgNumber()));
    if (!binding) {
      delete lowered;
      return func.emitOpError("g3moe-lower-to-g3rt: argument ")
             << arg.getArgNumber() << " has no binding tag (g3moe.input, ...)";
    }
    map.map(arg, persistent(*binding, arg.getType(), func.getLoc()));
  }
  for (Operation &op : body.without_terminator())
    if (failed(lowerOp(&op))) {
      delete lowered;
      return failure();
    }
  if (failed(lowerReturn(ret))) {
    delete lowered;
    return failure();
  }
  func::ReturnOp::create(b, ret.getLoc());

  func.getBody().push_back(lowered);
  body.dropAllDefinedValueUses();
  body.erase();
  func.setFunctionType(b.getFunctionType({}, {}));
  func.removeArgAttrsAttr();
  func.removeResAttrsAttr();
  return success();
}

struct G3MoELowerToG3RTPass : g3moe::impl::G3MoELowerToG3RTPassBase<G3MoELowerToG3RTPass> {
  void runOnOperation() override {
    CalleeTable callees;
    SmallVector<func::FuncOp> funcs(getOperation().getOps<func::FuncOp>());
    for (func::FuncOp f : funcs)
      callees[f.getSymName()] = cast<func::FuncOp>(f->clone());
    bool failed = false;
    for (func::FuncOp f : funcs)
      if (mlir::failed(FunctionLowering(f, callees).run())) {
        failed = true;
        break;
      }
    for (auto &entry : callees)
      entry.second->erase();
    if (failed)
      signalPassFailure();
  }
};

} // namespace
