#include "coordinator/stream_watchdog.h"

namespace allround::coordinator {

StreamWatchdog::StreamWatchdog() : thread_([this] { Loop(); }) {}

StreamWatchdog::~StreamWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::unique_ptr<StreamWatchdog::Guard> StreamWatchdog::Watch(grpc::ServerContext* ctx,
                                                             std::chrono::milliseconds budget,
                                                             std::chrono::milliseconds limit) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t id = next_id_++;
  const auto now = Clock::now();
  entries_[id] = Entry{ctx, std::min(now + budget, now + limit), now + limit};
  return std::make_unique<Guard>(this, id);
}

void StreamWatchdog::Forget(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.erase(id);
}

void StreamWatchdog::Extend(uint64_t id, std::chrono::milliseconds budget) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it != entries_.end() && !it->second.expired) {
    it->second.deadline = std::min(Clock::now() + budget, it->second.limit);
  }
}

bool StreamWatchdog::Expired(uint64_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  return it != entries_.end() && it->second.expired;
}

void StreamWatchdog::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
    const auto now = Clock::now();
    for (auto& [id, e] : entries_) {
      if (!e.expired && now >= e.deadline) {
        e.expired = true;
        e.ctx->TryCancel();  // the call's blocked Read or Write returns false
      }
    }
  }
}

}  // namespace allround::coordinator
