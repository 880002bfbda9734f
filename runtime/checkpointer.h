#ifndef ALLROUND_RUNTIME_CHECKPOINTER_H_
#define ALLROUND_RUNTIME_CHECKPOINTER_H_

// Checkpoints of a run, for the cluster run and the federated coordinator alike: where the store
// is (the job's checkpoint.dir), the one resume path (--resume none | auto | ID, with the same
// refusals for both), when a checkpoint is due (the job's policy), saving and pruning. What a
// training run's checkpoint holds beyond its learning mode's state (the position, LibTorch's CPU
// generator) is written and read back here too; the coordinator saves its RoundManager's state.
//
// Stores are opened through a StoreOpener: the RocksDB store on disk (DiskStores), or a test's
// in-memory one (storage/memory_store.h) that can fail on purpose. Not thread-safe.

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "algorithms/modes/learning_mode.h"
#include "common/job.h"
#include "runtime/round_engine.h"
#include "runtime/trainer.h"
#include "storage/checkpoint_store.h"

namespace allround::runtime {

std::string CheckpointDir(const Job& job);

// CheckpointInfo::mode of the coordinator's own checkpoints: a worker refuses to resume from one.
inline constexpr char kCoordinatorMode[] = "federated-coordinator";
// The privacy accountant's RDP at each order, in a training checkpoint of a DP run.
inline constexpr char kPrivacyRdp[] = "privacy/rdp";
// The seed of a DP run's Poisson draws and noise (privacy.noise_seed: secret).
inline constexpr char kPrivacySecret[] = "privacy/secret";

// Whose checkpoints a run resumes: a training run's (a worker, a worker group) or a coordinator's.
// Each refuses the other's, saying how to carry a model across (export, then model.init).
enum class RunKind { kTraining, kCoordinator };

// Opens the store at a directory. A read-only open of a directory that holds no store answers
// NotFound (the resume path's "nothing to resume"); a writable one creates it.
using StoreOpener = std::function<absl::StatusOr<std::unique_ptr<storage::CheckpointStore>>(
    const std::string& dir, bool read_only)>;
// The RocksDB store (storage/rocksdb) on disk.
StoreOpener DiskStores();

// Weights trained elsewhere (job key model.init, a safetensors file, names with or without the
// "model/" prefix) loaded into the mode; nothing to do when the key is empty. The worker's start
// and the coordinator's initial global model both come from here.
absl::Status LoadInitialWeights(const Job& job, modes::LearningMode& mode);

// A checkpoint read back for resuming.
struct Restored {
  std::string id;
  storage::CheckpointRecord record;
  bool other_job = false;  // written by a job file that differs from this one (a note, not an error)
  // A training run's: where it stood, and every other tensor (the mode's state, the generator).
  TrainingPosition position;
  int64_t round = 0;  // rounds completed
  storage::NamedTensors mode_state;  // a coordinator's: its whole state
};

// The one resume path. `resume`: "none" (start fresh), "auto" (the run's latest checkpoint, or
// fresh if there is none), or a checkpoint id. Opens the store read-only, so every rank of a group
// may call it at once. A corrupt or missing named checkpoint is an error, and so is one of the
// other RunKind; "auto" never falls back to an older one by itself.
absl::StatusOr<std::optional<Restored>> ReadCheckpointForResume(const Job& job, const std::string& resume,
                                                                RunKind kind = RunKind::kTraining,
                                                                const StoreOpener& opener = DiskStores());

// Applies a training run's Restored to the mode, trainer and LibTorch's generator.
absl::Status ApplyRestored(const Restored& r, modes::LearningMode& mode, Trainer& trainer);

// Writes a run's checkpoints (a worker group's rank 0; the coordinator) and prunes old ones.
class Checkpointer {
 public:
  // Opens (creating it) the job's store for writing.
  static absl::StatusOr<std::unique_ptr<Checkpointer>> Open(const Job& job, RunKind kind = RunKind::kTraining,
                                                            const StoreOpener& opener = DiskStores());

  // The run id checkpoints are saved under: the job's name; the coordinator's gets ".coordinator".
  static std::string RunId(const Job& job, RunKind kind);

  // Saves `tensors` with `info` (its mode and job hash filled in here), then prunes by the job's
  // retention. An error names the store's failure and leaves the last good checkpoint the latest.
  absl::StatusOr<std::string> Save(storage::CheckpointInfo info, const storage::NamedTensors& tensors);
  // A training run's checkpoint: the mode's state, the constants, the position and the generator.
  // `extra`: further tensors of the run's state (the privacy accountant's "privacy/rdp").
  absl::StatusOr<std::string> SaveTraining(modes::LearningMode& mode, const TrainingPosition& position,
                                           int64_t round, const Metrics& metrics,
                                           const storage::NamedTensors& extra = {});

  bool DueAfterStep(int64_t global_step) const;
  bool DueAfterRound(int64_t rounds_done) const;
  int64_t last_saved_step() const { return last_saved_step_; }
  // The run resumed from a checkpoint at this step: it is saved already.
  void MarkSaved(int64_t global_step) { last_saved_step_ = global_step; }
  // Tensors saved with every checkpoint beside the mode's state (e.g. "data/tokenizer").
  void AddConstant(std::string name, at::Tensor t) { constants_.emplace_back(std::move(name), std::move(t)); }

 private:
  Checkpointer(const Job& job, RunKind kind, std::unique_ptr<storage::CheckpointStore> store);
  Job job_;
  RunKind kind_;
  std::string job_hash_;
  std::unique_ptr<storage::CheckpointStore> store_;
  int64_t last_saved_step_ = -1;
  storage::NamedTensors constants_;
};

}  // namespace allround::runtime

#endif  // ALLROUND_RUNTIME_CHECKPOINTER_H_
