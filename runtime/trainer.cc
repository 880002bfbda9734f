#include "runtime/trainer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/timeline.h"
#include "common/worker_metrics.h"
#include "algorithms/modes/registry.h"
#include "comm/reducer.h"
#include "common/log.h"
#include "common/random.h"
#include "algorithms/augment/image_ops.h"
#include "data/sampler.h"

namespace allround::runtime {

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool Semi(const data::TrainingData& data) { return data.labeled_inputs.defined(); }

// The batch the epoch's sampler order is cut into: the unlabelled mu x B in a semi-supervised job.
int64_t MainBatch(const Job& job, const data::TrainingData& data) {
  return Semi(data) ? job.train.batch_size * JobInteger(job, "semi.mu") : job.train.batch_size;
}

int64_t StepsPerEpoch(const Job& job, const data::TrainingData& data, const comm::Communicator& comm) {
  data::DistributedSampler sampler(data.train_targets.size(0), comm.rank(), comm.size(), job.seed, true,
                                   data::DistributedSampler::Mode::kEven);
  const int64_t batch = MainBatch(job, data);
  return (sampler.ShardSize() + batch - 1) / batch;
}

}  // namespace

namespace {

int64_t TotalSteps(const Job& job, int64_t steps_per_epoch) {
  const int64_t all = steps_per_epoch * job.train.epochs;
  return job.train.max_steps > 0 ? std::min(all, job.train.max_steps) : all;
}

}  // namespace

Trainer::Trainer(const Job& job, data::TrainingData data, modes::LearningMode* mode, comm::Communicator* comm,
                 comm::GradientSync* sync)
    : job_(job),
      data_(std::move(data)),
      mode_(mode),
      comm_(comm),
      sync_(sync),
      steps_per_epoch_(StepsPerEpoch(job, data_, *comm)),
      total_steps_(TotalSteps(job, steps_per_epoch_)),
      schedule_(job.schedule, job.optimizer.lr, steps_per_epoch_, total_steps_) {
  // Example-level DP: the sampling rate, the noise (computed for a target epsilon when the job
  // gives none) and one step's RDP, before any step is taken.
  const optim::DpSpec dp = optim::DpSpecFromJob(job);
  if (dp.example_level()) {
    Privacy p;
    p.spec = dp;
    const int64_t n = data_.train_targets.size(0);
    p.sampling_rate = n > 0 ? std::min(1.0, static_cast<double>(job.train.batch_size) * comm->size() / n) : 1.0;
    p.noise_multiplier = dp.noise_multiplier;
    if (p.noise_multiplier <= 0) {
      auto z = privacy::NoiseForEpsilon(p.sampling_rate, total_steps_, dp.target_epsilon, dp.delta);
      if (z.ok()) {
        p.noise_multiplier = *z;
        if (comm->rank() == 0) {
          log::Info("privacy: noise multiplier {:.4f} spends epsilon {} (delta {:g}) over {} steps at rate {:.5f}",
                    *z, dp.target_epsilon, dp.delta, total_steps_, p.sampling_rate);
        }
      } else {
        privacy_error_ = absl::InvalidArgumentError(
            absl::StrCat("job key 'privacy.target_epsilon': ", z.status().message()));
      }
    }
    if (dp.noise_seed == "job") {
      p.secret = DeriveSeed(job.seed, "dp-secret");
    } else {
      // Rank 0's OS entropy, the same on every rank of the group.
      std::random_device entropy;
      const uint64_t drawn = (static_cast<uint64_t>(entropy()) << 32) | entropy();
      at::Tensor t = at::tensor({static_cast<int64_t>(drawn)}, at::kLong).to(comm->device());
      if (comm->size() > 1) {
        if (auto s = comm->Broadcast(t, 0)->Wait(comm->timeout()); !s.ok()) privacy_error_ = s;
      }
      p.secret = static_cast<uint64_t>(t.cpu().item<int64_t>());
    }
    accountant_.emplace();
    privacy::RdpAccountant one;
    one.Compose(p.sampling_rate, p.noise_multiplier, 1);
    step_rdp_ = one.rdp();
    p.spent = accountant_->Spent(dp.delta);
    privacy_ = p;
  }
  // The whole dataset moves to the device once (Fashion-MNIST: ~220 MB as float32).
  const at::Device device = comm->device();
  if (device != data_.train_inputs.device()) {
    for (at::Tensor* t : {&data_.train_inputs, &data_.train_targets, &data_.test_inputs, &data_.test_targets,
                          &data_.labeled_inputs, &data_.labeled_targets}) {
      if (t->defined()) *t = t->to(device);
    }
  }
}

absl::StatusOr<runtime::RoundResult> Trainer::Execute(const runtime::RoundAssignment& round) {
  if (!privacy_error_.ok()) return privacy_error_;
  const double start = Now();
  data::DistributedSampler sampler(data_.train_targets.size(0), comm_->rank(), comm_->size(), job_.seed,
                                   /*shuffle=*/true, data::DistributedSampler::Mode::kEven);
  const std::vector<int64_t> order = sampler.Indices(round.epoch);
  const at::Tensor index = at::from_blob(const_cast<int64_t*>(order.data()), {static_cast<int64_t>(order.size())},
                                         at::kLong).to(data_.train_inputs.device());
  const data::PixelScale scale = data::PixelScaleOf(job_.data);
  const double fill = -scale.mean / scale.std;  // a black pixel, in the inputs' scale
  // A resumed epoch skips the steps it already took; the order itself depends on the epoch only.
  const int64_t first = position_.epoch == round.epoch ? position_.step_in_epoch : 0;
  position_.epoch = round.epoch;
  position_.step_in_epoch = first;

  runtime::RoundResult result;
  double loss_sum = 0.0;
  last_progress_ = Now();
  for (int64_t s = first; s < steps_per_epoch_; ++s) {
    if (round.step_budget > 0 && result.steps >= round.step_budget) break;
    const int64_t main_batch = MainBatch(job_, data_);
    const int64_t begin = s * main_batch;
    const int64_t len = std::min<int64_t>(main_batch, static_cast<int64_t>(order.size()) - begin);
    at::Tensor idx = privacy_ ? at::Tensor() : index.narrow(0, begin, len);
    int64_t group_examples = -1;  // a Poisson-sampled step's whole group batch
    optim::DpStepContext dp;
    if (privacy_) {
      if (SpendsTooMuch()) {
        result.final = true;
        break;
      }
      // A Poisson sample of the whole group's data, the same draw on every rank; rank r takes every
      // W-th chosen example, so the group's batch does not depend on the number of ranks.
      const int64_t n = data_.train_targets.size(0);
      auto gen = at::detail::createCPUGenerator(DeriveSeed(privacy_->secret, "poisson",
                                                           static_cast<uint64_t>(round.epoch), static_cast<uint64_t>(s)));
      const at::Tensor chosen = (at::rand({n}, gen, at::kDouble) < privacy_->sampling_rate).nonzero().reshape({-1});
      idx = chosen.slice(0, comm_->rank(), chosen.size(0), comm_->size()).to(data_.train_inputs.device());
      dp.noise_seed = DeriveSeed(privacy_->secret, "dp-noise", static_cast<uint64_t>(round.epoch),
                                 static_cast<uint64_t>(s));
      group_examples = chosen.size(0);
      dp.group_size = comm_->size();
      dp.expected_batch = privacy_->sampling_rate * static_cast<double>(n);
      dp.noise_multiplier = privacy_->noise_multiplier;
      dp.clip = privacy_->spec.clip;
    }
    const uint64_t where = (static_cast<uint64_t>(comm_->rank()) << 32) | static_cast<uint64_t>(s);
    modes::Batch batch;
    if (Semi(data_)) {
      // The unlabelled images of this step, and B labelled ones drawn with replacement.
      batch.unlabeled = data_.train_inputs.index_select(0, idx);
      Rng pick(DeriveSeed(job_.seed, "labeled-batch", static_cast<uint64_t>(round.epoch), where));
      std::vector<int64_t> labeled(job_.train.batch_size);
      for (auto& i : labeled) i = static_cast<int64_t>(pick.UniformInt(data_.labeled_targets.size(0)));
      const at::Tensor lidx = at::tensor(labeled, at::kLong).to(data_.labeled_inputs.device());
      batch.inputs = data_.labeled_inputs.index_select(0, lidx);
      batch.targets = data_.labeled_targets.index_select(0, lidx);
      batch.seed = DeriveSeed(job_.seed, "views", static_cast<uint64_t>(round.epoch), where);
    } else {
      batch.inputs = data_.train_inputs.index_select(0, idx);
      batch.targets = data_.train_targets.index_select(0, idx);
    }
    // Augmentation draws from (seed, epoch, rank, step): no generator state to carry across a resume.
    // (Seeding a generator per step is not free; without augmentation there is none to seed.)
    if (job_.data.augment != "none") {
      Rng augment_rng(DeriveSeed(job_.seed, "augment", static_cast<uint64_t>(round.epoch),
                                 (static_cast<uint64_t>(comm_->rank()) << 32) | static_cast<uint64_t>(s)));
      batch.inputs = augment::AugmentBatch(batch.inputs, job_.data.augment, augment_rng, 2, fill);
    }
    const double local = total_steps_ > 0 ? static_cast<double>(position_.global_step) / static_cast<double>(total_steps_) : 0;
    batch.progress = progress_begin_ + (progress_end_ - progress_begin_) * local;
    if (batch.seed == 0) {
      batch.seed = DeriveSeed(job_.seed, "step", static_cast<uint64_t>(round.epoch), where);
    }
    if (auto st = SyncBuffers(*comm_, *mode_); !st.ok()) return st;
    timeline::MarkStepStart();
    worker_metrics::Sink* metrics = worker_metrics::Active();
    const double step_start = metrics != nullptr ? Now() : 0;
    if (privacy_) batch.dp = &dp;
    auto step = mode_->TrainStep(batch, schedule_.At(position_.global_step), sync_);
    if (!step.ok()) {
      return absl::Status(step.status().code(), absl::StrCat("epoch ", round.epoch + 1, " step ", s + 1, ": ",
                                                             step.status().message()));
    }
    ++position_.global_step;
    ++position_.step_in_epoch;
    if (privacy_) CountPrivateStep();
    ++result.steps;
    const int64_t examples = group_examples >= 0 ? group_examples : step->examples * comm_->size();
    result.examples += examples;
    if (metrics != nullptr) metrics->Step(Now() - step_start, examples);
    loss_sum += step->loss;
    MaybePrintProgress(round, s + 1, loss_sum / static_cast<double>(result.steps), Now() - start, result.examples);
    if (step_hook_) {
      if (auto st = step_hook_(position_); !st.ok()) return st;
    }
  }
  if (position_.step_in_epoch >= steps_per_epoch_) {
    position_.epoch = round.epoch + 1;
    position_.step_in_epoch = 0;
  }
  result.seconds = Now() - start;
  result.mean_loss = result.steps > 0 ? loss_sum / static_cast<double>(result.steps) : 0.0;
  return result;
}

void Trainer::MaybePrintProgress(const runtime::RoundAssignment& round, int64_t step_in_epoch, double loss,
                                 double elapsed, int64_t examples) {
  if (comm_->rank() != 0 || job_.train.progress_every_s <= 0) return;
  const double now = Now();
  if (now - last_progress_ < job_.train.progress_every_s) return;
  last_progress_ = now;
  const double rate = elapsed > 0 ? static_cast<double>(examples) / elapsed : 0.0;
  const double step_s = elapsed / static_cast<double>(std::max<int64_t>(1, step_in_epoch));
  const int64_t total = TotalSteps(job_, steps_per_epoch_);
  const double eta = step_s * static_cast<double>(std::max<int64_t>(0, total - position_.global_step));
  log::Info("epoch {}/{} step {}/{} loss {:.4f} lr {:.3g} {:.0f} samples/s ETA {}", round.epoch + 1,
            job_.train.epochs, step_in_epoch, steps_per_epoch_, loss, schedule_.At(position_.global_step), rate,
            log::ShortDuration(eta));
  std::fflush(stderr);
}

bool Trainer::SpendsTooMuch() {
  if (privacy_->budget_spent) return true;
  const optim::DpSpec& spec = privacy_->spec;
  if (spec.target_epsilon <= 0) return false;
  std::vector<double> next = accountant_->rdp();
  for (size_t i = 0; i < next.size(); ++i) next[i] += step_rdp_[i];
  const privacy::PrivacySpent after = privacy::EpsilonFromRdp(accountant_->orders(), next, spec.delta);
  // A hair of slack: the noise for a target is found for all steps at once, the spend adds up step by step.
  if (after.epsilon <= spec.target_epsilon * (1 + 1e-9)) return false;
  privacy_->budget_spent = true;
  if (comm_->rank() == 0) {
    log::Info("privacy: budget spent, stopping after step {}: epsilon {:.4f} so far (delta {:g}); one more step would "
              "make it {:.4f}, past privacy.target_epsilon {}",
              position_.global_step, privacy_->spent.epsilon, spec.delta, after.epsilon, spec.target_epsilon);
  }
  return true;
}

void Trainer::CountPrivateStep() {
  std::vector<double> rdp = accountant_->rdp();
  for (size_t i = 0; i < rdp.size(); ++i) rdp[i] += step_rdp_[i];
  (void)accountant_->SetRdp(std::move(rdp));
  privacy_->spent = accountant_->Spent(privacy_->spec.delta);
}

at::Tensor Trainer::PrivacyState() const {
  if (!accountant_) return at::Tensor();
  return at::tensor(accountant_->rdp(), at::kDouble);
}

at::Tensor Trainer::PrivacySecret() const {
  if (!privacy_) return at::Tensor();
  return at::tensor({static_cast<int64_t>(privacy_->secret)}, at::kLong);
}

absl::Status Trainer::RestorePrivacySecret(const at::Tensor& secret) {
  if (!privacy_) return absl::OkStatus();
  if (secret.numel() != 1 || secret.scalar_type() != at::kLong) {
    return absl::InvalidArgumentError("privacy/secret: not one int64");
  }
  privacy_->secret = static_cast<uint64_t>(secret.cpu().item<int64_t>());
  return absl::OkStatus();
}

absl::Status Trainer::RestorePrivacy(const at::Tensor& rdp) {
  if (!accountant_) return absl::OkStatus();
  const at::Tensor t = rdp.to(at::kDouble).cpu().contiguous();
  if (t.dim() != 1) return absl::InvalidArgumentError("privacy/rdp: not a vector");
  std::vector<double> values(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  if (auto s = accountant_->SetRdp(std::move(values)); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("privacy/rdp: ", s.message()));
  }
  privacy_->spent = accountant_->Spent(privacy_->spec.delta);
  privacy_->budget_spent = false;
  return absl::OkStatus();
}

absl::Status SyncBuffers(comm::Communicator& comm, modes::LearningMode& mode) {
  if (comm.size() == 1) return absl::OkStatus();
  const std::vector<at::Tensor> buffers = mode.Buffers();
  if (buffers.empty()) return absl::OkStatus();
  return comm::BroadcastFromRoot(comm, buffers);
}

absl::StatusOr<runtime::Metrics> Trainer::Evaluate() {
  if (auto s = SyncBuffers(*comm_, *mode_); !s.ok()) return s;
  // Contiguous shards of the test set; shard sizes differ by at most one and cover it exactly.
  const int64_t n = data_.test_targets.size(0);
  const int64_t w = comm_->size(), r = comm_->rank();
  const int64_t begin = r * (n / w) + std::min(r, n % w);
  const int64_t len = n / w + (r < n % w ? 1 : 0);
  auto sums = mode_->Evaluate(data_.test_inputs.narrow(0, begin, len), data_.test_targets.narrow(0, begin, len),
                              job_.train.eval_batch_size);
  if (!sums.ok()) return sums.status();
  at::Tensor scalars = at::tensor({sums->loss_sum, static_cast<double>(sums->examples)}, at::kDouble).to(comm_->device());
  if (auto s = comm_->AllReduce(scalars, comm::ReduceOp::kSum)->Wait(comm_->timeout()); !s.ok()) return s;
  const double examples = scalars[1].item<double>();
  runtime::Metrics out{{"test_loss", examples > 0 ? scalars[0].item<double>() / examples : 0.0}};
  // Classification figures for the modes that classify (a generative mode leaves confusion empty).
  if (sums->confusion.defined()) {
    sums->confusion = sums->confusion.to(comm_->device());
    if (auto s = comm_->AllReduce(sums->confusion, comm::ReduceOp::kSum)->Wait(comm_->timeout()); !s.ok()) return s;
    last_report_ = metrics::Report(metrics::ToConfusion(sums->confusion));
    out.emplace_back("test_accuracy", last_report_.accuracy);
    out.emplace_back("macro_precision", last_report_.macro_precision);
    out.emplace_back("macro_recall", last_report_.macro_recall);
    out.emplace_back("macro_f1", last_report_.macro_f1);
  }
  // Monitors: means over each rank's shard, weighted by the shards' sizes (every rank reports the
  // same keys), so the figure is the whole test set's whatever the number of ranks.
  for (const auto& [key, value] : sums->monitors) {
    at::Tensor v = at::tensor({value * static_cast<double>(sums->examples)}, at::kDouble).to(comm_->device());
    if (auto s = comm_->AllReduce(v, comm::ReduceOp::kSum)->Wait(comm_->timeout()); !s.ok()) return s;
    out.emplace_back(key, examples > 0 ? v.item<double>() / examples : 0.0);
  }
  // Further evaluators' accuracies (DINO's linear probe): correct counts summed over ranks.
  for (const auto& [key, correct] : sums->extra_correct) {
    at::Tensor v = at::tensor({static_cast<double>(correct)}, at::kDouble).to(comm_->device());
    if (auto s = comm_->AllReduce(v, comm::ReduceOp::kSum)->Wait(comm_->timeout()); !s.ok()) return s;
    out.emplace_back(key, examples > 0 ? v.item<double>() / examples : 0.0);
  }
  return out;
}

}  // namespace allround::runtime
