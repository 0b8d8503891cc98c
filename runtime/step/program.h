//===- program.h - a verified step.bin in memory ----------------*- C++ -*-===//
//
// The runtime's view of a step: parameters, and per entry point the buffers,
// the instructions (kernel names, operands, attributes) and the outputs.
// Built only by loadStep, which verifies everything it reads first, so a
// backend never sees an index out of range, a kernel name outside
// kernel_names.def, a tensor declared twice with different shapes or an
// overlapping memory plan. Which kernels a backend has is the backend's to
// check when it takes the program.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_STEP_PROGRAM_H
#define G3MOE_RUNTIME_STEP_PROGRAM_H

#include "runtime/base/status.h"
#include "runtime/kernels/kernel.h"
#include "runtime/step/config.h"

#include <cstdint>
#include <string>
#include <vector>

namespace g3rt {

/// Where a buffer's bytes live (values as in step.fbs).
enum class BufferKind : uint8_t {
  Arena = 0,
  Param = 1,
  GradAcc = 2,
  ExpAvg = 3,
  ExpAvgSq = 4,
  Input = 5,
  /// An activation offloaded between its uses: in the host arena, touched
  /// only by the copy kernels (copy_to_host, copy_to_device, wait_copy).
  Host = 6
};

/// Whether buffers of `kind` live at a compile-time offset (in the device
/// arena or the host arena) rather than in the state bound by name.
inline bool isPlanned(BufferKind kind) {
  return kind == BufferKind::Arena || kind == BufferKind::Host;
}

/// How a parameter is initialised when no checkpoint provides it.
enum class InitKind : uint8_t {
  Normal = 0,
  NormalPaddingRowZero = 1,
  Zeros = 2,
  KaimingUniform = 3
};

struct BufferDesc {
  BufferKind kind = BufferKind::Arena;
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  /// Arena (or host arena) byte offset (of the root buffer, for views).
  uint64_t offset = 0;
  /// The buffer this one views, or -1.
  int32_t viewOf = -1;
  uint64_t bytes = 0;
};

struct InstrDesc {
  std::string kernel;
  std::vector<uint32_t> inputs, outputs;
  KernelAttrs attrs;
};

struct FunctionDesc {
  std::string name;
  std::vector<BufferDesc> buffers;
  std::vector<InstrDesc> instrs;
  /// (output name, buffer index), e.g. ("loss", 17), ("grad:<param>", 40).
  std::vector<std::pair<std::string, uint32_t>> outputs;
  uint64_t arenaBytes = 0;
  uint64_t hostBytes = 0;
  /// The number of copy ids its copy kernels use (ids are 0 .. copies-1).
  uint32_t copies = 0;

  /// The buffer index of output `name`, or -1.
  int64_t findOutput(const std::string &name) const;
};

struct ParamDesc {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  bool trainable = false;
  InitKind init = InitKind::Normal;
  double initStd = 0.02;
};

/// What a derived parameter holds of its source (values as in step.fbs).
enum class Derivation : uint8_t {
  /// The e4m3 values and the fp32 scales of the source's rows...
  E4M3 = 0,
  E4M3Scales = 1,
  /// ... or of its transpose's rows (the last two dimensions swapped).
  E4M3Transposed = 2,
  E4M3TransposedScales = 3
};

/// A parameter the runtime computes from another (deriveParameters): the
/// e4m3 copies of fp8_base's frozen weights. `source` is in the parameter
/// table, frozen, of the shape the derivation reads.
struct DerivedParamDesc {
  std::string name, source;
  Derivation derivation = Derivation::E4M3;
  DType dtype = DType::F8E4M3;
  std::vector<int64_t> shape;

  bool transposed() const {
    return derivation == Derivation::E4M3Transposed ||
           derivation == Derivation::E4M3TransposedScales;
  }
  bool scales() const {
    return derivation == Derivation::E4M3Scales || derivation == Derivation::E4M3TransposedScales;
  }
};

struct StepProgram {
  /// The model configuration and training options the step was compiled
  /// with, decoded once here; every reader of the configuration uses these.
  ModelConfig model;
  TrainingConfig training;
  std::vector<ParamDesc> params;
  /// Parameters computed from others; their buffers are Param buffers.
  std::vector<DerivedParamDesc> derived;
  std::vector<FunctionDesc> functions;
  /// The arena the backends allocate: what training needs. An entry point
  /// that needs more (a training step's forward_backward, returning every
  /// gradient at once) grows it when it runs.
  uint64_t arenaBytes = 0;
  uint32_t arenaAlignment = 256;
  /// The host arena of offloaded activations (0: the step offloads none).
  uint64_t hostBytes = 0;

  const FunctionDesc *findFunction(const std::string &name) const;
  const ParamDesc *findParam(const std::string &name) const;
  const DerivedParamDesc *findDerived(const std::string &name) const;
  /// The derived parameter beside `d`: its scales for values, its values for
  /// scales (same source and orientation), or null.
  const DerivedParamDesc *partnerOf(const DerivedParamDesc &d) const;
};

/// Reads and verifies a step.bin: the container (magic, version, size,
/// checksum), the FlatBuffer, the configuration (known enum values) and the
/// program's invariants (indices in range, known kernels, persistent buffers
/// consistent with the parameter table, derived parameters consistent with
/// their sources, the arena plan inside the arena and
/// free of overlaps between live buffers). Errors are prefixed with `path`.
Status loadStep(const std::string &path, StepProgram &out);
/// The same on bytes already in memory.
Status parseStep(const std::vector<uint8_t> &file, const std::string &displayName,
                 StepProgram &out);

/// Checks that every declaration of one persistent tensor (kind and name), in
/// any entry point, has the same dtype and shape (used by the verifier;
/// exposed for tests).
Status checkStateDeclarations(const StepProgram &program);

/// Checks each derived parameter against its source: a frozen float
/// parameter of rank 2 or 3, of which the derivation makes the derived
/// parameter's dtype and shape; and that values and scales come in pairs
/// (used by the verifier; exposed for tests).
Status checkDerivedParams(const StepProgram &program);

/// Checks that no two arena buffers of `fn` that are live at the same
/// instruction share a byte, nor two host buffers (used by the verifier;
/// exposed for tests).
Status checkArenaPlan(const FunctionDesc &fn);

/// Checks the copies between the arenas: host buffers appear only in
/// copy_to_host (arena to host), copy_to_device (host to arena) and
/// wait_copy (the same pair), never as outputs; each copy id has one copy
/// and then one wait on the same buffers (used by the verifier; sets
/// fn.copies; exposed for tests).
Status checkHostCopies(FunctionDesc &fn);

} // namespace g3rt

#endif // G3MOE_RUNTIME_STEP_PROGRAM_H
