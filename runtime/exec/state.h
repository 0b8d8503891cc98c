//===- state.h - the host's copy of a step's persistent state ---*- C++ -*-===//
//
// A training run keeps, between calls of the step's entry points, the
// parameters, their gradient accumulators and Adam moments, and the inputs of
// the next call. HostState owns the host's copy of those tensors: parameters
// are initialised, loaded, checkpointed and saved there, and the training
// loop writes each micro-batch into its inputs. Every backend works on this
// state: the CPU backend in place, a device backend on its own copy that it
// uploads from and downloads into this one.
//
// forEachStateBuffer is the one definition of which buffers of a program are
// state, so that every backend allocates the same set.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_EXEC_STATE_H
#define G3MOE_RUNTIME_EXEC_STATE_H

#include "runtime/step/program.h"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>

namespace g3rt {

/// Owning, 64-byte aligned, zeroed host storage.
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

/// ZeRO sharding (--g3moe-shard): a persistent tensor that only
/// instructions of one process touch (an `owner` attribute: the optimizer
/// update at stage 1, and at stage 2 also the accumulation and the norm of
/// the gradients; at stage 3 a parameter that every other instruction reads
/// through a broadcast from its owner) lives on that process alone. Every
/// such Adam moment, gradient accumulator and parameter, by (kind, name),
/// mapped to its owner; empty for an unsharded step.
std::map<std::pair<BufferKind, std::string>, int> stateOwners(const StepProgram &program);
/// The Adam moments among stateOwners.
std::map<std::pair<BufferKind, std::string>, int> momentOwners(const StepProgram &program);

/// Whether process `rank` runs `instr`: an instruction with an `owner`
/// attribute runs on that process only; `rank` < 0 stands for every process.
bool runsOnProcess(const InstrDesc &instr, int rank);

/// Calls `visit` once for each persistent tensor of `program` (each (kind,
/// name) pair, as first declared by any entry point): parameters, gradient
/// accumulators, Adam moments and inputs. Arena buffers and views are not
/// state. With `rank` >= 0, the state of that process of a data-parallel
/// job: tensors another process owns (stateOwners) are left out. A
/// visitor's error stops the walk and is returned.
Status forEachStateBuffer(const StepProgram &program,
                          const std::function<Status(const BufferDesc &)> &visit, int rank = -1);

/// The host's persistent tensors of one program, allocated zeroed when made:
/// forEachStateBuffer's, and the parameters that no function reads (the
/// sources of derived parameters, StepProgram::derived), which only the host
/// holds.
class HostState {
public:
  /// `program` must outlive the state. With `rank` >= 0, process `rank`'s
  /// share of a ZeRO-sharded step (forEachStateBuffer).
  explicit HostState(const StepProgram &program, int rank = -1);

  const StepProgram &program() const { return program_; }

  /// The tensor of `kind` named `name`; an empty view if there is none.
  TensorView state(BufferKind kind, const std::string &name) const;
  TensorView param(const std::string &name) const { return state(BufferKind::Param, name); }
  TensorView input(const std::string &name) const { return state(BufferKind::Input, name); }

  /// Whether the step has the tensor of `kind` named `name` but another
  /// process of the job holds it (ZeRO sharding), until hold() brings it
  /// here.
  bool heldElsewhere(BufferKind kind, const std::string &name) const {
    return elsewhere_.count({kind, name}) != 0;
  }
  /// The tensor of `kind` named `name`, allocated zeroed here if another
  /// process holds it (so that it can be received: ZeRO stage 3's
  /// parameters, for a save), until release(); an empty view if the step
  /// has no such tensor.
  TensorView hold(BufferKind kind, const std::string &name);
  /// Frees a tensor that hold() allocated; another process holds it again.
  void release(BufferKind kind, const std::string &name);

  /// Sets every gradient accumulator to zero.
  void zeroGradients();
  /// Calls `visit` with the name and view of each tensor of `kind`, in name
  /// order (the same on every process of a job).
  void forEach(BufferKind kind,
               const std::function<void(const std::string &, const TensorView &)> &visit) const;

private:
  const StepProgram &program_;
  std::map<std::pair<BufferKind, std::string>, std::pair<Storage, TensorView>> tensors_;
  /// The tensors another process holds, and those of them hold() brought.
  std::map<std::pair<BufferKind, std::string>, BufferDesc> elsewhere_, heldHere_;
};

} // namespace g3rt

#endif // G3MOE_RUNTIME_EXEC_STATE_H
