// allround-coordinator: serves a federated job over gRPC. Sites (allround-worker --coordinator)
// join, train rounds on their own data, and submit updates; the coordinator aggregates them with
// the job's strategy and evaluates the global model on the held-out set after each round
// (coordinator/federated_server.h). This file parses flags.

#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <string>

#include "common/cli.h"
#include "common/job_cli.h"
#include "common/log.h"
#include "common/text_file.h"
#include "common/timeline.h"
#include "coordinator/federated_server.h"

int main(int argc, char** argv) {
  using namespace allround;
  CLI::App app{"allround-coordinator: serves a federated job (rounds, aggregation, evaluation) over gRPC."};
  std::string job_path;
  coordinator::ServerOptions flags;
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
  app.add_option("--metrics-listen", flags.metrics_listen,
                 "serve Prometheus metrics (/metrics) and a status page (/) on HOST:PORT (port 0: a free one); "
                 "loopback unless --status-token is given");
  app.add_option("--status-token", flags.status_token,
                 "a secret every metrics and status request must carry (Authorization: Bearer, or ?token=); "
                 "needed to listen beyond loopback. Visible in ps: prefer --status-token-file");
  std::string status_token_file;
  app.add_option("--status-token-file", status_token_file, "the status token, alone in a private file (mode 600)");
  std::string timeline_path;
  app.add_option("--timeline", timeline_path,
                 "write a timeline of each round's aggregation and evaluation (Chrome trace-event JSON) to FILE");
  app.add_option("--metrics-linger-s", flags.metrics_linger_s,
                 "after the last round, keep serving metrics and the status page this many seconds (or until "
                 "SIGTERM), so a last scrape sees the final state");
  JobFlags job_flags(app);
  if (auto code = ParseCommandLine(app, argc, argv, "allround-coordinator")) return *code;
  auto status_token = TokenFromFlags(flags.status_token, "--status-token", status_token_file, "--status-token-file");
  if (!status_token.ok()) {
    log::Error("{}", status_token.status().message());
    return 2;
  }
  flags.status_token = *status_token;
  auto job = job_flags.Resolve(job_path);
  if (!job.ok()) {
    log::Error("{}", job.status().message());
    return 2;
  }
  absl::Status s;
  timeline::FileSession timeline(timeline_path, 0, "coordinator");
  try {
    s = coordinator::Serve(*job, flags);
  } catch (const c10::Error& e) {
    s = absl::InternalError(e.what_without_backtrace());
  }
  if (auto w = timeline.Finish(); !w.ok()) {
    log::Error("--timeline: {}", w.message());
    if (s.ok()) s = w;
  }
  if (!s.ok()) {
    log::Error("{}", s.message());
    return 1;
  }
  return 0;
}
