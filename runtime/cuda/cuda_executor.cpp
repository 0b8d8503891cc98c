//===- cuda_executor.cpp - runs a verified step on one GPU ----------------===//

#include "runtime/cuda/cuda_executor.h"

#include "runtime/base/host_memory.h"
#include "runtime/base/units.h"
#include "runtime/cuda/cuda_context.h"
#include "runtime/cuda/lt_matmul.h"
#include "runtime/exec/ownership.h"
#include "runtime/kernels/scratch_bounds.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>

namespace g3rt::cuda {

namespace {

Status check(cudaError_t e, const std::string &what) {
  if (e == cudaSuccess)
    return Status();
  return Status::error(what + ": " + cudaGetErrorString(e));
}

/// G3MOE_CUDA_ATTENTION (unset: auto) picks the attention kernels
/// (cudnn_attention.h); an unknown value is an error.
Status attentionImplFromEnvironment(AttentionImpl &impl) {
  const char *v = std::getenv("G3MOE_CUDA_ATTENTION");
  std::string s = v ? v : "auto";
  if (s == "auto")
    impl = AttentionImpl::Auto;
  else if (s == "own")
    impl = AttentionImpl::Own;
  else if (s == "cudnn")
    impl = AttentionImpl::Cudnn;
  else
    return Status::error("G3MOE_CUDA_ATTENTION must be auto, own or cudnn, got '" + s + "'");
  return Status();
}

/// G3MOE_EXPERT_GEMM picks how the wide expert products run
/// (CudaContext::groupedExperts). Unset: the grouped kernel on a Hopper GPU
/// (compute capability 9.0, what grouped_gemm.cu is built for; the faster
/// step where measured, replayed as a graph), per-expert cuBLAS elsewhere.
/// An unknown value, or `grouped` on another GPU, is an error.
Status expertGemmFromEnvironment(int device, bool &grouped) {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  const bool hopper = major == 9 && minor == 0;
  const char *v = std::getenv("G3MOE_EXPERT_GEMM");
  std::string s = v ? v : hopper ? "grouped" : "cublas";
  if (s != "grouped" && s != "cublas")
    return Status::error("G3MOE_EXPERT_GEMM must be grouped or cublas, got '" + s + "'");
  if (s == "grouped" && !hopper)
    return Status::error("G3MOE_EXPERT_GEMM=grouped needs a Hopper GPU (compute capability 9.0); "
                         "device " +
                         std::to_string(device) + " is " + std::to_string(major) + "." +
                         std::to_string(minor));
  grouped = s == "grouped";
  return Status();
}

/// Scratch memory kernels may use within one launch (sorting, reductions).
constexpr size_t kWorkspaceBytes = size_t(256) << 20;
/// Range-check records an entry point may defer (DeviceChecks): one per
/// input of each of its instructions bounds what its kernels take (a MoE
/// kernel one, the auxiliary losses one per layer's indices), so that no
/// check of the largest entry point waits for the device, which a CUDA
/// graph's capture cannot. (A fixed 4,096 ran out at 262,144 tokens: 32
/// feed-forward chunks in each of 26 MoE layers, the micro-step then ran
/// kernel by kernel.)
size_t checkRecordCapacity(const StepProgram &program) {
  size_t most = 1;
  for (const FunctionDesc &fn : program.functions) {
    size_t records = 0;
    for (const InstrDesc &instr : fn.instrs)
      records += std::max<size_t>(1, instr.inputs.size());
    most = std::max(most, records);
  }
  return most;
}

/// Collects the range checks of the kernels launched while it lives
/// (DeviceChecks::deferred); single kernels outside it check at once.
class DeferChecks {
public:
  explicit DeferChecks(DeviceChecks &c) : c_(c) {
    c_.deferred = true;
    c_.pending.clear();
  }
  ~DeferChecks() { c_.deferred = false; }

private:
  DeviceChecks &c_;
};

/// The first failed check of `pending`, read from `c`'s records once the
/// kernels that fill them ran.
Status settleChecks(const DeviceChecks &c, const std::vector<DeviceChecks::Pending> &pending) {
  if (pending.empty())
    return Status();
  const size_t used = pending.back().first + pending.back().count;
  std::vector<unsigned long long> records(used);
  G3RT_RETURN_IF_ERROR(
      check(cudaMemcpy(records.data(), c.records, used * sizeof(uint64_t), cudaMemcpyDeviceToHost),
            "reading the range-check records"));
  for (const DeviceChecks::Pending &p : pending)
    G3RT_RETURN_IF_ERROR(p.verdict(records.data() + p.first));
  return Status();
}

/// The bound on cuDNN attention's scratch for the program's largest
/// attention call (scratch_bounds.h), as the memory planner counts it.
uint64_t attentionScratch(const StepProgram &program) {
  uint64_t most = 0;
  for (const FunctionDesc &fn : program.functions)
    for (const InstrDesc &in : fn.instrs) {
      if (in.inputs.empty())
        continue;
      const std::vector<int64_t> &q = fn.buffers[in.inputs[0]].shape;
      most = std::max(most, launchScratchBound(in.kernel, q.data(), q.size(), in.inputs.size()));
    }
  return most;
}

/// Refuses, before anything is allocated, a step whose planned device memory
/// (arena, persistent state, workspace, attention scratch) exceeds what the
/// device has free: a step compiled for a larger card would otherwise fail
/// at some allocation or, worse, part-way through loading or training.
Status checkDeviceMemory(const StepProgram &program, int device, int rank) {
  uint64_t state = 0;
  G3RT_RETURN_IF_ERROR(forEachStateBuffer(
      program,
      [&](const BufferDesc &b) {
        state += b.bytes;
        return Status();
      },
      rank));
  const uint64_t scratch = attentionScratch(program);
  const uint64_t need = program.arenaBytes + state + kWorkspaceBytes + scratch;
  size_t free = 0, total = 0;
  G3RT_RETURN_IF_ERROR(check(cudaMemGetInfo(&free, &total), "reading the free device memory"));
  if (need <= free)
    return Status();
  return Status::error("the step needs " + gibText(need) + " of device memory (arena " +
                       gibText(program.arenaBytes) + ", parameters and optimizer state " +
                       gibText(state) + ", workspace " + gibText(kWorkspaceBytes) +
                       ", attention scratch " + gibText(scratch) + ") but CUDA device " +
                       std::to_string(device) + " has " + gibText(free) + " free of " +
                       gibText(total) + ": compile it with a smaller memory_budget_gb");
}

} // namespace

struct CudaExecutor::Graph {
  /// The entry point ran once kernel by kernel (what kernels create on first
  /// use exists).
  bool warmed = false;
  cudaGraphExec_t exec = nullptr;
  /// CudaContext::reallocations when captured.
  uint64_t reallocations = 0;
  /// Why capture failed; it is then not tried again.
  std::string failure;
  /// The range checks of the captured kernels, read after each replay.
  std::vector<DeviceChecks::Pending> checks;
  ~Graph() {
    if (exec)
      cudaGraphExecDestroy(exec);
  }
};

CudaExecutor::CudaExecutor(const StepProgram &program) : program_(program) {}

Status CudaExecutor::create(const StepProgram &program, int device,
                            std::unique_ptr<CudaExecutor> &out, int rank) {
  std::unique_ptr<CudaExecutor> ex(new CudaExecutor(program));
  ex->device_ = device;
  ex->rank_ = rank;
  G3RT_RETURN_IF_ERROR(resolveKernels(program, "CUDA", findCudaKernel, ex->kernels_));
  G3RT_RETURN_IF_ERROR(
      check(cudaSetDevice(device), "selecting CUDA device " + std::to_string(device)));
  G3RT_RETURN_IF_ERROR(checkDeviceMemory(program, device, rank));
  G3RT_RETURN_IF_ERROR(checkHostMemory(program.hostBytes, "offloaded activations"));
  ex->ctx_ = std::make_unique<CudaContext>();
  CudaContext &ctx = *ex->ctx_;
  G3RT_RETURN_IF_ERROR(attentionImplFromEnvironment(ctx.attention));
  G3RT_RETURN_IF_ERROR(expertGemmFromEnvironment(device, ctx.groupedExperts));
  if (const char *g = std::getenv("G3MOE_CUDA_GRAPHS"))
    ex->graphsEnabled_ = std::string(g) != "0";
  G3RT_RETURN_IF_ERROR(check(cudaStreamCreate(&ctx.stream), "creating a CUDA stream"));
  if (cublasCreate(&ctx.cublas) != CUBLAS_STATUS_SUCCESS ||
      cublasLtCreate(&ctx.cublasLt) != CUBLAS_STATUS_SUCCESS)
    return Status::error("cannot initialise cuBLAS");
  cublasSetStream(ctx.cublas, ctx.stream);
  G3RT_RETURN_IF_ERROR(
      check(cudaMalloc(&ctx.workspace, kWorkspaceBytes), "allocating the workspace"));
  ctx.workspaceBytes = kWorkspaceBytes;
  // cuBLAS (the fallback) and cuBLASLt share the lower half of the workspace:
  // both run on ctx.stream, one product at a time.
  cublasSetWorkspace(ctx.cublas, ctx.workspace, kWorkspaceBytes / 2);
  ctx.matmuls = std::make_shared<LtMatmuls>(ctx.cublasLt, ctx.workspace, kWorkspaceBytes / 2);
  ctx.checks.capacity = checkRecordCapacity(program);
  G3RT_RETURN_IF_ERROR(
      check(cudaMalloc(&ctx.checks.records, ctx.checks.capacity * sizeof(uint64_t)),
            "allocating the range-check records"));

  G3RT_RETURN_IF_ERROR(
      check(cudaMalloc(&ex->arena_, std::max<uint64_t>(program.arenaBytes, 256)),
            "allocating the " + std::to_string(program.arenaBytes) + "-byte arena"));
  ex->arenaBytes_ = std::max<uint64_t>(program.arenaBytes, 256);
  ex->deviceBytes_ = ex->arenaBytes_ + kWorkspaceBytes;
  G3RT_RETURN_IF_ERROR(ex->createHostArena());
  auto allocate = [&](const BufferDesc &b) {
    void *p = nullptr;
    G3RT_RETURN_IF_ERROR(
        check(cudaMalloc(&p, std::max<uint64_t>(b.bytes, 1)), "allocating '" + b.name + "'"));
    ex->state_[{b.kind, b.name}] = TensorView{p, b.dtype, b.shape};
    ex->deviceBytes_ += b.bytes;
    return check(cudaMemset(p, 0, b.bytes), "zeroing '" + b.name + "'");
  };
  G3RT_RETURN_IF_ERROR(forEachStateBuffer(program, allocate, rank));
  out = std::move(ex);
  return Status();
}

Status CudaExecutor::createHostArena() {
  uint32_t copies = 0;
  for (const FunctionDesc &fn : program_.functions)
    copies = std::max(copies, fn.copies);
  if (program_.hostBytes == 0 && copies == 0)
    return Status();
  // Pinned, so that the copies run asynchronously at the link's speed.
  G3RT_RETURN_IF_ERROR(check(cudaHostAlloc(&hostArena_, program_.hostBytes, cudaHostAllocDefault),
                             "allocating the " + gibText(program_.hostBytes) +
                                 " pinned host arena of the offloaded activations"));
  G3RT_RETURN_IF_ERROR(check(cudaStreamCreateWithFlags(&ctx_->copyStream, cudaStreamNonBlocking),
                             "creating the copy stream"));
  for (uint32_t i = 0; i < 2 * copies; ++i) {
    cudaEvent_t e = nullptr;
    G3RT_RETURN_IF_ERROR(
        check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "creating the copy events"));
    ctx_->copyEvents.push_back(e);
  }
  return Status();
}

CudaExecutor::~CudaExecutor() {
  graphs_.clear(); // before the memory their kernels point at
  if (ctx_)
    ctx_->cudnn.reset(); // its handle is bound to the stream destroyed below
  if (ctx_)
    ctx_->matmuls.reset(); // its descriptors belong to the handle destroyed below
  for (auto &[key, view] : state_)
    cudaFree(view.data);
  cudaFree(arena_);
  if (hostArena_)
    cudaFreeHost(hostArena_);
  if (ctx_) {
    for (cudaEvent_t e : ctx_->copyEvents)
      cudaEventDestroy(e);
    if (ctx_->copyStream)
      cudaStreamDestroy(ctx_->copyStream);
    cudaFree(ctx_->workspace);
    cudaFree(ctx_->checks.records);
    if (ctx_->cublasLt)
      cublasLtDestroy(ctx_->cublasLt);
    if (ctx_->cublas)
      cublasDestroy(ctx_->cublas);
    if (ctx_->stream)
      cudaStreamDestroy(ctx_->stream);
  }
}

Status CudaExecutor::upload(const HostState &host, BufferKind kind) {
  for (auto &[key, view] : state_) {
    if (key.first != kind)
      continue;
    TensorView h = host.state(key.first, key.second);
    if (!h.data)
      return Status::error("no host tensor for '" + key.second + "'");
    G3RT_RETURN_IF_ERROR(check(cudaMemcpy(view.data, h.data, view.bytes(), cudaMemcpyHostToDevice),
                               "uploading '" + key.second + "'"));
  }
  return Status();
}

Status CudaExecutor::upload(const HostState &host) {
  for (BufferKind k : {BufferKind::Param, BufferKind::GradAcc, BufferKind::ExpAvg,
                       BufferKind::ExpAvgSq, BufferKind::Input})
    G3RT_RETURN_IF_ERROR(upload(host, k));
  return Status();
}

Status CudaExecutor::download(HostState &host) const {
  for (const auto &[key, view] : state_) {
    TensorView h = host.state(key.first, key.second);
    if (!h.data)
      return Status::error("no host tensor for '" + key.second + "'");
    G3RT_RETURN_IF_ERROR(check(cudaMemcpy(h.data, view.data, view.bytes(), cudaMemcpyDeviceToHost),
                               "downloading '" + key.second + "'"));
  }
  return Status();
}

Status CudaExecutor::download(HostState &host, BufferKind kind, bool onlyTrainable) const {
  // Derived parameters are frozen too: only the parameter table's trainable
  // ones change.
  std::set<std::string> trainable;
  for (const ParamDesc &p : program_.params)
    if (p.trainable)
      trainable.insert(p.name);
  for (const auto &[key, view] : state_) {
    if (key.first != kind || (onlyTrainable && !trainable.count(key.second)))
      continue;
    TensorView h = host.state(key.first, key.second);
    if (!h.data)
      return Status::error("no host tensor for '" + key.second + "'");
    G3RT_RETURN_IF_ERROR(check(cudaMemcpy(h.data, view.data, view.bytes(), cudaMemcpyDeviceToHost),
                               "downloading '" + key.second + "'"));
  }
  return Status();
}

Status CudaExecutor::zeroGradients() {
  // On the executor's stream, then waited for: the next run is on the same
  // stream anyway, but a failure should surface here, naming the tensor.
  for (auto &[key, view] : state_)
    if (key.first == BufferKind::GradAcc)
      G3RT_RETURN_IF_ERROR(check(cudaMemsetAsync(view.data, 0, view.bytes(), ctx_->stream),
                                 "zeroing '" + key.second + "'"));
  return check(cudaStreamSynchronize(ctx_->stream), "zeroing the gradient accumulators");
}

std::vector<std::pair<std::string, TensorView>> CudaExecutor::stateOf(BufferKind kind) const {
  std::vector<std::pair<std::string, TensorView>> out;
  for (const auto &[key, view] : state_)
    if (key.first == kind)
      out.emplace_back(key.second, view);
  return out;
}

cudaStream_t CudaExecutor::stream() const { return ctx_->stream; }

TensorView CudaExecutor::deviceView(const FunctionDesc &fn, uint32_t index) const {
  const BufferDesc &b = fn.buffers[index];
  TensorView v;
  v.dtype = b.dtype;
  v.shape = b.shape;
  if (b.kind == BufferKind::Arena) {
    v.data = static_cast<uint8_t *>(arena_) + b.offset;
  } else if (b.kind == BufferKind::Host) {
    v.data = static_cast<uint8_t *>(hostArena_) + b.offset;
  } else {
    auto it = state_.find({b.kind, b.name});
    v.data = it == state_.end() ? nullptr : it->second.data;
  }
  return v;
}

// cudaMemcpyDefault: the view may be a host buffer's, in the pinned host arena.
Status CudaExecutor::toDevice(const TensorView &device, const void *host) const {
  return check(cudaMemcpy(device.data, host, device.bytes(), cudaMemcpyDefault),
               "copying to the device");
}

Status CudaExecutor::toHost(const TensorView &device, void *host) const {
  return check(cudaMemcpy(host, device.data, device.bytes(), cudaMemcpyDefault),
               "copying to the host");
}

Status CudaExecutor::runKernel(const std::string &name, const KernelAttrs &attrs,
                               const std::vector<TensorView> &inputs,
                               const std::vector<TensorView> &outputs) {
  KernelFn fn = findCudaKernel(name);
  if (!fn)
    return Status::error("the CUDA backend has no kernel '" + name + "'");
  KernelArgs args;
  args.name = name;
  args.attrs = &attrs;
  args.backend = ctx_.get();
  args.inputs = inputs;
  args.outputs = outputs;
  G3RT_RETURN_IF_ERROR(fn(args));
  return check(cudaStreamSynchronize(ctx_->stream), "running " + name);
}

void CudaExecutor::setJob(DeviceJob *job) { ctx_->job = job; }

Status CudaExecutor::launchInstruction(const FunctionDesc &fn, size_t i) {
  const InstrDesc &instr = fn.instrs[i];
  if (!runsOnProcess(instr, rank_))
    return Status();
  KernelArgs args;
  args.name = instr.kernel;
  args.attrs = &instr.attrs;
  args.backend = ctx_.get();
  for (uint32_t b : instr.inputs)
    args.inputs.push_back(deviceView(fn, b));
  for (uint32_t b : instr.outputs)
    args.outputs.push_back(deviceView(fn, b));
  return kernels_.at(fn.name)[i](args).withContext(fn.name + ", instruction " + std::to_string(i));
}

Status CudaExecutor::runInstruction(const FunctionDesc &fn, size_t i) {
  if (fn.arenaBytes > arenaBytes_)
    return Status::error("'" + fn.name + "' needs a " + std::to_string(fn.arenaBytes) +
                         "-byte arena, the executor holds " + std::to_string(arenaBytes_) +
                         " (reserveArena first)");
  G3RT_RETURN_IF_ERROR(launchInstruction(fn, i));
  // A copy to or from the host arena runs on the copy stream: waited for too,
  // so that the instruction's output is complete when this returns.
  cudaError_t e = cudaStreamSynchronize(ctx_->stream);
  if (e == cudaSuccess && ctx_->copyStream)
    e = cudaStreamSynchronize(ctx_->copyStream);
  return check(e, "running " + fn.instrs[i].kernel)
      .withContext(fn.name + ", instruction " + std::to_string(i));
}

Status CudaExecutor::reserveArena(const FunctionDesc &fn) {
  if (fn.arenaBytes <= arenaBytes_)
    return Status();
  // An entry point beyond training's plan (forward_backward of a training
  // step): a larger arena, and the captured graphs are made anew on it.
  G3RT_RETURN_IF_ERROR(
      check(cudaStreamSynchronize(ctx_->stream), "finishing the work before " + fn.name));
  cudaFree(arena_);
  arena_ = nullptr;
  deviceBytes_ -= arenaBytes_;
  arenaBytes_ = 0;
  G3RT_RETURN_IF_ERROR(
      check(cudaMalloc(&arena_, fn.arenaBytes),
            "allocating the " + std::to_string(fn.arenaBytes) + "-byte arena of " + fn.name));
  deviceBytes_ += fn.arenaBytes;
  arenaBytes_ = fn.arenaBytes;
  ++ctx_->reallocations;
  return Status();
}

Status CudaExecutor::launchAll(const FunctionDesc &fn) {
  for (size_t i = 0; i < fn.instrs.size(); ++i)
    G3RT_RETURN_IF_ERROR(launchInstruction(fn, i));
  return Status();
}

Status CudaExecutor::run(const std::string &function) {
  const FunctionDesc *fn = program_.findFunction(function);
  if (!fn)
    return Status::error("the step has no entry point '" + function + "'");
  cudaStream_t stream = ctx_->stream;
  G3RT_RETURN_IF_ERROR(reserveArena(*fn));
  std::unique_ptr<Graph> &g = graphs_[function];
  // A kernel moved memory it keeps (a larger cuDNN scratch for another entry
  // point): the graph would still use the old, so it is captured anew.
  if (g && g->exec && g->reallocations != ctx_->reallocations) {
    g = std::make_unique<Graph>();
    g->warmed = true;
  }
  if (!g || !graphsEnabled_ || !g->failure.empty() || !g->warmed) {
    // The first call runs kernel by kernel: it makes what kernels create on
    // first use (cuDNN plans, scratch memory, cuBLASLt algorithms) outside
    // the capture, which must not allocate or wait.
    if (!g) {
      g = std::make_unique<Graph>();
      // A collective waits for the other processes on the host.
      if (ctx_->job)
        for (const InstrDesc &in : fn->instrs)
          if (isCollectiveKernel(in.kernel))
            g->failure = "it exchanges tensors with the other processes (" + in.kernel + ")";
    }
    g->warmed = true;
    return launchAndWait(*fn);
  }
  if (!g->exec) {
    G3RT_RETURN_IF_ERROR(check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
                               "capturing " + function));
    Status launched;
    {
      DeferChecks defer(ctx_->checks);
      launched = launchAll(*fn);
    }
    cudaGraph_t graph = nullptr;
    cudaError_t ended = cudaStreamEndCapture(stream, &graph);
    cudaError_t made = cudaErrorUnknown;
    if (launched.ok() && ended == cudaSuccess && graph)
      made = cudaGraphInstantiate(&g->exec, graph, 0);
    if (graph)
      cudaGraphDestroy(graph);
    if (made != cudaSuccess) {
      // Nothing captured ran: run the kernels one by one instead, from now on.
      cudaGetLastError();
      g->exec = nullptr;
      g->failure = !launched.ok() ? launched.message()
                   : ended != cudaSuccess
                       ? std::string("ending the capture: ") + cudaGetErrorString(ended)
                       : std::string("instantiating the graph: ") + cudaGetErrorString(made);
      return launchAndWait(*fn);
    }
    g->reallocations = ctx_->reallocations;
    g->checks = std::move(ctx_->checks.pending);
  }
  G3RT_RETURN_IF_ERROR(
      check(cudaGraphLaunch(g->exec, stream), "launching the graph of " + function));
  G3RT_RETURN_IF_ERROR(check(cudaStreamSynchronize(stream), "running " + function));
  return settleChecks(ctx_->checks, g->checks).withContext(function);
}

Status CudaExecutor::launchAndWait(const FunctionDesc &fn) {
  {
    DeferChecks defer(ctx_->checks);
    G3RT_RETURN_IF_ERROR(launchAll(fn));
  }
  G3RT_RETURN_IF_ERROR(check(cudaStreamSynchronize(ctx_->stream), "running " + fn.name));
  return settleChecks(ctx_->checks, ctx_->checks.pending).withContext(fn.name);
}

std::string CudaExecutor::graphStatus(const std::string &function) const {
  auto it = graphs_.find(function);
  if (it == graphs_.end() || !it->second)
    return "kernels";
  if (it->second->exec)
    return "graph";
  return it->second->failure.empty() ? "kernels" : "kernels: " + it->second->failure;
}

std::string CudaExecutor::expertProducts() const {
  return ctx_->groupedExperts ? "grouped" : "cublas";
}

void CudaExecutor::setOneDocumentPerRow(bool one) {
  ctx_->rowDocuments = one ? CudaContext::RowDocuments::One : CudaContext::RowDocuments::Packed;
}

Status CudaExecutor::output(const std::string &function, const std::string &name,
                            std::vector<float> &values) const {
  const FunctionDesc *fn = program_.findFunction(function);
  int64_t index = fn ? fn->findOutput(name) : -1;
  if (index < 0)
    return Status::error("no output '" + name + "' of '" + function + "'");
  TensorView d = deviceView(*fn, uint32_t(index));
  std::vector<uint8_t> bytes(d.bytes());
  G3RT_RETURN_IF_ERROR(toHost(d, bytes.data()));
  TensorView h = d;
  h.data = bytes.data();
  values = toFloat(h);
  return Status();
}

} // namespace g3rt::cuda
