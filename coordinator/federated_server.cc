#include "coordinator/federated_server.h"

#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "algorithms/compute_threads.h"
#include "algorithms/modes/registry.h"
#include "algorithms/metrics.h"
#include "common/log.h"
#include "common/timeline.h"
#include "common/stop_signal.h"
#include "common/text_file.h"
#include "coordinator/limits.h"
#include "coordinator/round_manager.h"
#include "coordinator/service.h"
#include "privacy/site_dp.h"
#include "privacy/update_pipeline.h"
#include "data/datasets.h"
#include "runtime/round_engine.h"
#include "coordinator/run_watch.h"
#include "observe/http_server.h"
#include "observe/run_board.h"
#include "storage/run_directory.h"
#include "storage/safetensors.h"

namespace allround::coordinator {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The port of HOST:PORT, one gRPC can bind (it would take 99999 modulo 65536); 0 picks a free one.
absl::StatusOr<int64_t> ListenPort(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  const std::string port_text = colon == std::string::npos ? "" : listen.substr(colon + 1);
  int64_t port = -1;
  if (!absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535 || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen '", listen, "': give HOST:PORT with a port from 0 (any free one) to 65535"));
  }
  return port;
}

// Transport: TLS with the server's certificate, or plain text only when asked for.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerOptions& o) {
  if (o.tls_cert.empty() && o.tls_key.empty()) {
    if (o.insecure) return grpc::InsecureServerCredentials();
    return absl::InvalidArgumentError(
        "give --tls-cert FILE --tls-key FILE (deploy/make-certs.sh makes a test CA and certificates), "
        "or --insecure to serve plain text");
  }
  if (o.insecure) return absl::InvalidArgumentError("--insecure and --tls-cert/--tls-key exclude each other");
  if (o.tls_cert.empty() || o.tls_key.empty()) return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  auto cert = ReadPemFile(o.tls_cert, "--tls-cert", "CERTIFICATE");
  if (!cert.ok()) return cert.status();
  auto key = ReadPemFile(o.tls_key, "--tls-key", "PRIVATE KEY");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(ssl);
}

// What the service needs beside the manager: the sites' tokens, the task's parameters.
absl::StatusOr<ServiceOptions> MakeServiceOptions(const Job& job, const ServerOptions& o) {
  ServiceOptions out;
  if (!o.tokens.empty()) {
    auto tokens = ReadTokensFile(o.tokens, "--tokens");
    if (!tokens.ok()) return tokens.status();
    out.tokens = *tokens;
  } else if (!o.no_auth) {
    return absl::InvalidArgumentError("give --tokens FILE (one 'site token' per line), or --no-auth explicitly");
  }
  if (!o.dump_models.empty()) {
    if (auto s = MakeFlagDirectory(o.dump_models, "--dump-models"); !s.ok()) return s;
  }
  out.local_epochs = job.federated.local_epochs;
  auto pipeline = privacy::UpdatePipeline::Make(job, privacy::Side::kSite);
  if (!pipeline.ok()) return pipeline.status();
  out.site_pipeline = pipeline->Describe();
  out.secure_aggregation = privacy::SecureAggregationName(job);
  return out;
}

// The numbers of a metrics record (round, examples, test_accuracy, ...): what a checkpoint's info,
// TensorBoard and the operator's metrics take from it.
std::map<std::string, double> Figures(const json& record) {
  std::map<std::string, double> out;
  for (const auto& [key, value] : record.items()) {
    if (value.is_number()) out[key] = value.get<double>();
  }
  return out;
}

RoundManagerOptions ManagerOptions(const Job& job) {
  RoundManagerOptions rm;
  rm.seed = job.seed;
  rm.rounds = job.federated.rounds;
  rm.fraction = job.federated.fraction;
  rm.min_sites = job.federated.min_sites;
  rm.min_available = job.federated.min_available;
  rm.round_timeout = Millis(job.federated.round_timeout_s);
  rm.site_timeout = Millis(job.federated.site_timeout_s);
  rm.secure = privacy::SecureAggregationFromJob(job);
  // Unmasking runs at a round's close, when the sites wait for their next task: all the cores,
  // whatever the job's `threads` (LibTorch's and OpenBLAS's pools, whose spinning threads would
  // otherwise compete with sites training on the same machine).
  rm.compute_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  rm.update_norms = job.tensorboard.enabled && job.tensorboard.histograms;  // only TensorBoard shows them
  rm.poisson = privacy::PoissonSampling(job);
  return rm;
}

// The coordinator's run: a round executor (a round is the manager closing its next round) and the
// observer of each round (metrics, the round's line, checkpoints).
class FederatedRun final : public runtime::RoundExecutor, public runtime::RoundObserver {
 public:
  FederatedRun(const Job& job, const ServerOptions& options) : job_(job), options_(options) {}

  absl::Status Run() {
    SetComputeThreads(static_cast<int>(job_.threads));
    auto port = ListenPort(options_.listen);
    if (!port.ok()) return port.status();
    auto credentials = Credentials(options_);
    if (!credentials.ok()) return credentials.status();
    auto service_options = MakeServiceOptions(job_, options_);
    if (!service_options.ok()) return service_options.status();
    if (auto s = Prepare(); !s.ok()) return s;
    service_options->limits = limits_;
    service_options->proximal_mu = proximal_mu_;
    if (auto s = Resume(); !s.ok()) return s;
    if (auto s = Listen(*credentials, *service_options); !s.ok()) return s;
    if (auto s = ServeWatch(); !s.ok()) return s;
    auto dir = storage::RunDirectory::Open(ResolvedRunDir(job_));
    if (!dir.ok()) return dir.status();
    dir_ = std::make_unique<storage::RunDirectory>(*std::move(dir));
    auto board = observe::RunBoard::Open(job_, dir_->path(), "coordinator");
    if (!board.ok()) return board.status();
    board_ = *std::move(board);
    if (auto s = board_.JobText(job_); !s.ok()) return s;
    InstallStopHandlers();
    // A run resumed after its privacy budget was spent has nothing left to train.
    const int64_t rounds = manager_->finished() ? manager_->rounds_done() : job_.federated.rounds;
    runtime::RoundPlan plan{rounds, 0, manager_->rounds_done(), 0, 1};
    auto out = runtime::RunRounds(plan, *this, *this);
    if (absl::IsCancelled(out.status())) return StopBySignal();
    if (!out.ok()) return out.status();
    // Let polling sites hear STOP before the server goes away.
    std::this_thread::sleep_for(std::chrono::seconds(2));
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    json summary = last_;
    summary["rounds"] = manager_->rounds_done();
    summary["refusals"] = manager_->refusals();
    if (auto p = manager_->site_privacy()) {
      summary["privacy"] = {
          {"mode", "site"},
          {"guarantee",
           "(epsilon, delta)-DP of the sequence of global models with respect to adding or removing one site's "
           "data, against anyone without the coordinator's noise and sample (DP-FedAvg, Poisson-sampled sites)"},
          {"epsilon", p->spent.epsilon},
          {"delta", site_dp_.delta},
          {"rdp_order", p->spent.order},
          {"noise_multiplier", site_dp_.noise_multiplier},
          {"clip", p->clip},
          {"adaptive_clip_quantile", site_dp_.quantile},
          {"sampling_rate", site_dp_.sampling_rate},
          {"rounds", p->rounds},
          {"target_epsilon", site_dp_.target_epsilon},
          {"budget_spent", p->budget_spent}};
    }
    // The coordinator's own CPU (all its threads: serving, aggregation, evaluation), for operators
    // sizing a machine and for bench/secagg's cost of unmasking.
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    summary["cpu_s"] = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                       static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
    if (auto s = dir_->WriteFile("summary.json", summary.dump(2) + "\n"); !s.ok()) return s;
    if (!options_.summary_json.empty()) {
      if (auto s = storage::WriteFileAtomically(options_.summary_json, summary.dump(2) + "\n"); !s.ok()) return s;
    }
    Linger();
    return absl::OkStatus();
  }

  // Waits for the manager to close the next round (the sites' calls do the work).
  absl::StatusOr<runtime::RoundResult> Execute(const runtime::RoundAssignment& round) override {
    const auto start = Clock::now();
    for (;;) {
      for (ClosedRound& c : manager_->TakeClosedRounds()) closed_.push_back(std::move(c));
      for (const RoundRecord& r : manager_->TakeAbandonedRounds()) {
        log::Warning("round index {} abandoned ({} sites sampled): {}", r.round, r.participants.size(), r.abandoned);
      }
      if (!closed_.empty()) break;
      if (StopRequested()) return absl::CancelledError("stopped by signal");
      if (manager_->finished()) {
        return absl::InternalError(absl::StrCat("the round manager finished before round ", round.round + 1));
      }
      manager_->Tick(Clock::now());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    current_ = std::move(closed_.front());
    closed_.pop_front();
    runtime::RoundResult result;
    result.examples = current_.record.examples;
    result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    // Site-level DP: one more round would pass privacy.target_epsilon.
    // Decided at the round's close, not from the manager now (a later round may have closed since).
    if (current_.record.budget_spent) {
      result.final = true;
      log::Info("privacy: budget spent, stopping after round {}: epsilon {:.4f} (delta {:g}), target {:g}",
                current_.version, current_.record.epsilon, site_dp_.delta, site_dp_.target_epsilon);
    }
    return result;
  }

  // The global model of the round just closed (the current one after a finished resumed run), on
  // the job's held-out set.
  absl::StatusOr<runtime::Metrics> Evaluate() override {
    timeline::Span span("evaluate", "federated");
    const NamedTensors model = current_.version > 0 ? current_.model : modes::ModelTensors(manager_->State());
    if (!options_.dump_models.empty() && current_.version > 0) {
      const std::string path = absl::StrCat(options_.dump_models, "/version-", current_.version, ".safetensors");
      if (auto s = storage::WriteSafetensors(path, model, {}); !s.ok()) return s;
    }
    if (auto s = mode_->LoadState(model); !s.ok()) return s;
    auto sums = mode_->Evaluate(data_.test_inputs, data_.test_targets, job_.train.eval_batch_size);
    if (!sums.ok()) return sums.status();
    runtime::Metrics out{{"test_loss", sums->loss_sum / std::max<int64_t>(1, sums->examples)}};
    last_confusion_.clear();
    if (sums->confusion.defined()) {  // a mode that classifies
      const auto report = metrics::Report(metrics::ToConfusion(sums->confusion));
      last_confusion_ = report.confusion;
      out.emplace_back("test_accuracy", report.accuracy);
      out.emplace_back("macro_f1", report.macro_f1);
    }
    for (const auto& [key, value] : sums->monitors) out.emplace_back(key, value);
    for (const auto& [key, correct] : sums->extra_correct) {
      out.emplace_back(key, static_cast<double>(correct) / static_cast<double>(std::max<int64_t>(1, sums->examples)));
    }
    return out;
  }

  absl::Status OnRound(const runtime::RoundAssignment&, const runtime::RoundResult& result,
                       const runtime::Metrics& eval) override {
    const int64_t version = current_.version;
    const RoundRecord& r = current_.record;
    std::vector<std::string> names;  // ids follow the join order; names are what a user knows
    for (int64_t id : r.contributors) {
      auto name = manager_->SiteName(id);
      names.push_back(name.ok() ? *name : "?");
    }
    last_ = {{"round", version}, {"sites", r.contributors}, {"site_names", names}, {"examples", r.examples},
             {"closed_by_deadline", r.closed_by_deadline}, {"aggregate_s", r.aggregate_s}, {"secure", r.secure},
             {"time", std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()}};
    if (attack_.on()) {
      // Simulated Byzantine sites: which of this round's contributors attacked, by name.
      std::vector<std::string> attackers;
      for (int64_t id : r.attackers) {
        auto name = manager_->SiteName(id);
        attackers.push_back(name.ok() ? *name : "?");
      }
      last_["attack"] = attack_.name;
      last_["attackers"] = attackers;
      last_["attacker_count"] = attackers.size();
    }
    if (r.epsilon >= 0) {
      // Site-level DP: the spend after this round, and what the round's noise was made of.
      last_["epsilon"] = r.epsilon;
      last_["delta"] = site_dp_.delta;
      last_["clip_norm"] = r.clip_norm;
      last_["sampled"] = r.participants.size();
      last_["expected_sites"] = r.expected_sites;
      last_["clipped_by_coordinator"] = r.clipped_here;
      if (!std::isnan(r.within_fraction)) last_["clip_within_fraction"] = r.within_fraction;
      if (r.epsilon_knowing_sample >= 0) last_["epsilon_knowing_sample"] = r.epsilon_knowing_sample;
    }
    std::string extra;
    for (const auto& [key, value] : eval) {
      last_[key] = value;
      // The line shows accuracy and F1 for a mode that classifies, the loss for one that does not.
      if (key == "test_loss" && eval.size() > 1 && eval[1].first == "test_accuracy") continue;
      extra += absl::StrFormat(" %s %.4f", key, value);
    }
    std::string federated = FederatedEvaluation(r.site_metrics, version);
    if (r.epsilon >= 0) federated += absl::StrFormat(" epsilon %.4f", r.epsilon);
    std::printf("round %lld/%lld:%s%s (%zu sites, %lld examples%s%s)\n", static_cast<long long>(version),
                static_cast<long long>(job_.federated.rounds), extra.c_str(), federated.c_str(),
                r.contributors.size(), static_cast<long long>(r.examples),
                r.closed_by_deadline ? ", closed at the deadline" : "", r.secure ? ", secure sum" : "");
    std::fflush(stdout);
    if (auto s = dir_->AppendMetrics(last_.dump()); !s.ok()) return s;
    ShowBestEffort(version, r);
#ifdef ALLROUND_HAVE_PROMETHEUS
    // A round from StopBySignal has no duration of its own: it would skew the histogram and ETA.
    if (watch_ && result.seconds > 0) watch_->OnRound(r, version, result.seconds, Figures(last_));
#endif
    // Under site-level DP every round is saved: the accountant's count is what a resumed run starts
    // from, and a round released but not saved would be spent without being counted.
    if (!checkpointer_ || (job_.checkpoint.every_rounds <= 0 && !site_dp_.on)) return absl::OkStatus();
    if (!site_dp_.on && version % job_.checkpoint.every_rounds != 0 && version != job_.federated.rounds &&
        !result.final) {
      return absl::OkStatus();
    }
    return Save(version, current_.state);
  }

 private:
  // The held-out data, the mode that evaluates, the initial global model, the strategy and the
  // manager.
  absl::Status Prepare() {
    auto data = data::LoadTrainingData(job_);
    if (!data.ok()) return data.status();
    data_ = *std::move(data);
    // A mode that evaluates by neighbours (DINO) votes with labelled images of the job's training
    // set that the coordinator holds.
    auto mode = modes::MakeLearningMode(job_, data_.info, at::Device(at::kCPU), data_.train_inputs, data_.train_targets);
    if (!mode.ok()) return mode.status();
    mode_ = *std::move(mode);
    // Weights trained elsewhere (model.init) are the first global model.
    if (auto s = runtime::LoadInitialWeights(job_, *mode_); !s.ok()) return s;
    // A snapshot: the mode's own model is overwritten by every evaluation.
    NamedTensors initial = modes::ModelTensors(mode_->State());
    for (auto& [name, t] : initial) t = t.clone();
    auto strategy = aggregation::MakeStrategy(job_);
    if (!strategy.ok()) return strategy.status();
    proximal_mu_ = (*strategy)->proximal_mu();  // the sites apply it (fedprox)
    RoundManagerOptions rm = ManagerOptions(job_);
    auto site_dp = privacy::SiteDpSpecFromJob(job_);
    if (!site_dp.ok()) return site_dp.status();
    rm.site_dp = *site_dp;
    site_dp_ = *site_dp;
    auto coordinator_pipeline = privacy::UpdatePipeline::Make(job_, privacy::Side::kCoordinator);
    if (!coordinator_pipeline.ok()) return coordinator_pipeline.status();
    rm.pipeline = *std::move(coordinator_pipeline);
    if (!rm.pipeline.empty()) log::Info("coordinator pipeline: {}", rm.pipeline.Describe());
    rm.attack = aggregation::AttackSpecFromJob(job_);
    attack_ = rm.attack;
    if (rm.attack.on()) {
      log::Info("simulation: {} of the joined sites attack ({})", rm.attack.sites, rm.attack.name);
    }
    if (site_dp->on && (!rm.poisson || (rm.secure.enabled && site_dp->quantile > 0))) {  // the job check says why
      return absl::FailedPreconditionError(
          "site-level DP needs federated.sampling: poisson, and a fixed clip under secure aggregation");
    }
    if (site_dp->on) {
      log::Info("privacy: site-level DP-FedAvg, noise multiplier {:.4f}, clip {:g}{}, sampling rate {:g}, delta {:g}{}",
                site_dp->noise_multiplier, site_dp->clip,
                site_dp->quantile > 0 ? absl::StrFormat(" (adaptive, quantile %g)", site_dp->quantile) : "",
                site_dp->sampling_rate, site_dp->delta,
                site_dp->target_epsilon > 0 ? absl::StrFormat(", target epsilon %g", site_dp->target_epsilon) : "");
    }
    // What a site can make the coordinator hold: the job's keys, and sizes from the model.
    rm.limits = MakeLimits(job_.federated, initial);
    if (rm.secure.enabled) {
      // The update stream carries the masked input's words instead of the model.
      const int64_t words = static_cast<int64_t>(privacy::SecureVectorLength(initial));
      const Limits masked = MakeLimits(job_.federated, {{"secagg/masked", at::empty({words}, at::kInt)}});
      rm.limits.max_update_bytes = std::max(rm.limits.max_update_bytes, masked.max_update_bytes);
    }
    limits_ = rm.limits;
    manager_ = std::make_unique<RoundManager>(rm, initial, *std::move(strategy));
    return absl::OkStatus();
  }

  // The one resume path (runtime/checkpointer.h), then the store to write, if checkpoints are on.
  absl::Status Resume() {
    auto restored = runtime::ReadCheckpointForResume(job_, options_.resume, runtime::RunKind::kCoordinator,
                                                     options_.stores);
    if (!restored.ok()) return restored.status();
    if (*restored) {
      const runtime::Restored& r = **restored;
      if (auto s = manager_->LoadState(r.mode_state, Clock::now()); !s.ok()) {
        return absl::Status(s.code(), absl::StrCat("resuming from ", r.id, ": ", s.message()));
      }
      log::Info("resumed from checkpoint {} ({} rounds done)", r.id, manager_->rounds_done());
    }
    last_saved_ = manager_->rounds_done();  // a resumed state is in the store already
    if (!job_.checkpoint.enabled) return absl::OkStatus();
    auto opened = runtime::Checkpointer::Open(job_, runtime::RunKind::kCoordinator, options_.stores);
    if (!opened.ok()) return opened.status();
    checkpointer_ = *std::move(opened);
    return absl::OkStatus();
  }

  absl::Status Listen(const std::shared_ptr<grpc::ServerCredentials>& credentials, const ServiceOptions& so) {
    service_ = std::make_unique<CoordinatorService>(manager_.get(), so);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(options_.listen, credentials, &port);
    builder.SetMaxReceiveMessageSize(so.limits.max_message_bytes);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    if (!server_ || port == 0) {
      return absl::UnavailableError(absl::StrCat(
          "cannot listen on ", options_.listen, ": the address is in use or not this machine's",
          options_.tls_cert.empty() ? "" : ", or --tls-key is not the private key of --tls-cert's certificate"));
    }
    const std::string host = options_.listen.substr(0, options_.listen.rfind(':'));
    log::Info("job '{}' ({}, {} rounds) listening on {}:{}", job_.name, job_.strategy.name, job_.federated.rounds, host,
              port);
    if (options_.on_listening) options_.on_listening(port);
    return absl::OkStatus();
  }

  // --metrics-linger-s: the final state stays on the metrics and status page for a last scrape.
  void Linger() {
#ifdef ALLROUND_HAVE_PROMETHEUS
    if (!http_ || options_.metrics_linger_s <= 0) return;
    log::Info("the run is over; metrics and status page stay up for {} s (SIGTERM ends it)", options_.metrics_linger_s);
    WaitUnlessStopped(options_.metrics_linger_s);
#endif
  }

  // The operator's metrics and status page, when asked for (--metrics-listen).
  absl::Status ServeWatch() {
    if (options_.metrics_listen.empty()) return absl::OkStatus();
#ifndef ALLROUND_HAVE_PROMETHEUS
    return absl::UnimplementedError(
        "--metrics-listen: this build has no metrics server (install prometheus-cpp-dev and libcpp-httplib-dev, as "
        "deploy/setup.sh does, then rebuild)");
#else
    watch_ = std::make_unique<RunWatch>(job_.name, job_.federated.rounds, manager_.get());
    watch_->set_service(service_.get());
    RunWatch* watch = watch_.get();
    auto http = observe::StartMetricsServer(
        options_.metrics_listen,
        {{"/metrics", [watch] { return observe::PrometheusText(watch->MetricsText()); }},
         {"/", [watch] { return observe::HttpResponse{200, "text/html; charset=utf-8", watch->StatusHtml()}; }}},
        options_.status_token);
    if (!http.ok()) return http.status();
    http_ = *std::move(http);
    return absl::OkStatus();
#endif
  }

  // TensorBoard is a view: a failed write (a full disk) is said once and ends the event file, not
  // the run or its checkpoints.
  void ShowBestEffort(int64_t version, const RoundRecord& r) {
    if (auto s = Show(version, r); !s.ok()) {
      log::Warning("TensorBoard event file {}: {}; no more events are written", board_.path(), s.message());
      board_ = observe::RunBoard();
    }
  }

  // The round in TensorBoard: the numbers of its metrics record and the refusals so far as
  // scalars, histograms of the global model and of the sites' update norms, the mode's pictures of
  // the global model (a GAN's samples) and the confusion matrix.
  absl::Status Show(int64_t version, const RoundRecord& r) {
    if (!board_.on()) return absl::OkStatus();
    std::vector<std::pair<std::string, double>> scalars;
    for (const auto& [key, value] : Figures(last_)) {
      if (key != "round" && key != "time") scalars.emplace_back(key, value);
    }
    scalars.emplace_back("sites", static_cast<double>(r.contributors.size()));
    for (const auto& [reason, count] : manager_->refusals()) {
      scalars.emplace_back(absl::StrCat("refusals/", reason), static_cast<double>(count));
    }
    if (auto s = board_.Scalars(version, scalars); !s.ok()) return s;
    const NamedTensors& model = current_.version > 0 ? current_.model : modes::ModelTensors(manager_->State());
    if (auto s = board_.Weights(version, model); !s.ok()) return s;
    if (auto s = board_.Values("update_norms", version, r.update_norms); !s.ok()) return s;
    if (auto s = board_.Pictures(version, mode_->Images()); !s.ok()) return s;
    if (auto s = board_.ConfusionMatrix(version, last_confusion_); !s.ok()) return s;
    return board_.Flush();
  }

  // The sites' own test splits, on the model the round started from, weighted by their example
  // counts (the sites report sums): into last_, and the round line's words.
  std::string FederatedEvaluation(const std::map<std::string, double>& m, int64_t version) {
    // Sites' example-level DP-SGD: the largest spend any site has reported so far in the run.
    if (m.count("epsilon")) {
      const double before = last_.contains("site_epsilon_max") ? last_["site_epsilon_max"].get<double>() : 0.0;
      last_["site_epsilon_max"] = std::max(before, m.at("epsilon"));
    }
    if (!m.count("eval_examples") || m.at("eval_examples") <= 0) return "";
    const double n = m.at("eval_examples");
    last_["federated_loss"] = m.count("eval_loss_sum") ? m.at("eval_loss_sum") / n : 0.0;
    last_["federated_examples"] = n;
    if (m.count("eval_correct")) {  // the sites' mode classifies
      last_["federated_accuracy"] = m.at("eval_correct") / n;
      return absl::StrFormat(" federated_accuracy(v%lld) %.4f", static_cast<long long>(version - 1),
                             last_["federated_accuracy"].get<double>());
    }
    return absl::StrFormat(" federated_loss(v%lld) %.4f", static_cast<long long>(version - 1),
                           last_["federated_loss"].get<double>());
  }

  absl::Status Save(int64_t version, const NamedTensors& state) {
    storage::CheckpointInfo info;
    info.round = version;
    for (const auto& [key, value] : Figures(last_)) info.metrics[key] = value;
    auto id = checkpointer_->Save(std::move(info), state);
    if (!id.ok()) return id.status();
    last_saved_ = version;
    log::Info("checkpoint {} saved (round {})", *id, version);
    return absl::OkStatus();
  }

  // SIGTERM or SIGINT: no more calls, so no round closes behind our back; evaluate the rounds
  // closed so far and checkpoint the last one, whatever checkpoint.every_rounds says. The open
  // round is lost: after --resume auto it opens again with the same sample, and the sites, which
  // retry an unreachable coordinator for --give-up-s, train it again.
  absl::Status StopBySignal() {
    service_->StopServing();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    for (ClosedRound& c : manager_->TakeClosedRounds()) closed_.push_back(std::move(c));
    while (!closed_.empty()) {
      current_ = std::move(closed_.front());
      closed_.pop_front();
      auto eval = Evaluate();
      if (!eval.ok()) return eval.status();
      if (auto s = OnRound({}, {}, *eval); !s.ok()) return s;
    }
    const int64_t done = manager_->rounds_done();
    std::string saved = "checkpoints are off: nothing saved";
    if (checkpointer_) {
      if (done > last_saved_) {
        if (auto s = Save(done, manager_->State()); !s.ok()) return s;
      }
      saved = done > 0 ? absl::StrCat("its state is checkpointed; --resume auto continues from round ", done + 1)
                       : "no round had closed: nothing to save";
    }
    log::Info("stopped by signal after {} of {} rounds; {}", done, job_.federated.rounds, saved);
    return absl::OkStatus();
  }

  const Job job_;
  const ServerOptions options_;
  data::TrainingData data_;
  std::unique_ptr<modes::LearningMode> mode_;
  std::unique_ptr<RoundManager> manager_;
  std::unique_ptr<runtime::Checkpointer> checkpointer_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<storage::RunDirectory> dir_;
  observe::RunBoard board_;
#ifdef ALLROUND_HAVE_PROMETHEUS
  std::unique_ptr<RunWatch> watch_;              // --metrics-listen
  std::unique_ptr<observe::HttpServer> http_;    // serves watch_; declared after it, so stopped first
#endif
  std::vector<std::vector<int64_t>> last_confusion_;  // of the last evaluation (empty: not a classifier)
  std::deque<ClosedRound> closed_;
  ClosedRound current_;
  Limits limits_;
  double proximal_mu_ = 0.0;
  json last_;
  int64_t last_saved_ = 0;
  privacy::SiteDpSpec site_dp_;  // privacy.mode site (on: false otherwise), noise as computed
  aggregation::AttackSpec attack_;  // attack.* (simulated Byzantine sites)
};

}  // namespace

absl::Status Serve(const Job& job, const ServerOptions& options) { return FederatedRun(job, options).Run(); }

}  // namespace allround::coordinator
