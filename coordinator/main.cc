// allround-coordinator: serves a federated job over gRPC. Sites (allround-worker --coordinator)
// join, train rounds on their own data, and submit updates; the coordinator aggregates them with
// the job's strategy and evaluates the global model on the held-out set after each round.

#include <grpcpp/grpcpp.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "algorithms/metrics.h"
#include "algorithms/modes/supervised.h"
#include "common/cli.h"
#include "common/job_cli.h"
#include "coordinator/round_manager.h"
#include "coordinator/service.h"
#include "storage/run_directory.h"
#include "storage/safetensors.h"
#include "worker/trainer.h"

namespace allround::coordinator {
namespace {

absl::StatusOr<std::map<std::string, std::string>> ReadTokens(const std::string& path) {
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(absl::StrCat("tokens file '", path, "': cannot open"));
  std::map<std::string, std::string> out;
  std::string name, token;
  while (f >> name >> token) out[name] = token;
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("tokens file '", path, "': no 'site token' lines"));
  return out;
}

struct Flags {
  std::string listen = "127.0.0.1:50051";
  std::string tokens;
  bool no_auth = false;
  bool insecure = false;
  std::string dump_models;
  std::string summary_json;
};

absl::Status Serve(const Job& job, const Flags& flags) {
  if (job.threads > 0) torch::set_num_threads(static_cast<int>(job.threads));
  if (!flags.insecure) {
    return absl::FailedPreconditionError(
        "TLS is not implemented yet: pass --insecure to serve plain text (loopback and tests only)");
  }
  ServiceOptions service_options;
  if (!flags.tokens.empty()) {
    auto tokens = ReadTokens(flags.tokens);
    if (!tokens.ok()) return tokens.status();
    service_options.tokens = *tokens;
  } else if (!flags.no_auth) {
    return absl::InvalidArgumentError("give --tokens FILE (one 'site token' per line), or --no-auth explicitly");
  }
  service_options.local_epochs = job.federated.local_epochs;
  service_options.proximal_mu = job.strategy.name == "fedprox" ? job.strategy.proximal_mu : 0.0;

  // The held-out set for centralized evaluation, and the initial global model.
  auto data = worker::LoadTrainingData(job);
  if (!data.ok()) return data.status();
  auto mode = modes::MakeSupervisedMode(job, data->info);
  if (!mode.ok()) return mode.status();
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
  RoundManager manager(rm, initial, *std::move(strategy));
  CoordinatorService service(&manager, service_options);

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(flags.listen, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) return absl::UnavailableError(absl::StrCat("cannot listen on ", flags.listen));
  std::fprintf(stderr, "allround-coordinator: job '%s' (%s, %lld rounds) listening on %s\n", job.name.c_str(),
               job.strategy.name.c_str(), static_cast<long long>(job.federated.rounds), flags.listen.c_str());

  auto dir = storage::RunDirectory::Open(ResolvedRunDir(job));
  if (!dir.ok()) return dir.status();
  int64_t evaluated = 0;
  nlohmann::json last;
  const auto evaluate = [&](int64_t version) -> absl::Status {
    auto model = manager.Model(version);
    if (!model.ok()) return model.status();
    if (!flags.dump_models.empty()) {
      if (auto s = storage::WriteSafetensors(absl::StrCat(flags.dump_models, "/version-", version, ".safetensors"),
                                             *model, {});
          !s.ok()) {
        return s;
      }
    }
    if (auto s = (*mode)->LoadState(*model); !s.ok()) return s;
    auto sums = (*mode)->Evaluate(data->test_inputs, data->test_targets, job.train.eval_batch_size);
    if (!sums.ok()) return sums.status();
    const auto report = metrics::Report(metrics::ToConfusion(sums->confusion));
    const auto history = manager.history();
    const RoundRecord& r = history.back();
    last = {{"round", version}, {"test_accuracy", report.accuracy}, {"macro_f1", report.macro_f1},
            {"test_loss", sums->loss_sum / std::max<int64_t>(1, sums->examples)},
            {"sites", r.contributors}, {"examples", r.examples}, {"closed_by_deadline", r.closed_by_deadline}};
    std::printf("round %lld/%lld: test_accuracy %.4f macro_f1 %.4f (%zu sites, %lld examples%s)\n",
                static_cast<long long>(version), static_cast<long long>(job.federated.rounds), report.accuracy,
                report.macro_f1, r.contributors.size(), static_cast<long long>(r.examples),
                r.closed_by_deadline ? ", closed at the deadline" : "");
    std::fflush(stdout);
    return dir->AppendMetrics(last.dump());
  };
  while (!manager.finished()) {
    manager.Tick(std::chrono::steady_clock::now());
    while (evaluated < manager.model_version()) {
      if (auto s = evaluate(++evaluated); !s.ok()) return s;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  while (evaluated < manager.model_version()) {
    if (auto s = evaluate(++evaluated); !s.ok()) return s;
  }
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
  app.add_option("--listen", flags.listen, "address to serve on");
  app.add_option("--tokens", flags.tokens, "file of 'site-name token' lines; each site must present its token");
  app.add_flag("--no-auth", flags.no_auth, "accept sites without tokens (tests only)");
  app.add_flag("--insecure", flags.insecure, "serve plain text, no TLS (loopback and tests only)");
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
