#include "runtime/checkpointer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <functional>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "storage/safetensors.h"

namespace allround::runtime {
namespace {

constexpr char kPosition[] = "trainer/position";  // int64 [global_step, epoch, step_in_epoch, rounds done]
constexpr char kCpuRng[] = "rng/torch_cpu";

std::string JobHash(const Job& job) {
  return absl::StrFormat("%016x", std::hash<std::string>{}(JobToYaml(job)));
}

// A checkpoint of the other kind of run is refused, saying how to carry its model across.
absl::Status CheckKind(const storage::CheckpointRecord& record, RunKind kind, const std::string& dir) {
  const bool coordinator = record.info.mode == kCoordinatorMode;
  if (kind == RunKind::kTraining && coordinator) {
    // Its tensors are a global model plus the coordinator's registry, not a training run: loaded
    // as one, the run would start from the model with a fresh optimizer and a wrong position.
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", record.id, " was written by allround-coordinator (run '", record.run_id,
        "'), not by a worker: a worker resumes only its own runs' checkpoints. To train on from its model, "
        "allround-ckpt export ", dir, " ", record.id, " FILE.safetensors and give the job model.init: FILE.safetensors"));
  }
  if (kind == RunKind::kCoordinator && !coordinator) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--resume ", record.id, ": a checkpoint of the worker run '", record.run_id, "' (mode ", record.info.mode,
        "), not of a coordinator; to start from its model, export it and give the job model.init"));
  }
  return absl::OkStatus();
}

// A training run's tensors: the position comes out, the rest is the mode's (and the generator's).
absl::Status SplitTraining(storage::NamedTensors tensors, Restored& r) {
  for (auto& [name, t] : tensors) {
    if (name == kPosition) {
      if (t.numel() != 4) return absl::DataLossError(absl::StrCat("checkpoint ", r.id, ": malformed ", kPosition));
      r.position = {t[0].item<int64_t>(), t[1].item<int64_t>(), t[2].item<int64_t>()};
      r.round = t[3].item<int64_t>();
    } else {
      r.mode_state.emplace_back(name, std::move(t));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string CheckpointDir(const Job& job) {
  return job.checkpoint.dir.empty() ? ResolvedRunDir(job) + "/checkpoints" : job.checkpoint.dir;
}

StoreOpener DiskStores() {
  return [](const std::string& dir, bool read_only) -> absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> {
    if (read_only && !std::filesystem::exists(dir + "/CURRENT")) {
      return absl::NotFoundError(absl::StrCat("no checkpoint store at ", dir));
    }
    std::error_code ec;
    if (!read_only) std::filesystem::create_directories(dir, ec);
    storage::StoreOptions options;
    options.read_only = read_only;
    return storage::OpenCheckpointStore(dir, options);
  };
}

absl::Status LoadInitialWeights(const Job& job, modes::LearningMode& mode) {
  if (job.model.init.empty()) return absl::OkStatus();
  auto weights = storage::ReadSafetensors(job.model.init);
  if (!weights.ok()) return weights.status();
  // Weights only: an allround-ckpt export also holds the run's optimizer, RNG and position, which
  // a new run starts afresh; other files (a PyTorch state_dict) name the model's tensors bare.
  storage::NamedTensors model;
  for (auto& [name, t] : *weights) {
    if (name.rfind("optim/", 0) == 0 || name.rfind("rng/", 0) == 0 || name.rfind("trainer/", 0) == 0) continue;
    model.emplace_back(name.rfind("model/", 0) == 0 ? name : "model/" + name, t);
  }
  if (auto s = mode.LoadState(model); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("job key 'model.init' (", job.model.init, "): ", s.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Restored>> ReadCheckpointForResume(const Job& job, const std::string& resume,
                                                                RunKind kind, const StoreOpener& opener) {
  if (resume == "none") return std::optional<Restored>();
  const std::string dir = CheckpointDir(job);
  auto store = opener(dir, /*read_only=*/true);
  if (absl::IsNotFound(store.status())) {
    if (resume == "auto") return std::optional<Restored>();
    return absl::NotFoundError(absl::StrCat("--resume ", resume, ": ", store.status().message()));
  }
  if (!store.ok()) return store.status();
  std::string id = resume;
  if (resume == "auto") {
    auto latest = (*store)->Latest(Checkpointer::RunId(job, kind));
    if (absl::IsNotFound(latest.status())) return std::optional<Restored>();
    if (!latest.ok()) return latest.status();
    id = *latest;
  }
  Restored r;
  r.id = id;
  auto record = (*store)->Get(id);
  if (!record.ok()) return record.status();
  if (auto s = CheckKind(*record, kind, dir); !s.ok()) return s;
  r.record = *std::move(record);
  auto tensors = (*store)->Load(id);
  if (!tensors.ok()) {
    return absl::Status(tensors.status().code(),
                        absl::StrCat(tensors.status().message(),
                                     "; refusing to resume from it (name an earlier one with --resume ID; "
                                     "allround-ckpt ls ", dir, " lists them)"));
  }
  if (kind == RunKind::kCoordinator) {
    r.mode_state = *std::move(tensors);
    r.round = r.record.info.round;
  } else if (auto s = SplitTraining(*std::move(tensors), r); !s.ok()) {
    return s;
  }
  r.other_job = !r.record.info.job_hash.empty() && r.record.info.job_hash != JobHash(job);
  return std::optional<Restored>(std::move(r));
}

absl::Status ApplyRestored(const Restored& r, modes::LearningMode& mode, Trainer& trainer) {
  for (const auto& [name, t] : r.mode_state) {
    if (name == kCpuRng) {
      at::Generator gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(t);
    }
  }
  if (auto s = mode.LoadState(r.mode_state); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("checkpoint ", r.id, ": ", s.message()));
  }
  trainer.Restore(r.position);
  bool counted = false;
  for (const auto& [name, t] : r.mode_state) {
    absl::Status s;
    if (name == kPrivacyRdp) {
      s = trainer.RestorePrivacy(t);
      counted = true;
    } else if (name == kPrivacySecret) {
      s = trainer.RestorePrivacySecret(t);
    }
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat("checkpoint ", r.id, ": ", s.message()));
  }
  // A model partly trained without DP accounting has no finite epsilon: never report one.
  if (trainer.privacy() != nullptr && !counted && r.position.global_step > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", r.id, " was trained for ", r.position.global_step,
        " steps without privacy accounting (no ", kPrivacyRdp, "): a DP run cannot continue it with a finite epsilon; "
        "start fresh (--resume none) or from its weights knowing they are not private"));
  }
  return absl::OkStatus();
}

std::string Checkpointer::RunId(const Job& job, RunKind kind) {
  return kind == RunKind::kCoordinator ? job.name + ".coordinator" : job.name;
}

absl::StatusOr<std::unique_ptr<Checkpointer>> Checkpointer::Open(const Job& job, RunKind kind,
                                                                 const StoreOpener& opener) {
  auto store = opener(CheckpointDir(job), /*read_only=*/false);
  if (!store.ok()) return store.status();
  return std::unique_ptr<Checkpointer>(new Checkpointer(job, kind, *std::move(store)));
}

Checkpointer::Checkpointer(const Job& job, RunKind kind, std::unique_ptr<storage::CheckpointStore> store)
    : job_(job), kind_(kind), job_hash_(JobHash(job)), store_(std::move(store)) {}

bool Checkpointer::DueAfterStep(int64_t global_step) const {
  return job_.checkpoint.every_steps > 0 && global_step % job_.checkpoint.every_steps == 0;
}

bool Checkpointer::DueAfterRound(int64_t rounds_done) const {
  return job_.checkpoint.every_rounds > 0 && rounds_done % job_.checkpoint.every_rounds == 0;
}

absl::StatusOr<std::string> Checkpointer::Save(storage::CheckpointInfo info, const storage::NamedTensors& tensors) {
  info.mode = kind_ == RunKind::kCoordinator ? kCoordinatorMode : job_.mode;
  info.job_hash = job_hash_;
  const std::string run_id = RunId(job_, kind_);
  auto id = store_->Save(run_id, info, tensors);
  if (!id.ok()) {
    return absl::Status(id.status().code(), absl::StrCat("saving checkpoint of run '", run_id, "' (round ", info.round,
                                                         ", step ", info.step, "): ", id.status().message()));
  }
  last_saved_step_ = info.step;
  auto pruned = store_->Prune(run_id, {job_.checkpoint.keep_last, job_.checkpoint.keep_every});
  if (!pruned.ok()) return pruned.status();
  return id;
}

absl::StatusOr<std::string> Checkpointer::SaveTraining(modes::LearningMode& mode, const TrainingPosition& position,
                                                       int64_t round, const Metrics& metrics,
                                                       const storage::NamedTensors& extra) {
  storage::NamedTensors tensors = mode.State();
  for (const auto& c : constants_) tensors.push_back(c);
  for (const auto& e : extra) tensors.push_back(e);
  tensors.emplace_back(kPosition, at::tensor({position.global_step, position.epoch, position.step_in_epoch, round},
                                             at::kLong));
  {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    tensors.emplace_back(kCpuRng, gen.get_state());
  }
  storage::CheckpointInfo info;
  info.round = round;
  info.step = position.global_step;
  info.epoch = position.epoch;
  info.step_in_epoch = position.step_in_epoch;
  for (const auto& [k, v] : metrics) info.metrics[k] = v;
  return Save(std::move(info), tensors);
}

}  // namespace allround::runtime
