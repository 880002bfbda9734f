#include "observe/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "storage/crc32c.h"

#ifdef ALLROUND_HAVE_TENSORBOARD
#include "tensorboard/compat/proto/event.pb.h"
#include "tensorboard/compat/proto/summary.pb.h"
#endif

namespace allround::observe {

uint32_t MaskedCrc32c(const void* data, size_t n) {
  const uint32_t crc = storage::Crc32c(0, data, n);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

Histogram MakeHistogram(const float* values, int64_t n, int buckets) {
  Histogram h;
  // Non-finite values (a diverged run) are left out: they have no bucket and would poison min/max.
  std::vector<float> finite;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isfinite(values[i])) continue;
    finite.reserve(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      if (std::isfinite(values[k])) finite.push_back(values[k]);
    }
    values = finite.data();
    n = static_cast<int64_t>(finite.size());
    break;
  }
  if (n <= 0) return h;
  h.min = h.max = values[0];
  for (int64_t i = 0; i < n; ++i) {
    const double v = values[i];
    h.min = std::min(h.min, v);
    h.max = std::max(h.max, v);
    h.sum += v;
    h.sum_squares += v * v;
  }
  h.num = static_cast<double>(n);
  buckets = std::max(1, buckets);
  if (h.max == h.min) {  // one bucket holding every value
    h.bucket_limit = {h.max};
    h.bucket = {h.num};
    return h;
  }
  const double width = (h.max - h.min) / buckets;
  h.bucket.assign(buckets, 0.0);
  for (int b = 0; b < buckets; ++b) h.bucket_limit.push_back(b + 1 == buckets ? h.max : h.min + width * (b + 1));
  for (int64_t i = 0; i < n; ++i) {
    // Bucket b holds (limit[b-1], limit[b]]: the smallest b whose limit is >= v.
    const double v = values[i];
    int b = static_cast<int>(std::ceil((v - h.min) / width)) - 1;
    b = std::clamp(b, 0, buckets - 1);
    while (b > 0 && v <= h.bucket_limit[b - 1]) --b;
    while (b + 1 < buckets && v > h.bucket_limit[b]) ++b;
    h.bucket[b] += 1;
  }
  return h;
}

Histogram MakeHistogram(const std::vector<double>& values, int buckets) {
  std::vector<float> f(values.begin(), values.end());
  return MakeHistogram(f.data(), static_cast<int64_t>(f.size()), buckets);
}

struct TensorBoardWriter::File {
  std::FILE* f = nullptr;
  ~File() {
    if (f != nullptr) std::fclose(f);
  }
};

TensorBoardWriter::TensorBoardWriter(std::string path, std::unique_ptr<File> file)
    : path_(std::move(path)), file_(std::move(file)) {}

TensorBoardWriter::~TensorBoardWriter() = default;

absl::Status TensorBoardWriter::WriteEvent(const std::string& serialized) {
  if (!failed_.ok()) return failed_;
  char header[12];
  const uint64_t length = serialized.size();
  for (int i = 0; i < 8; ++i) header[i] = static_cast<char>((length >> (8 * i)) & 0xff);  // little-endian
  const uint32_t header_crc = MaskedCrc32c(header, 8), data_crc = MaskedCrc32c(serialized.data(), serialized.size());
  for (int i = 0; i < 4; ++i) header[8 + i] = static_cast<char>((header_crc >> (8 * i)) & 0xff);
  char footer[4];
  for (int i = 0; i < 4; ++i) footer[i] = static_cast<char>((data_crc >> (8 * i)) & 0xff);
  if (std::fwrite(header, 1, sizeof(header), file_->f) != sizeof(header) ||
      std::fwrite(serialized.data(), 1, serialized.size(), file_->f) != serialized.size() ||
      std::fwrite(footer, 1, sizeof(footer), file_->f) != sizeof(footer)) {
    failed_ = absl::InternalError(absl::StrCat("TensorBoard event file ", path_, ": write failed: ", std::strerror(errno)));
  }
  return failed_;
}

absl::Status TensorBoardWriter::Flush() {
  if (!failed_.ok()) return failed_;
  if (std::fflush(file_->f) != 0) {
    failed_ = absl::InternalError(absl::StrCat("TensorBoard event file ", path_, ": write failed: ", std::strerror(errno)));
  }
  return failed_;
}

#ifdef ALLROUND_HAVE_TENSORBOARD

bool TensorBoardAvailable() { return true; }

namespace {

double WallTime() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

tensorboard::Event NewEvent(int64_t step) {
  tensorboard::Event e;
  e.set_wall_time(WallTime());
  e.set_step(step);
  return e;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Open(const std::string& dir,
                                                                           const std::string& suffix) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("TensorBoard event file: cannot create ", dir, ": ", ec.message()));
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  const int64_t now = static_cast<int64_t>(WallTime());
  const std::string path = absl::StrCat(dir, "/events.out.tfevents.", now, ".", host, ".", getpid(), ".", suffix);
  auto file = std::make_unique<File>();
  file->f = std::fopen(path.c_str(), "wb");
  if (file->f == nullptr) {
    return absl::InternalError(absl::StrCat("TensorBoard event file ", path, ": cannot create: ", std::strerror(errno)));
  }
  std::unique_ptr<TensorBoardWriter> writer(new TensorBoardWriter(path, std::move(file)));
  tensorboard::Event version = NewEvent(0);
  version.set_file_version("brain.Event:2");
  if (auto s = writer->WriteEvent(version.SerializeAsString()); !s.ok()) return s;
  if (auto s = writer->Flush(); !s.ok()) return s;
  return writer;
}

absl::Status TensorBoardWriter::Scalar(const std::string& tag, int64_t step, double value) {
  tensorboard::Event e = NewEvent(step);
  auto* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  return WriteEvent(e.SerializeAsString());
}

absl::Status TensorBoardWriter::AddHistogram(const std::string& tag, int64_t step, const Histogram& h) {
  tensorboard::Event e = NewEvent(step);
  auto* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  auto* histo = v->mutable_histo();
  histo->set_min(h.min);
  histo->set_max(h.max);
  histo->set_num(h.num);
  histo->set_sum(h.sum);
  histo->set_sum_squares(h.sum_squares);
  for (double limit : h.bucket_limit) histo->add_bucket_limit(limit);
  for (double count : h.bucket) histo->add_bucket(count);
  return WriteEvent(e.SerializeAsString());
}

absl::Status TensorBoardWriter::Image(const std::string& tag, int64_t step, const std::string& png, int64_t width,
                                      int64_t height, int channels) {
  tensorboard::Event e = NewEvent(step);
  auto* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  auto* image = v->mutable_image();
  image->set_width(static_cast<int32_t>(width));
  image->set_height(static_cast<int32_t>(height));
  image->set_colorspace(channels);
  image->set_encoded_image_string(png);
  return WriteEvent(e.SerializeAsString());
}

absl::Status TensorBoardWriter::Text(const std::string& tag, int64_t step, const std::string& markdown) {
  tensorboard::Event e = NewEvent(step);
  auto* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  v->mutable_metadata()->mutable_plugin_data()->set_plugin_name("text");
  auto* tensor = v->mutable_tensor();
  tensor->set_dtype(tensorboard::DT_STRING);
  tensor->mutable_tensor_shape();  // a scalar: no dimensions
  tensor->add_string_val(markdown);
  return WriteEvent(e.SerializeAsString());
}

#else  // no TensorBoard definitions in this build

bool TensorBoardAvailable() { return false; }

absl::StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Open(const std::string&, const std::string&) {
  return absl::UnimplementedError(
      "TensorBoard event files: this build has no TensorBoard definitions (run deploy/setup.sh, which installs "
      "the tensorboard package, then rebuild)");
}
absl::Status TensorBoardWriter::Scalar(const std::string&, int64_t, double) { return absl::UnimplementedError("no TensorBoard"); }
absl::Status TensorBoardWriter::AddHistogram(const std::string&, int64_t, const Histogram&) {
  return absl::UnimplementedError("no TensorBoard");
}
absl::Status TensorBoardWriter::Image(const std::string&, int64_t, const std::string&, int64_t, int64_t, int) {
  return absl::UnimplementedError("no TensorBoard");
}
absl::Status TensorBoardWriter::Text(const std::string&, int64_t, const std::string&) {
  return absl::UnimplementedError("no TensorBoard");
}

#endif

}  // namespace allround::observe
