//===- cuda_backend.cpp - the CUDA backend for the training loop ----------===//
//
// A Backend over CudaExecutor. The device is the placement's index (the
// local rank in g3moe-run; CUDA_VISIBLE_DEVICES picks the cards), every
// call waits for the GPU, so errors surface at the call that caused them,
// and a job of several processes sums the gradients with NCCL.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_backend.h"

#include "runtime/cuda/cuda_context.h"
#include "runtime/cuda/cuda_executor.h"
#include "runtime/cuda/nccl_reducer.h"
#include "runtime/dist/communicator.h"
#include "runtime/exec/backend.h"

#include <cuda_runtime.h>

namespace g3rt::cuda {

namespace {

class CudaBackend final : public Backend, public DeviceJob {
public:
  CudaBackend(std::unique_ptr<CudaExecutor> executor, std::string deviceName,
              const Placement &placement)
      : executor_(std::move(executor)), deviceName_(std::move(deviceName)), placement_(placement) {}

  std::string description() const override { return "CUDA on " + deviceName_; }
  const Placement &placement() const override { return placement_; }
  /// The step's collectives go through this backend's NCCL communicator.
  void attachJob() { executor_->setJob(this); }

  Status uploadState(const HostState &host) override { return executor_->upload(host); }
  Status uploadInputs(const HostState &host) override {
    return executor_->upload(host, BufferKind::Input);
  }
  Status downloadState(HostState &host) override {
    G3RT_RETURN_IF_ERROR(executor_->download(host, BufferKind::Param, /*onlyTrainable=*/true));
    for (BufferKind k : {BufferKind::GradAcc, BufferKind::ExpAvg, BufferKind::ExpAvgSq})
      G3RT_RETURN_IF_ERROR(executor_->download(host, k));
    return Status();
  }

  Status zeroGradients() override { return executor_->zeroGradients(); }
  Status run(const std::string &function) override { return executor_->run(function); }
  void setOneDocumentPerRow(bool one) override { executor_->setOneDocumentPerRow(one); }

  Status sumGradients(Communicator &job, bool &done) override {
    done = haveNccl();
    if (!done)
      return Status();
    G3RT_RETURN_IF_ERROR(joinNccl(job));
    return nccl_->allReduceSum(executor_->stateOf(BufferKind::GradAcc), executor_->stream());
  }

  // The step's collectives (DeviceJob), over the same NCCL communicator.
  int processes() const override { return placement_.worldSize; }
  int rank() const override { return placement_.rank; }
  Status allReduceSum(const std::vector<TensorView> &tensors, cudaStream_t stream) override {
    G3RT_RETURN_IF_ERROR(joinNccl(*placement_.job));
    std::vector<std::pair<std::string, TensorView>> named;
    for (size_t i = 0; i < tensors.size(); ++i)
      named.push_back({"tensor " + std::to_string(i), tensors[i]});
    return nccl_->allReduceSum(named, stream);
  }
  Status reduceSum(const std::vector<TensorView> &tensors, int root, cudaStream_t stream) override {
    G3RT_RETURN_IF_ERROR(joinNccl(*placement_.job));
    return nccl_->reduceSum(tensors, root, stream);
  }
  Status broadcast(const std::vector<TensorView> &tensors, int root, cudaStream_t stream) override {
    G3RT_RETURN_IF_ERROR(joinNccl(*placement_.job));
    return nccl_->broadcast(tensors, root, stream);
  }

  Status readOutput(const std::string &function, const std::string &name,
                    std::vector<uint8_t> &bytes, TensorView &view) override {
    const FunctionDesc *fn = executor_->program().findFunction(function);
    int64_t index = fn ? fn->findOutput(name) : -1;
    if (index < 0)
      return Status::error("no output '" + name + "' of '" + function + "'");
    TensorView device = executor_->deviceView(*fn, uint32_t(index));
    bytes.resize(device.bytes());
    G3RT_RETURN_IF_ERROR(executor_->toHost(device, bytes.data()));
    view = device;
    view.data = bytes.data();
    return Status();
  }

private:
  /// Joined at the first collective or gradient sum: every rank reaches it
  /// at the same point of the step.
  Status joinNccl(Communicator &job) {
    if (nccl_)
      return Status();
    if (!haveNccl())
      return Status::error("this g3moe-run was built without NCCL, which a job of several "
                           "processes on CUDA needs");
    return NcclReducer::create(job, executor_->device(), job.timeout(), nccl_);
  }

  std::unique_ptr<CudaExecutor> executor_;
  std::string deviceName_;
  Placement placement_;
  std::unique_ptr<NcclReducer> nccl_;
};

int countDevices(std::string &why) {
  int count = 0;
  // Without a driver or a device this returns an error rather than 0
  // (cudaErrorNoDevice, cudaErrorInsufficientDriver): both mean "none here".
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    why = cudaGetErrorString(e);
    // Clear the sticky error so later runtime calls are not blamed for it.
    cudaGetLastError();
    return 0;
  }
  if (count == 0)
    why = "cudaGetDeviceCount found none";
  return count;
}

Status create(const StepProgram &program, HostState &, const Placement &placement,
              std::unique_ptr<Backend> &out) {
  const int index = placement.device;
  cudaDeviceProp prop{};
  cudaError_t e = cudaGetDeviceProperties(&prop, index);
  if (e != cudaSuccess)
    return Status::error("CUDA device " + std::to_string(index) + ": " + cudaGetErrorString(e));
  std::unique_ptr<CudaExecutor> executor;
  G3RT_RETURN_IF_ERROR(CudaExecutor::create(program, index, executor, placement.rank));
  auto backend = std::make_unique<CudaBackend>(std::move(executor), prop.name, placement);
  if (placement.job && placement.job->size() > 1)
    backend->attachJob();
  out = std::move(backend);
  return Status();
}

const BackendProvider kProvider = {"cuda", countDevices, create};

} // namespace

void registerCudaBackend() { registerCudaBackendProvider(&kProvider); }

} // namespace g3rt::cuda
