#include "common/stop_signal.h"

#include <signal.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace allround {
namespace {

std::atomic<bool> g_stop{false};  // lock-free, so safe to set from a signal handler
static_assert(std::atomic<bool>::is_always_lock_free);

void OnStopSignal(int) { g_stop.store(true); }

}  // namespace

void InstallStopHandlers() {
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

bool StopRequested() { return g_stop.load(); }

void WaitUnlessStopped(double seconds) {
  InstallStopHandlers();
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < until && !StopRequested()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace allround
