//===- gloo_communicator.cpp - collectives over Gloo (CPU) ----------------===//
//
// Gloo reports failures (a peer gone, a timeout) as exceptions; each call
// here catches them and returns an error naming the collective and the rank,
// so that callers see a Status like everywhere else in the runtime.
//
//===----------------------------------------------------------------------===//

#include "runtime/dist/gloo_communicator.h"

#include "runtime/dist/collective_watchdog.h"
#include "runtime/dist/tcp_store.h"

#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <stdexcept>

namespace g3rt {

namespace {

/// Gloo's view of the TcpStore; Gloo expects failures as exceptions.
class StoreAdapter final : public gloo::rendezvous::Store {
public:
  explicit StoreAdapter(TcpStore &store) : store_(store) {}
  void set(const std::string &key, const std::vector<char> &data) override {
    Status s = store_.set(key, data);
    if (!s.ok())
      throw std::runtime_error(s.message());
  }
  std::vector<char> get(const std::string &key) override {
    std::vector<char> value;
    Status s = store_.get(key, value);
    if (!s.ok())
      throw std::runtime_error(s.message());
    return value;
  }
  void wait(const std::vector<std::string> &keys) override {
    for (const std::string &key : keys)
      get(key);
  }
  void wait(const std::vector<std::string> &keys, const std::chrono::milliseconds &) override {
    wait(keys);
  }

private:
  TcpStore &store_;
};

class GlooCommunicator final : public Communicator {
public:
  GlooCommunicator(std::unique_ptr<TcpStore> store, std::shared_ptr<gloo::Context> context,
                   const GlooOptions &options)
      : store_(std::move(store)), context_(std::move(context)), timeout_(options.timeout) {
    if (options.onStuck && size() > 1) {
      TcpStore *s = store_.get();
      watchdog_ = std::make_unique<CollectiveWatchdog>(
          rank(), size(), [s] { return s->peerLeft(); }, options.onStuck);
    }
  }

  int rank() const override { return context_->rank; }
  int size() const override { return context_->size; }
  std::chrono::milliseconds timeout() const override { return timeout_; }

  Status allReduceSum(float *data, size_t count) override { return reduce(data, count); }
  Status allReduceSum(double *data, size_t count) override { return reduce(data, count); }

  Status broadcast(void *data, size_t bytes, int root) override {
    if (root < 0 || root >= size())
      return Status::error("broadcast from rank " + std::to_string(root) + " of " +
                           std::to_string(size()));
    return guarded("broadcast", [&] {
      gloo::BroadcastOptions opts(context_);
      opts.setOutput(static_cast<char *>(data), bytes);
      opts.setRoot(root);
      opts.setTag(nextTag());
      opts.setTimeout(timeout_);
      gloo::broadcast(opts);
    });
  }

  Status barrier() override {
    return guarded("barrier", [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(nextTag());
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    });
  }

private:
  template <typename T> Status reduce(T *data, size_t count) {
    if (count == 0)
      return Status();
    return guarded("all-reduce", [&] {
      gloo::AllreduceOptions opts(context_);
      opts.setOutput(data, count);
      void (*sum)(void *, const void *, const void *, size_t) = &gloo::sum<T>;
      opts.setReduceFunction(sum);
      opts.setTag(nextTag());
      opts.setTimeout(timeout_);
      gloo::allreduce(opts);
    });
  }

  /// Runs a collective, turning Gloo's exceptions into an error.
  template <typename F> Status guarded(const char *what, F &&run) {
    if (watchdog_)
      watchdog_->begin(what);
    Status s;
    try {
      run();
    } catch (const std::exception &e) {
      s = Status::error(std::string("the ") + what + " on rank " + std::to_string(rank()) + " of " +
                        std::to_string(size()) + " failed: " + e.what());
    }
    if (watchdog_)
      watchdog_->end();
    return s;
  }

  /// Every rank issues the same collectives in the same order, so a counter
  /// gives matching tags.
  uint32_t nextTag() { return tag_++; }

  std::unique_ptr<TcpStore> store_;
  std::shared_ptr<gloo::Context> context_;
  std::chrono::milliseconds timeout_;
  uint32_t tag_ = 0;
  /// After store_, which it reads: destroyed first.
  std::unique_ptr<CollectiveWatchdog> watchdog_;
};

} // namespace

Status makeGlooCommunicator(const World &world, const GlooOptions &options,
                            std::unique_ptr<Communicator> &out) {
  std::unique_ptr<TcpStore> store;
  G3RT_RETURN_IF_ERROR(
      TcpStore::open(world.masterAddr, world.masterPort, world.rank == 0, options.timeout, store));
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.host;
    std::shared_ptr<gloo::transport::Device> device = gloo::transport::tcp::CreateDevice(attr);
    auto context = std::make_shared<gloo::rendezvous::Context>(world.rank, world.size);
    context->setTimeout(options.timeout);
    StoreAdapter adapter(*store);
    context->connectFullMesh(adapter, device);
    out = std::make_unique<GlooCommunicator>(std::move(store), std::move(context), options);
    return Status();
  } catch (const std::exception &e) {
    return Status::error("rank " + std::to_string(world.rank) + " of " +
                         std::to_string(world.size) + " could not join the job: " + e.what());
  }
}

} // namespace g3rt
