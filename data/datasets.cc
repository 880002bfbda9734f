#include "data/datasets.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "algorithms/modes/registry.h"
#include "common/random.h"
#include "data/fashion_mnist.h"
#include "data/text_corpus.h"

namespace allround::data {

// The image modes undo the standardization the data is given with.
static_assert(modes::kImageMean == kFashionMnistMean && modes::kImageStd == kFashionMnistStd);

namespace {

at::Tensor Limit(const at::Tensor& t, int64_t limit) {
  return limit > 0 && limit < t.size(0) ? t.narrow(0, 0, limit).contiguous() : t;
}

// A text corpus: documents split into training and held-out ones (seeded), a BPE tokenizer trained
// on the training documents, rows of token ids; targets are unused (zeros).
absl::StatusOr<TrainingData> LoadTextData(const Job& job) {
  auto docs = ReadCorpus(job.data.dir);
  if (!docs.ok()) return absl::Status(docs.status().code(), absl::StrCat("job key 'data.dir': ", docs.status().message()));
  Rng rng(DeriveSeed(job.seed, "text-split"));
  rng.Shuffle(*docs);
  const auto held = static_cast<size_t>(static_cast<double>(docs->size()) * job.text.test_fraction);
  const std::vector<std::string> test(docs->begin(), docs->begin() + static_cast<std::ptrdiff_t>(held));
  const std::vector<std::string> train(docs->begin() + static_cast<std::ptrdiff_t>(held), docs->end());
  std::string corpus;
  for (const auto& d : train) corpus += d;
  auto tokenizer = BpeTokenizer::Train(corpus, static_cast<int32_t>(job.text.vocab_size));
  if (!tokenizer.ok()) return tokenizer.status();
  TrainingData d;
  d.train_inputs = Limit(EncodeDocuments(*tokenizer, train, job.text.seq_len), job.data.train_limit);
  d.test_inputs = Limit(EncodeDocuments(*tokenizer, test, job.text.seq_len), job.data.test_limit);
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

PixelScale PixelScaleOf(const DataSpec& spec) {
  if (spec.scale == "unit") return {0.0, 1.0};
  return {kFashionMnistMean, kFashionMnistStd};
}

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

absl::StatusOr<TrainingData> LoadTrainingData(const Job& job, LabelSplit split) {
  if (job.data.name == "text") return LoadTextData(job);
  if (job.data.name != "fashion_mnist") {
    return absl::InvalidArgumentError(absl::StrCat("job key 'data.name': unknown dataset '", job.data.name, "'"));
  }
  auto raw = LoadFashionMnist(job.data.dir);
  if (!raw.ok()) return raw.status();
  TrainingData d;
  const PixelScale scale = PixelScaleOf(job.data);
  const auto norm = [scale](const at::Tensor& images) { return NormalizeImages(images, scale.mean, scale.std); };
  d.train_inputs = norm(Limit(raw->train.images, job.data.train_limit));
  d.train_targets = Limit(raw->train.labels, job.data.train_limit);
  d.test_inputs = norm(Limit(raw->test.images, job.data.test_limit));
  d.test_targets = Limit(raw->test.labels, job.data.test_limit);
  d.info = {1, d.train_inputs.size(2), d.train_inputs.size(3), kFashionMnistClasses};
  if (split == LabelSplit::kWhole) return d;
  if (job.data.labels_per_class > 0) {
    const at::Tensor keep = LabeledSubset(d.train_targets, job.data.labels_per_class, d.info.num_classes, job.seed);
    at::Tensor x = d.train_inputs.index_select(0, keep), y = d.train_targets.index_select(0, keep);
    if (modes::NeedsOf(job.mode).unlabeled) {
      d.labeled_inputs = x;
      d.labeled_targets = y;
    } else {
      d.train_inputs = x;
      d.train_targets = y;
    }
  } else if (modes::NeedsOf(job.mode).unlabeled) {
    return absl::InvalidArgumentError(absl::StrCat("job key 'data.labels_per_class': mode '", job.mode,
                                                   "' needs a labelled subset (give N > 0 per class)"));
  }
  return d;
}

}  // namespace allround::data
