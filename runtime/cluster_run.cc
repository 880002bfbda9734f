#include "runtime/cluster_run.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "algorithms/compute_threads.h"
#include "algorithms/modes/registry.h"
#include "algorithms/optim/dp_sgd.h"
#include "comm/reducer.h"
#include "common/log.h"
#include "common/timeline.h"
#include "common/worker_metrics.h"
#include "common/stop_signal.h"
#include "data/datasets.h"
#include "runtime/round_engine.h"
#include "runtime/trainer.h"
#include "observe/run_board.h"
#include "storage/run_directory.h"

namespace allround::runtime {
namespace {

using json = nlohmann::json;

// An evaluation's figures for the progress line: the loss, then accuracy and macro-F1 for the modes
// that classify, then each mode-specific figure (k-NN's linear probe, collapse monitors, ELBO).
std::string EvalLine(const Metrics& eval) {
  std::string line;
  for (const auto& [k, v] : eval) {
    if (k == "macro_precision" || k == "macro_recall") continue;
    absl::StrAppendFormat(&line, " %s %.4f", k, v);
  }
  return line;
}

// What trains: the modes with networks of their own name them; the others take model.name.
std::string NetworkName(const Job& job) {
  return modes::NeedsOf(job.mode).own_networks ? job.mode : job.model.name;
}

// Whether any rank was asked to stop: every rank must stop after the same step.
absl::StatusOr<bool> AnyRankStopping(comm::Communicator& comm) {
  if (comm.size() == 1) return StopRequested();
  at::Tensor flag = at::tensor({StopRequested() ? 1 : 0}, at::kInt).to(comm.device());
  if (auto s = comm.AllReduce(flag, comm::ReduceOp::kMax)->Wait(comm.timeout()); !s.ok()) return s;
  return flag.item<int>() != 0;
}

// The text job's tokenizer as a tensor (it travels with every checkpoint); undefined otherwise.
at::Tensor TokenizerTensor(const std::string& tokenizer) {
  if (tokenizer.empty()) return at::Tensor();
  return at::tensor(at::ArrayRef<uint8_t>(reinterpret_cast<const uint8_t*>(tokenizer.data()), tokenizer.size()),
                    at::kByte);
}

// The run: set up in Prepare, resumed, trained by the round engine, then finished.
class ClusterRun final : public RoundObserver {
 public:
  ClusterRun(const Job& job, const ClusterRunOptions& options, comm::Communicator& comm)
      : job_(job), options_(options), comm_(comm), leader_(comm.rank() == 0) {}

  absl::Status Run() {
    if (auto s = Prepare(); !s.ok()) return s;
    if (auto s = Resume(); !s.ok()) return s;
    InstallStopHandlers();  // SIGTERM / SIGINT: finish the step, checkpoint, exit 0
    trainer_->set_step_hook([this](const TrainingPosition& pos) { return AfterStep(pos); });
    RoundPlan plan{job_.train.epochs, job_.train.max_steps, rounds_done_, trainer_->global_step(),
                   job_.train.eval_every};
    auto out = RunRounds(plan, *trainer_, *this);
    if (absl::IsCancelled(out.status())) {
      if (leader_) log::Info("{}; checkpoint saved, exiting", out.status().message());
      return absl::OkStatus();
    }
    if (!out.ok()) return out.status();
    // The final state is always checkpointed, whatever the policy's period.
    if (checkpointer_ && checkpointer_->last_saved_step() != trainer_->global_step()) {
      if (auto s = Save(trainer_->position()); !s.ok()) return s;
    }
    return leader_ ? WriteSummary(*out) : absl::OkStatus();
  }

  absl::Status OnRound(const RoundAssignment& round, const RoundResult& result, const Metrics& eval) override {
    rounds_done_ = round.round + 1;
    if (!eval.empty()) last_eval_ = eval;
    std::vector<GrayImage> pictures;
    if (!eval.empty() && dir_) {  // a generative mode's sample grids
      pictures = mode_->Images();
      for (const GrayImage& image : pictures) {
        const std::string path = absl::StrCat(dir_->path(), "/", image.name, "-epoch", round.epoch + 1, ".png");
        if (auto s = WriteGrayPng(path, image.width, image.height, image.pixels); !s.ok()) return s;
      }
    }
    if (checkpointer_ && checkpointer_->DueAfterRound(rounds_done_) &&
        checkpointer_->last_saved_step() != trainer_->global_step()) {
      if (auto s = Save(trainer_->position()); !s.ok()) return s;
    }
    if (!dir_) return absl::OkStatus();  // not rank 0
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
    std::string privacy_note;
    if (const Trainer::Privacy* p = trainer_->privacy()) {
      rec["epsilon"] = p->spent.epsilon;  // after this epoch's steps, at privacy.delta
      rec["delta"] = p->spec.delta;
      privacy_note = absl::StrFormat(" epsilon %.4f", p->spent.epsilon);
    }
    std::printf("epoch %lld/%lld train_loss %.4f%s%s (%.1fs, %.0f samples/s)\n", static_cast<long long>(round.epoch + 1),
                static_cast<long long>(job_.train.epochs), result.mean_loss, EvalLine(eval).c_str(),
                privacy_note.c_str(), result.seconds,
                rec["samples_per_s"].get<double>());
    std::fflush(stdout);
    if (auto s = dir_->AppendMetrics(rec.dump()); !s.ok()) return s;
    if (auto* metrics = worker_metrics::Active()) metrics->Epoch(round.epoch + 1, rec["samples_per_s"].get<double>());
    // TensorBoard is a view: a failed write ends the event file, not the run (the other ranks
    // would wait in the next epoch's collectives for a rank 0 that stopped).
    if (auto s = Show(round.epoch + 1, rec, pictures, !eval.empty()); !s.ok()) {
      log::Warning("TensorBoard event file {}: {}; no more events are written", board_.path(), s.message());
      board_ = observe::RunBoard();
    }
    return absl::OkStatus();
  }

 private:
  // The data, the mode (from model.init or rank 0's weights), the Reducer, the run directory and
  // the trainer.
  absl::Status Prepare() {
    if (job_.threads > 0) {
      SetComputeThreads(static_cast<int>(job_.threads));
      // LibTorch takes the inter-op pool's size once per process: a second run in this process
      // (a test, a resume) keeps the first's.
      static std::once_flag interop;
      std::call_once(interop, [] { torch::set_num_interop_threads(1); });
    }
    comm_.set_timeout(std::chrono::milliseconds(static_cast<int64_t>(job_.comm.timeout_s * 1000)));
    auto data = data::LoadTrainingData(job_);
    if (!data.ok()) return data.status();
    if (job_.device == "cuda" && !comm_.device().is_cuda()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job key 'device': cuda needs the nccl backend (comm.backend is ", comm_.backend(), ")"));
    }
    auto mode = modes::MakeLearningMode(job_, data->info, comm_.device(), data->train_inputs, data->train_targets);
    if (!mode.ok()) return mode.status();
    mode_ = *std::move(mode);
    // Weights trained elsewhere (model.init): every rank reads the same file.
    if (auto s = LoadInitialWeights(job_, *mode_); !s.ok()) return s;
    // Every rank starts from rank 0's model; gradients are averaged by the Reducer.
    if (comm_.size() > 1) {
      if (auto s = comm::BroadcastFromRoot(comm_, mode_->ModelState()); !s.ok()) return s;
      comm::ReducerOptions options;
      options.bucket_bytes = static_cast<int64_t>(job_.comm.bucket_mb * (1 << 20));
      options.first_bucket_bytes = static_cast<int64_t>(job_.comm.first_bucket_mb * (1 << 20));
      reducer_ = std::make_unique<comm::Reducer>(mode_->TrainableParameters(), &comm_, options);
    }
    tokenizer_ = TokenizerTensor(data->tokenizer);
    if (leader_) {
      auto opened = storage::RunDirectory::Open(ResolvedRunDir(job_));
      if (!opened.ok()) return opened.status();
      dir_ = *std::move(opened);
      if (auto s = dir_->WriteFile("job.yaml", JobToYaml(job_)); !s.ok()) return s;
      auto board = observe::RunBoard::Open(job_, dir_->path(), "worker");
      if (!board.ok()) return board.status();
      board_ = *std::move(board);
      if (auto s = board_.JobText(job_); !s.ok()) return s;
      if (!data->tokenizer.empty()) {
        if (auto s = dir_->WriteFile("tokenizer.bpe", data->tokenizer); !s.ok()) return s;
      }
    }
    const int64_t train_n = data->train_targets.size(0), test_n = data->test_targets.size(0);
    trainer_ = std::make_unique<Trainer>(job_, *std::move(data), mode_.get(), &comm_, reducer_.get());
    if (leader_) PrintStart(train_n, test_n);
    return absl::OkStatus();
  }

  // The epoch's record in TensorBoard: its numbers as scalars, the weights, the pictures and, after
  // an evaluation of a mode that classifies, the confusion matrix.
  absl::Status Show(int64_t epoch, const json& rec, const std::vector<GrayImage>& pictures, bool evaluated) {
    if (!board_.on()) return absl::OkStatus();
    std::vector<std::pair<std::string, double>> scalars;
    for (const auto& [key, value] : rec.items()) {
      if (value.is_number() && key != "round" && key != "epoch" && key != "time") scalars.emplace_back(key, value.get<double>());
    }
    if (auto s = board_.Scalars(epoch, scalars); !s.ok()) return s;
    if (auto s = board_.Weights(epoch, modes::ModelTensors(mode_->State())); !s.ok()) return s;
    if (auto s = board_.Pictures(epoch, pictures); !s.ok()) return s;
    if (evaluated) {
      if (auto s = board_.ConfusionMatrix(epoch, trainer_->last_report().confusion); !s.ok()) return s;
    }
    return board_.Flush();
  }

  void PrintStart(int64_t train_n, int64_t test_n) const {
    const std::string network = NetworkName(job_);
    const std::string model = network == job_.mode ? network : job_.mode + " " + network;
    log::Info("job '{}': {}, {} parameters, {} train / {} test examples, {} epochs of {} steps, {} rank(s) over {}, "
              "{} threads each, run dir {}",
              job_.name, model, mode_->ParameterCount(), train_n, test_n, job_.train.epochs,
              trainer_->steps_per_epoch(), comm_.size(), comm_.backend(), torch::get_num_threads(), dir_->path());
  }

  // Every rank reads the same checkpoint (read-only), then rank 0 opens the store to write.
  absl::Status Resume() {
    auto restored = ReadCheckpointForResume(job_, options_.resume, RunKind::kTraining, options_.stores);
    if (!restored.ok()) return restored.status();
    if (*restored) {
      const Restored& r = **restored;
      // Text: a resumed run must have retrained the same tokenizer from the same corpus.
      for (const auto& [name, t] : r.mode_state) {
        if (tokenizer_.defined() && name == "data/tokenizer" && !(t.sizes() == tokenizer_.sizes() && t.equal(tokenizer_))) {
          return absl::FailedPreconditionError(absl::StrCat("resuming from ", r.id,
                                                            ": the tokenizer trained from data.dir differs from the "
                                                            "checkpoint's (did the corpus change?)"));
        }
      }
      if (auto s = ApplyRestored(r, *mode_, *trainer_); !s.ok()) return s;
      rounds_done_ = r.round;
      if (leader_) {
        if (r.other_job) {
          log::Warning("checkpoint {} was written by a different job file", r.id);
        }
        log::Info("resumed from checkpoint {} (round {}, step {})", r.id, rounds_done_, r.position.global_step);
      }
    }
    if (auto s = comm_.Barrier()->Wait(comm_.timeout()); !s.ok()) return s;
    if (!leader_ || !job_.checkpoint.enabled) return absl::OkStatus();
    auto opened = Checkpointer::Open(job_, RunKind::kTraining, options_.stores);
    if (!opened.ok()) return opened.status();
    checkpointer_ = *std::move(opened);
    if (*restored) checkpointer_->MarkSaved((*restored)->position.global_step);
    if (tokenizer_.defined()) checkpointer_->AddConstant("data/tokenizer", tokenizer_);
    return absl::OkStatus();
  }

  absl::Status Save(const TrainingPosition& pos) {
    if (!checkpointer_) return absl::OkStatus();
    timeline::Span span("checkpoint save", "checkpoint");
    const auto start = std::chrono::steady_clock::now();
    Metrics figures = last_eval_;
    storage::NamedTensors extra;
    if (const Trainer::Privacy* p = trainer_->privacy()) {
      figures.emplace_back("epsilon", p->spent.epsilon);
      figures.emplace_back("delta", p->spec.delta);
      extra.emplace_back(kPrivacyRdp, trainer_->PrivacyState());
      extra.emplace_back(kPrivacySecret, trainer_->PrivacySecret());
    }
    auto id = checkpointer_->SaveTraining(*mode_, pos, rounds_done_, figures, extra);
    if (!id.ok()) return id.status();
    log::Info("checkpoint {} saved (round {}, step {})", *id, rounds_done_, pos.global_step);
    if (auto* metrics = worker_metrics::Active()) {
      metrics->Checkpoint(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return absl::OkStatus();
  }

  absl::Status AfterStep(const TrainingPosition& pos) {
    auto stopping = AnyRankStopping(comm_);
    if (!stopping.ok()) return stopping.status();
    if (*stopping || (checkpointer_ && checkpointer_->DueAfterStep(pos.global_step))) {
      if (auto s = Save(pos); !s.ok()) return s;
    }
    if (*stopping) return absl::CancelledError(absl::StrCat("stopped by signal after step ", pos.global_step));
    return absl::OkStatus();
  }

  absl::Status WriteSummary(const RunOutcome& out) {
    json s;
    for (const auto& [k, v] : out.final_eval) s[k] = v;
    const auto& r = trainer_->last_report();
    s["epochs"] = out.rounds;
    s["steps"] = trainer_->global_step();
    s["examples"] = out.examples;
    s["train_seconds"] = out.train_seconds;
    s["samples_per_s"] = out.train_seconds > 0 ? out.examples / out.train_seconds : 0.0;
    s["test_examples"] = r.examples;
    s["per_class_precision"] = r.precision;
    s["per_class_recall"] = r.recall;
    s["per_class_f1"] = r.f1;
    s["confusion_matrix"] = r.confusion;
    s["model"] = NetworkName(job_);
    s["parameters"] = mode_->ParameterCount();
    s["job"] = job_.name;
    s["seed"] = job_.seed;  // not the DP secret: that stays in the checkpoints
    s["world_size"] = comm_.size();
    if (const Trainer::Privacy* p = trainer_->privacy()) {
      s["privacy"] = {{"mode", p->spec.mode},
                      {"guarantee", "example-level (epsilon, delta)-DP of the released model with respect to adding "
                                    "or removing one training example"},
                      {"epsilon", p->spent.epsilon},
                      {"delta", p->spec.delta},
                      {"rdp_order", p->spent.order},
                      {"noise_multiplier", p->noise_multiplier},
                      {"clip", p->spec.clip},
                      {"sampling_rate", p->sampling_rate},
                      {"steps", trainer_->global_step()},
                      {"target_epsilon", p->spec.target_epsilon},
                      {"budget_spent", p->budget_spent}};
    }
    if (auto st = dir_->WriteFile("summary.json", s.dump(2) + "\n"); !st.ok()) return st;
    if (!options_.summary_path.empty()) {
      if (auto st = storage::WriteFileAtomically(options_.summary_path, s.dump(2) + "\n"); !st.ok()) return st;
    }
    std::printf("final%s after %lld epochs (%.0f samples/s)\n", EvalLine(out.final_eval).c_str(),
                static_cast<long long>(out.rounds), s["samples_per_s"].get<double>());
    return absl::OkStatus();
  }

  const Job job_;
  const ClusterRunOptions options_;
  comm::Communicator& comm_;
  const bool leader_;
  std::unique_ptr<modes::LearningMode> mode_;
  std::unique_ptr<comm::Reducer> reducer_;
  std::optional<storage::RunDirectory> dir_;
  observe::RunBoard board_;  // rank 0: TensorBoard
  std::unique_ptr<Trainer> trainer_;
  std::unique_ptr<Checkpointer> checkpointer_;
  at::Tensor tokenizer_;
  int64_t rounds_done_ = 0;
  Metrics last_eval_;
};

}  // namespace

absl::Status RunCluster(const Job& job, const ClusterRunOptions& options, comm::Communicator& comm) {
  if (optim::DpSpecFromJob(job).site_level()) {
    // Nothing here would add the noise: a run that claimed site-level DP would train without it.
    return absl::InvalidArgumentError(
        "job key 'privacy.mode': site is DP-FedAvg across federated sites (allround-coordinator and sites "
        "with --coordinator); a cluster or single-process run protects examples: privacy.mode example");
  }
  return ClusterRun(job, options, comm).Run();
}

}  // namespace allround::runtime
