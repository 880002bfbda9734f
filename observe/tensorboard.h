#ifndef ALLROUND_OBSERVE_TENSORBOARD_H_
#define ALLROUND_OBSERVE_TENSORBOARD_H_

// TensorBoard event files: what a run writes so that `tensorboard --logdir runs/` shows its curves,
// weight histograms, sample grids and job without a line of user code.
//
// The file is TensorBoard's own record format: each record is its length (uint64, little-endian),
// the masked CRC32C of those 8 bytes, the payload, and the masked CRC32C of the payload; each
// payload is one `tensorboard.Event` message, encoded by the C++ code protoc generates from
// TensorBoard's own message definitions (observe/CMakeLists.txt). The first event names the file
// version ("brain.Event:2"), as TensorFlow's and PyTorch's writers do.
//
// A build without TensorBoard's definitions (no `tensorboard` Python package at configure time)
// has Available() false and Open fails saying so; callers then write no event file.
//
// Thread-compatible: one writer per file, used by one thread at a time.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace allround::observe {

// Whether this build can write event files.
bool TensorBoardAvailable();

// The masked CRC32C of TFRecord framing: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t MaskedCrc32c(const void* data, size_t n);

// The histogram TensorBoard draws: `buckets` equal-width buckets from the smallest to the largest
// value (bucket i holds values in (limit[i-1], limit[i]], the first also its lower edge), with
// count, sum and sum of squares. An empty input gives an empty histogram.
struct Histogram {
  double min = 0, max = 0, num = 0, sum = 0, sum_squares = 0;
  std::vector<double> bucket_limit, bucket;
};
Histogram MakeHistogram(const float* values, int64_t n, int buckets = 30);
Histogram MakeHistogram(const std::vector<double>& values, int buckets = 30);

class TensorBoardWriter {
 public:
  // Creates `dir` if needed and opens dir/events.out.tfevents.<unix seconds>.<host>.<pid>.<suffix>
  // (suffix: "coordinator", "worker", ...); writes the file-version event.
  static absl::StatusOr<std::unique_ptr<TensorBoardWriter>> Open(const std::string& dir, const std::string& suffix);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  const std::string& path() const { return path_; }

  // One event each, at `step`. A failed write (a full disk) is returned naming the file; the
  // writer refuses every later call then, since the file may hold half a record.
  absl::Status Scalar(const std::string& tag, int64_t step, double value);
  absl::Status AddHistogram(const std::string& tag, int64_t step, const Histogram& histogram);
  // A PNG file's bytes (8-bit, `channels` 1 gray or 3 RGB), shown under the Images tab.
  absl::Status Image(const std::string& tag, int64_t step, const std::string& png, int64_t width, int64_t height,
                     int channels);
  // Markdown, shown under the Text tab (the text plugin's string tensor).
  absl::Status Text(const std::string& tag, int64_t step, const std::string& markdown);

  // Hands what was written to the operating system, so a TensorBoard reading along sees it.
  absl::Status Flush();

 private:
  struct File;
  TensorBoardWriter(std::string path, std::unique_ptr<File> file);
  absl::Status WriteEvent(const std::string& serialized);

  std::string path_;
  std::unique_ptr<File> file_;
  absl::Status failed_;
};

}  // namespace allround::observe

#endif  // ALLROUND_OBSERVE_TENSORBOARD_H_
