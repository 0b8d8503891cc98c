//===- world.cpp - where this process stands among the training processes -===//

#include "runtime/dist/world.h"

#include <cctype>
#include <cstdlib>

namespace g3rt {

EnvLookup processEnvironment() {
  return [](const std::string &name) -> std::optional<std::string> {
    const char *v = std::getenv(name.c_str());
    return v ? std::optional<std::string>(v) : std::nullopt;
  };
}

namespace {

/// Variable `name` as an integer in [lo, hi].
Status readInt(const EnvLookup &env, const std::string &name, long lo, long hi, int &out) {
  std::optional<std::string> v = env(name);
  if (!v)
    return Status::error("the environment has no " + name);
  char *end = nullptr;
  long n = std::strtol(v->c_str(), &end, 10);
  if (v->empty() || *end != '\0' || n < lo || n > hi)
    return Status::error(name + " must be an integer in [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "], got '" + *v + "'");
  out = int(n);
  return Status();
}

} // namespace

std::optional<std::string> firstHostOf(const std::string &nodeList) {
  // The first top-level item: commas inside brackets separate ranges.
  size_t end = 0;
  for (int depth = 0; end < nodeList.size(); ++end) {
    char c = nodeList[end];
    depth += c == '[' ? 1 : c == ']' ? -1 : 0;
    if (c == ',' && depth == 0)
      break;
  }
  std::string item = nodeList.substr(0, end);
  size_t open = item.find('[');
  if (open == std::string::npos)
    return item.empty() ? std::nullopt : std::optional<std::string>(item);
  size_t close = item.find(']', open);
  if (close == std::string::npos || open == 0)
    return std::nullopt;
  // The range's first number, as written (zero padding kept).
  size_t digits = open + 1;
  while (digits < close && std::isdigit(static_cast<unsigned char>(item[digits])))
    ++digits;
  if (digits == open + 1)
    return std::nullopt;
  return item.substr(0, open) + item.substr(open + 1, digits - open - 1) + item.substr(close + 1);
}

Status worldFromEnvironment(const EnvLookup &env, World &out) {
  World w;
  const bool torchrun = env("WORLD_SIZE").has_value() || env("RANK").has_value();
  const bool slurm = !torchrun && env("SLURM_NTASKS").has_value();
  if (!torchrun && !slurm) {
    out = w;
    return Status();
  }
  const char *size = torchrun ? "WORLD_SIZE" : "SLURM_NTASKS";
  const char *rank = torchrun ? "RANK" : "SLURM_PROCID";
  const char *local = torchrun ? "LOCAL_RANK" : "SLURM_LOCALID";
  G3RT_RETURN_IF_ERROR(readInt(env, size, 1, 1 << 20, w.size));
  G3RT_RETURN_IF_ERROR(readInt(env, rank, 0, w.size - 1, w.rank));
  if (env(local))
    G3RT_RETURN_IF_ERROR(readInt(env, local, 0, w.size - 1, w.localRank));
  if (w.size > 1) {
    std::optional<std::string> addr = env("MASTER_ADDR");
    // Under Slurm without MASTER_ADDR: the job's first node, and port 29500
    // unless MASTER_PORT says otherwise.
    std::optional<std::string> nodes = env("SLURM_JOB_NODELIST");
    if (slurm && (!addr || addr->empty()) && nodes) {
      addr = firstHostOf(*nodes);
      if (!addr)
        return Status::error("SLURM_JOB_NODELIST '" + *nodes + "' names no first host");
    }
    if (!addr || addr->empty())
      return Status::error(std::string("the environment has no MASTER_ADDR (rank 0's host), "
                                       "which a job of ") +
                           std::to_string(w.size) + " processes needs");
    w.masterAddr = *addr;
    if (!slurm || env("MASTER_PORT"))
      G3RT_RETURN_IF_ERROR(readInt(env, "MASTER_PORT", 1, 65535, w.masterPort));
    // torchrun's agent serves its own store at MASTER_PORT (its workers use
    // it as clients): rank 0's store takes the next port.
    if (env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True") {
      if (w.masterPort == 65535)
        return Status::error("MASTER_PORT 65535 leaves no port for the rendezvous store beside "
                             "torchrun's (it takes MASTER_PORT + 1)");
      ++w.masterPort;
    }
  }
  out = w;
  return Status();
}

} // namespace g3rt
