//===- DataParallelDeviceTest.cpp - a device backend's own gradient sums --===//
//
// The trainer in a job of two processes whose backend sums the gradients
// itself (as the CUDA backend does with NCCL), checked without a GPU: the
// mirror backend (MirrorBackend.h) in the CUDA slot sums its own copies of
// the accumulators over the job's Gloo communicator. Two processes on the
// mirror must train, evaluate and save exactly what two CPU processes do,
// whose sums go through the host state; that covers what the trainer does
// around a device's sums (the host's copies are stale after them, the
// checkpoints and final files download the device's state).
//
// The ranks are forked processes; the parent runs no kernel before it
// forks, so no thread of the CPU backend is copied into them.
//
//===----------------------------------------------------------------------===//

#include "runtime/dist/load_communicator.h"
#include "runtime/train/trainer.h"
#include "test/e2e/MirrorBackend.h"
#include "test/e2e/StepFixtures.h"

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

using namespace g3rt;
using namespace g3moe_test;

namespace {

/// A TCP port the kernel has just handed out (free for the rendezvous).
int freshPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

TrainOptions optionsFor(const std::string &data, const std::string &out) {
  TrainOptions o;
  o.dataPath = data;
  o.outputDir = out;
  o.maxSteps = 4;
  o.gradientAccumulationSteps = 1;
  o.learningRate = 1e-2;
  o.warmupSteps = 1;
  o.loggingSteps = 1;
  o.seed = 7;
  o.testSize = 2.0 / 12.0;
  o.evalSteps = 2;
  o.saveSteps = 2;
  return o;
}

/// Rank `rank` of a job of two on `device`: trains, then writes what it saw
/// (losses, gradient norms, evaluations, the backend's own sums) to
/// `out`/rank<r>.txt. Returns the process's exit code.
int trainRank(const StepProgram &program, int rank, int port, const std::string &device,
              const std::string &data, const std::string &out) {
  World world;
  world.rank = rank;
  world.size = 2;
  world.localRank = rank;
  world.masterAddr = "127.0.0.1";
  world.masterPort = port;
  GlooOptions gloo;
  gloo.host = "127.0.0.1";
  gloo.timeout = std::chrono::seconds(30);
  std::unique_ptr<Communicator> comm;
  Status s = loadGlooCommunicator(world, gloo, comm);
  if (!s.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, s.message().c_str());
    return 2;
  }
  TrainOptions o = optionsFor(data, out);
  o.device = device;
  o.communicator = comm.get();
  o.placement = Placement{rank, rank, 2};
  o.noSave = rank != 0;
  TrainResult r;
  std::ostringstream log;
  s = train(program, o, log, r);
  if (!s.ok()) {
    std::fprintf(stderr, "rank %d: %s\n%s", rank, s.message().c_str(), log.str().c_str());
    return 3;
  }
  std::ofstream text(out + "/rank" + std::to_string(rank) + ".txt");
  text.precision(17);
  for (const auto *values : {&r.losses, &r.gradNorms, &r.evalLosses}) {
    for (double v : *values)
      text << v << " ";
    text << "\n";
  }
  text << "backend " << r.backend << "\nsums " << mirrorLog.sums << "\n";
  return text ? 0 : 4;
}

/// Runs both ranks of a job on `device` in forked processes; returns their
/// exit codes.
std::vector<int> runJob(const StepProgram &program, const std::string &device,
                        const std::string &data, const std::string &out) {
  const int port = freshPort();
  std::vector<pid_t> pids;
  for (int rank = 0; rank < 2; ++rank) {
    pid_t pid = fork();
    if (pid == 0) {
      std::fflush(stdout);
      _exit(trainRank(program, rank, port, device, data, out));
    }
    pids.push_back(pid);
  }
  std::vector<int> codes;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 100);
  }
  return codes;
}

std::string textOf(const std::string &path) {
  std::ifstream in(path);
  std::stringstream all;
  all << in.rdbuf();
  return all.str();
}

TEST(DataParallelOnADevice, DeviceSumsTrainAsHostSums) {
  setenv("G3MOE_GLOO_PLUGIN", G3MOE_GLOO_PLUGIN_PATH, 1);
  registerCudaBackendProvider(&mirrorProvider());
  StepProgram program = loadProgram("g3moe_lora");
  const std::string dir = scratch("g3moe-dp-device", "g3moe_lora");
  const std::string data = writeData(dir, 12, 7, 10);

  for (const char *device : {"cpu", "cuda"}) {
    std::vector<int> codes = runJob(program, device, data, dir + "/" + device);
    ASSERT_EQ(codes, (std::vector<int>{0, 0})) << device;
  }
  const std::string cpu = textOf(dir + "/cpu/rank0.txt"), dev = textOf(dir + "/cuda/rank0.txt");
  // The CPU backend sums through the host; the mirror sums its own copies,
  // once per optimizer step.
  EXPECT_NE(cpu.find("backend CPU ("), std::string::npos) << cpu;
  EXPECT_NE(cpu.find("sums 0\n"), std::string::npos) << cpu;
  EXPECT_NE(dev.find("backend CPU mirror\nsums 4\n"), std::string::npos) << dev;
  // The same losses, gradient norms and evaluations, to the bit, on both
  // ranks of both jobs.
  auto numbers = [](const std::string &t) { return t.substr(0, t.find("backend")); };
  EXPECT_EQ(numbers(dev), numbers(cpu));
  EXPECT_EQ(numbers(textOf(dir + "/cuda/rank1.txt")), numbers(cpu));
  EXPECT_EQ(numbers(textOf(dir + "/cpu/rank1.txt")), numbers(cpu));
  EXPECT_GT(numbers(cpu).size(), 20u) << cpu;
  // What rank 0 saved (checkpoints after steps 2 and 4, the adapter) is the
  // same: downloaded from the device after its sums.
  for (const char *file : {"checkpoint-2/optimizer.safetensors",
                           "checkpoint-4/adapter_model.safetensors", "adapter_model.safetensors"})
    EXPECT_EQ(bytesOf(dir + "/cuda/" + file), bytesOf(dir + "/cpu/" + file)) << file;
}

} // namespace
