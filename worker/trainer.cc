#include "worker/trainer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "algorithms/modes/semi_supervised.h"
#include "comm/reducer.h"
#include "common/random.h"
#include "worker/data/augment.h"
#include "worker/data/fashion_mnist.h"
#include "worker/data/sampler.h"
#include "worker/data/text_corpus.h"

namespace allround::worker {

// The image modes undo the standardization the data is given with.
static_assert(modes::kImageMean == data::kFashionMnistMean && modes::kImageStd == data::kFashionMnistStd);

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string Duration(double s) {
  const int64_t t = static_cast<int64_t>(std::llround(std::max(0.0, s)));
  if (t >= 3600) return absl::StrFormat("%dh%02dm", t / 3600, (t / 60) % 60);
  if (t >= 60) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  return absl::StrFormat("%ds", t);
}

// How the job's images reach the models: (x / 255 - mean) / std. data.scale unit keeps them in
// [0, 1], as torchvision's ToTensor gives them; standardize uses Fashion-MNIST's mean and std.
struct PixelScale {
  double mean, std;
};
PixelScale PixelScaleOf(const DataSpec& spec) {
  if (spec.scale == "unit") return {0.0, 1.0};
  return {data::kFashionMnistMean, data::kFashionMnistStd};
}

at::Tensor Limit(const at::Tensor& t, int64_t limit) {
  return limit > 0 && limit < t.size(0) ? t.narrow(0, 0, limit).contiguous() : t;
}

bool Semi(const TrainingData& data) { return data.labeled_inputs.defined(); }

// The batch the epoch's sampler order is cut into: the unlabelled mu x B in a semi-supervised job.
int64_t MainBatch(const Job& job, const TrainingData& data) {
  return Semi(data) ? job.train.batch_size * job.semi.mu : job.train.batch_size;
}

int64_t StepsPerEpoch(const Job& job, const TrainingData& data, const comm::Communicator& comm) {
  data::DistributedSampler sampler(data.train_targets.size(0), comm.rank(), comm.size(), job.seed, true,
                                   data::DistributedSampler::Mode::kEven);
  const int64_t batch = MainBatch(job, data);
  return (sampler.ShardSize() + batch - 1) / batch;
}

}  // namespace

at::Tensor LabeledSubset(const at::Tensor& labels, int64_t per_class, int64_t classes, uint64_t seed) {
  const at::Tensor y = labels.contiguous();
  const int64_t* p = y.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> by_class(classes);
  for (int64_t i = 0; i < y.numel(); ++i) by_class[p[i]].push_back(i);
  std::vector<int64_t> keep;
  for (int64_t c = 0; c < classes; ++c) {
    Rng rng(DeriveSeed(seed, "labeled-subset", static_cast<uint64_t>(c)));
    rng.Shuffle(by_class[c]);
    const int64_t n = std::min<int64_t>(per_class, static_cast<int64_t>(by_class[c].size()));
    keep.insert(keep.end(), by_class[c].begin(), by_class[c].begin() + n);
  }
  std::sort(keep.begin(), keep.end());
  return at::tensor(keep, at::kLong);
}

namespace {

int64_t TotalSteps(const Job& job, int64_t steps_per_epoch) {
  const int64_t all = steps_per_epoch * job.train.epochs;
  return job.train.max_steps > 0 ? std::min(all, job.train.max_steps) : all;
}

}  // namespace

namespace {

// A text corpus: documents split into training and held-out ones (seeded), a BPE tokenizer trained
// on the training documents, rows of token ids; targets are unused (zeros).
absl::StatusOr<TrainingData> LoadTextData(const Job& job) {
  auto docs = data::ReadCorpus(job.data.dir);
  if (!docs.ok()) return absl::Status(docs.status().code(), absl::StrCat("job key 'data.dir': ", docs.status().message()));
  Rng rng(DeriveSeed(job.seed, "text-split"));
  rng.Shuffle(*docs);
  const auto held = static_cast<size_t>(static_cast<double>(docs->size()) * job.text.test_fraction);
  const std::vector<std::string> test(docs->begin(), docs->begin() + static_cast<std::ptrdiff_t>(held));
  const std::vector<std::string> train(docs->begin() + static_cast<std::ptrdiff_t>(held), docs->end());
  std::string corpus;
  for (const auto& d : train) corpus += d;
  auto tokenizer = data::BpeTokenizer::Train(corpus, static_cast<int32_t>(job.text.vocab_size));
  if (!tokenizer.ok()) return tokenizer.status();
  TrainingData d;
  d.train_inputs = Limit(data::EncodeDocuments(*tokenizer, train, job.text.seq_len), job.data.train_limit);
  d.test_inputs = Limit(data::EncodeDocuments(*tokenizer, test, job.text.seq_len), job.data.test_limit);
  if (d.test_inputs.size(0) == 0 || d.train_inputs.size(0) == 0) {
    // Evaluating on nothing would report a loss and perplexity of 0.
    return absl::InvalidArgumentError(absl::StrCat(
        "job key 'data.dir': text corpus '", job.data.dir, "' has ", docs->size(), " documents; holding out ",
        held, " (text.test_fraction ", job.text.test_fraction, ") leaves ", d.train_inputs.size(0),
        " training and ", d.test_inputs.size(0), " evaluation rows: give more text or another text.test_fraction"));
  }
  d.train_targets = at::zeros({d.train_inputs.size(0)}, at::kLong);
  d.test_targets = at::zeros({d.test_inputs.size(0)}, at::kLong);
  // Rows of seq_len ids; num_classes is the vocabulary the model predicts over.
  d.info = {1, job.text.seq_len, 1, tokenizer->vocab_size()};
  d.tokenizer = tokenizer->Serialize();
  return d;
}

}  // namespace

absl::StatusOr<TrainingData> LoadTrainingData(const Job& job) {
  if (job.data.name == "text") return LoadTextData(job);
  if (job.data.name != "fashion_mnist") {
    return absl::InvalidArgumentError(absl::StrCat("job key 'data.name': unknown dataset '", job.data.name, "'"));
  }
  auto raw = data::LoadFashionMnist(job.data.dir);
  if (!raw.ok()) return raw.status();
  TrainingData d;
  const PixelScale scale = PixelScaleOf(job.data);
  const auto norm = [scale](const at::Tensor& images) { return data::NormalizeImages(images, scale.mean, scale.std); };
  d.train_inputs = norm(Limit(raw->train.images, job.data.train_limit));
  d.train_targets = Limit(raw->train.labels, job.data.train_limit);
  d.test_inputs = norm(Limit(raw->test.images, job.data.test_limit));
  d.test_targets = Limit(raw->test.labels, job.data.test_limit);
  d.info = {1, d.train_inputs.size(2), d.train_inputs.size(3), data::kFashionMnistClasses};
  if (job.data.labels_per_class > 0) {
    const at::Tensor keep = LabeledSubset(d.train_targets, job.data.labels_per_class, d.info.num_classes, job.seed);
    at::Tensor x = d.train_inputs.index_select(0, keep), y = d.train_targets.index_select(0, keep);
    if (modes::IsSemiSupervised(job.mode)) {
      d.labeled_inputs = x;
      d.labeled_targets = y;
    } else {
      d.train_inputs = x;
      d.train_targets = y;
    }
  } else if (modes::IsSemiSupervised(job.mode)) {
    return absl::InvalidArgumentError(absl::StrCat("job key 'data.labels_per_class': mode '", job.mode,
                                                   "' needs a labelled subset (give N > 0 per class)"));
  }
  return d;
}

Trainer::Trainer(const Job& job, TrainingData data, modes::LearningMode* mode, comm::Communicator* comm,
                 comm::GradientSync* sync)
    : job_(job),
      data_(std::move(data)),
      mode_(mode),
      comm_(comm),
      sync_(sync),
      steps_per_epoch_(StepsPerEpoch(job, data_, *comm)),
      total_steps_(TotalSteps(job, steps_per_epoch_)),
      schedule_(job.schedule, job.optimizer.lr, steps_per_epoch_, total_steps_) {
  // The whole dataset moves to the device once (Fashion-MNIST: ~220 MB as float32).
  const at::Device device = comm->device();
  if (device != data_.train_inputs.device()) {
    for (at::Tensor* t : {&data_.train_inputs, &data_.train_targets, &data_.test_inputs, &data_.test_targets,
                          &data_.labeled_inputs, &data_.labeled_targets}) {
      if (t->defined()) *t = t->to(device);
    }
  }
}

absl::StatusOr<coordinator::RoundResult> Trainer::Execute(const coordinator::RoundAssignment& round) {
  const double start = Now();
  data::DistributedSampler sampler(data_.train_targets.size(0), comm_->rank(), comm_->size(), job_.seed,
                                   /*shuffle=*/true, data::DistributedSampler::Mode::kEven);
  const std::vector<int64_t> order = sampler.Indices(round.epoch);
  const at::Tensor index = at::from_blob(const_cast<int64_t*>(order.data()), {static_cast<int64_t>(order.size())},
                                         at::kLong).to(data_.train_inputs.device());
  const PixelScale scale = PixelScaleOf(job_.data);
  const double fill = -scale.mean / scale.std;  // a black pixel, in the inputs' scale
  // A resumed epoch skips the steps it already took; the order itself depends on the epoch only.
  const int64_t first = position_.epoch == round.epoch ? position_.step_in_epoch : 0;
  position_.epoch = round.epoch;
  position_.step_in_epoch = first;

  coordinator::RoundResult result;
  double loss_sum = 0.0;
  last_progress_ = Now();
  for (int64_t s = first; s < steps_per_epoch_; ++s) {
    if (round.step_budget > 0 && result.steps >= round.step_budget) break;
    const int64_t main_batch = MainBatch(job_, data_);
    const int64_t begin = s * main_batch;
    const int64_t len = std::min<int64_t>(main_batch, static_cast<int64_t>(order.size()) - begin);
    const at::Tensor idx = index.narrow(0, begin, len);
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
      batch.inputs = data::Augment(batch.inputs, job_.data.augment, augment_rng, 2, fill);
    }
    const double local = total_steps_ > 0 ? static_cast<double>(position_.global_step) / static_cast<double>(total_steps_) : 0;
    batch.progress = progress_begin_ + (progress_end_ - progress_begin_) * local;
    if (batch.seed == 0) {
      batch.seed = DeriveSeed(job_.seed, "step", static_cast<uint64_t>(round.epoch), where);
    }
    if (auto st = SyncBuffers(*comm_, *mode_); !st.ok()) return st;
    auto step = mode_->TrainStep(batch, schedule_.At(position_.global_step), sync_);
    if (!step.ok()) {
      return absl::Status(step.status().code(), absl::StrCat("epoch ", round.epoch + 1, " step ", s + 1, ": ",
                                                             step.status().message()));
    }
    ++position_.global_step;
    ++position_.step_in_epoch;
    ++result.steps;
    result.examples += step->examples * comm_->size();
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

void Trainer::MaybePrintProgress(const coordinator::RoundAssignment& round, int64_t step_in_epoch, double loss,
                                 double elapsed, int64_t examples) {
  if (comm_->rank() != 0 || job_.train.progress_every_s <= 0) return;
  const double now = Now();
  if (now - last_progress_ < job_.train.progress_every_s) return;
  last_progress_ = now;
  const double rate = elapsed > 0 ? static_cast<double>(examples) / elapsed : 0.0;
  const double step_s = elapsed / static_cast<double>(std::max<int64_t>(1, step_in_epoch));
  const int64_t total = TotalSteps(job_, steps_per_epoch_);
  const double eta = step_s * static_cast<double>(std::max<int64_t>(0, total - position_.global_step));
  std::fprintf(stderr, "epoch %lld/%lld step %lld/%lld loss %.4f lr %.3g %.0f samples/s ETA %s\n",
               static_cast<long long>(round.epoch + 1), static_cast<long long>(job_.train.epochs),
               static_cast<long long>(step_in_epoch), static_cast<long long>(steps_per_epoch_), loss,
               schedule_.At(position_.global_step), rate, Duration(eta).c_str());
  std::fflush(stderr);
}

absl::Status SyncBuffers(comm::Communicator& comm, modes::LearningMode& mode) {
  if (comm.size() == 1) return absl::OkStatus();
  const std::vector<at::Tensor> buffers = mode.Buffers();
  if (buffers.empty()) return absl::OkStatus();
  return comm::BroadcastFromRoot(comm, buffers);
}

absl::StatusOr<coordinator::Metrics> Trainer::Evaluate() {
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
  coordinator::Metrics out{{"test_loss", examples > 0 ? scalars[0].item<double>() / examples : 0.0}};
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

}  // namespace allround::worker
