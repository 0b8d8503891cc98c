//===- KernelTableTest.cpp - the CPU kernel table against the list --------===//
//
// The CPU backend's table holds every kernel of
// runtime/kernels/kernel_names.def and nothing else (KernelNamesTest checks
// the list against the g3moe ops, CudaChecksTest the CUDA table).
//
//===----------------------------------------------------------------------===//

#include "runtime/cpu/cpu_kernels.h"
#include "runtime/kernels/kernel.h"
#include "runtime/kernels/kernel_names.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <string>
#include <vector>

using namespace g3rt;

namespace {

TEST(KernelTable, NamesAreListedOnceInSnakeCase) {
  std::set<std::string_view> seen;
  for (std::string_view name : kKernelNames) {
    EXPECT_TRUE(seen.insert(name).second) << name << " is listed twice";
    ASSERT_FALSE(name.empty());
    EXPECT_TRUE(std::islower(static_cast<unsigned char>(name[0]))) << name;
    for (char c : name)
      EXPECT_TRUE(std::islower(static_cast<unsigned char>(c)) ||
                  std::isdigit(static_cast<unsigned char>(c)) || c == '_')
          << name;
  }
}

TEST(KernelTable, CpuHoldsEveryListedKernel) {
  std::vector<std::string> listed(std::begin(kKernelNames), std::end(kKernelNames));
  std::sort(listed.begin(), listed.end());
  EXPECT_EQ(cpu::cpuKernelNames(), listed);
  for (const std::string &name : listed)
    EXPECT_NE(cpu::findCpuKernel(name), nullptr) << name;
  EXPECT_EQ(cpu::findCpuKernel("no_such_kernel"), nullptr);
}

} // namespace
