//===- cpu_backend.cpp - runs a step on the CPU ---------------------------===//

#include "runtime/cpu/cpu_backend.h"

#include "runtime/base/host_memory.h"
#include "runtime/base/parallel.h"
#include "runtime/base/task_queue.h"
#include "runtime/cpu/collective_queue.h"
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/dist/communicator.h"
#include "runtime/exec/ownership.h"

#include <algorithm>

namespace g3rt::cpu {

CpuBackend::CpuBackend(const StepProgram &program, HostState &host)
    : program_(program), host_(host), arena_(size_t(program.arenaBytes)),
      hostArena_(size_t(program.hostBytes)) {}

Status CpuBackend::create(const StepProgram &program, HostState &host,
                          std::unique_ptr<CpuBackend> &out, const Placement &placement) {
  ResolvedKernels kernels;
  G3RT_RETURN_IF_ERROR(resolveKernels(program, "CPU", findCpuKernel, kernels));
  if (&host.program() != &program)
    return Status::error("the CPU backend was given the state of another step");
  G3RT_RETURN_IF_ERROR(checkHostMemory(program.hostBytes, "offloaded activations"));
  std::unique_ptr<CpuBackend> backend(new CpuBackend(program, host));
  backend->placement_ = placement;
  if ((!backend->arena_.data() && program.arenaBytes) ||
      (!backend->hostArena_.data() && program.hostBytes))
    return Status::error("cannot allocate the " + std::to_string(program.arenaBytes) +
                         "-byte arena and the " + std::to_string(program.hostBytes) +
                         "-byte host arena on the host");
  backend->kernels_ = std::move(kernels);
  out = std::move(backend);
  return Status();
}

std::string CpuBackend::description() const {
  return "CPU (" + std::to_string(parallelThreads()) + " threads)";
}

Status CpuBackend::sameState(const HostState &host) const {
  if (&host != &host_)
    return Status::error("the CPU backend runs on the host state it was made with");
  return Status();
}

Status CpuBackend::zeroGradients() {
  host_.zeroGradients();
  return Status();
}

TensorView CpuBackend::view(const FunctionDesc &fn, uint32_t index) const {
  const BufferDesc &b = fn.buffers[index];
  TensorView v;
  v.dtype = b.dtype;
  v.shape = b.shape;
  if (b.kind == BufferKind::Arena)
    v.data = static_cast<uint8_t *>(arena_.data()) + b.offset;
  else if (b.kind == BufferKind::Host)
    v.data = static_cast<uint8_t *>(hostArena_.data()) + b.offset;
  else
    v.data = host_.state(b.kind, b.name).data;
  return v;
}

void CpuBackend::callOf(const FunctionDesc &fn, size_t i, KernelArgs &args) {
  const InstrDesc &instr = fn.instrs[i];
  args.name = instr.kernel;
  args.attrs = &instr.attrs;
  args.communicator = placement_.job;
  for (uint32_t b : instr.inputs)
    args.inputs.push_back(view(fn, b));
  for (uint32_t b : instr.outputs) {
    args.outputs.push_back(view(fn, b));
    const BufferDesc &desc = fn.buffers[b];
    if (desc.kind == BufferKind::Arena)
      highWater_ = std::max<uint64_t>(highWater_, desc.offset + desc.bytes);
  }
}

Status CpuBackend::runInstruction(const FunctionDesc &fn, size_t i) {
  if (fn.arenaBytes > arena_.size())
    return Status::error("'" + fn.name + "' needs a " + std::to_string(fn.arenaBytes) +
                         "-byte arena, the backend holds " + std::to_string(arena_.size()) +
                         " (reserveArena first)");
  if (!runsOnProcess(fn.instrs[i], placement_.rank))
    return Status();
  KernelArgs args;
  callOf(fn, i, args);
  return runCall(fn, i, args);
}

namespace {

std::string instructionContext(const FunctionDesc &fn, size_t i) {
  return fn.name + ", instruction " + std::to_string(i);
}

} // namespace

Status CpuBackend::runCall(const FunctionDesc &fn, size_t i, const KernelArgs &args) {
  return kernels_.at(fn.name)[i](args).withContext(instructionContext(fn, i));
}

namespace {

bool hasCollectives(const FunctionDesc &fn) {
  return std::any_of(fn.instrs.begin(), fn.instrs.end(),
                     [](const InstrDesc &in) { return isCollectiveKernel(in.kernel); });
}

} // namespace

Status CpuBackend::run(const std::string &function) {
  const FunctionDesc *fn = program_.findFunction(function);
  if (!fn)
    return Status::error("the step has no entry point '" + function + "'");
  G3RT_RETURN_IF_ERROR(reserveArena(*fn));
  const bool queued =
      asyncCollectives_ && placement_.job && placement_.job->size() > 1 && hasCollectives(*fn);
  if (!queued) {
    for (size_t i = 0; i < fn->instrs.size(); ++i)
      G3RT_RETURN_IF_ERROR(runInstruction(*fn, i));
    return Status();
  }
  // The collectives leave for their own thread in program order (the same
  // on every process); an instruction waits for those whose bytes it
  // touches, so compute goes on while the others travel.
  CollectiveQueue queue;
  Status ran;
  for (size_t i = 0; i < fn->instrs.size() && ran.ok(); ++i) {
    const InstrDesc &instr = fn->instrs[i];
    if (!runsOnProcess(instr, placement_.rank))
      continue;
    KernelArgs args;
    callOf(*fn, i, args);
    if (isCollectiveKernel(instr.kernel)) {
      queue.push(kernels_.at(fn->name)[i], std::move(args), instructionContext(*fn, i));
      continue;
    }
    ran = queue.waitFor(rangesOf(args));
    if (ran.ok()) {
      collectivesOverlapped_ += queue.busy();
      ran = runCall(*fn, i, args);
    }
  }
  Status drained = queue.drain();
  return ran.ok() ? drained : ran;
}

namespace {

/// A pack of gradient accumulators and the instruction after which none of
/// them is touched again (-1: none is touched).
struct GradientPack {
  int64_t ready = -1;
  std::vector<std::pair<std::string, TensorView>> tensors;
};

/// The accumulators of `host` in packs of about `bucketFloats` floats, in
/// the order `fn` finishes with them. The order follows from the program
/// alone (not from which instructions this process runs), so that every
/// process forms the same packs.
std::vector<GradientPack> gradientPacks(const FunctionDesc &fn, HostState &host,
                                        size_t bucketFloats) {
  std::map<std::string, int64_t> last;
  host.forEach(BufferKind::GradAcc,
               [&](const std::string &name, const TensorView &) { last[name] = -1; });
  for (size_t i = 0; i < fn.instrs.size(); ++i)
    for (const auto *list : {&fn.instrs[i].inputs, &fn.instrs[i].outputs})
      for (uint32_t b : *list)
        if (fn.buffers[b].kind == BufferKind::GradAcc)
          last[fn.buffers[b].name] = int64_t(i);
  std::vector<std::pair<int64_t, std::string>> order;
  for (const auto &[name, i] : last)
    order.emplace_back(i, name);
  std::sort(order.begin(), order.end());
  std::vector<GradientPack> packs;
  size_t floats = bucketFloats;
  for (const auto &[i, name] : order) {
    TensorView t = host.state(BufferKind::GradAcc, name);
    if (floats >= bucketFloats) {
      packs.emplace_back();
      floats = 0;
    }
    packs.back().ready = i;
    packs.back().tensors.emplace_back("the gradient of " + name, t);
    floats += size_t(t.numel());
  }
  return packs;
}

} // namespace

Status CpuBackend::runSummingGradients(const std::string &function, Communicator &job,
                                       size_t bucketFloats, bool &summed) {
  summed = false;
  const FunctionDesc *fn = program_.findFunction(function);
  if (!fn)
    return Status::error("the step has no entry point '" + function + "'");
  // A step with collectives of its own (ZeRO stage 2) sums its gradients
  // itself, and one thread at a time talks to the job.
  if (hasCollectives(*fn))
    return run(function);
  G3RT_RETURN_IF_ERROR(reserveArena(*fn));
  std::vector<GradientPack> packs = gradientPacks(*fn, host_, bucketFloats);
  sumsSent_ = {packs.size(), 0};
  TaskQueue sums;
  size_t next = 0;
  // Hands over the packs the run is done with after instruction `done`.
  auto handOver = [&](int64_t done) {
    for (; next < packs.size() && packs[next].ready <= done; ++next) {
      sumsSent_.early += done + 1 < int64_t(fn->instrs.size());
      sums.push([&job, bucketFloats, tensors = std::move(packs[next].tensors)] {
        return sumInBuckets(job, tensors, bucketFloats);
      });
    }
  };
  handOver(-1);
  Status ran;
  for (size_t i = 0; i < fn->instrs.size() && ran.ok(); ++i) {
    ran = runInstruction(*fn, i);
    if (ran.ok())
      handOver(int64_t(i));
  }
  Status sent = sums.drain();
  G3RT_RETURN_IF_ERROR(ran);
  G3RT_RETURN_IF_ERROR(sent);
  summed = true;
  return Status();
}

Status CpuBackend::reserveArena(const FunctionDesc &fn) {
  if (fn.arenaBytes <= arena_.size())
    return Status();
  Storage larger(size_t(fn.arenaBytes));
  if (!larger.data())
    return Status::error("cannot allocate the " + std::to_string(fn.arenaBytes) +
                         "-byte arena of '" + fn.name + "' on the host");
  arena_ = std::move(larger);
  return Status();
}

TensorView CpuBackend::output(const std::string &function, const std::string &name) const {
  const FunctionDesc *fn = program_.findFunction(function);
  int64_t index = fn ? fn->findOutput(name) : -1;
  return index < 0 ? TensorView{} : view(*fn, uint32_t(index));
}

Status CpuBackend::readOutput(const std::string &function, const std::string &name,
                              std::vector<uint8_t> &bytes, TensorView &out) {
  const FunctionDesc *fn = program_.findFunction(function);
  int64_t index = fn ? fn->findOutput(name) : -1;
  if (index < 0)
    return Status::error("no output '" + name + "' of '" + function + "'");
  TensorView t = view(*fn, uint32_t(index));
  const uint8_t *p = static_cast<const uint8_t *>(t.data);
  bytes.assign(p, p + t.bytes());
  out = t;
  out.data = bytes.data();
  return Status();
}

namespace {

int countDevices(std::string &) { return 1; }

Status create(const StepProgram &program, HostState &host, const Placement &placement,
              std::unique_ptr<Backend> &out) {
  if (placement.device != 0)
    return Status::error("the CPU backend has one device, 0");
  std::unique_ptr<CpuBackend> cpu;
  G3RT_RETURN_IF_ERROR(CpuBackend::create(program, host, cpu, placement));
  out = std::move(cpu);
  return Status();
}

} // namespace

const BackendProvider &cpuBackendProvider() {
  static const BackendProvider provider = {"cpu", countDevices, create};
  return provider;
}

} // namespace g3rt::cpu
