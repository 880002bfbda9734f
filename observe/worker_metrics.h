#ifndef ALLROUND_OBSERVE_WORKER_METRICS_H_
#define ALLROUND_OBSERVE_WORKER_METRICS_H_

// A training process's own Prometheus metrics (allround-worker --metrics-listen, rank 0), from the
// reports of common/worker_metrics.h:
//   allround_worker_steps_total, allround_worker_examples_total (all ranks' examples),
//   allround_worker_step_seconds (histogram), allround_worker_allreduce_seconds (histogram: the
//   wait for a step's gradient allreduce) and allround_worker_allreduce_bytes_total,
//   allround_worker_checkpoint_seconds (histogram), allround_worker_epoch and
//   allround_worker_samples_per_second (the last epoch's).
// Available only in builds with prometheus-cpp (ALLROUND_HAVE_PROMETHEUS); MakeWorkerMetrics
// fails saying so otherwise. Thread-safe.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/worker_metrics.h"

namespace allround::observe {

class WorkerMetrics : public worker_metrics::Sink {
 public:
  // The Prometheus text format of everything reported so far.
  virtual std::string Text() const = 0;
};

absl::StatusOr<std::unique_ptr<WorkerMetrics>> MakeWorkerMetrics();

}  // namespace allround::observe

#endif  // ALLROUND_OBSERVE_WORKER_METRICS_H_
