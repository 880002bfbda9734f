#ifndef ALLROUND_COORDINATOR_RUN_WATCH_H_
#define ALLROUND_COORDINATOR_RUN_WATCH_H_

// What an operator watches while a federation runs: Prometheus metrics and a status page, served
// by the coordinator on one listener (`--metrics-listen HOST:PORT`, loopback by default; beyond
// loopback only with `--status-token`). Read-only; no token, key or update is ever shown.
//
//   GET /metrics   Prometheus text format (prometheus-cpp's registry and serializer):
//     allround_rounds_total, allround_rounds_abandoned_total, allround_model_version,
//     allround_round_duration_seconds and allround_aggregation_seconds (histograms),
//     allround_sites_joined, allround_sites_alive, allround_updates_accepted_total,
//     allround_refusals_total{reason}, allround_bytes_received_total, allround_bytes_sent_total,
//     allround_test_accuracy, allround_test_loss, allround_federated_accuracy (the last round's).
//   GET /          the status page: the run's name, round r of R with an ETA, the accuracy and
//     loss curves (SVG drawn here: no scripts, no fonts, nothing fetched from elsewhere), and a
//     table of the sites (name, alive, last heard from, rounds contributed, refusals, examples).
//
// The round figures come from OnRound (the federated run's observer); the rest is read from the
// RoundManager and the service when a page is asked for. Thread-safe: pages are served on the
// HTTP server's threads while the run calls OnRound.

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "coordinator/round_manager.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace allround::coordinator {

class CoordinatorService;

class RunWatch {
 public:
  // `manager` and `service` (null before the server listens) outlive the watch.
  RunWatch(std::string run_name, int64_t rounds, const RoundManager* manager);
  ~RunWatch();
  void set_service(const CoordinatorService* service) { service_ = service; }

  // A round closed with a new model: its record, the seconds it took, and the global model's
  // evaluation (test_accuracy, test_loss, ..., federated_accuracy).
  void OnRound(const RoundRecord& record, int64_t version, double seconds, const std::map<std::string, double>& eval);

  std::string MetricsText();
  std::string StatusHtml();

 private:
  struct Point {
    int64_t version;
    std::map<std::string, double> eval;
  };
  void Refresh();  // mu_ held

  const std::string run_name_;
  const int64_t rounds_;
  const RoundManager* manager_;
  const CoordinatorService* service_ = nullptr;
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::mutex mu_;
  std::vector<Point> curve_;
  std::vector<double> round_seconds_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter *rounds_total_, *abandoned_total_, *updates_total_, *bytes_in_, *bytes_out_;
  prometheus::Gauge *version_, *joined_, *alive_, *test_accuracy_, *test_loss_, *federated_accuracy_;
  prometheus::Histogram *round_duration_, *aggregation_;
  prometheus::Family<prometheus::Counter>* refusals_;
};

// The status page's SVG chart: one polyline per series over the model versions, axes with their
// ranges written as text. Exposed for tests.
std::string SvgChart(const std::string& title, const std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>>& series);

}  // namespace allround::coordinator

#endif  // ALLROUND_COORDINATOR_RUN_WATCH_H_
