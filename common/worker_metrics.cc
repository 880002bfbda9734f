#include "common/worker_metrics.h"

#include <atomic>

namespace allround::worker_metrics {
namespace {
std::atomic<Sink*> active{nullptr};
}  // namespace

Sink* Active() { return active.load(std::memory_order_acquire); }
void SetActive(Sink* sink) { active.store(sink, std::memory_order_release); }

}  // namespace allround::worker_metrics
