//===- MirrorBackend.h - a device backend made of the CPU's -----*- C++ -*-===//
//
// The "mirror": a Backend whose device is the CPU backend on a HostState of
// its own, sharing nothing with the trainer's, so that the trainer's use of a
// device backend (uploads, downloads, zeroing, sums over processes) is
// tested without a GPU. The CPU kernels are deterministic, so a run on the
// mirror must equal a plain CPU run bit for bit. Like the CUDA backend it
// sums a job's gradients itself, on its own copies (sumInBuckets over the
// job's communicator).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_TEST_E2E_MIRRORBACKEND_H
#define G3MOE_TEST_E2E_MIRRORBACKEND_H

#include "runtime/cpu/cpu_backend.h"
#include "runtime/dist/communicator.h"
#include "runtime/exec/backend.h"
#include "runtime/exec/state.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace g3moe_test {

/// What the mirror backend saw, for the checks of its tests.
struct MirrorLog {
  int stateUploads = 0, inputUploads = 0, downloads = 0, zeroings = 0, runs = 0, sums = 0;
};
inline MirrorLog mirrorLog;

/// Every persistent (kind, name) of a program, as backends allocate them.
inline std::set<std::pair<g3rt::BufferKind, std::string>>
persistentTensors(const g3rt::StepProgram &program) {
  std::set<std::pair<g3rt::BufferKind, std::string>> out;
  (void)g3rt::forEachStateBuffer(program, [&](const g3rt::BufferDesc &b) {
    out.insert({b.kind, b.name});
    return g3rt::Status();
  });
  return out;
}

/// A backend whose "device" is the CPU backend on a state of its own.
class MirrorBackend final : public g3rt::Backend {
public:
  explicit MirrorBackend(const g3rt::StepProgram &program)
      : device_(program), tensors_(persistentTensors(program)) {
    g3rt::Status s = g3rt::cpu::CpuBackend::create(program, device_, cpu_);
    EXPECT_TRUE(s.ok()) << s.message();
    for (const g3rt::ParamDesc &p : program.params)
      if (!p.trainable)
        frozen_.insert(p.name);
  }

  std::string description() const override { return "CPU mirror"; }
  const g3rt::Placement &placement() const override { return placement_; }

  g3rt::Status uploadState(const g3rt::HostState &host) override {
    ++mirrorLog.stateUploads;
    for (const auto &[kind, name] : tensors_)
      copy(host.state(kind, name), device_.state(kind, name));
    return g3rt::Status();
  }
  g3rt::Status uploadInputs(const g3rt::HostState &host) override {
    ++mirrorLog.inputUploads;
    for (const auto &[kind, name] : tensors_)
      if (kind == g3rt::BufferKind::Input)
        copy(host.state(kind, name), device_.state(kind, name));
    return g3rt::Status();
  }
  g3rt::Status downloadState(g3rt::HostState &host) override {
    ++mirrorLog.downloads;
    for (const auto &[kind, name] : tensors_)
      if (kind != g3rt::BufferKind::Input &&
          !(kind == g3rt::BufferKind::Param && frozen_.count(name)))
        copy(device_.state(kind, name), host.state(kind, name));
    return g3rt::Status();
  }
  g3rt::Status zeroGradients() override {
    ++mirrorLog.zeroings;
    device_.zeroGradients();
    return g3rt::Status();
  }
  g3rt::Status run(const std::string &function) override {
    ++mirrorLog.runs;
    return cpu_->run(function);
  }
  g3rt::Status sumGradients(g3rt::Communicator &job, bool &done) override {
    ++mirrorLog.sums;
    std::vector<std::pair<std::string, g3rt::TensorView>> grads;
    device_.forEach(
        g3rt::BufferKind::GradAcc,
        [&](const std::string &name, const g3rt::TensorView &g) { grads.emplace_back(name, g); });
    done = true;
    return g3rt::sumInBuckets(job, grads, 100);
  }
  g3rt::Status readOutput(const std::string &function, const std::string &name,
                          std::vector<uint8_t> &bytes, g3rt::TensorView &view) override {
    return cpu_->readOutput(function, name, bytes, view);
  }

private:
  static void copy(const g3rt::TensorView &from, const g3rt::TensorView &to) {
    ASSERT_TRUE(from.data && to.data);
    std::memcpy(to.data, from.data, from.bytes());
  }

  g3rt::HostState device_;
  std::unique_ptr<g3rt::cpu::CpuBackend> cpu_;
  g3rt::Placement placement_;
  std::set<std::pair<g3rt::BufferKind, std::string>> tensors_;
  std::set<std::string> frozen_;
};

/// The mirror as a backend provider: one visible device.
inline const g3rt::BackendProvider &mirrorProvider() {
  static const g3rt::BackendProvider provider = {"mirror", [](std::string &) { return 1; },
                                                 [](const g3rt::StepProgram &program,
                                                    g3rt::HostState &, const g3rt::Placement &,
                                                    std::unique_ptr<g3rt::Backend> &out) {
                                                   out = std::make_unique<MirrorBackend>(program);
                                                   return g3rt::Status();
                                                 }};
  return provider;
}

} // namespace g3moe_test

#endif // G3MOE_TEST_E2E_MIRRORBACKEND_H
