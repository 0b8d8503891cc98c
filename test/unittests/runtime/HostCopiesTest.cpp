//===- HostCopiesTest.cpp - the verifier's rules for offloaded buffers ----===//
//
// Host buffers (--g3rt-offload-to-host) hold host pointers on a GPU, so the
// loader lets only the copy kernels touch them, pairs every copy with one
// wait on the same buffers, and plans the host arena like the device arena.
// The run-time check of the host memory a step needs reads MemAvailable.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/host_memory.h"
#include "runtime/step/program.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <unistd.h>

using namespace g3rt;

namespace {

InstrDesc instr(const char *kernel, uint32_t in, uint32_t out, int64_t copy = -1) {
  InstrDesc i;
  i.kernel = kernel;
  i.inputs = {in};
  i.outputs = {out};
  if (copy >= 0)
    i.attrs.set("copy", AttrValue::ofInt(copy));
  return i;
}

/// Buffer 0 in the arena, 1 in the host arena, 2 in the arena again (the
/// restored copy), all 256 bytes; the instructions move 0 out and back to 2.
FunctionDesc offloading() {
  FunctionDesc fn;
  fn.name = "f";
  fn.arenaBytes = 512;
  fn.hostBytes = 256;
  BufferDesc device;
  device.shape = {64};
  device.bytes = 256;
  BufferDesc host = device;
  host.kind = BufferKind::Host;
  BufferDesc restored = device;
  restored.offset = 256;
  fn.buffers = {device, host, restored};
  InstrDesc write;
  write.kernel = "fill";
  write.outputs = {0};
  fn.instrs = {write,
               instr("copy_to_host", 0, 1, 0),
               instr("wait_copy", 0, 1, 0),
               instr("copy_to_device", 1, 2, 1),
               instr("wait_copy", 1, 2, 1),
               instr("copy", 2, 2)};
  return fn;
}

std::string verify(FunctionDesc fn) {
  Status s = checkHostCopies(fn);
  if (s.ok())
    s = checkArenaPlan(fn);
  return s.ok() ? "" : s.message();
}

TEST(HostCopies, AValidOffloadPassesAndCountsItsCopies) {
  FunctionDesc fn = offloading();
  ASSERT_TRUE(checkHostCopies(fn).ok());
  EXPECT_EQ(fn.copies, 2u);
  EXPECT_EQ(verify(fn), "");
}

TEST(HostCopies, OnlyTheCopyKernelsTouchHostBuffers) {
  FunctionDesc fn = offloading();
  fn.instrs.push_back(instr("copy", 1, 0));
  EXPECT_NE(verify(fn).find("reads or writes host buffer 1"), std::string::npos) << verify(fn);
  fn = offloading();
  fn.outputs = {{"loss", 1}};
  EXPECT_NE(verify(fn).find("output 'loss' is a host buffer"), std::string::npos) << verify(fn);
}

TEST(HostCopies, DirectionsMustMatchTheKernel) {
  FunctionDesc fn = offloading();
  fn.instrs[1] = instr("copy_to_host", 1, 0, 0);
  EXPECT_NE(verify(fn).find("must copy an arena buffer to a host buffer"), std::string::npos)
      << verify(fn);
  fn = offloading();
  fn.instrs[3] = instr("copy_to_device", 0, 2, 1);
  EXPECT_NE(verify(fn).find("must copy a host buffer to an arena buffer"), std::string::npos)
      << verify(fn);
}

TEST(HostCopies, EveryCopyHasOneWaitOnTheSameBuffers) {
  FunctionDesc fn = offloading();
  fn.instrs.erase(fn.instrs.begin() + 4);
  EXPECT_NE(verify(fn).find("copy 1 is never waited for"), std::string::npos) << verify(fn);
  fn = offloading();
  fn.instrs[2] = instr("wait_copy", 1, 2, 0);
  EXPECT_NE(verify(fn).find("not an unfinished copy of the same buffers"), std::string::npos)
      << verify(fn);
  fn = offloading();
  fn.instrs[3] = instr("copy_to_device", 1, 2, 0);
  EXPECT_NE(verify(fn).find("reuses copy id 0"), std::string::npos) << verify(fn);
  fn = offloading();
  fn.instrs[1].attrs = KernelAttrs();
  EXPECT_NE(verify(fn).find("needs a copy id"), std::string::npos) << verify(fn);
}

TEST(HostCopies, TheHostArenaIsPlannedLikeTheArena) {
  // A second host buffer sharing the first's bytes while it is live.
  FunctionDesc fn = offloading();
  BufferDesc other = fn.buffers[1];
  fn.buffers.push_back(other);
  fn.instrs.insert(fn.instrs.begin() + 2, instr("copy_to_host", 0, 3, 2));
  fn.instrs.insert(fn.instrs.begin() + 3, instr("wait_copy", 0, 3, 2));
  EXPECT_NE(verify(fn).find("host memory plan of 'f' overlaps"), std::string::npos) << verify(fn);
}

/// A meminfo file with `text`, removed with the test. Each test (ctest runs
/// them as processes side by side) and process has its own.
class MemInfo : public ::testing::Test {
protected:
  std::string write(const std::string &text) {
    std::ofstream(path) << text;
    return path;
  }
  void TearDown() override { std::remove(path.c_str()); }
  std::string path = ::testing::TempDir() + "g3moe_meminfo_" +
                     ::testing::UnitTest::GetInstance()->current_test_info()->name() + "_" +
                     std::to_string(getpid());
};

TEST_F(MemInfo, ReadsMemAvailable) {
  uint64_t bytes = 0;
  ASSERT_TRUE(
      availableHostMemory(bytes, write("MemTotal:  100 kB\nMemAvailable:   2048 kB\n")).ok());
  EXPECT_EQ(bytes, 2048u * 1024);
  EXPECT_TRUE(checkHostMemory(2048 * 1024, "offloaded activations", path).ok());
  Status s = checkHostMemory(2048 * 1024 + 1, "offloaded activations", path);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("offloaded activations in host memory"), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("host_memory_budget_gb"), std::string::npos) << s.message();
}

TEST_F(MemInfo, NamesTheFileItCannotUse) {
  uint64_t bytes = 0;
  Status s = availableHostMemory(bytes, write("MemTotal: 100 kB\n"));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
  s = availableHostMemory(bytes, path + ".missing");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(".missing"), std::string::npos) << s.message();
  // Nothing to keep needs no file.
  EXPECT_TRUE(checkHostMemory(0, "offloaded activations", path + ".missing").ok());
}

} // namespace
