//===- tcp_store.cpp - the job's rendezvous key-value store ---------------===//
//
// One request per message: 'S', key, value (answered by one byte) or 'G',
// key (answered by a found byte and the value). Lengths are 32-bit, in host
// order: every process of a job runs the same binary. The server answers
// each connection on a thread of its own, so that a get waiting for a key
// does not hold up the set that provides it.
//
//===----------------------------------------------------------------------===//

#include "runtime/dist/tcp_store.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

namespace g3rt {

namespace {

bool sendAll(int fd, const void *data, size_t n) {
  const char *p = static_cast<const char *>(data);
  while (n > 0) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return false;
    p += k;
    n -= size_t(k);
  }
  return true;
}

bool recvAll(int fd, void *data, size_t n) {
  char *p = static_cast<char *>(data);
  while (n > 0) {
    ssize_t k = ::recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      return false;
    p += k;
    n -= size_t(k);
  }
  return true;
}

bool sendBlob(int fd, const void *data, uint32_t n) {
  return sendAll(fd, &n, sizeof n) && sendAll(fd, data, n);
}

/// A length-prefixed blob of at most 64 MiB (keys and addresses are small).
bool recvBlob(int fd, std::vector<char> &out) {
  uint32_t n = 0;
  if (!recvAll(fd, &n, sizeof n) || n > (uint32_t(64) << 20))
    return false;
  out.resize(n);
  return recvAll(fd, out.data(), n);
}

std::string errnoText() { return std::strerror(errno); }

} // namespace

struct TcpStore::Server {
  int listenFd = -1;
  std::chrono::milliseconds timeout{0};
  std::atomic<bool> stopping{false};
  /// A connection ended while the store still served (a process left).
  std::atomic<bool> peerLeft{false};
  std::mutex mutex;
  std::condition_variable changed;
  std::map<std::string, std::vector<char>> values;
  std::vector<int> clients;
  std::vector<std::thread> threads;
  std::thread acceptor;

  void serve(int fd) {
    answer(fd);
    if (!stopping)
      peerLeft = true;
  }

  /// Answers the requests on `fd` until it closes or fails.
  void answer(int fd) {
    for (;;) {
      char op = 0;
      std::vector<char> key, value;
      if (!recvAll(fd, &op, 1) || !recvBlob(fd, key))
        return;
      std::string k(key.begin(), key.end());
      if (op == 'S') {
        if (!recvBlob(fd, value))
          return;
        {
          std::lock_guard<std::mutex> lock(mutex);
          values[k] = std::move(value);
        }
        changed.notify_all();
        char ok = 1;
        if (!sendAll(fd, &ok, 1))
          return;
      } else if (op == 'G') {
        std::unique_lock<std::mutex> lock(mutex);
        const bool found =
            changed.wait_for(lock, timeout, [&] { return stopping.load() || values.count(k) > 0; });
        char have = found && values.count(k) ? 1 : 0;
        std::vector<char> v = have ? values[k] : std::vector<char>();
        lock.unlock();
        if (!sendAll(fd, &have, 1) || (have && !sendBlob(fd, v.data(), uint32_t(v.size()))))
          return;
      } else {
        return;
      }
    }
  }

  void acceptLoop() {
    while (!stopping) {
      pollfd p{listenFd, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0)
        continue;
      int fd = ::accept(listenFd, nullptr, nullptr);
      if (fd < 0)
        continue;
      std::lock_guard<std::mutex> lock(mutex);
      clients.push_back(fd);
      threads.emplace_back([this, fd] { serve(fd); });
    }
  }

  ~Server() {
    stopping = true;
    changed.notify_all();
    if (acceptor.joinable())
      acceptor.join();
    {
      std::lock_guard<std::mutex> lock(mutex);
      for (int fd : clients)
        ::shutdown(fd, SHUT_RDWR);
    }
    for (std::thread &t : threads)
      t.join();
    for (int fd : clients)
      ::close(fd);
    if (listenFd >= 0)
      ::close(listenFd);
  }
};

Status TcpStore::open(const std::string &host, int port, bool serve,
                      std::chrono::milliseconds timeout, std::unique_ptr<TcpStore> &out) {
  std::unique_ptr<TcpStore> store(new TcpStore());
  store->timeout_ = timeout;
  store->address_ = host + ":" + std::to_string(port);
  const std::string where = "the rendezvous store at " + store->address_;
  if (serve) {
    auto server = std::make_unique<Server>();
    server->timeout = timeout;
    server->listenFd = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(server->listenFd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(uint16_t(port));
    if (server->listenFd < 0 ||
        ::bind(server->listenFd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 ||
        ::listen(server->listenFd, 128) != 0)
      return Status::error("cannot serve " + where + " (MASTER_PORT): " + errnoText());
    Server *s = server.get();
    server->acceptor = std::thread([s] { s->acceptLoop(); });
    store->server_ = std::move(server);
  }

  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 || !found)
    return Status::error("cannot resolve MASTER_ADDR '" + host + "'");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd >= 0 && ::connect(fd, found->ai_addr, found->ai_addrlen) == 0) {
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      store->fd_ = fd;
      break;
    }
    if (fd >= 0)
      ::close(fd);
    if (std::chrono::steady_clock::now() >= deadline) {
      ::freeaddrinfo(found);
      return Status::error("cannot reach " + where + " within " +
                           std::to_string(timeout.count() / 1000) + " s: is rank 0 running?");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::freeaddrinfo(found);
  out = std::move(store);
  return Status();
}

TcpStore::~TcpStore() {
  if (fd_ >= 0)
    ::close(fd_);
}

Status TcpStore::set(const std::string &key, const std::vector<char> &value) {
  char op = 'S', ok = 0;
  if (!sendAll(fd_, &op, 1) || !sendBlob(fd_, key.data(), uint32_t(key.size())) ||
      !sendBlob(fd_, value.data(), uint32_t(value.size())) || !recvAll(fd_, &ok, 1) || ok != 1)
    return Status::error("setting '" + key + "' in the rendezvous store at " + address_ +
                         " failed: rank 0 is gone");
  return Status();
}

Status TcpStore::get(const std::string &key, std::vector<char> &value) {
  char op = 'G', have = 0;
  if (!sendAll(fd_, &op, 1) || !sendBlob(fd_, key.data(), uint32_t(key.size())) ||
      !recvAll(fd_, &have, 1))
    return Status::error("reading '" + key + "' from the rendezvous store at " + address_ +
                         " failed: rank 0 is gone");
  if (!have)
    return Status::error("no rank set '" + key + "' in the rendezvous store within " +
                         std::to_string(timeout_.count() / 1000) + " s");
  if (!recvBlob(fd_, value))
    return Status::error("reading '" + key + "' from the rendezvous store at " + address_ +
                         " failed: rank 0 is gone");
  return Status();
}

bool TcpStore::peerLeft() const {
  if (server_)
    return server_->peerLeft;
  // Only the rendezvous reads this connection: later, anything that makes
  // it readable is rank 0 closing it.
  pollfd p{fd_, POLLIN | POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR));
}

int freeLocalPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

} // namespace g3rt
