#include "comm/rendezvous.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace allround::comm {
namespace {

using Clock = std::chrono::steady_clock;

// Closes the descriptor when it goes out of scope.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

int RemainingMs(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::max<int64_t>(0, left));
}

// Sends or receives exactly n bytes before the deadline.
absl::Status Transfer(int fd, char* buf, size_t n, bool send, Clock::time_point deadline, const std::string& peer) {
  size_t done = 0;
  while (done < n) {
    pollfd p{fd, static_cast<short>(send ? POLLOUT : POLLIN), 0};
    const int ready = ::poll(&p, 1, RemainingMs(deadline));
    if (ready == 0) return absl::DeadlineExceededError(absl::StrCat("rendezvous: ", peer, " timed out"));
    if (ready < 0 && errno != EINTR) return absl::InternalError(absl::StrCat("rendezvous poll: ", std::strerror(errno)));
    if (ready < 0) continue;
    const ssize_t k = send ? ::send(fd, buf + done, n - done, MSG_NOSIGNAL) : ::recv(fd, buf + done, n - done, 0);
    if (k == 0) return absl::UnavailableError(absl::StrCat("rendezvous: ", peer, " closed the connection"));
    if (k < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::UnavailableError(absl::StrCat("rendezvous: ", peer, ": ", std::strerror(errno)));
    }
    done += static_cast<size_t>(k);
  }
  return absl::OkStatus();
}

absl::Status SendFrame(int fd, const std::string& data, Clock::time_point deadline, const std::string& peer) {
  uint32_t len = htonl(static_cast<uint32_t>(data.size()));
  if (auto s = Transfer(fd, reinterpret_cast<char*>(&len), 4, true, deadline, peer); !s.ok()) return s;
  return Transfer(fd, const_cast<char*>(data.data()), data.size(), true, deadline, peer);
}

absl::StatusOr<std::string> RecvFrame(int fd, Clock::time_point deadline, const std::string& peer) {
  uint32_t len = 0;
  if (auto s = Transfer(fd, reinterpret_cast<char*>(&len), 4, false, deadline, peer); !s.ok()) return s;
  len = ntohl(len);
  if (len > (1u << 20)) return absl::DataLossError(absl::StrCat("rendezvous: ", peer, " sent a frame of ", len, " bytes"));
  std::string out(len, '\0');
  if (auto s = Transfer(fd, out.data(), len, false, deadline, peer); !s.ok()) return s;
  return out;
}

absl::StatusOr<sockaddr_storage> Resolve(const std::string& host, int port, socklen_t* len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) return absl::InvalidArgumentError(absl::StrCat("MASTER_ADDR '", host, "': ", gai_strerror(rc)));
  sockaddr_storage addr{};
  std::memcpy(&addr, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  ::freeaddrinfo(res);
  return addr;
}

absl::StatusOr<std::string> Serve(const RendezvousConfig& c, const std::string& blob, Clock::time_point deadline) {
  socklen_t len = 0;
  auto addr = Resolve(c.master_addr, c.master_port, &len);
  if (!addr.ok()) return addr.status();
  Fd listener(::socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const int one = 1;
  ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&*addr), len) != 0 || ::listen(listener.get(), 128) != 0) {
    return absl::UnavailableError(absl::StrCat("rendezvous: rank 0 cannot listen on ", c.master_addr, ":",
                                               c.master_port, ": ", std::strerror(errno)));
  }
  std::vector<bool> arrived(c.world_size, false);
  arrived[0] = true;
  std::vector<Fd> peers;
  for (int joined = 1; joined < c.world_size;) {
    pollfd p{listener.get(), POLLIN, 0};
    if (::poll(&p, 1, RemainingMs(deadline)) <= 0) {
      std::vector<int> missing;
      for (int r = 1; r < c.world_size; ++r) {
        if (!arrived[r]) missing.push_back(r);
      }
      return absl::DeadlineExceededError(absl::StrCat("rendezvous: rank(s) ", absl::StrJoin(missing, ", "),
                                                      " did not join within ", c.timeout.count(), " ms"));
    }
    Fd peer(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (peer.get() < 0) continue;
    auto hello = RecvFrame(peer.get(), deadline, "a joining rank");
    int r = 0;
    if (!hello.ok() || !absl::SimpleAtoi(*hello, &r) || r <= 0 || r >= c.world_size || arrived[r]) {
      continue;  // not one of ours, or a duplicate: ignore it, keep serving the others
    }
    arrived[r] = true;
    ++joined;
    peers.push_back(std::move(peer));
  }
  for (size_t i = 0; i < peers.size(); ++i) {
    if (auto s = SendFrame(peers[i].get(), blob, deadline, "a rank"); !s.ok()) return s;
  }
  return blob;
}

absl::StatusOr<std::string> Join(const RendezvousConfig& c, Clock::time_point deadline) {
  socklen_t len = 0;
  auto addr = Resolve(c.master_addr, c.master_port, &len);
  if (!addr.ok()) return addr.status();
  const std::string master = absl::StrCat("rank 0 at ", c.master_addr, ":", c.master_port);
  // Rank 0 may not listen yet: retry with a capped backoff until the deadline.
  std::chrono::milliseconds backoff(10);
  for (;;) {
    Fd fd(::socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&*addr), len) == 0) {
      if (auto s = SendFrame(fd.get(), std::to_string(c.rank), deadline, master); !s.ok()) return s;
      return RecvFrame(fd.get(), deadline, master);
    }
    if (Clock::now() + backoff >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("rendezvous: rank ", c.rank, " could not reach ", master,
                                                      " within ", c.timeout.count(), " ms: ", std::strerror(errno)));
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
  }
}

}  // namespace

absl::StatusOr<int> IntFromEnvironment(const char* name) {
  const char* v = std::getenv(name);
  int out = 0;
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("environment variable ", name, " is not set"));
  if (!absl::SimpleAtoi(v, &out)) return absl::InvalidArgumentError(absl::StrCat(name, "='", v, "' is not a number"));
  return out;
}

absl::StatusOr<RendezvousConfig> RendezvousFromEnvironment() {
  RendezvousConfig c;
  auto rank = IntFromEnvironment("RANK"), world = IntFromEnvironment("WORLD_SIZE"),
       port = IntFromEnvironment("MASTER_PORT");
  if (!rank.ok()) return rank.status();
  if (!world.ok()) return world.status();
  if (!port.ok()) return port.status();
  if (*world < 1 || *rank < 0 || *rank >= *world) {
    return absl::InvalidArgumentError(absl::StrCat("RANK=", *rank, " does not fit WORLD_SIZE=", *world));
  }
  const char* addr = std::getenv("MASTER_ADDR");
  if (addr == nullptr) return absl::NotFoundError("environment variable MASTER_ADDR is not set");
  c.rank = *rank;
  c.world_size = *world;
  c.master_addr = addr;
  c.master_port = *port;
  return c;
}

absl::StatusOr<std::string> BroadcastBlob(const RendezvousConfig& config, const std::string& blob) {
  const auto deadline = Clock::now() + config.timeout;
  if (config.world_size == 1) return blob;
  return config.rank == 0 ? Serve(config, blob, deadline) : Join(config, deadline);
}

}  // namespace allround::comm
