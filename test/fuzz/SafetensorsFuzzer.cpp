//===- SafetensorsFuzzer.cpp - fuzz target: the safetensors reader --------===//
//
// The input is a safetensors file. When its header validates, every tensor
// is read back as its own dtype and, for float tensors, converted to fp32
// and bf16, as loading a checkpoint into parameters does.
//
//===----------------------------------------------------------------------===//

#include "FuzzSupport.h"

#include "runtime/io/safetensors.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::string path = g3moe::fuzz::writeScratch("input.safetensors", data, size);
  g3rt::SafetensorsFile file;
  if (!g3rt::SafetensorsFile::open(path, file).ok())
    return 0;
  for (const g3rt::SafetensorsEntry &e : file.entries()) {
    // open() checked the byte range against the file, so the element count
    // is bounded by the input's size.
    if (e.end < e.begin || e.end > size || file.find(e.name) == nullptr) {
      std::fprintf(stderr, "safetensors fuzzer: tensor '%s' passed open() with a bad range\n",
                   e.name.c_str());
      std::abort();
    }
    int64_t n = e.numel();
    size_t bytes = size_t(n) * g3rt::dtypeSize(e.dtype);
    std::vector<uint64_t> same((bytes + 7) / 8 + 1);
    (void)file.read(e, g3rt::TensorView{same.data(), e.dtype, e.shape});
    if (g3rt::isFloat(e.dtype)) {
      std::vector<float> f32;
      (void)file.readFloats(e.name, f32);
      std::vector<uint16_t> bf16(size_t(n) + 1);
      (void)file.read(e, g3rt::TensorView{bf16.data(), g3rt::DType::BF16, {n}});
    }
  }
  return 0;
}
