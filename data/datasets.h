#ifndef ALLROUND_DATA_DATASETS_H_
#define ALLROUND_DATA_DATASETS_H_

// A job's examples in memory, as the models take them: the dataset the job names (data.name,
// data.dir) read, limited, normalized and, for a semi-supervised mode, split into a labelled subset
// and the unlabelled pool. The cluster run, the federated coordinator (central evaluation) and the
// sites all load through here, so they see the same examples in the same order.
//
// Pure functions of the job (the seed fixes every random choice); thread-compatible.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "algorithms/modes/supervised.h"
#include "common/job.h"

namespace allround::data {

// Training and test examples in memory, normalized, as the model takes them.
struct TrainingData {
  at::Tensor train_inputs, train_targets;  // float [N, C, H, W], int64 [N]
  at::Tensor test_inputs, test_targets;
  modes::InputInfo info;
  // Semi-supervised modes: the labelled images. Then train_inputs is the unlabelled pool that
  // epochs run over (mu x batch per step; its labels are never given to the mode), and each
  // step also draws a batch of labelled images, seeded by (seed, epoch, step, rank).
  at::Tensor labeled_inputs, labeled_targets;
  // Text (data.name text): the tokenizer the rows were encoded with, serialized (BpeTokenizer).
  std::string tokenizer;
};

// How the job's images reach the models: (x / 255 - mean) / std. data.scale unit keeps them in
// [0, 1], as torchvision's ToTensor gives them; standardize uses Fashion-MNIST's mean and std.
struct PixelScale {
  double mean, std;
};
PixelScale PixelScaleOf(const DataSpec& spec);

// The indices (sorted) of `per_class` labelled examples of each class, chosen by a seeded shuffle
// of each class: the same choice in every process of a run.
at::Tensor LabeledSubset(const at::Tensor& labels, int64_t per_class, int64_t classes, uint64_t seed);

// How the training set is split by labels.
enum class LabelSplit {
  kByMode,  // data.labels_per_class: a mode that needs unlabelled images gets labeled_* beside the
            // whole pool, any other mode only the labelled subset
  kWhole,   // none: the caller chooses its own labelled share (a federated site)
};

// Reads the job's dataset (data.name, data.dir) and applies data.train_limit / test_limit and
// the label split.
absl::StatusOr<TrainingData> LoadTrainingData(const Job& job, LabelSplit split = LabelSplit::kByMode);

}  // namespace allround::data

#endif  // ALLROUND_DATA_DATASETS_H_
