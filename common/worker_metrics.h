#ifndef ALLROUND_COMMON_WORKER_METRICS_H_
#define ALLROUND_COMMON_WORKER_METRICS_H_

// What a training process reports to an operator's scraper (allround-worker --metrics-listen): its
// steps, examples and step time, the time and bytes of each step's gradient allreduce, checkpoint
// saves, and each epoch's samples/s. The trainer, the Reducer and the cluster run report here; the
// worker installs a sink that keeps them as Prometheus metrics (observe/worker_metrics.h). Off (no
// sink), a report is one atomic load and a branch.
//
// Thread-safe: sinks must accept reports from any thread.

#include <cstdint>

namespace allround::worker_metrics {

class Sink {
 public:
  virtual ~Sink() = default;
  virtual void Step(double seconds, int64_t examples) = 0;           // one optimizer step, all ranks' examples
  virtual void GradientSync(double seconds, int64_t bytes) = 0;      // a step's allreduce, waited for
  virtual void Checkpoint(double seconds) = 0;                       // a save
  virtual void Epoch(int64_t epoch, double samples_per_s) = 0;       // an epoch (round) ended
};

Sink* Active();
void SetActive(Sink* sink);  // null removes it; a sink must outlive its use

}  // namespace allround::worker_metrics

#endif  // ALLROUND_COMMON_WORKER_METRICS_H_
