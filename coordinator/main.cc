// allround-coordinator: serves a federated job over gRPC. Sites (allround-worker --coordinator)
// join, train rounds on their own data, and submit updates; the coordinator aggregates them with
// the job's strategy and evaluates the global model on the held-out set after each round.

#include <grpcpp/grpcpp.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "algorithms/compute_threads.h"
#include "algorithms/metrics.h"
#include "algorithms/modes/semi_supervised.h"
#include "common/cli.h"
#include "common/job_cli.h"
#include "common/stop_signal.h"
#include "common/text_file.h"
#include "coordinator/limits.h"
#include "coordinator/round_manager.h"
#include "coordinator/service.h"
#include "storage/checkpoint_store.h"
#include "storage/run_directory.h"
#include "storage/safetensors.h"
#include "worker/checkpointing.h"
#include "worker/trainer.h"

namespace allround::coordinator {
namespace {

struct Flags {
  std::string listen = "127.0.0.1:50051";
  std::string tokens;
  bool no_auth = false;
  bool insecure = false;
  std::string tls_cert, tls_key;
  std::string resume = "none";
  std::string dump_models;
  std::string summary_json;
};

absl::Status Serve(const Job& job, const Flags& flags) {
  SetComputeThreads(static_cast<int>(job.threads));
  // HOST:PORT with a port gRPC can bind (it would take 99999 modulo 65536); 0 picks a free one.
  const size_t colon = flags.listen.rfind(':');
  const std::string port_text = colon == std::string::npos ? "" : flags.listen.substr(colon + 1);
  int64_t wanted_port = -1;
  if (!absl::SimpleAtoi(port_text, &wanted_port) || wanted_port < 0 || wanted_port > 65535 || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen '", flags.listen, "': give HOST:PORT with a port from 0 (any free one) to 65535"));
  }
  // Transport: TLS with the server's certificate, or plain text only when asked for.
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (!flags.tls_cert.empty() || !flags.tls_key.empty()) {
    if (flags.insecure) return absl::InvalidArgumentError("--insecure and --tls-cert/--tls-key exclude each other");
    if (flags.tls_cert.empty() || flags.tls_key.empty()) {
      return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
    }
    auto cert = ReadPemFile(flags.tls_cert, "--tls-cert", "CERTIFICATE");
    if (!cert.ok()) return cert.status();
    auto key = ReadPemFile(flags.tls_key, "--tls-key", "PRIVATE KEY");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    credentials = grpc::SslServerCredentials(ssl);
  } else if (flags.insecure) {
    credentials = grpc::InsecureServerCredentials();
  } else {
    return absl::InvalidArgumentError(
        "give --tls-cert FILE --tls-key FILE (deploy/make-certs.sh makes a test CA and certificates), "
        "or --insecure to serve plain text");
  }
  ServiceOptions service_options;
  if (!flags.tokens.empty()) {
    auto tokens = ReadTokensFile(flags.tokens, "--tokens");
    if (!tokens.ok()) return tokens.status();
    service_options.tokens = *tokens;
  } else if (!flags.no_auth) {
    return absl::InvalidArgumentError("give --tokens FILE (one 'site token' per line), or --no-auth explicitly");
  }
  if (!flags.dump_models.empty()) {
    if (auto s = MakeFlagDirectory(flags.dump_models, "--dump-models"); !s.ok()) return s;
  }
  service_options.local_epochs = job.federated.local_epochs;
  service_options.proximal_mu = job.strategy.name == "fedprox" ? job.strategy.proximal_mu : 0.0;

  // The held-out set for centralized evaluation, and the initial global model.
  auto data = worker::LoadTrainingData(job);
  if (!data.ok()) return data.status();
  // A mode that evaluates by neighbours (DINO) votes with labelled images of the job's training set
  // that the coordinator holds.
  auto mode = modes::MakeLearningMode(job, data->info, at::Device(at::kCPU), data->train_inputs, data->train_targets);
  if (!mode.ok()) return mode.status();
  // Weights trained elsewhere (model.init) are the first global model.
  if (auto s = worker::LoadInitialWeights(job, **mode); !s.ok()) return s;
  // A snapshot: the mode's own model is overwritten by every evaluation below.
  NamedTensors initial = modes::ModelTensors((*mode)->State());
  for (auto& [name, t] : initial) t = t.clone();
  const aggregation::StrategySpec spec{job.strategy.name,        job.strategy.server_lr, job.strategy.momentum,
                                       job.strategy.beta1,       job.strategy.beta2,     job.strategy.tau,
                                       job.strategy.proximal_mu, job.strategy.trim_beta, job.strategy.byzantine,
                                       job.strategy.multi_krum};
  auto strategy = aggregation::MakeStrategy(spec);
  if (!strategy.ok()) return strategy.status();
  RoundManagerOptions rm;
  rm.seed = job.seed;
  rm.rounds = job.federated.rounds;
  rm.fraction = job.federated.fraction;
  rm.min_sites = job.federated.min_sites;
  rm.min_available = job.federated.min_available;
  rm.round_timeout = std::chrono::milliseconds(static_cast<int64_t>(job.federated.round_timeout_s * 1000));
  rm.site_timeout = std::chrono::milliseconds(static_cast<int64_t>(job.federated.site_timeout_s * 1000));
  // What a site can make the coordinator hold: the job's keys, and sizes from the model.
  rm.limits = MakeLimits(job.federated, initial);
  service_options.limits = rm.limits;
  RoundManager manager(rm, initial, *std::move(strategy));

  // Checkpoints of the coordinator's whole state, and resuming from one.
  const std::string run_id = job.name + ".coordinator";
  std::unique_ptr<storage::CheckpointStore> store;
  if (job.checkpoint.enabled || flags.resume != "none") {
    const std::string dir = worker::CheckpointDir(job);
    if (flags.resume != "none" && flags.resume != "auto" && !std::filesystem::exists(dir + "/CURRENT")) {
      return absl::NotFoundError(absl::StrCat("--resume ", flags.resume, ": no checkpoint store at ", dir));
    }
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(dir).parent_path(), ec);
    auto opened = storage::OpenCheckpointStore(dir);
    if (!opened.ok()) return opened.status();
    store = *std::move(opened);
    std::string id = flags.resume;
    if (flags.resume == "auto") {
      auto latest = store->Latest(run_id);
      id = latest.ok() ? *latest : "";
      if (!latest.ok() && !absl::IsNotFound(latest.status())) return latest.status();
    }
    if (flags.resume != "none" && !id.empty()) {
      auto record = store->Get(id);
      if (!record.ok()) return record.status();
      if (record->info.mode != worker::kCoordinatorMode) {
        return absl::FailedPreconditionError(absl::StrCat(
            "--resume ", id, ": a checkpoint of the worker run '", record->run_id, "' (mode ", record->info.mode,
            "), not of a coordinator; to start from its model, export it and give the job model.init"));
      }
      auto state = store->Load(id);
      if (!state.ok()) return state.status();
      if (auto s = manager.LoadState(*state, std::chrono::steady_clock::now()); !s.ok()) {
        return absl::Status(s.code(), absl::StrCat("resuming from ", id, ": ", s.message()));
      }
      std::fprintf(stderr, "allround-coordinator: resumed from checkpoint %s (%lld rounds done)\n", id.c_str(),
                   static_cast<long long>(manager.rounds_done()));
    }
  }
  int64_t last_saved = manager.rounds_done();  // a resumed state is in the store already
  const auto save = [&](int64_t version, const NamedTensors& state, const nlohmann::json& metrics) -> absl::Status {
    storage::CheckpointInfo info;
    info.round = version;
    info.mode = worker::kCoordinatorMode;
    for (const auto& [k, v] : metrics.items()) {
      if (v.is_number()) info.metrics[k] = v.get<double>();
    }
    auto id = store->Save(run_id, info, state);
    if (!id.ok()) return id.status();
    last_saved = version;
    std::fprintf(stderr, "allround-coordinator: checkpoint %s saved (round %lld)\n", id->c_str(),
                 static_cast<long long>(version));
    auto pruned = store->Prune(run_id, {job.checkpoint.keep_last, job.checkpoint.keep_every});
    return pruned.status();
  };
  const auto checkpoint = [&](const ClosedRound& closed, const nlohmann::json& metrics) -> absl::Status {
    const int64_t version = closed.version;
    if (!store || !job.checkpoint.enabled || job.checkpoint.every_rounds <= 0) return absl::OkStatus();
    if (version % job.checkpoint.every_rounds != 0 && version != job.federated.rounds) return absl::OkStatus();
    return save(version, closed.state, metrics);
  };
  CoordinatorService service(&manager, service_options);

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(flags.listen, credentials, &port);
  builder.SetMaxReceiveMessageSize(service_options.limits.max_message_bytes);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", flags.listen, ": the address is in use or not this machine's",
        flags.tls_cert.empty() ? "" : ", or --tls-key is not the private key of --tls-cert's certificate"));
  }
  const std::string bound = absl::StrCat(flags.listen.substr(0, colon), ":", port);  // the port 0 picked
  std::fprintf(stderr, "allround-coordinator: job '%s' (%s, %lld rounds) listening on %s\n", job.name.c_str(),
               job.strategy.name.c_str(), static_cast<long long>(job.federated.rounds), bound.c_str());

  auto dir = storage::RunDirectory::Open(ResolvedRunDir(job));
  if (!dir.ok()) return dir.status();
  nlohmann::json last;
  const auto evaluate = [&](const ClosedRound& closed) -> absl::Status {
    const int64_t version = closed.version;
    if (!flags.dump_models.empty()) {
      if (auto s = storage::WriteSafetensors(absl::StrCat(flags.dump_models, "/version-", version, ".safetensors"),
                                             closed.model, {});
          !s.ok()) {
        return s;
      }
    }
    if (auto s = (*mode)->LoadState(closed.model); !s.ok()) return s;
    auto sums = (*mode)->Evaluate(data->test_inputs, data->test_targets, job.train.eval_batch_size);
    if (!sums.ok()) return sums.status();
    const RoundRecord& r = closed.record;
    std::vector<std::string> names;  // ids follow the join order; names are what a user knows
    for (int64_t id : r.contributors) {
      auto name = manager.SiteName(id);
      names.push_back(name.ok() ? *name : "?");
    }
    last = {{"round", version}, {"test_loss", sums->loss_sum / std::max<int64_t>(1, sums->examples)},
            {"sites", r.contributors}, {"site_names", names}, {"examples", r.examples},
            {"closed_by_deadline", r.closed_by_deadline},
            {"aggregate_s", r.aggregate_s},
            {"time", std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()}};
    std::string extra;
    if (sums->confusion.defined()) {  // a mode that classifies
      const auto report = metrics::Report(metrics::ToConfusion(sums->confusion));
      last["test_accuracy"] = report.accuracy;
      last["macro_f1"] = report.macro_f1;
      extra += absl::StrFormat(" test_accuracy %.4f macro_f1 %.4f", report.accuracy, report.macro_f1);
    } else {
      extra += absl::StrFormat(" test_loss %.4f", last["test_loss"].get<double>());
    }
    for (const auto& [key, value] : sums->monitors) {
      last[key] = value;
      extra += absl::StrFormat(" %s %.4f", key, value);
    }
    for (const auto& [key, correct] : sums->extra_correct) {
      last[key] = static_cast<double>(correct) / static_cast<double>(std::max<int64_t>(1, sums->examples));
      extra += absl::StrFormat(" %s %.4f", key, last[key].get<double>());
    }
    // Federated evaluation: the sites' own test splits, on the model the round started from,
    // weighted by their example counts (the sites report sums).
    std::string federated;
    const auto m = r.site_metrics;
    if (m.count("eval_examples") && m.at("eval_examples") > 0) {
      const double n = m.at("eval_examples");
      last["federated_loss"] = m.count("eval_loss_sum") ? m.at("eval_loss_sum") / n : 0.0;
      last["federated_examples"] = n;
      if (m.count("eval_correct")) {  // the sites' mode classifies
        last["federated_accuracy"] = m.at("eval_correct") / n;
        federated = absl::StrFormat(" federated_accuracy(v%lld) %.4f", static_cast<long long>(version - 1),
                                    last["federated_accuracy"].get<double>());
      } else {
        federated = absl::StrFormat(" federated_loss(v%lld) %.4f", static_cast<long long>(version - 1),
                                    last["federated_loss"].get<double>());
      }
    }
    std::printf("round %lld/%lld:%s%s (%zu sites, %lld examples%s)\n",
                static_cast<long long>(version), static_cast<long long>(job.federated.rounds), extra.c_str(),
                federated.c_str(), r.contributors.size(), static_cast<long long>(r.examples),
                r.closed_by_deadline ? ", closed at the deadline" : "");
    std::fflush(stdout);
    if (auto s = dir->AppendMetrics(last.dump()); !s.ok()) return s;
    return checkpoint(closed, last);
  };
  const auto drain = [&]() -> absl::Status {
    for (const ClosedRound& closed : manager.TakeClosedRounds()) {
      if (auto s = evaluate(closed); !s.ok()) return s;
    }
    return absl::OkStatus();
  };
  InstallStopHandlers();
  while (!manager.finished() && !StopRequested()) {
    manager.Tick(std::chrono::steady_clock::now());
    if (auto s = drain(); !s.ok()) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (!manager.finished()) {
    // SIGTERM or SIGINT: no more calls, so no round closes behind our back; evaluate the rounds
    // closed so far and checkpoint the last one, whatever checkpoint.every_rounds says. The
    // open round is lost: after --resume auto it opens again with the same sample, and the
    // sites, which retry an unreachable coordinator for --give-up-s, train it again.
    service.StopServing();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    if (auto s = drain(); !s.ok()) return s;
    const int64_t done = manager.rounds_done();
    std::string saved = "checkpoints are off: nothing saved";
    if (store && job.checkpoint.enabled) {
      if (done > last_saved) {
        if (auto s = save(done, manager.State(), last); !s.ok()) return s;
      }
      saved = done > 0 ? absl::StrCat("its state is checkpointed; --resume auto continues from round ", done + 1)
                       : "no round had closed: nothing to save";
    }
    std::fprintf(stderr, "allround-coordinator: stopped by signal after %lld of %lld rounds; %s\n",
                 static_cast<long long>(done), static_cast<long long>(job.federated.rounds), saved.c_str());
    return absl::OkStatus();
  }
  if (auto s = drain(); !s.ok()) return s;
  // Let polling sites hear STOP before the server goes away.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  nlohmann::json summary = last;
  summary["rounds"] = manager.rounds_done();
  summary["refusals"] = manager.refusals();
  if (auto s = dir->WriteFile("summary.json", summary.dump(2) + "\n"); !s.ok()) return s;
  if (!flags.summary_json.empty()) {
    if (auto s = storage::WriteFileAtomically(flags.summary_json, summary.dump(2) + "\n"); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace allround::coordinator

int main(int argc, char** argv) {
  using namespace allround;
  CLI::App app{"allround-coordinator: serves a federated job (rounds, aggregation, evaluation) over gRPC."};
  std::string job_path;
  coordinator::Flags flags;
  app.add_option("job", job_path, "job file (YAML)");
  app.add_option("--listen", flags.listen, "address to serve on")->capture_default_str();
  app.add_option("--tokens", flags.tokens, "file of 'site-name token' lines; each site must present its token");
  app.add_flag("--no-auth", flags.no_auth, "accept sites without tokens (tests only)");
  app.add_flag("--insecure", flags.insecure, "serve plain text, no TLS (loopback and tests only)");
  app.add_option("--tls-cert", flags.tls_cert, "the server certificate chain (PEM)");
  app.add_option("--tls-key", flags.tls_key, "the server certificate's private key (PEM)");
  app.add_option("--resume", flags.resume, "none | auto (the latest coordinator checkpoint, if any) | a checkpoint id")
      ->capture_default_str();
  app.add_option("--dump-models", flags.dump_models, "write every global model version to this directory");
  app.add_option("--summary-json", flags.summary_json, "write the final metrics here as one JSON object");
  JobFlags job_flags(app);
  if (auto code = ParseCommandLine(app, argc, argv, "allround-coordinator")) return *code;
  auto job = job_flags.Resolve(job_path);
  if (!job.ok()) {
    std::fprintf(stderr, "allround-coordinator: error: %s\n", std::string(job.status().message()).c_str());
    return 2;
  }
  absl::Status s;
  try {
    s = coordinator::Serve(*job, flags);
  } catch (const c10::Error& e) {
    s = absl::InternalError(e.what_without_backtrace());
  }
  if (!s.ok()) {
    std::fprintf(stderr, "allround-coordinator: error: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
