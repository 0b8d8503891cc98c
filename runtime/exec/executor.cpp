//===- executor.cpp - runs a verified step on the CPU backend -------------===//

#include "runtime/exec/executor.h"

#include <cstdlib>
#include <cstring>

namespace g3rt {

Storage::Storage(size_t bytes) : size_(bytes) {
  size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  void *p = std::aligned_alloc(64, rounded);
  if (p)
    std::memset(p, 0, rounded);
  data_.reset(p);
}

void Storage::Free::operator()(void *p) const { std::free(p); }

Executor::Executor(const StepProgram &program, bool withArena)
    : program_(program), arena_(withArena ? Storage(size_t(program.arenaBytes)) : Storage()) {
  // Persistent tensors: each (kind, name) once, shaped as first declared.
  for (const FunctionDesc &fn : program.functions)
    for (const BufferDesc &b : fn.buffers) {
      if (b.kind == BufferKind::Arena || b.viewOf >= 0)
        continue;
      auto key = std::make_pair(b.kind, b.name);
      if (state_.count(key))
        continue;
      Storage storage(size_t(b.bytes));
      TensorView v{storage.data(), b.dtype, b.shape};
      state_.emplace(key, std::make_pair(std::move(storage), v));
    }
}

TensorView Executor::state(BufferKind kind, const std::string &name) const {
  auto it = state_.find({kind, name});
  return it == state_.end() ? TensorView{} : it->second.second;
}

TensorView Executor::view(const FunctionDesc &fn, uint32_t index) const {
  const BufferDesc &b = fn.buffers[index];
  TensorView v;
  v.dtype = b.dtype;
  v.shape = b.shape;
  if (b.kind == BufferKind::Arena)
    v.data = static_cast<uint8_t *>(arena_.data()) + b.offset;
  else
    v.data = state(b.kind, b.name).data;
  return v;
}

Status Executor::runInstruction(const FunctionDesc &fn, size_t i) {
  if (!arena_.data())
    return Status::error("this executor was made without an arena and cannot run " + fn.name);
  const InstrDesc &instr = fn.instrs[i];
  KernelArgs args;
  args.name = instr.kernel;
  args.attrs = &instr.attrs;
  for (uint32_t b : instr.inputs)
    args.inputs.push_back(view(fn, b));
  for (uint32_t b : instr.outputs) {
    args.outputs.push_back(view(fn, b));
    const BufferDesc &desc = fn.buffers[b];
    if (desc.kind == BufferKind::Arena)
      highWater_ = std::max<uint64_t>(highWater_, desc.offset + desc.bytes);
  }
  Status s = instr.fn(args);
  return s.withContext(fn.name + ", instruction " + std::to_string(i));
}

Status Executor::run(const std::string &function) {
  const FunctionDesc *fn = program_.findFunction(function);
  if (!fn)
    return Status::error("the step has no entry point '" + function + "'");
  for (size_t i = 0; i < fn->instrs.size(); ++i)
    G3RT_RETURN_IF_ERROR(runInstruction(*fn, i));
  return Status();
}

TensorView Executor::output(const std::string &function, const std::string &name) const {
  const FunctionDesc *fn = program_.findFunction(function);
  if (!fn)
    return TensorView{};
  int64_t index = fn->findOutput(name);
  return index < 0 ? TensorView{} : view(*fn, uint32_t(index));
}

void Executor::zeroGradients() {
  for (auto &[key, entry] : state_)
    if (key.first == BufferKind::GradAcc)
      std::memset(entry.first.data(), 0, entry.first.size());
}

} // namespace g3rt
