//===- DistTest.cpp - the world, the rendezvous store and Gloo collectives ===//
//
// The launcher's environment read as torchrun and Slurm set it, the TCP
// store between threads, and Gloo collectives between real processes
// (forked before any thread starts): sums and broadcasts on 2 and 4 ranks,
// sums packed into buckets on 3, and a rank that never arrives failing the
// others within the timeout; the store telling a peer that left, and the
// watchdog that ends a collective such a peer leaves waiting.
//
//===----------------------------------------------------------------------===//

#include "runtime/cpu/cpu_kernels.h"
#include "runtime/dist/collective_watchdog.h"
#include "runtime/dist/gloo_communicator.h"
#include "runtime/dist/tcp_store.h"
#include "runtime/dist/world.h"
#include "test/ForkedJob.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <thread>

using namespace g3rt;
using namespace g3moe_test;

namespace {

EnvLookup envOf(std::map<std::string, std::string> vars) {
  return [vars](const std::string &name) -> std::optional<std::string> {
    auto it = vars.find(name);
    return it == vars.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
}

TEST(World, TorchrunSlurmOrAlone) {
  World w;
  ASSERT_TRUE(worldFromEnvironment(envOf({}), w).ok());
  EXPECT_EQ(w.size, 1);
  ASSERT_TRUE(worldFromEnvironment(envOf({{"RANK", "3"},
                                          {"WORLD_SIZE", "4"},
                                          {"LOCAL_RANK", "1"},
                                          {"MASTER_ADDR", "node0"},
                                          {"MASTER_PORT", "29400"}}),
                                   w)
                  .ok());
  EXPECT_EQ(w.rank, 3);
  EXPECT_EQ(w.size, 4);
  EXPECT_EQ(w.localRank, 1);
  EXPECT_EQ(w.masterAddr, "node0");
  EXPECT_EQ(w.masterPort, 29400);
  ASSERT_TRUE(worldFromEnvironment(envOf({{"SLURM_PROCID", "1"},
                                          {"SLURM_NTASKS", "2"},
                                          {"SLURM_LOCALID", "1"},
                                          {"MASTER_ADDR", "node7"},
                                          {"MASTER_PORT", "1234"}}),
                                   w)
                  .ok());
  EXPECT_EQ(w.rank, 1);
  EXPECT_EQ(w.size, 2);
  EXPECT_EQ(w.masterAddr, "node7");
  // Under torchrun, whose agent serves MASTER_PORT itself, the store takes
  // the next port.
  ASSERT_TRUE(worldFromEnvironment(envOf({{"RANK", "0"},
                                          {"WORLD_SIZE", "2"},
                                          {"MASTER_ADDR", "localhost"},
                                          {"MASTER_PORT", "29400"},
                                          {"TORCHELASTIC_USE_AGENT_STORE", "True"}}),
                                   w)
                  .ok());
  EXPECT_EQ(w.masterPort, 29401);
}

TEST(World, SlurmFindsRankZerosHostInTheNodeList) {
  EXPECT_EQ(firstHostOf("node7"), "node7");
  EXPECT_EQ(firstHostOf("node[03-05,9],gpu1"), "node03");
  EXPECT_EQ(firstHostOf("a,b[1-2]"), "a");
  EXPECT_EQ(firstHostOf("rack1-n[12-14]x"), "rack1-n12x");
  EXPECT_FALSE(firstHostOf(""));
  EXPECT_FALSE(firstHostOf("node[x]"));
  World w;
  ASSERT_TRUE(worldFromEnvironment(envOf({{"SLURM_PROCID", "3"},
                                          {"SLURM_NTASKS", "8"},
                                          {"SLURM_LOCALID", "1"},
                                          {"SLURM_JOB_NODELIST", "gpu[101-102]"}}),
                                   w)
                  .ok());
  EXPECT_EQ(w.masterAddr, "gpu101");
  EXPECT_EQ(w.masterPort, 29500);
  // MASTER_ADDR and MASTER_PORT, where set, win.
  ASSERT_TRUE(worldFromEnvironment(envOf({{"SLURM_PROCID", "0"},
                                          {"SLURM_NTASKS", "2"},
                                          {"SLURM_JOB_NODELIST", "gpu[101-102]"},
                                          {"MASTER_ADDR", "login1"},
                                          {"MASTER_PORT", "4000"}}),
                                   w)
                  .ok());
  EXPECT_EQ(w.masterAddr, "login1");
  EXPECT_EQ(w.masterPort, 4000);
  Status s = worldFromEnvironment(
      envOf({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "[1-2]"}}), w);
  EXPECT_NE(s.message().find("SLURM_JOB_NODELIST '[1-2]' names no first host"), std::string::npos)
      << s.message();
}

TEST(World, NamesTheBadVariable) {
  World w;
  auto message = [&](std::map<std::string, std::string> vars) {
    Status s = worldFromEnvironment(envOf(std::move(vars)), w);
    return s.ok() ? std::string() : s.message();
  };
  EXPECT_NE(message({{"RANK", "0"}}).find("no WORLD_SIZE"), std::string::npos);
  EXPECT_NE(message({{"RANK", "4"}, {"WORLD_SIZE", "4"}}).find("RANK must be"), std::string::npos);
  EXPECT_NE(message({{"RANK", "0"}, {"WORLD_SIZE", "2"}}).find("MASTER_ADDR"), std::string::npos);
  EXPECT_NE(
      message({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}})
          .find("MASTER_PORT must be"),
      std::string::npos);
  EXPECT_NE(message({{"RANK", "x"}, {"WORLD_SIZE", "2"}}).find("got 'x'"), std::string::npos);
}

TEST(TcpStore, AGetWaitsForTheSet) {
  const int port = freshPort();
  std::unique_ptr<TcpStore> server, client;
  ASSERT_TRUE(TcpStore::open("127.0.0.1", port, true, std::chrono::seconds(5), server).ok());
  ASSERT_TRUE(TcpStore::open("127.0.0.1", port, false, std::chrono::seconds(5), client).ok());
  std::vector<char> got;
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(server->set("rank1", {'a', 'b'}).ok());
  });
  Status s = client->get("rank1", got);
  later.join();
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(got, (std::vector<char>{'a', 'b'}));
}

TEST(TcpStore, AMissingKeyTimesOutAndNamesIt) {
  const int port = freshPort();
  std::unique_ptr<TcpStore> store;
  ASSERT_TRUE(TcpStore::open("127.0.0.1", port, true, std::chrono::milliseconds(200), store).ok());
  std::vector<char> got;
  Status s = store->get("never", got);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'never'"), std::string::npos) << s.message();
}

TEST(TcpStore, NoServerIsAClearError) {
  std::unique_ptr<TcpStore> store;
  Status s = TcpStore::open("127.0.0.1", freshPort(), false, std::chrono::milliseconds(200), store);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("is rank 0 running"), std::string::npos) << s.message();
}

/// Polls `pred` for up to 5 s.
bool becomes(const std::function<bool()> &pred) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

TEST(TcpStore, APeerThatLeavesIsSeenFromBothSides) {
  const int port = freshPort();
  const auto timeout = std::chrono::seconds(5);
  std::unique_ptr<TcpStore> server, client;
  ASSERT_TRUE(TcpStore::open("127.0.0.1", port, true, timeout, server).ok());
  ASSERT_TRUE(TcpStore::open("127.0.0.1", port, false, timeout, client).ok());
  ASSERT_TRUE(client->set("k", {'v'}).ok());
  std::vector<char> got;
  ASSERT_TRUE(server->get("k", got).ok());
  EXPECT_FALSE(server->peerLeft());
  EXPECT_FALSE(client->peerLeft());
  // A client that goes (a process that ended) is seen by the server...
  client.reset();
  EXPECT_TRUE(becomes([&] { return server->peerLeft(); }));
  // ... and a server that goes by its clients.
  ASSERT_TRUE(TcpStore::open("127.0.0.1", port, false, timeout, client).ok());
  EXPECT_FALSE(client->peerLeft());
  server.reset();
  EXPECT_TRUE(becomes([&] { return client->peerLeft(); }));
}

TEST(CollectiveWatchdog, EndsOnlyACollectiveThatOutlivesALeftPeer) {
  std::atomic<bool> left{false};
  std::mutex mutex;
  std::vector<std::string> reports;
  CollectiveWatchdog dog(
      0, 2, [&] { return left.load(); },
      [&](const std::string &m) {
        std::lock_guard<std::mutex> lock(mutex);
        reports.push_back(m);
      },
      std::chrono::milliseconds(300));
  auto reported = [&] {
    std::lock_guard<std::mutex> lock(mutex);
    return reports.size();
  };
  // A peer gone while nothing runs, then collectives that end within the
  // grace after it: nothing is reported.
  left = true;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  for (int i = 0; i < 5; ++i) {
    dog.begin("all-reduce");
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    dog.end();
  }
  EXPECT_EQ(reported(), 0u);
  // One that outlives the grace is reported once, by name.
  dog.begin("broadcast");
  EXPECT_TRUE(becomes([&] { return reported() > 0; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  dog.end();
  ASSERT_EQ(reported(), 1u);
  EXPECT_NE(reports[0].find("the broadcast on rank 0 of 2 failed: a process of the job left"),
            std::string::npos)
      << reports[0];
}

TEST(CollectiveWatchdog, ReportsNothingWhileThePeersStay) {
  std::atomic<int> calls{0};
  {
    CollectiveWatchdog dog(
        1, 3, [] { return false; }, [&](const std::string &) { ++calls; },
        std::chrono::milliseconds(100));
    dog.begin("all-reduce");
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    dog.end();
  }
  EXPECT_EQ(calls.load(), 0);
}

GlooOptions localOptions(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  GlooOptions o;
  o.host = "127.0.0.1";
  o.timeout = timeout;
  return o;
}

/// Each rank sums rank-dependent vectors (fp32 and fp64) and takes rank 1's
/// bytes by broadcast; exit codes say which check failed.
int sumAndBroadcast(const World &w) {
  std::unique_ptr<Communicator> comm;
  Status s = makeGlooCommunicator(w, localOptions(), comm);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.message().c_str());
    return 1;
  }
  std::vector<float> f(1000);
  std::vector<double> d(3);
  for (size_t i = 0; i < f.size(); ++i)
    f[i] = float(w.rank + 1) * float(i);
  for (size_t i = 0; i < d.size(); ++i)
    d[i] = double(w.rank) + 0.5;
  if (!comm->allReduceSum(f.data(), f.size()).ok() || !comm->allReduceSum(d.data(), d.size()).ok())
    return 2;
  const float ranksSum = float(w.size * (w.size + 1) / 2);
  for (size_t i = 0; i < f.size(); ++i)
    if (f[i] != ranksSum * float(i))
      return 3;
  for (double v : d)
    if (v != double(w.size * (w.size - 1)) / 2 + 0.5 * w.size)
      return 4;
  char text[16] = {};
  if (w.rank == 1)
    std::snprintf(text, sizeof text, "from rank 1");
  if (!comm->broadcast(text, sizeof text, 1).ok() || std::string(text) != "from rank 1")
    return 5;
  return comm->barrier().ok() ? 0 : 6;
}

/// sumInBuckets over the ranks: tensors packed into buckets of 10 floats
/// (one larger than that summed alone, one filling a bucket exactly, one
/// that does not fit the rest of a bucket) each come back as the sum of
/// every rank's values, in place.
int bucketedSums(const World &w) {
  std::unique_ptr<Communicator> comm;
  if (!makeGlooCommunicator(w, localOptions(), comm).ok())
    return 1;
  const std::vector<int64_t> sizes = {3, 7, 12, 5, 10, 6, 1};
  std::vector<std::vector<float>> data;
  std::vector<std::pair<std::string, TensorView>> tensors;
  for (size_t k = 0; k < sizes.size(); ++k) {
    data.emplace_back(size_t(sizes[k]));
    for (size_t i = 0; i < data[k].size(); ++i)
      data[k][i] = float(w.rank + 1) * float(100 * k + i);
  }
  for (size_t k = 0; k < sizes.size(); ++k) {
    TensorView t;
    t.dtype = DType::F32;
    t.shape = {sizes[k]};
    t.data = data[k].data();
    tensors.emplace_back("t" + std::to_string(k), t);
  }
  if (!sumInBuckets(*comm, tensors, 10).ok())
    return 2;
  const float ranksSum = float(w.size * (w.size + 1) / 2);
  for (size_t k = 0; k < sizes.size(); ++k)
    for (size_t i = 0; i < data[k].size(); ++i)
      if (data[k][i] != ranksSum * float(100 * k + i))
        return 3;
  // A tensor of another type is refused by name, before any collective.
  std::vector<uint8_t> half(8);
  TensorView bad;
  bad.dtype = DType::BF16;
  bad.shape = {4};
  bad.data = half.data();
  Status s = sumInBuckets(*comm, {{"the gradient of w", bad}}, 10);
  if (s.ok() || s.message().find("the gradient of w is BF16") == std::string::npos)
    return 4;
  return 0;
}

/// The CPU backend's collective kernels with the job's communicator: all_reduce
/// sums each tensor over the ranks, broadcast gives every rank root 2's
/// (outputs apart from the inputs, and in place).
int collectiveKernels(const World &w) {
  std::unique_ptr<Communicator> comm;
  if (!makeGlooCommunicator(w, localOptions(), comm).ok())
    return 1;
  auto view = [](std::vector<float> &v) {
    return TensorView{v.data(), DType::F32, {int64_t(v.size())}};
  };
  std::vector<float> a = {float(w.rank), 1, 2}, b = {float(10 * w.rank)}, sa(3), sb(1);
  KernelAttrs none;
  KernelArgs args;
  args.name = "all_reduce";
  args.attrs = &none;
  args.communicator = comm.get();
  args.inputs = {view(a), view(b)};
  args.outputs = {view(sa), view(sb)};
  if (!cpu::findCpuKernel("all_reduce")(args).ok())
    return 2;
  const float ranks = float(w.size), rankSum = float(w.size * (w.size - 1) / 2);
  if (sa != std::vector<float>{rankSum, ranks, 2 * ranks} || sb[0] != 10 * rankSum)
    return 3;
  KernelAttrs root;
  root.set("root", AttrValue::ofInt(2));
  args.name = "broadcast";
  args.attrs = &root;
  args.outputs = args.inputs; // in place
  if (!cpu::findCpuKernel("broadcast")(args).ok())
    return 4;
  if (a != std::vector<float>{2, 1, 2} || b[0] != 20)
    return 5;
  // A root outside the job is refused before any exchange.
  root.set("root", AttrValue::ofInt(w.size));
  Status s = cpu::findCpuKernel("broadcast")(args);
  if (s.ok() || s.message().find("is not a process of this job of 3") == std::string::npos)
    return 6;
  return 0;
}

TEST(Gloo, CollectiveKernelsExchangeBetweenProcesses) {
  std::vector<int> codes = runForkedJob(3, collectiveKernels);
  for (int r = 0; r < 3; ++r)
    EXPECT_EQ(codes[size_t(r)], 0) << "rank " << r;
}

TEST(Gloo, SumsInBucketsBetweenProcesses) {
  std::vector<int> codes = runForkedJob(3, bucketedSums);
  for (int r = 0; r < 3; ++r)
    EXPECT_EQ(codes[size_t(r)], 0) << "rank " << r;
}

TEST(Gloo, SumsAndBroadcastsBetweenProcesses) {
  for (int ranks : {2, 4}) {
    std::vector<int> codes = runForkedJob(ranks, sumAndBroadcast);
    for (int r = 0; r < ranks; ++r)
      EXPECT_EQ(codes[size_t(r)], 0) << "rank " << r << " of " << ranks;
  }
}

TEST(Gloo, ARankThatNeverArrivesFailsTheOthersInTime) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<int> codes = runForkedJob(
      3,
      [](const World &w) {
        std::unique_ptr<Communicator> comm;
        Status s = makeGlooCommunicator(w, localOptions(std::chrono::seconds(2)), comm);
        return s.ok() ? 0 : 1;
      },
      /*skip=*/2);
  EXPECT_EQ(codes[0], 1);
  EXPECT_EQ(codes[1], 1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

} // namespace
