//===- device_backend.h - running a step on an accelerator ------*- C++ -*-===//
//
// The host Executor is the CPU backend and the home of all state: parameters
// are initialised, loaded, checkpointed and saved there. A DeviceBackend runs
// the same step on an accelerator with its own copy of that state; the
// training loop uploads what the host wrote (the state once, the inputs per
// call), runs entry points on the device and copies outputs and, before
// anything on the host reads them, the changed tensors back.
//
// The training library must not depend on an accelerator's toolkit (a CPU
// build has none), so backends are not linked into it: a program that links
// one registers a DeviceBackendProvider at start-up (tools/g3moe-run does so
// for CUDA where it was built with CUDA), and selectBackend finds it there.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_EXEC_DEVICE_BACKEND_H
#define G3MOE_RUNTIME_EXEC_DEVICE_BACKEND_H

#include "runtime/exec/executor.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace g3rt {

/// A step's state and arena on an accelerator, mirrored from a host Executor
/// of the same program.
class DeviceBackend {
public:
  virtual ~DeviceBackend() = default;

  /// What runs, for the log: "CUDA on <device name>".
  virtual std::string description() const = 0;

  /// Copies every persistent tensor of `host` (parameters, gradient
  /// accumulators, Adam moments, inputs) to the device.
  virtual Status uploadState(const Executor &host) = 0;
  /// Copies the inputs of `host` (the Input buffers: the micro-batch,
  /// num_items, rng_key, step counters) to the device.
  virtual Status uploadInputs(const Executor &host) = 0;
  /// Copies back into `host` what entry points change: trainable
  /// parameters, gradient accumulators and Adam moments. Frozen parameters
  /// and inputs are left alone (the device never writes them, and frozen
  /// base weights are most of a model's bytes).
  virtual Status downloadState(Executor &host) = 0;

  /// Sets the device's gradient accumulators to zero.
  virtual Status zeroGradients() = 0;
  /// Runs entry point `function` on the device's state and waits for it.
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

  /// Output `name` of `function` as floats (scalars: one value).
  Status readOutput(const std::string &function, const std::string &name,
                    std::vector<float> &values);
};

/// The entry points of a backend library, registered by the program that
/// links it.
struct DeviceBackendProvider {
  /// The toolkit's name, for messages ("CUDA").
  const char *name = nullptr;
  /// The number of visible devices; 0 when there are none, with `why` saying
  /// why (no driver, no device, all hidden). Never fails otherwise.
  int (*countDevices)(std::string &why) = nullptr;
  /// Creates a backend for `program` on device `index`; `program` must
  /// outlive it.
  Status (*create)(const StepProgram &program, int index,
                   std::unique_ptr<DeviceBackend> &out) = nullptr;
};

/// Registers the CUDA backend's provider (null: none). Called once, before
/// any backend is selected; `provider` must stay valid.
void registerCudaBackendProvider(const DeviceBackendProvider *provider);
/// The registered CUDA provider, or null in a program built without CUDA.
const DeviceBackendProvider *cudaBackendProvider();

/// Chooses where `program` runs, as g3moe-run's --device says: "cpu" (the
/// host Executor: `out` stays null), "cuda" (device 0 of the CUDA backend;
/// an error when the program was built without CUDA, no device is visible or
/// the backend cannot take the step), or "auto" (CUDA when it is built in, a
/// device is visible and the backend takes the step, else the CPU).
/// `description` says what was chosen ("CUDA on <device name>", "CPU (<n>
/// threads)", followed by why CUDA was not used when "auto" saw a device
/// but could not use it).
Status selectBackend(const StepProgram &program, const std::string &device,
                     std::unique_ptr<DeviceBackend> &out, std::string &description);

} // namespace g3rt

#endif // G3MOE_RUNTIME_EXEC_DEVICE_BACKEND_H
