#ifndef ALLROUND_COORDINATOR_STREAM_WATCHDOG_H_
#define ALLROUND_COORDINATOR_STREAM_WATCHDOG_H_

// Deadlines for the calls of gRPC's synchronous API, whose Read and Write block without one: a
// stream that has not sent (or read) anything by its deadline is cancelled with
// ServerContext::TryCancel, which makes the blocked Read or Write return false, so a silent peer
// cannot hold a server thread forever. One thread checks every registered stream ten times a
// second.
//
// Thread-safe. Watch() returns a Guard that the call owns for its lifetime; the watchdog must
// outlive every Guard.

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>

namespace allround::coordinator {

class StreamWatchdog {
 public:
  using Clock = std::chrono::steady_clock;

  class Guard {
   public:
    Guard(StreamWatchdog* dog, uint64_t id) : dog_(dog), id_(id) {}
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() { dog_->Forget(id_); }
    // The stream made progress: its next deadline is `budget` from now.
    void Touch(std::chrono::milliseconds budget) { dog_->Extend(id_, budget); }
    // Whether the watchdog cancelled the stream.
    bool expired() const { return dog_->Expired(id_); }

   private:
    StreamWatchdog* dog_;
    uint64_t id_;
  };

  StreamWatchdog();
  ~StreamWatchdog();

  // Cancels `ctx` unless Touch()ed within `budget`, and again after each Touch; and at `limit`
  // from now whatever Touch says.
  std::unique_ptr<Guard> Watch(grpc::ServerContext* ctx, std::chrono::milliseconds budget,
                               std::chrono::milliseconds limit);

 private:
  struct Entry {
    grpc::ServerContext* ctx;
    Clock::time_point deadline;
    Clock::time_point limit;
    bool expired = false;
  };
  void Forget(uint64_t id);
  void Extend(uint64_t id, std::chrono::milliseconds budget);
  bool Expired(uint64_t id) const;
  void Loop();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Entry> entries_;
  uint64_t next_id_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace allround::coordinator

#endif  // ALLROUND_COORDINATOR_STREAM_WATCHDOG_H_
