#ifndef ALLROUND_RUNTIME_TRAINER_H_
#define ALLROUND_RUNTIME_TRAINER_H_

// The round executor of a worker group: local training of one round (an epoch, or what is left
// of the step budget) with the job's learning mode, and sharded evaluation reduced over the
// group's Communicator. Rank 0 alone prints progress lines.
//
// Not thread-safe; the Communicator and LearningMode must outlive the Trainer.

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "algorithms/metrics.h"
#include "algorithms/modes/learning_mode.h"
#include "algorithms/modes/supervised.h"
#include "algorithms/optim/dp_sgd.h"
#include "algorithms/optim/schedule.h"
#include "comm/communicator.h"
#include "common/job.h"
#include "data/datasets.h"
#include "privacy/accountant.h"
#include "runtime/round_engine.h"

namespace allround::runtime {

// Where training stands: enough, with the model and optimizer state, to continue exactly.
struct TrainingPosition {
  int64_t global_step = 0;    // optimizer steps taken
  int64_t epoch = 0;          // the epoch the next step belongs to
  int64_t step_in_epoch = 0;  // steps of that epoch already taken
};

// Broadcasts the mode's buffers (BatchNorm statistics) from rank 0 of `comm`; nothing in a group of
// one or for a mode without buffers.
absl::Status SyncBuffers(comm::Communicator& comm, modes::LearningMode& mode);

class Trainer final : public runtime::RoundExecutor {
 public:
  // Called after every step with the position reached. An error stops the round and is returned
  // from Execute (CancelledError: a requested stop after a clean step).
  using StepHook = std::function<absl::Status(const TrainingPosition&)>;

  // `sync` (the Reducer) may be null in a worker group of one.
  Trainer(const Job& job, data::TrainingData data, modes::LearningMode* mode, comm::Communicator* comm,
          comm::GradientSync* sync = nullptr);

  absl::StatusOr<runtime::RoundResult> Execute(const runtime::RoundAssignment& round) override;
  absl::StatusOr<runtime::Metrics> Evaluate() override;

  // The last evaluation's full report (confusion matrix, per-class figures).
  const metrics::ClassificationReport& last_report() const { return last_report_; }
  TrainingPosition position() const { return position_; }
  // Continue from `p` (after loading the matching model and optimizer state).
  void Restore(const TrainingPosition& p) { position_ = p; }
  void set_step_hook(StepHook hook) { step_hook_ = std::move(hook); }
  // The steps of this trainer are the part [begin, end] of a longer run (a federated round of the
  // whole federated run): the progress a mode's schedules see goes from begin to end.
  void SetProgressSpan(double begin, double end) {
    progress_begin_ = begin;
    progress_end_ = end;
  }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }

  // Example-level differential privacy (privacy.mode example): each step's batch is a Poisson
  // sample of the group's data at rate q = batch_size * ranks / examples, and the step is DP-SGD's.
  // The accountant counts every step taken (a resumed run carries on from the checkpoint's count);
  // a step that would take epsilon past privacy.target_epsilon is not taken: the round ends
  // there, and RoundResult::final says the run must end. Null privacy() when DP is off.
  struct Privacy {
    optim::DpSpec spec;
    double sampling_rate = 0;       // q
    double noise_multiplier = 0;    // z: the job's, or computed for its target epsilon
    privacy::PrivacySpent spent;    // after the steps taken
    bool budget_spent = false;      // the next step would pass the target
    uint64_t secret = 0;            // seeds the Poisson draws and the noise (privacy.noise_seed)
  };
  const Privacy* privacy() const { return privacy_ ? &*privacy_ : nullptr; }
  // The accountant's state for a checkpoint ("privacy/rdp": float64 [orders]); undefined when off.
  at::Tensor PrivacyState() const;
  // Continues counting from a checkpoint's PrivacyState; fails on a length that does not match.
  absl::Status RestorePrivacy(const at::Tensor& rdp);
  // The seed of the Poisson draws and the noise ("privacy/secret": int64 [1]), which a checkpoint
  // keeps so a resumed run draws what the uninterrupted one would; it is what an adversary must
  // not know, so the checkpoint is as private as the training data. Undefined when DP is off.
  at::Tensor PrivacySecret() const;
  absl::Status RestorePrivacySecret(const at::Tensor& secret);
  int64_t global_step() const { return position_.global_step; }
  double current_lr() const { return schedule_.At(position_.global_step); }

 private:
  void MaybePrintProgress(const runtime::RoundAssignment& round, int64_t step_in_epoch, double loss,
                          double elapsed, int64_t examples);
  // Whether the next DP step would pass the target epsilon (then logs it, once).
  bool SpendsTooMuch();
  void CountPrivateStep();

  Job job_;
  data::TrainingData data_;
  modes::LearningMode* mode_;
  comm::Communicator* comm_;
  comm::GradientSync* sync_;
  int64_t steps_per_epoch_;
  int64_t total_steps_;
  optim::LrSchedule schedule_;
  TrainingPosition position_;
  StepHook step_hook_;
  double last_progress_ = -1e9;
  double progress_begin_ = 0.0, progress_end_ = 1.0;
  metrics::ClassificationReport last_report_;
  absl::Status privacy_error_;       // set up in the constructor, reported by Execute
  std::optional<Privacy> privacy_;
  std::optional<privacy::RdpAccountant> accountant_;
  std::vector<double> step_rdp_;     // one DP step's RDP at each order
};

}  // namespace allround::runtime

#endif  // ALLROUND_RUNTIME_TRAINER_H_
