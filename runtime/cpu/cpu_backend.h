//===- cpu_backend.h - runs a step on the CPU -------------------*- C++ -*-===//
//
// The CPU backend: the reference kernels of this folder, called in order over
// one arena allocated at the size the compiler planned. It runs on the host
// state in place (no copies), so that a test can read any buffer of the step
// where the kernels left it.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CPU_CPU_BACKEND_H
#define G3MOE_RUNTIME_CPU_CPU_BACKEND_H

#include "runtime/exec/backend.h"

#include <map>
#include <string>
#include <vector>

namespace g3rt::cpu {

class CpuBackend final : public Backend {
public:
  /// A backend for `program` on `host`'s tensors, with its arena; fails,
  /// naming them, when the CPU table lacks kernels the program uses.
  /// `program` and `host` must outlive it.
  static Status create(const StepProgram &program, HostState &host,
                       std::unique_ptr<CpuBackend> &out, const Placement &placement = {});

  std::string description() const override;
  const Placement &placement() const override { return placement_; }

  /// The backend runs on the host state itself: nothing to copy, but it must
  /// be the state it was made with.
  Status uploadState(const HostState &host) override { return sameState(host); }
  Status uploadInputs(const HostState &host) override { return sameState(host); }
  Status downloadState(HostState &host) override { return sameState(host); }

  Status zeroGradients() override;
  Status run(const std::string &function) override;
  Status runSummingGradients(const std::string &function, Communicator &job, size_t bucketFloats,
                             bool &summed) override;
  /// How the last runSummingGradients sent its packs: how many there were,
  /// and how many left before the function's last instruction had run.
  struct SumsSent {
    size_t packs = 0, early = 0;
  };
  SumsSent lastSumsSent() const { return sumsSent_; }
  /// Whether run() sends a job's collective instructions from a thread of
  /// their own while the kernels after them run (the default), or runs
  /// every instruction in turn.
  void setAsyncCollectives(bool on) { asyncCollectives_ = on; }
  /// Instructions that ran while collectives were still queued or running,
  /// over every run() so far.
  uint64_t collectivesOverlapped() const { return collectivesOverlapped_; }
  Status readOutput(const std::string &function, const std::string &name,
                    std::vector<uint8_t> &bytes, TensorView &view) override;
  uint64_t arenaHighWater() const override { return highWater_; }

  /// Runs instruction `index` of `fn` alone (differential tests of backends,
  /// tests that look between kernels).
  /// `fn`'s instructions then need an arena as large as its plan
  /// (reserveArena); fails without one.
  Status runInstruction(const FunctionDesc &fn, size_t index);
  /// Grows the arena to `fn`'s plan where it is larger (forward_backward of
  /// a training step), as run() does; the arena's contents are then lost.
  Status reserveArena(const FunctionDesc &fn);
  /// The bytes buffer `index` of `fn` refers to (arena or host state).
  TensorView view(const FunctionDesc &fn, uint32_t buffer) const;
  /// Output `name` of the last run of `function`, in place; an empty view if
  /// unknown. Valid until the next run.
  TensorView output(const std::string &function, const std::string &name) const;
  uint64_t arenaBytes() const { return arena_.size(); }

private:
  CpuBackend(const StepProgram &program, HostState &host);
  Status sameState(const HostState &host) const;
  /// The kernel call of instruction `i` of `fn` on this backend's buffers.
  void callOf(const FunctionDesc &fn, size_t i, KernelArgs &args);
  /// Runs instruction `i` of `fn` on its prepared call `args`; an error
  /// names the function and the instruction.
  Status runCall(const FunctionDesc &fn, size_t i, const KernelArgs &args);

  const StepProgram &program_;
  HostState &host_;
  Placement placement_;
  Storage arena_;
  /// The host arena of --g3rt-offload-to-host (on the CPU, a second arena).
  Storage hostArena_;
  ResolvedKernels kernels_;
  uint64_t highWater_ = 0;
  SumsSent sumsSent_;
  bool asyncCollectives_ = true;
  uint64_t collectivesOverlapped_ = 0;
};

/// The CPU backend as a provider: always one device.
const BackendProvider &cpuBackendProvider();

} // namespace g3rt::cpu

#endif // G3MOE_RUNTIME_CPU_CPU_BACKEND_H
