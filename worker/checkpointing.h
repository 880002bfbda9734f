#ifndef ALLROUND_WORKER_CHECKPOINTING_H_
#define ALLROUND_WORKER_CHECKPOINTING_H_

// The worker's side of checkpoints: what a checkpoint of a training run holds (the learning
// mode's state, the training position, LibTorch's CPU generator), when one is written (the job's
// checkpoint policy; rank 0 writes), and resuming from one (every rank reads the same checkpoint).

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "algorithms/modes/learning_mode.h"
#include "common/job.h"
#include "coordinator/round_engine.h"
#include "storage/checkpoint_store.h"
#include "worker/trainer.h"

namespace allround::worker {

std::string CheckpointDir(const Job& job);

// CheckpointInfo::mode of the coordinator's own checkpoints: a worker refuses to resume from one.
inline constexpr char kCoordinatorMode[] = "federated-coordinator";

// Weights trained elsewhere (job key model.init, a safetensors file, names with or without the
// "model/" prefix) loaded into the mode; nothing to do when the key is empty. The worker's start
// and the coordinator's initial global model both come from here.
absl::Status LoadInitialWeights(const Job& job, modes::LearningMode& mode);

// A checkpoint read back for resuming.
struct Restored {
  std::string id;
  TrainingPosition position;
  int64_t round = 0;  // rounds completed
  storage::NamedTensors mode_state;
  bool other_job = false;  // written by a job file that differs from this one (a note, not an error)
};

// `resume`: "none" (start fresh), "auto" (the run's latest checkpoint, or fresh if there is none),
// or a checkpoint id. Opens the store read-only, so every rank may call it at once. A corrupt or
// missing named checkpoint is an error; "auto" never falls back to an older one by itself.
absl::StatusOr<std::optional<Restored>> ReadCheckpointForResume(const Job& job, const std::string& resume);

// Applies a Restored to the mode, trainer and LibTorch's generator.
absl::Status ApplyRestored(const Restored& r, modes::LearningMode& mode, Trainer& trainer);

// Writes checkpoints for rank 0, following the job's policy, and prunes old ones.
class Checkpointer {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpointer>> Open(const Job& job);

  // Saves now; returns the new id.
  absl::StatusOr<std::string> Save(modes::LearningMode& mode, const TrainingPosition& position, int64_t round,
                                   const coordinator::Metrics& metrics);
  bool DueAfterStep(int64_t global_step) const;
  bool DueAfterRound(int64_t rounds_done) const;
  int64_t last_saved_step() const { return last_saved_step_; }
  // The run resumed from a checkpoint at this step: it is saved already.
  void MarkSaved(int64_t global_step) { last_saved_step_ = global_step; }
  // Tensors saved with every checkpoint beside the mode's state (e.g. "data/tokenizer").
  void AddConstant(std::string name, at::Tensor t) { constants_.emplace_back(std::move(name), std::move(t)); }

 private:
  Checkpointer(const Job& job, std::unique_ptr<storage::CheckpointStore> store);
  Job job_;
  std::string job_hash_;
  std::unique_ptr<storage::CheckpointStore> store_;
  int64_t last_saved_step_ = -1;
  storage::NamedTensors constants_;
};

}  // namespace allround::worker

#endif  // ALLROUND_WORKER_CHECKPOINTING_H_
