//===- backend.h - where a step runs ----------------------------*- C++ -*-===//
//
// A Backend runs a loaded step's entry points: the CPU backend (runtime/cpu/)
// and the CUDA backend (runtime/cuda/) are peers behind this interface. The
// step names its kernels; each backend resolves them in its own table when it
// takes the step and reports the ones it lacks.
//
// The state (parameters, gradient accumulators, Adam moments, inputs) has one
// owner, the HostState (state.h): the training loop initialises, loads and
// checkpoints it there and writes each call's inputs into it. A backend
// works on it through uploadState/uploadInputs and downloadState: the CPU
// backend runs on the host state in place, so those are free; a device
// backend keeps its own copy and moves bytes.
//
// A backend knows where it runs (Placement): its device and, for the
// multi-process training to come, its rank among the processes. Collectives
// over a communicator and host offload will hang off the same interface.
//
// The training library must not depend on an accelerator's toolkit (a CPU
// build has none), so device backends are not linked into it: a program that
// links one registers its BackendProvider at start-up (tools/g3moe-run does so
// for CUDA where it was built with CUDA).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_EXEC_BACKEND_H
#define G3MOE_RUNTIME_EXEC_BACKEND_H

#include "runtime/exec/state.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace g3rt {

class Communicator;

/// Where a backend runs.
struct Placement {
  /// The device's index among the visible devices of its kind (0 on the CPU).
  int device = 0;
  /// This process's rank among `worldSize` training processes.
  int rank = 0;
  int worldSize = 1;
  /// The job's communicator, through which the step's collectives
  /// (all_reduce, broadcast) exchange; null when the process runs alone.
  Communicator *job = nullptr;
};

class Backend {
public:
  virtual ~Backend() = default;

  /// What runs, for the log: "CPU (<n> threads)", "CUDA on <device name>".
  virtual std::string description() const = 0;
  /// Where it runs.
  virtual const Placement &placement() const = 0;

  /// Makes the backend's state equal `host`'s: every persistent tensor
  /// (parameters, gradient accumulators, Adam moments, inputs).
  virtual Status uploadState(const HostState &host) = 0;
  /// Makes the backend's inputs equal `host`'s (the micro-batch, num_items,
  /// rng_key, step counters): before each run.
  virtual Status uploadInputs(const HostState &host) = 0;
  /// Copies into `host` what entry points change: trainable parameters,
  /// gradient accumulators and Adam moments. Frozen parameters and inputs are
  /// left alone (no entry point writes them, and frozen base weights are most
  /// of a model's bytes).
  virtual Status downloadState(HostState &host) = 0;

  /// Sets the backend's gradient accumulators to zero.
  virtual Status zeroGradients() = 0;
  /// Runs entry point `function` on the backend's state and waits for it.
  virtual Status run(const std::string &function) = 0;
  /// What the data pipeline guarantees about every batch row: one document
  /// then padding (true), or packed documents (false). A backend may pick
  /// its kernels by it instead of inspecting each batch.
  virtual void setOneDocumentPerRow(bool one) { (void)one; }
  /// Copies output `name` of the last run of `function` to the host: `bytes`
  /// receives the data and `view` describes it (dtype, shape, data pointing
  /// into `bytes`). An error names an unknown output.
  virtual Status readOutput(const std::string &function, const std::string &name,
                            std::vector<uint8_t> &bytes, TensorView &view) = 0;
  /// Replaces every gradient accumulator by its sum over the processes of
  /// `job` where the backend has a collective of its own (CUDA: NCCL) and
  /// sets `done`; leaves `done` false otherwise, and the caller sums them
  /// through the host.
  virtual Status sumGradients(Communicator &job, bool &done) {
    (void)job;
    done = false;
    return Status();
  }
  /// Runs entry point `function` as run() does and, where the backend can
  /// (the CPU), replaces every gradient accumulator by its sum over the
  /// processes of `job` as it goes: the accumulators, in packs of about
  /// `bucketFloats` floats, are summed on another thread once no later
  /// instruction touches them, and `summed` is set. Elsewhere, and for a
  /// function with collectives of its own, `summed` stays false and the
  /// caller sums them after the run.
  virtual Status runSummingGradients(const std::string &function, Communicator &job,
                                     size_t bucketFloats, bool &summed) {
    (void)job;
    (void)bucketFloats;
    summed = false;
    return run(function);
  }
  /// The highest arena byte any run wrote (one past it), where the backend
  /// tracks it (the CPU); 0 elsewhere.
  virtual uint64_t arenaHighWater() const { return 0; }

  /// Output `name` of `function` as floats (scalars: one value).
  Status readOutput(const std::string &function, const std::string &name,
                    std::vector<float> &values);
};

/// Per entry point, per instruction: the kernel a backend runs.
using ResolvedKernels = std::map<std::string, std::vector<KernelFn>>;

/// Looks up the kernel of every instruction of `program` in a backend's table
/// (`find`). Fails when the table lacks any, naming the backend and each
/// missing kernel once: "the <backend> backend has no kernel <kernel> (used by
/// <function>), ...".
Status resolveKernels(const StepProgram &program, const std::string &backend,
                      KernelFn (*find)(std::string_view), ResolvedKernels &out);

/// The entry points of a backend library.
struct BackendProvider {
  /// The backend's name, as --device spells it ("cpu", "cuda").
  const char *name = nullptr;
  /// The number of devices it can use; 0 when there are none, with `why`
  /// saying why (no driver, no device, all hidden). Never fails otherwise.
  int (*countDevices)(std::string &why) = nullptr;
  /// Creates a backend for `program` at `placement`, working on `host` (the
  /// state's owner); `program` and `host` must outlive it. Fails, naming
  /// them, when the backend lacks kernels the program uses, or the device
  /// cannot hold the step.
  Status (*create)(const StepProgram &program, HostState &host, const Placement &placement,
                   std::unique_ptr<Backend> &out) = nullptr;
};

/// Registers the CUDA backend's provider (null: none). Called once, before
/// any backend is selected; `provider` must stay valid.
void registerCudaBackendProvider(const BackendProvider *provider);
/// The registered CUDA provider, or null in a program built without CUDA.
const BackendProvider *cudaBackendProvider();

} // namespace g3rt

#endif // G3MOE_RUNTIME_EXEC_BACKEND_H
