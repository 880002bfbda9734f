#include "observe/run_board.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/log.h"

namespace allround::observe {

absl::StatusOr<RunBoard> RunBoard::Open(const Job& job, const std::string& run_dir, const std::string& who) {
  RunBoard board;
  if (!job.tensorboard.enabled) return board;
  if (!TensorBoardAvailable()) {
    static std::atomic<bool> said{false};
    if (!said.exchange(true)) {
      log::Warning("no TensorBoard event files: this build has no TensorBoard definitions (deploy/setup.sh installs "
                   "them; set tensorboard.enabled false to silence this)");
    }
    return board;
  }
  auto writer = TensorBoardWriter::Open(run_dir, who);
  if (!writer.ok()) return writer.status();
  board.writer_ = std::shared_ptr<TensorBoardWriter>(std::move(*writer));
  board.histograms_ = job.tensorboard.histograms;
  return board;
}

absl::Status RunBoard::JobText(const Job& job) {
  if (!on()) return absl::OkStatus();
  // Four spaces: a Markdown code block, so the YAML keeps its indentation.
  std::string text;
  for (absl::string_view line : absl::StrSplit(JobToYaml(job), '\n', absl::SkipEmpty())) {
    absl::StrAppend(&text, "    ", line, "\n");
  }
  return writer_->Text("job", 0, text);
}

absl::Status RunBoard::Scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values) {
  if (!on()) return absl::OkStatus();
  for (const auto& [tag, value] : values) {
    if (auto s = writer_->Scalar(tag, step, value); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status RunBoard::Weights(int64_t step, const tensor::NamedTensors& model) {
  if (!on() || !histograms_) return absl::OkStatus();
  for (const auto& [name, t] : model) {
    if (!t.defined() || !at::isFloatingType(t.scalar_type()) || t.numel() == 0) continue;
    const at::Tensor values = t.detach().to(at::kCPU, at::kFloat).contiguous();
    if (auto s = writer_->AddHistogram(absl::StrCat("weights/", name), step,
                                       MakeHistogram(values.data_ptr<float>(), values.numel()));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status RunBoard::Values(const std::string& tag, int64_t step, const std::vector<double>& values) {
  if (!on() || !histograms_ || values.empty()) return absl::OkStatus();
  return writer_->AddHistogram(tag, step, MakeHistogram(values));
}

absl::Status RunBoard::Pictures(int64_t step, const std::vector<GrayImage>& images) {
  if (!on()) return absl::OkStatus();
  for (const GrayImage& image : images) {
    auto png = EncodeGrayPng(image.width, image.height, image.pixels);
    if (!png.ok()) return png.status();
    if (auto s = writer_->Image(image.name, step, *png, image.width, image.height, 1); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status RunBoard::ConfusionMatrix(int64_t step, const std::vector<std::vector<int64_t>>& confusion) {
  if (!on() || confusion.empty()) return absl::OkStatus();
  return Pictures(step, {ConfusionPicture(confusion)});
}

absl::Status RunBoard::Flush() { return on() ? writer_->Flush() : absl::OkStatus(); }

GrayImage ConfusionPicture(const std::vector<std::vector<int64_t>>& confusion, int cell) {
  const int64_t n = static_cast<int64_t>(confusion.size());
  const int64_t side = n * (cell + 1) + 1;
  GrayImage image{"confusion_matrix", side, side, std::vector<uint8_t>(side * side, 40)};  // the lines
  for (int64_t r = 0; r < n; ++r) {
    int64_t total = 0;
    for (int64_t c : confusion[r]) total += c;
    for (int64_t c = 0; c < n && c < static_cast<int64_t>(confusion[r].size()); ++c) {
      const double share = total > 0 ? static_cast<double>(confusion[r][c]) / static_cast<double>(total) : 0.0;
      const uint8_t gray = static_cast<uint8_t>(std::lround(255.0 * std::clamp(share, 0.0, 1.0)));
      for (int64_t y = 0; y < cell; ++y) {
        uint8_t* row = image.pixels.data() + (1 + r * (cell + 1) + y) * side + 1 + c * (cell + 1);
        std::fill(row, row + cell, gray);
      }
    }
  }
  return image;
}

}  // namespace allround::observe
