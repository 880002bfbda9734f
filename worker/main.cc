// allround-worker: runs a job. `allround-worker JOB.yaml [--KEY=VALUE ...]` trains in this process
// (a worker group of one); any job key can be overridden by a flag of the same dotted name.

#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <thread>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "algorithms/compute_threads.h"
#include "algorithms/modes/semi_supervised.h"
#include "comm/communicator.h"
#include "comm/reducer.h"
#include "comm/registry.h"
#include "common/job.h"
#include "common/cli.h"
#include "common/job_cli.h"
#include "common/stop_signal.h"
#include "coordinator/round_engine.h"
#include "storage/run_directory.h"
#include "worker/checkpointing.h"
#include "worker/federated_client.h"
#include "worker/trainer.h"

namespace allround::worker {
namespace {

using json = nlohmann::json;

// Writes one JSONL record per round and prints a line per round (rank 0 only).
// An evaluation's figures for the progress line: the loss, then accuracy and macro-F1 for the modes
// that classify, then each mode-specific figure (k-NN's linear probe, collapse monitors, ELBO).
std::string EvalLine(const coordinator::Metrics& eval) {
  std::string line;
  for (const auto& [k, v] : eval) {
    if (k == "macro_precision" || k == "macro_recall") continue;
    absl::StrAppendFormat(&line, " %s %.4f", k, v);
  }
  return line;
}

class RoundReporter final : public coordinator::RoundObserver {
 public:
  using AfterRound = std::function<absl::Status(const coordinator::RoundAssignment&, const coordinator::Metrics&)>;
  RoundReporter(storage::RunDirectory* dir, const Trainer* trainer, const Job& job, AfterRound after_round)
      : dir_(dir), trainer_(trainer), job_(job), after_round_(std::move(after_round)) {}

  absl::Status OnRound(const coordinator::RoundAssignment& round, const coordinator::RoundResult& result,
                       const coordinator::Metrics& eval) override {
    json rec = {{"round", round.round + 1},
                {"epoch", round.epoch + 1},
                {"steps", result.steps},
                {"global_step", trainer_->global_step()},
                {"examples", result.examples},
                {"train_loss", result.mean_loss},
                {"lr", trainer_->current_lr()},
                {"seconds", result.seconds},
                {"samples_per_s", result.seconds > 0 ? result.examples / result.seconds : 0.0},
                {"time", static_cast<int64_t>(std::time(nullptr))}};
    for (const auto& [k, v] : eval) rec[k] = v;
    if (after_round_) {
      if (auto s = after_round_(round, eval); !s.ok()) return s;
    }
    if (dir_ == nullptr) return absl::OkStatus();  // not rank 0
    const std::string tested = EvalLine(eval);
    std::printf("epoch %lld/%lld train_loss %.4f%s (%.1fs, %.0f samples/s)\n", static_cast<long long>(round.epoch + 1),
                static_cast<long long>(job_.train.epochs), result.mean_loss, tested.c_str(), result.seconds,
                rec["samples_per_s"].get<double>());
    std::fflush(stdout);
    return dir_->AppendMetrics(rec.dump());
  }

 private:
  storage::RunDirectory* dir_;
  const Trainer* trainer_;
  Job job_;
  AfterRound after_round_;
};

// Whether any rank was asked to stop: every rank must stop after the same step.
absl::StatusOr<bool> AnyRankStopping(comm::Communicator& comm) {
  if (comm.size() == 1) return StopRequested();
  at::Tensor flag = at::tensor({StopRequested() ? 1 : 0}, at::kInt).to(comm.device());
  if (auto s = comm.AllReduce(flag, comm::ReduceOp::kMax)->Wait(comm.timeout()); !s.ok()) return s;
  return flag.item<int>() != 0;
}

// What trains: the vae, gan and mlm modes build their own networks; the others take model.name.
std::string NetworkName(const Job& job) {
  const bool own_networks = job.mode == "vae" || job.mode == "gan" || job.mode == "mlm";
  return own_networks ? job.mode : job.model.name;
}

json Summary(const Job& job, const coordinator::RunOutcome& out, const Trainer& trainer, int64_t parameters) {
  json s;
  for (const auto& [k, v] : out.final_eval) s[k] = v;
  const auto& r = trainer.last_report();
  s["epochs"] = out.rounds;
  s["steps"] = trainer.global_step();
  s["examples"] = out.examples;
  s["train_seconds"] = out.train_seconds;
  s["samples_per_s"] = out.train_seconds > 0 ? out.examples / out.train_seconds : 0.0;
  s["test_examples"] = r.examples;
  s["per_class_precision"] = r.precision;
  s["per_class_recall"] = r.recall;
  s["per_class_f1"] = r.f1;
  s["confusion_matrix"] = r.confusion;
  s["model"] = NetworkName(job);
  s["parameters"] = parameters;
  s["job"] = job.name;
  s["seed"] = job.seed;
  return s;
}

absl::Status Run(const Job& job, const std::string& summary_path, const std::string& resume,
                 comm::Communicator& comm) {
  if (job.threads > 0) {
    SetComputeThreads(static_cast<int>(job.threads));
    torch::set_num_interop_threads(1);
  }
  comm.set_timeout(std::chrono::milliseconds(static_cast<int64_t>(job.comm.timeout_s * 1000)));
  const bool leader = comm.rank() == 0;
  auto data = LoadTrainingData(job);
  if (!data.ok()) return data.status();
  if (job.device == "cuda" && !comm.device().is_cuda()) {
    return absl::FailedPreconditionError(absl::StrCat("job key 'device': cuda needs the nccl backend (comm.backend is ",
                                                      comm.backend(), ")"));
  }
  auto mode = modes::MakeLearningMode(job, data->info, comm.device(), data->train_inputs, data->train_targets);
  if (!mode.ok()) return mode.status();

  // Weights trained elsewhere (model.init): every rank reads the same file.
  if (auto s = worker::LoadInitialWeights(job, **mode); !s.ok()) return s;
  // Every rank starts from rank 0's model; gradients are averaged by the Reducer.
  std::unique_ptr<comm::Reducer> reducer;
  if (comm.size() > 1) {
    if (auto s = comm::BroadcastFromRoot(comm, (*mode)->ModelState()); !s.ok()) return s;
    comm::ReducerOptions options;
    options.bucket_bytes = static_cast<int64_t>(job.comm.bucket_mb * (1 << 20));
    options.first_bucket_bytes = static_cast<int64_t>(job.comm.first_bucket_mb * (1 << 20));
    reducer = std::make_unique<comm::Reducer>((*mode)->TrainableParameters(), &comm, options);
  }

  std::optional<storage::RunDirectory> dir;
  if (leader) {
    auto opened = storage::RunDirectory::Open(ResolvedRunDir(job));
    if (!opened.ok()) return opened.status();
    dir = *std::move(opened);
    if (auto s = dir->WriteFile("job.yaml", JobToYaml(job)); !s.ok()) return s;
    if (!data->tokenizer.empty()) {
      if (auto s = dir->WriteFile("tokenizer.bpe", data->tokenizer); !s.ok()) return s;
    }
  }

  const int64_t train_n = data->train_targets.size(0), test_n = data->test_targets.size(0);
  Trainer trainer(job, *std::move(data), mode->get(), &comm, reducer.get());
  if (leader) {
    const std::string network = NetworkName(job);
    const std::string model = network == job.mode ? network : job.mode + " " + network;
    std::fprintf(stderr, "allround-worker: job '%s': %s, %lld parameters, %lld train / %lld test examples, "
                 "%lld epochs of %lld steps, %d rank(s) over %s, %d threads each, run dir %s\n",
                 job.name.c_str(), model.c_str(), static_cast<long long>((*mode)->ParameterCount()),
                 static_cast<long long>(train_n), static_cast<long long>(test_n),
                 static_cast<long long>(job.train.epochs), static_cast<long long>(trainer.steps_per_epoch()),
                 comm.size(), comm.backend().c_str(), torch::get_num_threads(), dir->path().c_str());
  }

  // Resume: every rank reads the same checkpoint (read-only), then rank 0 opens the store to write.
  int64_t first_round = 0;
  auto restored = ReadCheckpointForResume(job, resume);
  if (!restored.ok()) return restored.status();
  // Text: the tokenizer travels with the run (its directory and every checkpoint), and a resumed run
  // must have retrained the same one from the same corpus.
  const at::Tensor tokenizer =
      data->tokenizer.empty()
          ? at::Tensor()
          : at::tensor(at::ArrayRef<uint8_t>(reinterpret_cast<const uint8_t*>(data->tokenizer.data()),
                                             data->tokenizer.size()),
                       at::kByte);
  if (*restored && tokenizer.defined()) {
    for (const auto& [name, t] : (*restored)->mode_state) {
      if (name == "data/tokenizer" && !(t.sizes() == tokenizer.sizes() && t.equal(tokenizer))) {
        return absl::FailedPreconditionError(absl::StrCat("resuming from ", (*restored)->id,
                                                          ": the tokenizer trained from data.dir differs from the "
                                                          "checkpoint's (did the corpus change?)"));
      }
    }
  }
  if (*restored) {
    if (auto s = ApplyRestored(**restored, **mode, trainer); !s.ok()) return s;
    first_round = (*restored)->round;
    if (leader) {
      if ((*restored)->other_job) {
        std::fprintf(stderr, "allround-worker: note: checkpoint %s was written by a different job file\n",
                     (*restored)->id.c_str());
      }
      std::fprintf(stderr, "allround-worker: resumed from checkpoint %s (round %lld, step %lld)\n",
                   (*restored)->id.c_str(), static_cast<long long>(first_round),
                   static_cast<long long>((*restored)->position.global_step));
    }
  }
  if (auto s = comm.Barrier()->Wait(comm.timeout()); !s.ok()) return s;
  std::unique_ptr<Checkpointer> checkpointer;
  if (leader && job.checkpoint.enabled) {
    auto opened = Checkpointer::Open(job);
    if (!opened.ok()) return opened.status();
    checkpointer = *std::move(opened);
    if (*restored) checkpointer->MarkSaved((*restored)->position.global_step);
    if (tokenizer.defined()) checkpointer->AddConstant("data/tokenizer", tokenizer);
  }
  int64_t rounds_done = first_round;
  coordinator::Metrics last_eval;
  const auto save = [&](const TrainingPosition& pos) -> absl::Status {
    if (!checkpointer) return absl::OkStatus();
    auto id = checkpointer->Save(**mode, pos, rounds_done, last_eval);
    if (!id.ok()) return id.status();
    std::fprintf(stderr, "allround-worker: checkpoint %s saved (round %lld, step %lld)\n", id->c_str(),
                 static_cast<long long>(rounds_done), static_cast<long long>(pos.global_step));
    return absl::OkStatus();
  };

  InstallStopHandlers();  // SIGTERM / SIGINT: finish the step, checkpoint, exit 0
  trainer.set_step_hook([&](const TrainingPosition& pos) -> absl::Status {
    auto stopping = AnyRankStopping(comm);
    if (!stopping.ok()) return stopping.status();
    if (*stopping || (checkpointer && checkpointer->DueAfterStep(pos.global_step))) {
      if (auto s = save(pos); !s.ok()) return s;
    }
    if (*stopping) return absl::CancelledError(absl::StrCat("stopped by signal after step ", pos.global_step));
    return absl::OkStatus();
  });
  RoundReporter reporter(dir ? &*dir : nullptr, &trainer, job,
                         [&](const coordinator::RoundAssignment& round, const coordinator::Metrics& eval) {
                           rounds_done = round.round + 1;
                           if (!eval.empty()) last_eval = eval;
                           if (!eval.empty() && dir) {  // a generative mode's sample grids
                             if (auto s = (*mode)->WriteImages(dir->path(), round.epoch + 1); !s.ok()) return s;
                           }
                           if (checkpointer && checkpointer->DueAfterRound(rounds_done) &&
                               checkpointer->last_saved_step() != trainer.global_step()) {
                             return save(trainer.position());
                           }
                           return absl::OkStatus();
                         });
  coordinator::RoundPlan plan{job.train.epochs, job.train.max_steps, first_round, trainer.global_step(),
                              job.train.eval_every};
  auto out = coordinator::RunRounds(plan, trainer, reporter);
  if (absl::IsCancelled(out.status())) {
    if (leader) std::fprintf(stderr, "allround-worker: %s; checkpoint saved, exiting\n", std::string(out.status().message()).c_str());
    return absl::OkStatus();
  }
  if (!out.ok()) return out.status();
  // The final state is always checkpointed, whatever the policy's period.
  if (checkpointer && checkpointer->last_saved_step() != trainer.global_step()) {
    if (auto s = save(trainer.position()); !s.ok()) return s;
  }
  if (!leader) return absl::OkStatus();
  json summary = Summary(job, *out, trainer, (*mode)->ParameterCount());
  summary["world_size"] = comm.size();
  if (auto s = dir->WriteFile("summary.json", summary.dump(2) + "\n"); !s.ok()) return s;
  if (!summary_path.empty()) {
    if (auto s = storage::WriteFileAtomically(summary_path, summary.dump(2) + "\n"); !s.ok()) return s;
  }
  std::printf("final%s after %lld epochs (%.0f samples/s)\n", EvalLine(out->final_eval).c_str(),
              static_cast<long long>(out->rounds), summary["samples_per_s"].get<double>());
  return absl::OkStatus();
}

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

}  // namespace
}  // namespace allround::worker

int main(int argc, char** argv) {
  using namespace allround;
  CLI::App app{"allround-worker: trains the model a job file describes (one process: a worker group of one).\n"
               "Every job key is also a flag (--KEY=VALUE) that overrides the job file."};
  std::string job_path, summary_path, resume = "none";
  bool print_job = false;
  app.add_option("job", job_path, "job file (YAML); without it the built-in default job runs");
  app.add_option("--summary-json", summary_path, "write the final metrics to this file as one JSON object");
  app.add_flag("--print-job", print_job, "print the resolved job as YAML and exit");
  app.add_option("--resume", resume,
                 "none: start fresh; auto: continue from the run's latest checkpoint (fresh if none); "
                 "or a checkpoint id (allround-ckpt ls lists them)")
      ->capture_default_str();
  worker::SiteOptions site;
  app.add_option("--coordinator", site.coordinator, "federated: the coordinator's HOST:PORT (makes this process a site)");
  app.add_option("--site", site.site_name, "federated: this site's name (with many sites: the prefix of NAME-I)");
  app.add_option("--token-file", site.token_file, "federated: a file (mode 600) holding this site's token");
  app.add_option("--token", site.token,
                 "federated: this site's token (visible to other users in ps: prefer --token-file)");
  app.add_option("--tokens", site.tokens_file, "federated: a file of 'site-name token' lines for the hosted sites");
  app.add_option("--site-index", site.site_indices,
                 "federated: the partition(s) of the job's data this process hosts as sites: I, A-B or A,B,C")
      ->capture_default_str();
  int64_t num_sites = 0;
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
  JobFlags job_flags(app);
  if (auto code = ParseCommandLine(app, argc, argv, "allround-worker")) return *code;

  absl::StatusOr<Job> job = job_flags.Resolve(job_path);
  absl::Status s = job.status();
  if (!s.ok()) {
    if (worker::RankFromEnvironment() == 0) {
      std::fprintf(stderr, "allround-worker: error: %s\n", std::string(s.message()).c_str());
    }
    return 2;
  }
  if (num_sites > 0) job->partition.sites = num_sites;
  const bool federated = app.get_option("--coordinator")->count() > 0;
  if (std::string conflict = worker::FlagConflict(app, federated, site); !conflict.empty()) {
    if (worker::RankFromEnvironment() == 0) std::fprintf(stderr, "allround-worker: error: %s\n", conflict.c_str());
    return 2;
  }
  if (print_job) {
    std::fputs(JobToYaml(*job).c_str(), stdout);
    return 0;
  }
  if (job->device == "cuda") UseDeterministicKernels(job->deterministic);  // before any GPU work
  const std::string backend = job->comm.backend == "auto" && job->device == "cuda" ? "nccl" : job->comm.backend;
  auto context = comm::InitComm(backend, &argc, &argv,
                                std::chrono::milliseconds(static_cast<int64_t>(job->comm.timeout_s * 1000)));
  if (!context.ok()) {
    std::fprintf(stderr, "allround-worker: error: %s\n", std::string(context.status().message()).c_str());
    return 1;
  }
  comm::Communicator& comm = (*context)->comm();
  try {
    if (federated) {
      // A site (or, under mpirun, a worker group that is one site). Sites training side by side
      // share the cores: unless the job says how many threads, each slot gets its share.
      int threads = static_cast<int>(job->threads);
      if (threads == 0 && site.site_threads > 1) {
        threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / site.site_threads);
      }
      SetComputeThreads(threads);
      s = worker::RunSites(*job, site, &comm);
    } else {
      s = worker::Run(*job, summary_path, resume, comm);
    }
  } catch (const c10::Error& e) {
    s = absl::InternalError(e.what_without_backtrace());
  }
  if (!s.ok()) {
    const std::string where = comm.size() > 1 ? absl::StrCat("rank ", comm.rank(), ": ") : "";
    std::fprintf(stderr, "allround-worker: error: %s%s\n", where.c_str(), std::string(s.message()).c_str());
    std::fflush(stderr);
    std::fflush(stdout);
    // Peers may be gone or blocked in a collective: shutting MPI down cleanly could hang, and a
    // non-zero exit makes mpirun end the others.
    if (comm.size() > 1) std::_Exit(1);
    return 1;
  }
  return 0;
}
