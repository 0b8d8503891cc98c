//===- launch.cpp - g3moe-run --nproc-per-node: the local ranks -----------===//

#include "runtime/tools/launch.h"

#include "runtime/dist/tcp_store.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>

namespace g3rt {

namespace {

/// The children, for the signal handler (async-signal-safe: a fixed array).
constexpr int kMaxRanks = 1024;
pid_t children[kMaxRanks];
volatile sig_atomic_t childCount = 0;

void forwardSignal(int sig) {
  for (int i = 0; i < childCount; ++i)
    if (children[i] > 0)
      kill(children[i], sig);
}

} // namespace

int launchLocalRanks(int ranks, const std::vector<std::string> &args) {
  if (ranks < 1 || ranks > kMaxRanks) {
    std::cerr << "g3moe-run: error: --nproc-per-node must be in [1, " << kMaxRanks << "], got "
              << ranks << "\n";
    return 2;
  }
  const int port = freeLocalPort();
  if (port < 0) {
    std::cerr << "g3moe-run: error: no free port for the rendezvous: " << std::strerror(errno)
              << "\n";
    return 1;
  }
  std::vector<char *> argv;
  for (const std::string &a : args)
    argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  struct sigaction forward{};
  forward.sa_handler = forwardSignal;
  sigaction(SIGINT, &forward, nullptr);
  sigaction(SIGTERM, &forward, nullptr);
  for (int r = 0; r < ranks; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      const std::string rank = std::to_string(r), size = std::to_string(ranks);
      setenv("RANK", rank.c_str(), 1);
      setenv("LOCAL_RANK", rank.c_str(), 1);
      setenv("WORLD_SIZE", size.c_str(), 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      unsetenv("TORCHELASTIC_USE_AGENT_STORE");
      execv("/proc/self/exe", argv.data());
      std::cerr << "g3moe-run: error: cannot start rank " << r << ": " << std::strerror(errno)
                << "\n";
      _exit(127);
    }
    if (pid < 0) {
      std::cerr << "g3moe-run: error: cannot start rank " << r << ": " << std::strerror(errno)
                << "\n";
      forwardSignal(SIGTERM);
      break;
    }
    children[r] = pid;
    childCount = r + 1;
  }
  int failure = childCount == ranks ? 0 : 1;
  for (int left = childCount; left > 0; --left) {
    int status = 0;
    pid_t pid = wait(&status);
    if (pid < 0)
      break;
    int rank = 0;
    while (rank < childCount && children[rank] != pid)
      ++rank;
    if (rank < childCount)
      children[rank] = 0;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && failure == 0) {
      failure = code;
      std::cerr << "g3moe-run: rank " << rank << " of " << ranks << " failed ("
                << (WIFEXITED(status) ? "exit status " + std::to_string(code)
                                      : "signal " + std::to_string(WTERMSIG(status)))
                << "); stopping the others\n";
      forwardSignal(SIGTERM);
    }
  }
  return failure;
}

} // namespace g3rt
