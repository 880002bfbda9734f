#include "observe/worker_metrics.h"

#ifdef ALLROUND_HAVE_PROMETHEUS
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <sstream>
#endif

namespace allround::observe {

#ifdef ALLROUND_HAVE_PROMETHEUS
namespace {

class PrometheusWorkerMetrics final : public WorkerMetrics {
 public:
  PrometheusWorkerMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
    auto& r = *registry_;
    const auto counter = [&](const char* name, const char* help) -> prometheus::Counter& {
      return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
    };
    const auto gauge = [&](const char* name, const char* help) -> prometheus::Gauge& {
      return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
    };
    const auto histogram = [&](const char* name, const char* help,
                               prometheus::Histogram::BucketBoundaries buckets) -> prometheus::Histogram& {
      return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, std::move(buckets));
    };
    steps_ = &counter("allround_worker_steps_total", "Optimizer steps taken");
    examples_ = &counter("allround_worker_examples_total", "Training examples consumed, all ranks together");
    allreduce_bytes_ = &counter("allround_worker_allreduce_bytes_total", "Gradient bytes allreduced by this rank");
    epoch_ = &gauge("allround_worker_epoch", "Epochs (rounds) finished");
    samples_per_s_ = &gauge("allround_worker_samples_per_second", "The last epoch's training samples per second");
    step_seconds_ = &histogram("allround_worker_step_seconds", "Wall time of each training step",
                               {0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5});
    allreduce_seconds_ = &histogram("allround_worker_allreduce_seconds",
                                    "Wait for each step's gradient allreduce after its backward",
                                    {0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5});
    checkpoint_seconds_ = &histogram("allround_worker_checkpoint_seconds", "Wall time of each checkpoint save",
                                     {0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60});
  }

  void Step(double seconds, int64_t examples) override {
    steps_->Increment();
    examples_->Increment(static_cast<double>(examples));
    step_seconds_->Observe(seconds);
  }
  void GradientSync(double seconds, int64_t bytes) override {
    allreduce_seconds_->Observe(seconds);
    allreduce_bytes_->Increment(static_cast<double>(bytes));
  }
  void Checkpoint(double seconds) override { checkpoint_seconds_->Observe(seconds); }
  void Epoch(int64_t epoch, double samples_per_s) override {
    epoch_->Set(static_cast<double>(epoch));
    samples_per_s_->Set(samples_per_s);
  }

  std::string Text() const override {
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, registry_->Collect());
    return out.str();
  }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter *steps_, *examples_, *allreduce_bytes_;
  prometheus::Gauge *epoch_, *samples_per_s_;
  prometheus::Histogram *step_seconds_, *allreduce_seconds_, *checkpoint_seconds_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerMetrics>> MakeWorkerMetrics() {
  return std::unique_ptr<WorkerMetrics>(std::make_unique<PrometheusWorkerMetrics>());
}

#else

absl::StatusOr<std::unique_ptr<WorkerMetrics>> MakeWorkerMetrics() {
  return absl::UnimplementedError(
      "--metrics-listen: this build has no metrics (install prometheus-cpp-dev and libcpp-httplib-dev, as "
      "deploy/setup.sh does, then rebuild)");
}

#endif

}  // namespace allround::observe
