//===- kernel_checks.h - argument checks shared by all kernels --*- C++ -*-===//
//
// Every backend validates a kernel's arguments the same way before touching
// memory (host-side checks on shapes, element types and counts; values on the
// device are another matter), so the checks and their messages live here once.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_KERNELS_KERNEL_CHECKS_H
#define G3MOE_RUNTIME_KERNELS_KERNEL_CHECKS_H

#include "runtime/kernels/kernel.h"

#include <string>
#include <vector>

namespace g3rt::checks {

/// `std::to_string`, short.
inline std::string str(int64_t v) { return std::to_string(v); }

/// "BF16 [2, 16, 64]".
inline std::string describe(const TensorView &t) {
  return std::string(dtypeName(t.dtype)) + " " + shapeString(t.shape);
}

/// Product of all dimensions but the last (TensorView::rows divides by the
/// last dimension, which may be 0).
inline int64_t leadingRows(const TensorView &t) {
  int64_t n = 1;
  for (size_t d = 0; d + 1 < t.shape.size(); ++d)
    n *= t.shape[d];
  return n;
}

/// Exactly `inputs` inputs and `outputs` outputs.
inline Status checkCounts(const KernelArgs &args, size_t inputs, size_t outputs) {
  if (args.inputs.size() != inputs || args.outputs.size() != outputs)
    return args.fail("expected " + str(int64_t(inputs)) + " inputs and " +
                     str(int64_t(outputs)) + " outputs, got " +
                     str(int64_t(args.inputs.size())) + " and " +
                     str(int64_t(args.outputs.size())));
  return Status();
}

/// A float tensor of rank at least `minRank`.
inline Status checkFloat(const KernelArgs &args, const TensorView &t, const char *what,
                         int64_t minRank = 1) {
  if (!isFloat(t.dtype))
    return args.fail(std::string(what) + " must be a float tensor, got " + describe(t));
  if (t.rank() < minRank)
    return args.fail(std::string(what) + " must have rank >= " + str(minRank) + ", got " +
                     describe(t));
  return Status();
}

/// An i32 or i64 tensor.
inline Status checkIndex(const KernelArgs &args, const TensorView &t, const char *what) {
  if (t.dtype != DType::I32 && t.dtype != DType::I64)
    return args.fail(std::string(what) + " must be an integer tensor, got " + describe(t));
  return Status();
}

/// An i32 tensor.
inline Status checkI32(const KernelArgs &args, const TensorView &t, const char *what) {
  if (t.dtype != DType::I32)
    return args.fail(std::string(what) + " must be i32, got " + describe(t));
  return Status();
}

/// Exactly shape `want`.
inline Status checkShape(const KernelArgs &args, const TensorView &t, const char *what,
                         const std::vector<int64_t> &want) {
  if (t.shape != want)
    return args.fail(std::string(what) + " has shape " + shapeString(t.shape) +
                     ", expected " + shapeString(want));
  return Status();
}

/// `t` is [rows, cols] up to how its leading dimensions are split.
inline Status checkRowsCols(const KernelArgs &args, const TensorView &t, const char *what,
                            int64_t rows, int64_t cols) {
  if (t.rank() < 1 || t.dim(-1) != cols || leadingRows(t) != rows)
    return args.fail(std::string(what) + " has shape " + shapeString(t.shape) +
                     ", expected " + str(rows) + " rows of " + str(cols));
  return Status();
}

/// A float tensor of one element.
inline Status checkScalar(const KernelArgs &args, const TensorView &t, const char *what) {
  G3RT_RETURN_IF_ERROR(checkFloat(args, t, what, 0));
  if (t.numel() != 1)
    return args.fail(std::string(what) + " must be a scalar, got " + describe(t));
  return Status();
}

} // namespace g3rt::checks

#endif // G3MOE_RUNTIME_KERNELS_KERNEL_CHECKS_H
