//===- kernel.h - the kernel calling convention -----------------*- C++ -*-===//
//
// Every instruction of a step is a kernel call: a kernel name (the mnemonic of
// the g3moe op it implements, "linear", "attention_grad", ...), input and
// output tensors in the op's operand and result order, and the op's
// attributes. Every name is listed once, in kernel_names.def, from which each
// backend builds its table. The math of each kernel is the description of its
// op in dialects/G3MoE/IR/*.td and docs/kernels.md.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_KERNELS_KERNEL_H
#define G3MOE_RUNTIME_KERNELS_KERNEL_H

#include "runtime/base/status.h"
#include "runtime/base/tensor.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace g3rt {

class Communicator;

/// One attribute of an instruction.
struct AttrValue {
  enum class Kind : uint8_t { Int, Float, Bool, String, FloatArray };
  Kind kind = Kind::Int;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<double> floats;

  static AttrValue ofInt(int64_t v);
  static AttrValue ofFloat(double v);
  static AttrValue ofBool(bool v);
  static AttrValue ofString(std::string v);
  static AttrValue ofFloats(std::vector<double> v);
};

/// The attributes of one instruction, by name. Getters return nullopt when the
/// attribute is absent or of another kind (optional attributes such as
/// `sliding_window` or `softcap` are simply absent).
class KernelAttrs {
public:
  void set(std::string name, AttrValue value);
  const AttrValue *find(std::string_view name) const;
  std::optional<int64_t> getInt(std::string_view name) const;
  /// Float attributes; integer ones are widened.
  std::optional<double> getFloat(std::string_view name) const;
  /// Bool attributes; a present unit attribute (`transpose`) reads true.
  bool getFlag(std::string_view name) const;
  std::optional<std::string_view> getString(std::string_view name) const;
  const std::vector<double> *getFloats(std::string_view name) const;
  const std::vector<std::pair<std::string, AttrValue>> &entries() const { return entries_; }

private:
  std::vector<std::pair<std::string, AttrValue>> entries_;
};

/// What a kernel receives. Output views may alias input views only for
/// elementwise kernels (add, adamw), which read each element before writing it.
struct KernelArgs {
  std::vector<TensorView> inputs;
  std::vector<TensorView> outputs;
  const KernelAttrs *attrs = nullptr;
  /// The instruction's kernel name, for messages.
  std::string_view name;
  /// Backend context: the CudaContext of the CUDA backend (tensors are then
  /// device pointers); null on the CPU.
  void *backend = nullptr;
  /// The data-parallel job the collectives (all_reduce, broadcast) exchange
  /// through on the CPU; null when the process runs alone.
  Communicator *communicator = nullptr;

  /// A required attribute, or an error naming it.
  Status requireInt(std::string_view attr, int64_t &out) const;
  Status requireFloat(std::string_view attr, double &out) const;
  /// An error "<name>: <message>".
  Status fail(const std::string &message) const;
};

using KernelFn = Status (*)(const KernelArgs &args);

/// Runs kernel `fn` (called `name`) on `inputs` and `outputs` as a step of
/// the call `args`, on its backend: a fused kernel running the kernels it
/// fuses. An error names both kernels ("<args.name>: <name>: ...").
Status runAsPart(const KernelArgs &args, KernelFn fn, const char *name,
                 std::vector<TensorView> inputs, std::vector<TensorView> outputs,
                 const KernelAttrs *attrs);

/// A backend's kernels by name: each backend builds one from
/// kernel_names.def with its own functions.
class KernelTable {
public:
  explicit KernelTable(std::vector<std::pair<std::string, KernelFn>> entries);
  /// The kernel called `name`, or null.
  KernelFn find(std::string_view name) const;
  /// Every name in the table, sorted.
  std::vector<std::string> names() const;

private:
  /// Sorted by name.
  std::vector<std::pair<std::string, KernelFn>> entries_;
};

} // namespace g3rt

#endif // G3MOE_RUNTIME_KERNELS_KERNEL_H
