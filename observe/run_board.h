#ifndef ALLROUND_OBSERVE_RUN_BOARD_H_
#define ALLROUND_OBSERVE_RUN_BOARD_H_

// What a run shows in TensorBoard, from what it already records: the cluster run's rank 0 and the
// coordinator each keep one RunBoard, writing into the run directory (job keys
// `tensorboard.enabled`, default true, and `tensorboard.histograms`).
//
//   - the job, as YAML under the Text tab (step 0);
//   - every number of each metrics.jsonl record as a scalar of the same name (train_loss, lr,
//     samples_per_s, test_accuracy, federated_accuracy, ...), at the record's step (the epoch in a
//     cluster run, the model version in a federated one);
//   - histograms of the model's floating-point tensors ("weights/<name>") and, at the coordinator,
//     of the sites' update norms ("update_norms");
//   - pictures: a generative mode's sample grids, and the confusion matrix of a mode that classifies
//     (rows: true class, columns: predicted; each cell's gray level the share of its row).
//
// A build without TensorBoard, or a job that turns it off, gives a board that writes nothing.
// Thread-compatible.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/job.h"
#include "common/png.h"
#include "observe/tensorboard.h"
#include "tensor/named_tensors.h"

namespace allround::observe {

class RunBoard {
 public:
  RunBoard() = default;  // off

  // `who` ends the event file's name ("worker", "coordinator"). Off, without error, when the job
  // turns TensorBoard off; a build without it logs that once and is off. Fails when the file
  // cannot be made.
  static absl::StatusOr<RunBoard> Open(const Job& job, const std::string& run_dir, const std::string& who);

  bool on() const { return writer_ != nullptr; }
  std::string path() const { return on() ? writer_->path() : ""; }

  absl::Status JobText(const Job& job);
  absl::Status Scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values);
  // "weights/<name>" for each floating-point tensor (skipped when tensorboard.histograms is off).
  absl::Status Weights(int64_t step, const tensor::NamedTensors& model);
  absl::Status Values(const std::string& tag, int64_t step, const std::vector<double>& values);
  absl::Status Pictures(int64_t step, const std::vector<GrayImage>& images);
  // confusion[true][predicted] counts; nothing for an empty matrix.
  absl::Status ConfusionMatrix(int64_t step, const std::vector<std::vector<int64_t>>& confusion);
  absl::Status Flush();

 private:
  std::shared_ptr<TensorBoardWriter> writer_;
  bool histograms_ = true;
};

// The confusion matrix as a picture: `cell` x `cell` pixels per entry, gray = count / row total
// (white: all of the row), a 1-pixel dark line between cells.
GrayImage ConfusionPicture(const std::vector<std::vector<int64_t>>& confusion, int cell = 16);

}  // namespace allround::observe

#endif  // ALLROUND_OBSERVE_RUN_BOARD_H_
