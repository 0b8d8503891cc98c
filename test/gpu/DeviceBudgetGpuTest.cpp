//===- DeviceBudgetGpuTest.cpp - memory_budget_gb's default on a GPU ------===//
//
// On a machine with a GPU: the query behind g3moe-compile's default budget
// reads the visible device's name and cudaMemGetInfo total, and a step
// planned to exactly that total less kDeviceReserveBytes is not refused by
// the CUDA backend that g3moe-run uses (CudaExecutor::create, which checks
// free memory before allocating). Free of LLVM, so that it runs on GPU
// machines without it.
//
//===----------------------------------------------------------------------===//

#include "compiler/Driver/DeviceBudget.h"
#include "compiler/Driver/DeviceQuery.h"
#include "runtime/cuda/cuda_executor.h"
#include "runtime/step/program.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

using namespace g3moe::compiler;

namespace {

TEST(DeviceBudgetGpu, QueryReadsTheVisibleDevice) {
  // The query comes first: it resets the context it makes.
  VisibleDevice device = queryVisibleDevice();
  ASSERT_TRUE(device.found) << device.why;

  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  size_t free = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free, &total), cudaSuccess);
  EXPECT_EQ(device.name, std::string(prop.name));
  EXPECT_EQ(device.totalBytes, int64_t(total));

  // The driver's choice from this query (resolveMemoryBudget, which
  // DeviceBudgetTest checks on the CPU with fake devices) is this total less
  // the reserve.
  EXPECT_GT(device.totalBytes, kDeviceReserveBytes);
}

TEST(DeviceBudgetGpu, AStepOfTheDefaultBudgetIsNotRefused) {
  VisibleDevice device = queryVisibleDevice();
  ASSERT_TRUE(device.found) << device.why;
  // The budget bounds the arena plus the persistent tensors; a plan that is
  // all arena and fills the budget exactly is the largest the default
  // allows.
  g3rt::StepProgram program;
  program.arenaBytes = uint64_t(device.totalBytes - kDeviceReserveBytes);
  ASSERT_GT(program.arenaBytes, 0u);
  std::unique_ptr<g3rt::cuda::CudaExecutor> executor;
  g3rt::Status s = g3rt::cuda::CudaExecutor::create(program, 0, executor);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(executor);
}

} // namespace
