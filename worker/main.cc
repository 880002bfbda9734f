// allround-worker: runs a job. `allround-worker JOB.yaml [--KEY=VALUE ...]` trains in this process
// (a worker group of one); any job key can be overridden by a flag of the same dotted name.

#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "algorithms/compute_threads.h"
#include "comm/communicator.h"
#include "comm/registry.h"
#include "common/cli.h"
#include "common/job.h"
#include "common/job_cli.h"
#include "common/log.h"
#include "common/stop_signal.h"
#include "common/text_file.h"
#include "common/timeline.h"
#include "common/worker_metrics.h"
#include "observe/http_server.h"
#include "observe/worker_metrics.h"
#include "runtime/cluster_run.h"
#include "runtime/site_runner.h"

namespace allround::worker {
namespace {

using runtime::SiteOptions;

// The launcher's rank before communication is set up, so that only rank 0 reports bad flags.
int RankFromEnvironment() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "RANK"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  return 0;
}

// Flags that cannot mean anything together ("" when they fit): a site's flags without a
// coordinator would otherwise train a plain job, and a site has no run of its own to resume.
std::string FlagConflict(const CLI::App& app, bool federated, const SiteOptions& site) {
  std::vector<std::string> given;
  if (!federated) {
    for (const char* flag : {"--site", "--token", "--token-file", "--tokens", "--site-index", "--num-sites", "--site-threads", "--data",
                             "--tls-ca", "--insecure", "--give-up-s", "--dump-updates"}) {
      if (app.get_option(flag)->count() > 0) given.push_back(flag);
    }
    if (given.empty()) return "";
    return absl::StrCat(absl::StrJoin(given, ", "), ": only with --coordinator HOST:PORT (they make this process a site)");
  }
  for (const char* flag : {"--resume", "--summary-json"}) {
    if (app.get_option(flag)->count() > 0) given.push_back(flag);
  }
  if (!given.empty()) {
    return absl::StrCat(absl::StrJoin(given, ", "), ": not for a site, which takes the model from the coordinator "
                        "each round (the coordinator resumes and writes the summary)");
  }
  if (site.give_up_s < 0) return absl::StrCat("--give-up-s ", site.give_up_s, ": must be 0 or more");
  return "";
}

// The federated site's flags (they make this process a site when --coordinator is given).
void AddSiteFlags(CLI::App& app, SiteOptions& site, int64_t& num_sites) {
  app.add_option("--coordinator", site.coordinator, "federated: the coordinator's HOST:PORT (makes this process a site)");
  app.add_option("--site", site.site_name, "federated: this site's name (with many sites: the prefix of NAME-I)");
  app.add_option("--token-file", site.token_file, "federated: a file (mode 600) holding this site's token");
  app.add_option("--token", site.token,
                 "federated: this site's token (visible to other users in ps: prefer --token-file)");
  app.add_option("--tokens", site.tokens_file, "federated: a file of 'site-name token' lines for the hosted sites");
  app.add_option("--site-index", site.site_indices,
                 "federated: the partition(s) of the job's data this process hosts as sites: I, A-B or A,B,C")
      ->capture_default_str();
  app.add_option("--num-sites", num_sites, "federated: the number of sites the job's data is split into (partition.sites)")
      ->check(CLI::Range(int64_t{1}, int64_t{1000000}));
  app.add_option("--site-threads", site.site_threads, "federated: hosted sites that train at the same time")
      ->capture_default_str();
  app.add_option("--data", site.data_dir, "federated: the site's own IDX files (train and test) instead of a partition");
  app.add_option("--tls-ca", site.tls_ca, "federated: the CA certificate (PEM) that signed the coordinator's");
  app.add_flag("--insecure", site.insecure, "federated: talk plain text to the coordinator (loopback and tests only)");
  app.add_option("--give-up-s", site.give_up_s, "federated: stop retrying an unreachable coordinator after this long")
      ->capture_default_str();
  app.add_option("--dump-updates", site.dump_updates, "federated: also write each submitted update to this directory");
}

// Sets up the job's communicator and runs this process's part: a site (or, under mpirun, a worker
// group that is one site), or a cluster run. Returns the exit code.
// What an operator may watch of this process: --timeline, --metrics-listen.
struct WatchFlags {
  std::string timeline;
  std::string metrics_listen;
  std::string status_token;
  double metrics_linger_s = 0;
};

// Rank 0's Prometheus metrics (observe/worker_metrics.h) on --metrics-listen, loopback unless a
// token is given; nothing without the flag or on other ranks.
class WorkerWatch {
 public:
  absl::Status Start(const WatchFlags& flags, int rank) {
    flags_ = flags;
    if (flags.metrics_listen.empty() || rank != 0) return absl::OkStatus();
    auto metrics = observe::MakeWorkerMetrics();
    if (!metrics.ok()) return metrics.status();
    metrics_ = *std::move(metrics);
    observe::WorkerMetrics* m = metrics_.get();
    auto http = observe::StartMetricsServer(
        flags.metrics_listen, {{"/metrics", [m] { return observe::PrometheusText(m->Text()); }}}, flags.status_token);
    if (!http.ok()) return http.status();
    http_ = *std::move(http);
    worker_metrics::SetActive(metrics_.get());
    return absl::OkStatus();
  }

  // After the run: --metrics-linger-s keeps the final figures of a run that `succeeded` up for a
  // last scrape; then nothing reports here any more.
  void Finish(bool succeeded) {
    if (http_ && succeeded && flags_.metrics_linger_s > 0) {
      log::Info("the run is over; metrics stay up for {} s (SIGTERM ends it)", flags_.metrics_linger_s);
      WaitUnlessStopped(flags_.metrics_linger_s);  // installs the handlers a site's run does not
    }
    worker_metrics::SetActive(nullptr);
  }

 private:
  WatchFlags flags_;
  std::unique_ptr<observe::WorkerMetrics> metrics_;
  std::unique_ptr<observe::HttpServer> http_;
};

int RunProcess(const Job& job, bool federated, const SiteOptions& site, const runtime::ClusterRunOptions& run,
               const WatchFlags& watch_flags, int* argc, char*** argv) {
  if (job.device == "cuda") UseDeterministicKernels(job.deterministic);  // before any GPU work
  auto context = comm::InitComm(job.comm.backend, job.device, argc, argv,
                                std::chrono::milliseconds(static_cast<int64_t>(job.comm.timeout_s * 1000)));
  if (!context.ok()) {
    log::Error("{}", context.status().message());
    return 1;
  }
  comm::Communicator& comm = (*context)->comm();
  log::SetRank(comm.rank(), comm.size());
  timeline::FileSession timeline(watch_flags.timeline, comm.rank(),
                                 federated ? absl::StrCat("site ", site.site_name) : absl::StrCat("rank ", comm.rank()));
  WorkerWatch watch;
  absl::Status s = watch.Start(watch_flags, comm.rank());
  if (s.ok()) {
    try {
      if (federated) {
        // Sites training side by side share the cores: unless the job says how many threads, each
        // slot gets its share.
        int threads = static_cast<int>(job.threads);
        if (threads == 0 && site.site_threads > 1) {
          threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / site.site_threads);
        }
        SetComputeThreads(threads);
        s = runtime::RunSites(job, site, &comm);
      } else {
        s = runtime::RunCluster(job, run, comm);
      }
    } catch (const c10::Error& e) {
      s = absl::InternalError(e.what_without_backtrace());
    }
  }
  // Written whatever the outcome (a failed run's timeline shows where it stopped), and before any
  // linger.
  if (auto w = timeline.Finish(); !w.ok()) {
    log::Error("--timeline: {}", w.message());
    if (s.ok()) s = w;
  }
  watch.Finish(s.ok());
  if (s.ok()) return 0;
  log::Error("{}", s.message());  // under mpirun the line says which rank
  std::fflush(stderr);
  std::fflush(stdout);
  // Peers may be gone or blocked in a collective: shutting MPI down cleanly could hang, and a
  // non-zero exit makes mpirun end the others.
  if (comm.size() > 1) std::_Exit(1);
  return 1;
}

}  // namespace
}  // namespace allround::worker

int main(int argc, char** argv) {
  using namespace allround;
  CLI::App app{"allround-worker: trains the model a job file describes (one process: a worker group of one).\n"
               "Every job key is also a flag (--KEY=VALUE) that overrides the job file."};
  std::string job_path;
  runtime::ClusterRunOptions run;
  bool print_job = false;
  app.add_option("job", job_path, "job file (YAML); without it the built-in default job runs");
  app.add_option("--summary-json", run.summary_path, "write the final metrics to this file as one JSON object");
  worker::WatchFlags watch;
  app.add_option("--metrics-listen", watch.metrics_listen,
                 "rank 0 serves Prometheus metrics (/metrics: steps, step and allreduce times, allreduce bytes, "
                 "checkpoint times, samples/s) on HOST:PORT (port 0: a free one); loopback unless --status-token");
  app.add_option("--status-token", watch.status_token,
                 "a secret every metrics request must carry (Authorization: Bearer, or ?token=); visible in ps: "
                 "prefer --status-token-file");
  std::string status_token_file;
  app.add_option("--status-token-file", status_token_file, "the status token, alone in a private file (mode 600)");
  app.add_option("--metrics-linger-s", watch.metrics_linger_s,
                 "after the run, keep serving metrics this many seconds (or until SIGTERM)");
  app.add_option("--timeline", watch.timeline,
                 "write a step timeline (Chrome trace-event JSON: forward, backward, each bucket's allreduce, "
                 "optimizer, checkpoints; a site's fetch, train, submit) to FILE; rank r > 0 writes FILE.rank<r>");
  app.add_flag("--print-job", print_job, "print the resolved job as YAML and exit");
  app.add_option("--resume", run.resume,
                 "none: start fresh; auto: continue from the run's latest checkpoint (fresh if none); "
                 "or a checkpoint id (allround-ckpt ls lists them)")
      ->capture_default_str();
  runtime::SiteOptions site;
  int64_t num_sites = 0;
  worker::AddSiteFlags(app, site, num_sites);
  JobFlags job_flags(app);
  if (auto code = ParseCommandLine(app, argc, argv, "allround-worker")) return *code;

  auto status_token = TokenFromFlags(watch.status_token, "--status-token", status_token_file, "--status-token-file");
  if (!status_token.ok()) {
    log::Error("{}", status_token.status().message());
    return 2;
  }
  watch.status_token = *status_token;
  absl::StatusOr<Job> job = job_flags.Resolve(job_path);
  if (!job.ok()) {
    if (worker::RankFromEnvironment() == 0) {
      log::Error("{}", job.status().message());
    }
    return 2;
  }
  if (num_sites > 0) job->partition.sites = num_sites;
  const bool federated = app.get_option("--coordinator")->count() > 0;
  if (std::string conflict = worker::FlagConflict(app, federated, site); !conflict.empty()) {
    if (worker::RankFromEnvironment() == 0) log::Error("{}", conflict);
    return 2;
  }
  if (print_job) {
    std::fputs(JobToYaml(*job).c_str(), stdout);
    return 0;
  }
  return worker::RunProcess(*job, federated, site, run, watch, &argc, &argv);
}
