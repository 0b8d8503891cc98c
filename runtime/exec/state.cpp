//===- state.cpp - the host's copy of a step's persistent state -----------===//

#include "runtime/exec/state.h"

#include <cstdlib>
#include <cstring>
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

Status forEachStateBuffer(const StepProgram &program,
                          const std::function<Status(const BufferDesc &)> &visit) {
  // The verifier made every declaration of one (kind, name) agree on dtype
  // and shape, so the first stands for all.
  std::set<std::pair<BufferKind, std::string>> seen;
  for (const FunctionDesc &fn : program.functions)
    for (const BufferDesc &b : fn.buffers) {
      if (isPlanned(b.kind) || b.viewOf >= 0)
        continue;
      if (!seen.emplace(b.kind, b.name).second)
        continue;
      G3RT_RETURN_IF_ERROR(visit(b));
    }
  return Status();
}

HostState::HostState(const StepProgram &program) : program_(program) {
  (void)forEachStateBuffer(program, [&](const BufferDesc &b) {
    Storage storage(size_t(b.bytes));
    TensorView v{storage.data(), b.dtype, b.shape};
    tensors_.emplace(std::make_pair(b.kind, b.name), std::make_pair(std::move(storage), v));
    return Status();
  });
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
