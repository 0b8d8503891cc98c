//===- cuda_backend.cpp - the CUDA backend for the training loop ----------===//
//
// A Backend over CudaExecutor. The device is the placement's index (the
// local rank in g3moe-run; CUDA_VISIBLE_DEVICES picks the cards), every
// call waits for the GPU, so errors surface at the call that caused them,
// and a job of several processes sums the gradients with NCCL.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_backend.h"

#include "runtime/cuda/cuda_executor.h"
#include "runtime/cuda/nccl_reducer.h"
#include "runtime/dist/communicator.h"
#include "runtime/exec/backend.h"

#include <cuda_runtime.h>

namespace g3rt::cuda {

namespace {

class CudaBackend final : public Backend {
public:
  CudaBackend(std::unique_ptr<CudaExecutor> executor, std::string deviceName,
              const Placement &placement)
      : executor_(std::move(executor)), deviceName_(std::move(deviceName)), placement_(placement) {}

  std::string description() const override { return "CUDA on " + deviceName_; }
  const Placement &placement() const override { return placement_; }

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
    // Joined at the first sum: every rank reaches it at the same point.
    if (!nccl_)
      G3RT_RETURN_IF_ERROR(NcclReducer::create(job, executor_->device(), job.timeout(), nccl_));
    return nccl_->allReduceSum(executor_->stateOf(BufferKind::GradAcc), executor_->stream());
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
  G3RT_RETURN_IF_ERROR(CudaExecutor::create(program, index, executor));
  out = std::make_unique<CudaBackend>(std::move(executor), prop.name, placement);
  return Status();
}

const BackendProvider kProvider = {"cuda", countDevices, create};

} // namespace

void registerCudaBackend() { registerCudaBackendProvider(&kProvider); }

} // namespace g3rt::cuda
