//===- RandomGpuTest.cu - device Philox equals host Philox ----------------===//
//
// The CUDA backend draws its random numbers with the same header as the CPU
// backend; this checks, on a real GPU, that both produce bit-identical values.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/random.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

namespace {

__global__ void drawUniforms(float *out, uint64_t n, uint64_t seed, uint64_t counter,
                             uint32_t stream) {
  uint64_t i = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n)
    out[i] = g3rt::uniformAt(seed, counter, stream, i);
}

TEST(RandomGpu, DeviceMatchesHost) {
  int devices = 0;
  ASSERT_EQ(cudaGetDeviceCount(&devices), cudaSuccess) << "no usable CUDA device";
  ASSERT_GT(devices, 0);
  const uint64_t n = (1u << 20) + 3;
  float *device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, n * sizeof(float)), cudaSuccess);
  drawUniforms<<<(n + 255) / 256, 256>>>(device, n, 0x123456789abcdefull, 77, 5);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> got(n);
  ASSERT_EQ(cudaMemcpy(got.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(device);
  uint64_t mismatches = 0;
  for (uint64_t i = 0; i < n; ++i)
    mismatches += got[i] != g3rt::uniformAt(0x123456789abcdefull, 77, 5, i);
  EXPECT_EQ(mismatches, 0u);
}

} // namespace
