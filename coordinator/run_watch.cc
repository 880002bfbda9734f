#include "coordinator/run_watch.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "common/log.h"
#include "coordinator/service.h"

namespace allround::coordinator {
namespace {

// A counter follows a total kept elsewhere: it is moved up by the difference.
void CatchUp(prometheus::Counter& counter, double total) {
  if (total > counter.Value()) counter.Increment(total - counter.Value());
}

std::string Escape(const std::string& s) {
  return absl::StrReplaceAll(s, {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}, {"'", "&#39;"}});
}

}  // namespace

RunWatch::RunWatch(std::string run_name, int64_t rounds, const RoundManager* manager)
    : run_name_(std::move(run_name)), rounds_(rounds), manager_(manager),
      registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  const auto counter = [&](const char* name, const char* help) -> prometheus::Counter& {
    return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
  };
  const auto gauge = [&](const char* name, const char* help) -> prometheus::Gauge& {
    return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
  };
  rounds_total_ = &counter("allround_rounds_total", "Federated rounds closed with a new global model");
  abandoned_total_ = &counter("allround_rounds_abandoned_total", "Federated rounds abandoned without a model");
  updates_total_ = &counter("allround_updates_accepted_total", "Site updates counted in a closed round's aggregate");
  bytes_in_ = &counter("allround_bytes_received_total", "Protocol bytes received from sites");
  bytes_out_ = &counter("allround_bytes_sent_total", "Protocol bytes sent to sites");
  version_ = &gauge("allround_model_version", "Version of the current global model (0: the initial one)");
  joined_ = &gauge("allround_sites_joined", "Sites that have joined");
  alive_ = &gauge("allround_sites_alive", "Joined sites heard from within federated.site_timeout_s");
  test_accuracy_ = &gauge("allround_test_accuracy", "The last global model's accuracy on the held-out set");
  test_loss_ = &gauge("allround_test_loss", "The last global model's loss on the held-out set");
  federated_accuracy_ = &gauge("allround_federated_accuracy", "The sites' own accuracy on their test splits, last round");
  round_duration_ = &prometheus::BuildHistogram()
                         .Name("allround_round_duration_seconds")
                         .Help("Wall time of each closed round, from the previous close")
                         .Register(r)
                         .Add({}, prometheus::Histogram::BucketBoundaries{0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800});
  aggregation_ = &prometheus::BuildHistogram()
                      .Name("allround_aggregation_seconds")
                      .Help("The strategy's time per closed round (with unmasking under secure aggregation)")
                      .Register(r)
                      .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60});
  refusals_ = &prometheus::BuildCounter()
                   .Name("allround_refusals_total")
                   .Help("Calls and updates refused, by reason")
                   .Register(r);
}

RunWatch::~RunWatch() = default;

void RunWatch::OnRound(const RoundRecord& record, int64_t version, double seconds,
                       const std::map<std::string, double>& eval) {
  std::lock_guard<std::mutex> lock(mu_);
  round_duration_->Observe(seconds);
  aggregation_->Observe(record.aggregate_s);
  round_seconds_.push_back(seconds);
  curve_.push_back(Point{version, eval});
  if (auto it = eval.find("test_accuracy"); it != eval.end()) test_accuracy_->Set(it->second);
  if (auto it = eval.find("test_loss"); it != eval.end()) test_loss_->Set(it->second);
  if (auto it = eval.find("federated_accuracy"); it != eval.end()) federated_accuracy_->Set(it->second);
}

void RunWatch::Refresh() {
  const auto now = std::chrono::steady_clock::now();
  const std::vector<SiteStatus> sites = manager_->Sites(now);
  joined_->Set(static_cast<double>(sites.size()));
  alive_->Set(static_cast<double>(std::count_if(sites.begin(), sites.end(), [](const SiteStatus& s) { return s.alive; })));
  version_->Set(static_cast<double>(manager_->model_version()));
  int64_t closed = 0, abandoned = 0, updates = 0;
  for (const RoundRecord& r : manager_->history()) {
    if (!r.abandoned.empty()) {
      ++abandoned;
      continue;
    }
    ++closed;
    updates += static_cast<int64_t>(r.contributors.size());
  }
  CatchUp(*rounds_total_, static_cast<double>(closed));
  CatchUp(*abandoned_total_, static_cast<double>(abandoned));
  CatchUp(*updates_total_, static_cast<double>(updates));
  for (const auto& [reason, count] : manager_->refusals()) CatchUp(refusals_->Add({{"reason", reason}}), count);
  if (service_ != nullptr) {
    CatchUp(*bytes_in_, static_cast<double>(service_->bytes_received()));
    CatchUp(*bytes_out_, static_cast<double>(service_->bytes_sent()));
  }
}

std::string RunWatch::MetricsText() {
  std::lock_guard<std::mutex> lock(mu_);
  Refresh();
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

std::string SvgChart(const std::string& title,
                     const std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>>& series) {
  constexpr double kW = 480, kH = 240, kLeft = 56, kRight = 12, kTop = 28, kBottom = 32;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto& [name, points] : series) {
    for (const auto& [x, y] : points) {
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  }
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
      "role=\"img\" aria-label=\"%s\">"
      "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"#fff\" stroke=\"#ccc\"/>"
      "<text x=\"%.0f\" y=\"18\" font-size=\"13\" font-family=\"sans-serif\">%s</text>",
      kW, kH, kW, kH, Escape(title), kW, kH, kLeft, Escape(title));
  if (x0 > x1) return svg + "<text x=\"56\" y=\"120\" font-size=\"12\" font-family=\"sans-serif\">no rounds yet</text></svg>";
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const auto px = [&](double x) { return kLeft + (x - x0) / (x1 - x0) * (kW - kLeft - kRight); };
  const auto py = [&](double y) { return kH - kBottom - (y - y0) / (y1 - y0) * (kH - kTop - kBottom); };
  absl::StrAppendFormat(&svg,
                        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\"/>"
                        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\"/>",
                        kLeft, kTop, kLeft, kH - kBottom, kLeft, kH - kBottom, kW - kRight, kH - kBottom);
  const auto label = [&](double x, double y, const char* anchor, const std::string& text) {
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" font-family=\"sans-serif\" "
                                "text-anchor=\"%s\">%s</text>", x, y, anchor, Escape(text));
  };
  label(kLeft - 4, kTop + 4, "end", absl::StrFormat("%.4g", y1));
  label(kLeft - 4, kH - kBottom, "end", absl::StrFormat("%.4g", y0));
  label(kLeft, kH - kBottom + 14, "start", absl::StrFormat("v%.0f", x0));
  label(kW - kRight, kH - kBottom + 14, "end", absl::StrFormat("v%.0f", x1));
  static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd"};
  for (size_t i = 0; i < series.size(); ++i) {
    const char* color = kColors[i % 4];
    std::string points;
    for (const auto& [x, y] : series[i].second) absl::StrAppendFormat(&points, "%s%.1f,%.1f", points.empty() ? "" : " ", px(x), py(y));
    absl::StrAppendFormat(&svg, "<polyline class=\"series\" data-name=\"%s\" fill=\"none\" stroke=\"%s\" "
                                "stroke-width=\"2\" points=\"%s\"/>",
                          Escape(series[i].first), color, points);
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" font-family=\"sans-serif\" fill=\"%s\">%s</text>",
                          kLeft + 8 + 150.0 * static_cast<double>(i), kH - 6.0, color, Escape(series[i].first));
  }
  return svg + "</svg>";
}

std::string RunWatch::StatusHtml() {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  const std::vector<SiteStatus> sites = manager_->Sites(now);
  const int64_t done = manager_->rounds_done();
  std::string eta = "-";
  if (!round_seconds_.empty() && done < rounds_) {
    double mean = 0;
    for (double s : round_seconds_) mean += s;
    mean /= static_cast<double>(round_seconds_.size());
    eta = log::ShortDuration(mean * static_cast<double>(rounds_ - done));
  } else if (done >= rounds_) {
    eta = "done";
  }
  const auto series = [&](const std::string& key) {
    std::vector<std::pair<double, double>> points;
    for (const Point& p : curve_) {
      if (auto it = p.eval.find(key); it != p.eval.end()) points.emplace_back(static_cast<double>(p.version), it->second);
    }
    return std::make_pair(key, points);
  };
  std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> accuracy, loss;
  for (const char* key : {"test_accuracy", "federated_accuracy"}) {
    if (auto s = series(key); !s.second.empty()) accuracy.push_back(std::move(s));
  }
  for (const char* key : {"test_loss", "federated_loss"}) {
    if (auto s = series(key); !s.second.empty()) loss.push_back(std::move(s));
  }
  std::string html = absl::StrCat(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"10\">"
      "<title>allround: ", Escape(run_name_), "</title><style>body{font-family:sans-serif;margin:1.5em}"
      "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
      "td:first-child,th:first-child{text-align:left}.dead{color:#b00}</style></head><body>\n",
      "<h1>", Escape(run_name_), "</h1>\n<p id=\"progress\">round ", done, " of ", rounds_, ", ETA ", eta,
      ", model version ", manager_->model_version(), "</p>\n<div>", SvgChart("accuracy", accuracy), " ",
      SvgChart("loss", loss), "</div>\n<h2>sites</h2>\n<table id=\"sites\"><tr><th>name</th><th>alive</th>"
      "<th>last heard</th><th>rounds contributed</th><th>refusals</th><th>examples</th></tr>\n");
  for (const SiteStatus& s : sites) {
    absl::StrAppend(&html, "<tr", s.alive ? "" : " class=\"dead\"", "><td>", Escape(s.name), "</td><td>",
                    s.alive ? "yes" : "no", "</td><td>", log::ShortDuration(s.seconds_since_seen), " ago</td><td>",
                    s.rounds_contributed, "</td><td>", s.refusals, "</td><td>", s.examples, "</td></tr>\n");
  }
  return html + "</table>\n</body></html>\n";
}

}  // namespace allround::coordinator
