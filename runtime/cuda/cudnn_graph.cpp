//===- cudnn_graph.cpp - a small builder over cuDNN's graph API -----------===//

#include "runtime/cuda/cudnn_graph.h"

#include <cstring>

namespace g3rt::cuda::cudnn {
namespace {

std::string lastError(cudnnStatus_t status) {
  char detail[512] = {0};
  cudnnGetLastErrorString(detail, sizeof(detail));
  std::string out = cudnnGetErrorString(status);
  if (detail[0])
    out += std::string(" (") + detail + ")";
  return out;
}

Status check(cudnnStatus_t status, const char *what) {
  if (status == CUDNN_STATUS_SUCCESS)
    return Status();
  return Status::error(std::string("cuDNN: ") + what + ": " + lastError(status));
}

Status set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
           cudnnBackendAttributeType_t type, int64_t count, const void *value, const char *what) {
  return check(cudnnBackendSetAttribute(d, name, type, count, value), what);
}

Status setDesc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
               cudnnBackendDescriptor_t value, const char *what) {
  return set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value, what);
}

Status finalize(cudnnBackendDescriptor_t d, const char *what) {
  return check(cudnnBackendFinalize(d), what);
}

// The handle attributes are marked deprecated in cuDNN 9 headers, yet the
// graph and plan descriptors still need a handle to finalize.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
constexpr cudnnBackendAttributeName_t kGraphHandle = CUDNN_ATTR_OPERATIONGRAPH_HANDLE;
constexpr cudnnBackendAttributeName_t kPlanHandle = CUDNN_ATTR_EXECUTION_PLAN_HANDLE;
#pragma GCC diagnostic pop

} // namespace

Descriptor &Descriptor::operator=(Descriptor &&other) noexcept {
  if (this != &other) {
    if (desc_)
      cudnnBackendDestroyDescriptor(desc_);
    desc_ = other.desc_;
    other.desc_ = nullptr;
  }
  return *this;
}

Descriptor::~Descriptor() {
  if (desc_)
    cudnnBackendDestroyDescriptor(desc_);
}

Status Descriptor::create(cudnnBackendDescriptorType_t type) {
  if (desc_)
    cudnnBackendDestroyDescriptor(desc_);
  desc_ = nullptr;
  return check(cudnnBackendCreateDescriptor(type, &desc_), "creating a descriptor");
}

TensorId GraphBuilder::addTensor(TensorId uid, std::vector<int64_t> dims,
                                 std::vector<int64_t> strides, cudnnDataType_t type, bool isVirtual,
                                 bool byValue) {
  if (!error_.ok())
    return uid;
  auto d = std::make_shared<Descriptor>();
  const int64_t rank = int64_t(dims.size());
  const int64_t alignment = 16;
  Status s = d->create(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  cudnnBackendDescriptor_t t = d->get();
  if (s.ok())
    s = set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, "tensor type");
  if (s.ok())
    s = set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, rank, dims.data(), "tensor dims");
  if (s.ok())
    s = set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, rank, strides.data(), "tensor strides");
  if (s.ok())
    s = set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor id");
  if (s.ok())
    s = set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment,
            "tensor alignment");
  if (s.ok())
    s = set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &isVirtual, "tensor virtual");
  if (s.ok() && byValue)
    s = set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &byValue, "tensor by value");
  if (s.ok())
    s = finalize(t, "finalizing a tensor");
  if (!s.ok()) {
    error_ = s.withContext("tensor " + std::to_string(uid));
    return uid;
  }
  tensors_.push_back({uid, std::move(dims), std::move(d)});
  return uid;
}

TensorId GraphBuilder::tensor(TensorId uid, std::vector<int64_t> dims, std::vector<int64_t> strides,
                              cudnnDataType_t type) {
  return addTensor(uid, std::move(dims), std::move(strides), type, false, false);
}

TensorId GraphBuilder::scalar(TensorId uid, cudnnDataType_t type) {
  return addTensor(uid, {1, 1, 1, 1}, {1, 1, 1, 1}, type, false, true);
}

TensorId GraphBuilder::virtualTensor(std::vector<int64_t> dims, std::vector<int64_t> strides,
                                     cudnnDataType_t type) {
  return addTensor(nextVirtual_++, std::move(dims), std::move(strides), type, true, false);
}

cudnnBackendDescriptor_t GraphBuilder::find(TensorId id) {
  for (const TensorDesc &t : tensors_)
    if (t.uid == id)
      return t.desc->get();
  if (error_.ok())
    error_ = Status::error("cuDNN graph: unknown tensor " + std::to_string(id));
  return nullptr;
}

void GraphBuilder::commit(const Status &s, const std::string &what, Descriptor op,
                          Descriptor inner) {
  if (!error_.ok()) // an earlier failure (an unknown tensor) explains this one
    return;
  if (!s.ok()) {
    error_ = s.withContext(what);
    return;
  }
  auto p = std::make_shared<Descriptor>(std::move(op));
  ops_.push_back(p->get());
  keep_.push_back(std::move(p));
  keep_.push_back(std::make_shared<Descriptor>(std::move(inner)));
}

void GraphBuilder::pointwise(cudnnPointwiseMode_t mode, TensorId x, TensorId y, TensorId b,
                             TensorId t, cudnnDataType_t math) {
  if (!error_.ok())
    return;
  Descriptor pw, op;
  Status s = pw.create(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  if (s.ok())
    s = set(pw.get(), CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode,
            "pointwise mode");
  if (s.ok())
    s = set(pw.get(), CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math,
            "pointwise precision");
  if (s.ok() && mode == CUDNN_POINTWISE_GEN_INDEX)
    s = set(pw.get(), CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &genAxis_, "index axis");
  if (s.ok())
    s = finalize(pw.get(), "finalizing a pointwise descriptor");
  if (s.ok())
    s = op.create(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw.get(),
                "pointwise descriptor");
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_XDESC, find(x), "pointwise x");
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_YDESC, find(y), "pointwise y");
  if (s.ok() && b >= 0)
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_BDESC, find(b), "pointwise b");
  if (s.ok() && t >= 0)
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_TDESC, find(t), "pointwise t");
  const float one = 1.0f;
  if (s.ok())
    s = set(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one, "alpha1");
  if (s.ok())
    s = set(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one, "alpha2");
  if (s.ok())
    s = finalize(op.get(), "finalizing a pointwise operation");
  commit(s, "pointwise mode " + std::to_string(int(mode)) + " -> " + std::to_string(y),
         std::move(op), std::move(pw));
}

void GraphBuilder::genIndex(TensorId x, TensorId y, int64_t axis) {
  genAxis_ = axis;
  pointwise(CUDNN_POINTWISE_GEN_INDEX, x, y, -1, -1, CUDNN_DATA_INT32);
}

void GraphBuilder::matmul(TensorId a, TensorId b, TensorId c) {
  if (!error_.ok())
    return;
  Descriptor mm, op;
  const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  Status s = mm.create(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
  if (s.ok())
    s = set(mm.get(), CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute,
            "matmul compute type");
  if (s.ok())
    s = finalize(mm.get(), "finalizing a matmul descriptor");
  if (s.ok())
    s = op.create(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_MATMUL_ADESC, find(a), "matmul a");
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_MATMUL_BDESC, find(b), "matmul b");
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_MATMUL_CDESC, find(c), "matmul c");
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_MATMUL_DESC, mm.get(), "matmul descriptor");
  if (s.ok())
    s = finalize(op.get(), "finalizing a matmul");
  commit(s, "matmul -> " + std::to_string(c), std::move(op), std::move(mm));
}

void GraphBuilder::reduction(cudnnReduceTensorOp_t reduceOp, TensorId x, TensorId y) {
  if (!error_.ok())
    return;
  Descriptor red, op;
  const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  Status s = red.create(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
  if (s.ok())
    s = set(red.get(), CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1,
            &reduceOp, "reduction operator");
  if (s.ok())
    s = set(red.get(), CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute,
            "reduction compute type");
  if (s.ok())
    s = finalize(red.get(), "finalizing a reduction descriptor");
  if (s.ok())
    s = op.create(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_REDUCTION_XDESC, find(x), "reduction x");
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_REDUCTION_YDESC, find(y), "reduction y");
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_REDUCTION_DESC, red.get(), "reduction descriptor");
  if (s.ok())
    s = finalize(op.get(), "finalizing a reduction");
  commit(s, "reduction -> " + std::to_string(y), std::move(op), std::move(red));
}

void GraphBuilder::reshape(TensorId x, TensorId y) {
  if (!error_.ok())
    return;
  Descriptor op;
  Status s = op.create(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_RESHAPE_XDESC, find(x), "reshape x");
  if (s.ok())
    s = setDesc(op.get(), CUDNN_ATTR_OPERATION_RESHAPE_YDESC, find(y), "reshape y");
  if (s.ok())
    s = finalize(op.get(), "finalizing a reshape");
  commit(s, "reshape -> " + std::to_string(y), std::move(op), Descriptor());
}

Status GraphBuilder::finish(const std::string &what, Plan &out) {
  if (!error_.ok())
    return error_.withContext(what);
  auto fail = [&](const Status &s) { return s.withContext(what); };
  Descriptor graph;
  G3RT_RETURN_IF_ERROR(fail(graph.create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)));
  G3RT_RETURN_IF_ERROR(
      fail(set(graph.get(), CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
               int64_t(ops_.size()), ops_.data(), "graph operations")));
  G3RT_RETURN_IF_ERROR(
      fail(set(graph.get(), kGraphHandle, CUDNN_TYPE_HANDLE, 1, &handle_, "graph handle")));
  G3RT_RETURN_IF_ERROR(fail(finalize(graph.get(), "finalizing the operation graph")));

  std::string tried;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    Descriptor heur;
    cudnnBackendDescriptor_t g = graph.get();
    G3RT_RETURN_IF_ERROR(fail(heur.create(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)));
    G3RT_RETURN_IF_ERROR(
        fail(setDesc(heur.get(), CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, g, "heuristics graph")));
    G3RT_RETURN_IF_ERROR(fail(set(heur.get(), CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1,
                                  &mode, "heuristics mode")));
    Status s = finalize(heur.get(), "finalizing the heuristics");
    if (!s.ok()) {
      tried += " [" + s.message() + "]";
      continue;
    }
    int64_t count = 0;
    G3RT_RETURN_IF_ERROR(
        fail(check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                            CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr),
                   "counting engine configurations")));
    std::vector<Descriptor> configs(size_t(std::max<int64_t>(count, 0)));
    std::vector<cudnnBackendDescriptor_t> raw;
    for (Descriptor &c : configs) {
      G3RT_RETURN_IF_ERROR(fail(c.create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR)));
      raw.push_back(c.get());
    }
    int64_t got = 0;
    if (count > 0)
      G3RT_RETURN_IF_ERROR(fail(
          check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, raw.data()),
                "reading engine configurations")));
    for (int64_t i = 0; i < got; ++i) {
      auto plan = std::make_shared<Descriptor>();
      G3RT_RETURN_IF_ERROR(fail(plan->create(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)));
      s = set(plan->get(), kPlanHandle, CUDNN_TYPE_HANDLE, 1, &handle_, "plan handle");
      if (s.ok())
        s = setDesc(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, raw[size_t(i)],
                    "plan engine configuration");
      if (s.ok())
        s = finalize(plan->get(), "finalizing a plan");
      if (!s.ok()) {
        if (tried.size() < 2000)
          tried += " [" + s.message() + "]";
        continue;
      }
      int64_t workspace = 0;
      G3RT_RETURN_IF_ERROR(
          fail(check(cudnnBackendGetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                              CUDNN_TYPE_INT64, 1, &count, &workspace),
                     "reading the plan's workspace size")));
      out.plan = std::move(plan);
      out.workspaceBytes = workspace;
      return Status();
    }
  }
  return Status::error(what + ": cuDNN offers no engine for this graph;" + tried);
}

Status execute(cudnnHandle_t handle, const Plan &plan, const std::vector<TensorId> &uids,
               const std::vector<void *> &pointers, void *workspace) {
  Descriptor pack;
  G3RT_RETURN_IF_ERROR(pack.create(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR));
  G3RT_RETURN_IF_ERROR(set(pack.get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                           int64_t(uids.size()), uids.data(), "variant pack ids"));
  G3RT_RETURN_IF_ERROR(set(pack.get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                           int64_t(pointers.size()), pointers.data(), "variant pack pointers"));
  G3RT_RETURN_IF_ERROR(set(pack.get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1,
                           &workspace, "variant pack workspace"));
  G3RT_RETURN_IF_ERROR(finalize(pack.get(), "finalizing the variant pack"));
  return check(cudnnBackendExecute(handle, plan.plan->get(), pack.get()), "executing a plan");
}

} // namespace g3rt::cuda::cudnn
