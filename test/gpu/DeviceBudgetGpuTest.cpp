//===- DeviceBudgetGpuTest.cpp - memory_budget_gb's default on a GPU ------===//
//
// On a machine with a GPU: g3moe-compile's default budget is the visible
// device's cudaMemGetInfo total less kDeviceReserveBytes, and a step planned
// to exactly that budget is not refused by the CUDA backend that g3moe-run
// uses (CudaExecutor::create, which checks free memory before allocating).
//
//===----------------------------------------------------------------------===//

#include "compiler/Driver/DeviceBudget.h"
#include "compiler/Driver/DeviceQuery.h"
#include "frontend/Config.h"
#include "runtime/cuda/cuda_executor.h"
#include "runtime/step/program.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

using namespace g3moe::compiler;

namespace {

TEST(DeviceBudgetGpu, DefaultIsTheTotalLessTheReserve) {
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

  // No memory_budget_gb: the driver's choice with the real query.
  MemoryBudget budget = resolveMemoryBudget(g3moe::frontend::TrainingOptions(), queryVisibleDevice);
  EXPECT_EQ(budget.origin, MemoryBudget::Origin::Device);
  EXPECT_EQ(budget.bytes, int64_t(total) - kDeviceReserveBytes);
  const std::string line = describeBudget(budget);
  EXPECT_EQ(line.rfind("memory budget ", 0), 0u) << line;
  EXPECT_NE(line.find(" from the visible GPU " + std::string(prop.name) + ", "), std::string::npos)
      << line;
}

TEST(DeviceBudgetGpu, AStepOfTheDefaultBudgetIsNotRefused) {
  VisibleDevice device = queryVisibleDevice();
  ASSERT_TRUE(device.found) << device.why;
  // The budget bounds the arena plus the persistent tensors; a plan that is
  // all arena and fills the budget exactly is the largest the default
  // allows.
  g3rt::StepProgram program;
  program.arenaBytes = uint64_t(deviceBudgetBytes(device.totalBytes));
  ASSERT_GT(program.arenaBytes, 0u);
  std::unique_ptr<g3rt::cuda::CudaExecutor> executor;
  g3rt::Status s = g3rt::cuda::CudaExecutor::create(program, 0, executor);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(executor);
}

} // namespace
