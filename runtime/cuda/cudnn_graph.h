//===- cudnn_graph.h - a small builder over cuDNN's graph API ---*- C++ -*-===//
//
// cuDNN's backend ("graph") API describes work as a graph of tensors and
// operations (matmul, pointwise, reduction, reshape), asks the library's
// heuristics for an engine that fuses the whole graph, and runs the resulting
// execution plan on a variant pack of device pointers. This file wraps the
// handful of calls the attention graphs need; every failure is reported as a
// Status that names the descriptor attribute cuDNN refused.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_CUDNN_GRAPH_H
#define G3MOE_RUNTIME_CUDA_CUDNN_GRAPH_H

#include "runtime/base/status.h"

#include <cudnn.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace g3rt::cuda::cudnn {

/// One owned backend descriptor.
class Descriptor {
public:
  Descriptor() = default;
  Descriptor(const Descriptor &) = delete;
  Descriptor &operator=(const Descriptor &) = delete;
  Descriptor(Descriptor &&other) noexcept : desc_(other.desc_) { other.desc_ = nullptr; }
  Descriptor &operator=(Descriptor &&other) noexcept;
  ~Descriptor();

  /// Creates a descriptor of `type` (replacing any held one).
  Status create(cudnnBackendDescriptorType_t type);
  cudnnBackendDescriptor_t get() const { return desc_; }

private:
  cudnnBackendDescriptor_t desc_ = nullptr;
};

/// A finalized execution plan and the device workspace it needs.
struct Plan {
  std::shared_ptr<Descriptor> plan;
  int64_t workspaceBytes = 0;
};

/// A tensor of the graph under construction (its unique id).
using TensorId = int64_t;

/// Builds one operation graph. Tensors are named by caller-chosen unique ids
/// for the ones bound at execution time, and by ids the builder picks for
/// virtual ones. The first error sticks and is returned by finish().
class GraphBuilder {
public:
  explicit GraphBuilder(cudnnHandle_t handle) : handle_(handle) {}

  /// A tensor bound to device memory at execution time.
  TensorId tensor(TensorId uid, std::vector<int64_t> dims, std::vector<int64_t> strides,
                  cudnnDataType_t type);
  /// A scalar passed by value (its host value is bound at execution time).
  TensorId scalar(TensorId uid, cudnnDataType_t type);
  /// An intermediate that never reaches memory.
  TensorId virtualTensor(std::vector<int64_t> dims, std::vector<int64_t> strides,
                         cudnnDataType_t type = CUDNN_DATA_FLOAT);

  /// y = mode(x[, b[, t]]), computed in `math`.
  void pointwise(cudnnPointwiseMode_t mode, TensorId x, TensorId y, TensorId b = -1,
                 TensorId t = -1, cudnnDataType_t math = CUDNN_DATA_FLOAT);
  /// y = the index of each element of x along `axis`.
  void genIndex(TensorId x, TensorId y, int64_t axis);
  /// c = a @ b (batched over the leading dims, broadcast where they are 1 or divide).
  void matmul(TensorId a, TensorId b, TensorId c);
  /// y = x reduced with `op` over the dims where y has extent 1.
  void reduction(cudnnReduceTensorOp_t op, TensorId x, TensorId y);
  /// y = x viewed with y's dims and strides.
  void reshape(TensorId x, TensorId y);

  /// Finalizes the graph and the first engine configuration the heuristics
  /// offer that cuDNN accepts. `what` names the graph in errors.
  Status finish(const std::string &what, Plan &out);

private:
  struct TensorDesc {
    TensorId uid;
    std::vector<int64_t> dims;
    std::shared_ptr<Descriptor> desc;
  };
  TensorId addTensor(TensorId uid, std::vector<int64_t> dims, std::vector<int64_t> strides,
                     cudnnDataType_t type, bool isVirtual, bool byValue);
  cudnnBackendDescriptor_t find(TensorId id);
  /// Adds operation `op` (and `inner`, the descriptor it refers to) when `s`
  /// and every earlier step succeeded; else records the first error.
  void commit(const Status &s, const std::string &what, Descriptor op, Descriptor inner);

  cudnnHandle_t handle_;
  std::vector<TensorDesc> tensors_;
  std::vector<std::shared_ptr<Descriptor>> keep_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  TensorId nextVirtual_ = int64_t(1) << 40;
  int64_t genAxis_ = -1;
  Status error_;
};

/// Runs `plan` on `stream` with the given (uid, pointer) bindings and
/// `workspace` (at least plan.workspaceBytes).
Status execute(cudnnHandle_t handle, const Plan &plan, const std::vector<TensorId> &uids,
               const std::vector<void *> &pointers, void *workspace);

} // namespace g3rt::cuda::cudnn

#endif // G3MOE_RUNTIME_CUDA_CUDNN_GRAPH_H
