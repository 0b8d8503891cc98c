//===- StepFuzzer.cpp - fuzz target: the step.bin loader ------------------===//
//
// Every input is parsed twice: as a whole step.bin, which checks the
// container (magic, version, length, checksum), and with its bytes past the
// 32-byte header wrapped into a fresh container, so that mutations of the
// payload get past the checksum to the FlatBuffer verifier and the
// program's own checks. A program that loads must satisfy what the verifier
// promises the executor.
//
//===----------------------------------------------------------------------===//

#include "runtime/kernels/kernel_names.h"
#include "runtime/schemas/container.h"
#include "runtime/step/program.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

/// What loadStep promises (runtime/step/program.h): indices in range, listed
/// kernel names, buffers inside their function's arena (host buffers inside
/// the host arena), persistent tensors declared alike.
void checkPromises(const g3rt::StepProgram &p) {
  if (!g3rt::checkStateDeclarations(p).ok()) {
    std::fprintf(stderr, "step fuzzer: a step loaded with a tensor declared two ways\n");
    std::abort();
  }
  for (const g3rt::FunctionDesc &fn : p.functions) {
    bool ok = fn.hostBytes <= p.hostBytes;
    for (const g3rt::BufferDesc &b : fn.buffers) {
      if (b.viewOf >= 0 && size_t(b.viewOf) >= fn.buffers.size())
        ok = false;
      if (b.kind == g3rt::BufferKind::Arena &&
          (b.offset > fn.arenaBytes || b.bytes > fn.arenaBytes - b.offset))
        ok = false;
      if (b.kind == g3rt::BufferKind::Host &&
          (b.offset > fn.hostBytes || b.bytes > fn.hostBytes - b.offset))
        ok = false;
    }
    for (const g3rt::InstrDesc &in : fn.instrs) {
      ok = ok && g3rt::isKernelName(in.kernel) && !in.outputs.empty();
      for (uint32_t i : in.inputs)
        ok = ok && i < fn.buffers.size();
      for (uint32_t i : in.outputs)
        ok = ok && i < fn.buffers.size();
    }
    for (const auto &o : fn.outputs)
      ok = ok && o.second < fn.buffers.size();
    if (!ok) {
      std::fprintf(stderr, "step fuzzer: function '%s' loaded but breaks the verifier's promises\n",
                   fn.name.c_str());
      std::abort();
    }
  }
}

void parse(const std::vector<uint8_t> &file) {
  g3rt::StepProgram program;
  if (g3rt::parseStep(file, "fuzz.step", program).ok())
    checkPromises(program);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::vector<uint8_t> file(data, data + size);
  parse(file);
  if (size >= g3rt::kStepHeaderBytes)
    parse(g3rt::wrapStepPayload(data + g3rt::kStepHeaderBytes, size - g3rt::kStepHeaderBytes));
  return 0;
}
