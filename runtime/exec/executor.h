//===- executor.h - runs a verified step on the CPU backend -----*- C++ -*-===//
//
// Owns the state a training run keeps between calls (parameters, gradient
// accumulators, Adam moments, inputs) and the one arena, allocated once at
// the size the compiler planned. Running an entry point binds each buffer to
// its bytes and calls the kernels in order.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_EXEC_EXECUTOR_H
#define G3MOE_RUNTIME_EXEC_EXECUTOR_H

#include "runtime/step/program.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace g3rt {

/// Owning, 64-byte aligned storage.
class Storage {
public:
  Storage() = default;
  explicit Storage(size_t bytes);
  void *data() const { return data_.get(); }
  size_t size() const { return size_; }

private:
  struct Free {
    void operator()(void *p) const;
  };
  std::unique_ptr<void, Free> data_;
  size_t size_ = 0;
};

class Executor {
public:
  /// Allocates all state of `program` (zeroed). The program must outlive the
  /// executor. Without `withArena` the executor only holds the state (the
  /// host mirror of a device backend, which runs nothing here: a big model's
  /// arena would be tens of gigabytes of host memory for nothing); run() then
  /// fails.
  explicit Executor(const StepProgram &program, bool withArena = true);

  const StepProgram &program() const { return program_; }

  /// The persistent tensor of `kind` named `name` (a parameter, its gradient
  /// accumulator or Adam moments, or an input); an empty view if there is none.
  TensorView state(BufferKind kind, const std::string &name) const;
  TensorView param(const std::string &name) const { return state(BufferKind::Param, name); }
  TensorView input(const std::string &name) const { return state(BufferKind::Input, name); }

  /// Runs entry point `function`. Inputs must have been written first.
  Status run(const std::string &function);
  /// Runs instruction `index` of `fn` alone (differential tests of backends).
  Status runInstruction(const FunctionDesc &fn, size_t index);

  /// The bytes buffer `index` of `fn` refers to (arena or persistent state).
  TensorView view(const FunctionDesc &fn, uint32_t buffer) const;

  /// Output `name` of the last run of `function`; an empty view if unknown.
  /// Valid until the next run.
  TensorView output(const std::string &function, const std::string &name) const;

  /// The highest arena byte any run has written (one past it): with a correct
  /// plan, the planned arena size.
  uint64_t arenaHighWater() const { return highWater_; }
  uint64_t arenaBytes() const { return arena_.size(); }

  /// Sets every gradient accumulator to zero.
  void zeroGradients();

private:

  const StepProgram &program_;
  Storage arena_;
  /// Persistent tensors by (kind, name).
  std::map<std::pair<BufferKind, std::string>, std::pair<Storage, TensorView>> state_;
  uint64_t highWater_ = 0;
};

} // namespace g3rt

#endif // G3MOE_RUNTIME_EXEC_EXECUTOR_H
