//===- state.cpp - the host's copy of a step's persistent state -----------===//

#include "runtime/exec/state.h"

#include "runtime/exec/ownership.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <optional>
#include <set>

namespace g3rt {

Storage::Storage(size_t bytes) : size_(bytes) {
  size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  void *p = std::aligned_alloc(64, rounded);
  if (p)
    std::memset(p, 0, rounded);
  data_.reset(p);
}

void Storage::Free::operator()(void *p) const { std::free(p); }

std::map<std::pair<BufferKind, std::string>, int> stateOwners(const StepProgram &program) {
  // Per tensor: the one process every instruction touching it runs on, or
  // -1 once one touches it on every process (or on another).
  std::map<std::pair<BufferKind, std::string>, int> owners;
  for (const FunctionDesc &fn : program.functions)
    for (const InstrDesc &instr : fn.instrs)
      for (bool read : {true, false})
        for (uint32_t i : read ? instr.inputs : instr.outputs) {
          const BufferDesc &b = fn.buffers[i];
          if (b.kind != BufferKind::ExpAvg && b.kind != BufferKind::ExpAvgSq &&
              b.kind != BufferKind::GradAcc && b.kind != BufferKind::Param)
            continue;
          const bool written =
              std::find(instr.outputs.begin(), instr.outputs.end(), i) != instr.outputs.end();
          const int process = int(soleProcess(instr.kernel, instr.attrs.getInt("owner"),
                                              instr.attrs.getInt("root"), read, written));
          auto [it, fresh] = owners.try_emplace({b.kind, b.name}, process);
          if (!fresh && it->second != process)
            it->second = -1;
        }
  for (auto it = owners.begin(); it != owners.end();)
    it = it->second < 0 ? owners.erase(it) : std::next(it);
  return owners;
}

std::map<std::pair<BufferKind, std::string>, int> momentOwners(const StepProgram &program) {
  auto owners = stateOwners(program);
  for (auto it = owners.begin(); it != owners.end();)
    it = it->first.first == BufferKind::ExpAvg || it->first.first == BufferKind::ExpAvgSq
             ? std::next(it)
             : owners.erase(it);
  return owners;
}

bool runsOnProcess(const InstrDesc &instr, int rank) {
  std::optional<int64_t> owner = instr.attrs.getInt("owner");
  return rank < 0 || !owner || *owner == rank;
}

Status forEachStateBuffer(const StepProgram &program,
                          const std::function<Status(const BufferDesc &)> &visit, int rank) {
  const auto owners = rank < 0 ? decltype(stateOwners(program))() : stateOwners(program);
  // The verifier made every declaration of one (kind, name) agree on dtype
  // and shape, so the first stands for all.
  std::set<std::pair<BufferKind, std::string>> seen;
  for (const FunctionDesc &fn : program.functions)
    for (const BufferDesc &b : fn.buffers) {
      if (isPlanned(b.kind) || b.viewOf >= 0)
        continue;
      if (!seen.emplace(b.kind, b.name).second)
        continue;
      auto owner = owners.find({b.kind, b.name});
      if (owner != owners.end() && owner->second != rank)
        continue;
      G3RT_RETURN_IF_ERROR(visit(b));
    }
  return Status();
}

HostState::HostState(const StepProgram &program, int rank) : program_(program) {
  auto allocate = [&](const BufferDesc &b) {
    Storage storage(size_t(b.bytes));
    TensorView v{storage.data(), b.dtype, b.shape};
    tensors_.emplace(std::make_pair(b.kind, b.name), std::make_pair(std::move(storage), v));
    return Status();
  };
  (void)forEachStateBuffer(program, allocate, rank);
  // A parameter no function reads is the source of derived ones: the host
  // keeps it (to derive them again, to save or merge it), no backend does.
  std::set<std::string> read;
  for (const FunctionDesc &fn : program.functions)
    for (const BufferDesc &b : fn.buffers)
      if (b.kind == BufferKind::Param)
        read.insert(b.name);
  for (const ParamDesc &p : program.params)
    if (!read.count(p.name)) {
      BufferDesc b;
      b.kind = BufferKind::Param;
      b.name = p.name;
      b.dtype = p.dtype;
      b.shape = p.shape;
      b.bytes = TensorView{nullptr, p.dtype, p.shape}.bytes();
      (void)allocate(b);
    }
  auto elsewhere = [&](const BufferDesc &b) {
    if (!tensors_.count({b.kind, b.name}))
      elsewhere_.emplace(std::make_pair(b.kind, b.name), b);
    return Status();
  };
  if (rank >= 0)
    (void)forEachStateBuffer(program, elsewhere);
}

TensorView HostState::hold(BufferKind kind, const std::string &name) {
  auto it = elsewhere_.find({kind, name});
  if (it == elsewhere_.end())
    return state(kind, name);
  const BufferDesc &b = it->second;
  Storage storage(size_t(b.bytes));
  TensorView v{storage.data(), b.dtype, b.shape};
  tensors_.emplace(it->first, std::make_pair(std::move(storage), v));
  heldHere_.insert(elsewhere_.extract(it));
  return v;
}

void HostState::release(BufferKind kind, const std::string &name) {
  auto it = heldHere_.find({kind, name});
  if (it == heldHere_.end())
    return;
  tensors_.erase(it->first);
  elsewhere_.insert(heldHere_.extract(it));
}

TensorView HostState::state(BufferKind kind, const std::string &name) const {
  auto it = tensors_.find({kind, name});
  return it == tensors_.end() ? TensorView{} : it->second.second;
}

void HostState::forEach(
    BufferKind kind,
    const std::function<void(const std::string &, const TensorView &)> &visit) const {
  for (const auto &[key, entry] : tensors_)
    if (key.first == kind)
      visit(key.second, entry.second);
}

void HostState::zeroGradients() {
  for (auto &[key, entry] : tensors_)
    if (key.first == BufferKind::GradAcc)
      std::memset(entry.first.data(), 0, entry.first.size());
}

} // namespace g3rt
