//===- tensor.h - typed views of buffers ------------------------*- C++ -*-===//
//
// A TensorView is a pointer, an element type and a static shape: what a kernel
// receives for each operand. Views never own memory; the host state
// (runtime/exec/state.h) and each backend's arena do.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_TENSOR_H
#define G3MOE_RUNTIME_BASE_TENSOR_H

#include "runtime/base/dtype.h"
#include "runtime/base/status.h"

#include <cstdint>
#include <string>
#include <vector>

namespace g3rt {

/// A non-owning view of a dense row-major tensor.
struct TensorView {
  void *data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;

  /// Number of elements (1 for a scalar).
  int64_t numel() const;
  /// Bytes the elements occupy.
  size_t bytes() const { return size_t(numel()) * dtypeSize(dtype); }
  int64_t rank() const { return int64_t(shape.size()); }
  /// Size of dimension `d`, counted from the back when negative.
  int64_t dim(int64_t d) const { return shape[size_t(d < 0 ? d + rank() : d)]; }
  /// Product of all dimensions but the last.
  int64_t rows() const { return shape.empty() ? 1 : numel() / shape.back(); }

  float *f32() const { return static_cast<float *>(data); }
  int32_t *i32() const { return static_cast<int32_t *>(data); }
  int64_t *i64() const { return static_cast<int64_t *>(data); }

  /// Element `i` as fp32 (float types only).
  float load(int64_t i) const;
  /// Stores `v` at element `i`, rounding to the element type (float types only).
  void store(int64_t i, float v) const;
};

/// The float elements of `t` widened to fp32.
std::vector<float> toFloat(const TensorView &t);
/// Writes `values` (t.numel() of them) into `t`, rounding to its element type.
void fromFloat(const TensorView &t, const std::vector<float> &values);

/// "[2, 16, 64]".
std::string shapeString(const std::vector<int64_t> &shape);

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_TENSOR_H
