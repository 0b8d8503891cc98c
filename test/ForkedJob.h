//===- ForkedJob.h - a job of several processes for tests ------*- C++ -*-===//
//
// Tests of many processes run each rank in a process forked from the test:
// real processes, as torchrun starts them, without a launcher. Fork before
// any thread starts (a forked child holds only the forking thread).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_TEST_FORKEDJOB_H
#define G3MOE_TEST_FORKEDJOB_H

#include "runtime/dist/load_communicator.h"
#include "runtime/dist/tcp_store.h"
#include "runtime/dist/world.h"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <vector>

namespace g3moe_test {

/// A port no socket of this machine uses now (ctest runs several test
/// processes at once, so ports derived from anything else may collide).
inline int freshPort() {
  const int port = g3rt::freeLocalPort();
  EXPECT_GT(port, 0) << "no free port";
  return port;
}

/// Runs `body(world)` as each rank of a job of `ranks` processes on this
/// machine, forked from this one, with rank 0's store at a fresh port of
/// 127.0.0.1 (rank `skip` never starts). Returns each rank's exit code: its
/// body's result, -1 for the skipped rank, 100 for one that did not exit.
inline std::vector<int> runForkedJob(int ranks, const std::function<int(const g3rt::World &)> &body,
                                     int skip = -1) {
  const int port = freshPort();
  std::vector<pid_t> pids;
  for (int r = 0; r < ranks; ++r) {
    if (r == skip) {
      pids.push_back(-1);
      continue;
    }
    pid_t pid = fork();
    if (pid == 0) {
      g3rt::World w;
      w.rank = r;
      w.size = ranks;
      w.localRank = r;
      w.masterAddr = "127.0.0.1";
      w.masterPort = port;
      std::fflush(stdout);
      _exit(body(w));
    }
    pids.push_back(pid);
  }
  std::vector<int> codes;
  for (pid_t pid : pids) {
    int status = 0;
    if (pid < 0) {
      codes.push_back(-1);
      continue;
    }
    waitpid(pid, &status, 0);
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 100);
  }
  return codes;
}

/// Rank `world.rank`'s Gloo communicator for the job (127.0.0.1, 30 s
/// timeout), or null with the error on stderr.
inline std::unique_ptr<g3rt::Communicator> joinGlooJob(const g3rt::World &world) {
  g3rt::GlooOptions gloo;
  gloo.host = "127.0.0.1";
  gloo.timeout = std::chrono::seconds(30);
  std::unique_ptr<g3rt::Communicator> comm;
  g3rt::Status s = g3rt::loadGlooCommunicator(world, gloo, comm);
  if (!s.ok())
    std::fprintf(stderr, "rank %d: %s\n", world.rank, s.message().c_str());
  return s.ok() ? std::move(comm) : nullptr;
}

} // namespace g3moe_test

#endif // G3MOE_TEST_FORKEDJOB_H
