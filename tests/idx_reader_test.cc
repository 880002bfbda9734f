#include "data/idx_reader.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"
#include "data/fashion_mnist.h"
#include "data/datasets.h"

namespace allround::data {
namespace {

using ::allround::testing::IdxBytes;
using ::allround::testing::ScratchDir;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::vector<uint8_t> Ramp(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 7 + 3);
  return v;
}

TEST(IdxReader, ReadsGzipAndPlainWithBigEndianDims) {
  ScratchDir dir;
  const auto data = Ramp(3 * 2 * 300);  // 300 > 255 checks multi-byte dims
  testing::WriteGzip(dir / "a.gz", IdxBytes({3, 2, 300}, data));
  testing::WritePlain(dir / "a", IdxBytes({3, 2, 300}, data));
  for (const std::string name : {"a.gz", "a"}) {
    auto t = ReadIdxUint8(dir / name, 3);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->sizes().vec(), (std::vector<int64_t>{3, 2, 300}));
    EXPECT_EQ(t->scalar_type(), at::kByte);
    EXPECT_EQ(t->index({1, 1, 299}).item<int64_t>(), data[1 * 600 + 1 * 300 + 299]);
    EXPECT_EQ(t->sum().item<int64_t>(), std::accumulate(data.begin(), data.end(), int64_t{0}));
  }
}

TEST(IdxReader, PairChecksCountsAndLabels) {
  ScratchDir dir;
  testing::WriteGzip(dir / "img.gz", IdxBytes({4, 2, 2}, Ramp(16)));
  testing::WriteGzip(dir / "lab.gz", IdxBytes({4}, {0, 9, 3, 1}));
  auto pair = ReadIdxPair(dir / "img.gz", dir / "lab.gz", 10);
  ASSERT_TRUE(pair.ok()) << pair.status();
  EXPECT_EQ(pair->size(), 4);
  EXPECT_EQ(pair->labels.scalar_type(), at::kLong);
  EXPECT_EQ(pair->labels[1].item<int64_t>(), 9);

  testing::WriteGzip(dir / "lab3.gz", IdxBytes({3}, {0, 1, 2}));
  auto mismatch = ReadIdxPair(dir / "img.gz", dir / "lab3.gz", 10);
  EXPECT_THAT(std::string(mismatch.status().message()),
              AllOf(HasSubstr("lab3.gz"), HasSubstr("3 labels"), HasSubstr("4 images")));

  testing::WriteGzip(dir / "labbad.gz", IdxBytes({4}, {0, 1, 10, 2}));
  auto bad_label = ReadIdxPair(dir / "img.gz", dir / "labbad.gz", 10);
  EXPECT_THAT(std::string(bad_label.status().message()), AllOf(HasSubstr("labbad.gz"), HasSubstr("label 10")));
}

struct CorruptCase {
  std::string name;
  std::vector<uint8_t> bytes;
  bool gzip;
  std::string expected;
};

void PrintTo(const CorruptCase& c, std::ostream* os) { *os << c.name; }

class IdxCorrupt : public ::testing::TestWithParam<CorruptCase> {};

TEST_P(IdxCorrupt, OneClearErrorNamingTheFile) {
  ScratchDir dir;
  const CorruptCase& c = GetParam();
  const std::string path = dir / (c.name + (c.gzip ? ".gz" : ""));
  if (c.gzip) {
    testing::WriteGzip(path, c.bytes);
  } else {
    testing::WritePlain(path, c.bytes);
  }
  auto t = ReadIdxUint8(path, 3);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), AllOf(HasSubstr(path), HasSubstr(c.expected)));
}

std::vector<uint8_t> Good() { return IdxBytes({2, 3, 3}, Ramp(18)); }
std::vector<uint8_t> Cut(std::vector<uint8_t> v, size_t n) {
  v.resize(v.size() - n);
  return v;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, IdxCorrupt,
    ::testing::Values(
        CorruptCase{"truncated_data", Cut(Good(), 5), true, "truncated: header promises 18 bytes of data, file has 13"},
        CorruptCase{"trailing", [] { auto v = Good(); v.push_back(1); return v; }(), false, "1 bytes after the data"},
        CorruptCase{"bad_magic", [] { auto v = Good(); v[0] = 0x1f; return v; }(), false, "bad magic number"},
        CorruptCase{"bad_type", [] { auto v = Good(); v[2] = 0x0D; return v; }(), false, "is not unsigned byte"},
        CorruptCase{"wrong_dims", IdxBytes({18}, Ramp(18)), true, "has 1 dimensions, expected 3"},
        CorruptCase{"tiny", {0, 0}, false, "no IDX header"},
        CorruptCase{"short_header", {0, 0, 8, 3, 0, 0}, false, "truncated header"},
        // 2^20 x 2^20 x 2^24 = 2^64 elements: a product that wraps to 0 would pass as an empty file.
        CorruptCase{"wrapping_dims", {0, 0, 8, 3, 0, 16, 0, 0, 0, 16, 0, 0, 1, 0, 0, 0}, false, "dimensions too large"}),
    [](const auto& info) { return info.param.name; });

TEST(IdxReader, AGzipBombIsReadNoFurtherThanItsHeaderPromises) {
  ScratchDir dir;
  // 10 bytes promised, 64 MiB of zeros behind them, in a gzip stream of about 64 KiB.
  std::vector<uint8_t> bytes = IdxBytes({10}, Ramp(10));
  bytes.resize(bytes.size() + (size_t{64} << 20), 0);
  const std::string path = dir / "bomb.gz";
  testing::WriteGzip(path, bytes);
  auto t = ReadIdxUint8(path, 1);
  ASSERT_FALSE(t.ok());
  const std::string message(t.status().message());
  EXPECT_THAT(message, HasSubstr("bytes after the data"));
  // What was inflated past the promise: one read's worth (1 MiB), not the 64 MiB behind it.
  const size_t at = message.find("at least ");
  ASSERT_NE(at, std::string::npos) << message;
  EXPECT_LE(std::stoll(message.substr(at + 9)), int64_t{1} << 20) << message;
}

TEST(IdxReader, TruncatedGzipStreamIsAnError) {
  ScratchDir dir;
  testing::WriteGzip(dir / "full.gz", IdxBytes({50, 28, 28}, Ramp(50 * 784)));
  auto bytes = testing::ReadBytes(dir / "full.gz");
  bytes.resize(bytes.size() / 2);
  testing::WritePlain(dir / "half.gz", bytes);
  auto t = ReadIdxUint8(dir / "half.gz", 3);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("half.gz"));
}

TEST(IdxReader, MissingFileAndDirectory) {
  ScratchDir dir;
  auto t = ReadIdxUint8(dir / "nope.gz", 3);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("nope.gz"));
  auto d = LoadFashionMnist(dir / "missing");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("missing' does not exist"));
}

// data.scale: standardize gives (x / 255 - mean) / std, unit gives x / 255 (what NIID-Bench's
// torchvision ToTensor feeds its models), for training and test images alike.
TEST(FashionMnist, TrainingDataIsStandardizedOrInUnitRange) {
  ScratchDir dir;
  testing::WritePlain(dir / "train-images-idx3-ubyte", IdxBytes({2, 2, 2}, {0, 255, 51, 102, 255, 0, 0, 0}));
  testing::WritePlain(dir / "train-labels-idx1-ubyte", IdxBytes({2}, {3, 7}));
  testing::WritePlain(dir / "t10k-images-idx3-ubyte", IdxBytes({1, 2, 2}, {255, 255, 0, 51}));
  testing::WritePlain(dir / "t10k-labels-idx1-ubyte", IdxBytes({1}, {5}));
  Job job;
  job.data.dir = dir.path();
  job.data.scale = "unit";
  auto unit = data::LoadTrainingData(job);
  ASSERT_TRUE(unit.ok()) << unit.status();
  EXPECT_EQ(unit->train_inputs.sizes().vec(), (std::vector<int64_t>{2, 1, 2, 2}));
  const at::Tensor want_train = at::tensor({0.0f, 1.0f, 0.2f, 0.4f, 1.0f, 0.0f, 0.0f, 0.0f}).view({2, 1, 2, 2});
  const at::Tensor want_test = at::tensor({1.0f, 1.0f, 0.0f, 0.2f}).view({1, 1, 2, 2});
  EXPECT_TRUE(at::allclose(unit->train_inputs, want_train)) << unit->train_inputs;
  EXPECT_TRUE(at::allclose(unit->test_inputs, want_test)) << unit->test_inputs;

  job.data.scale = "standardize";
  auto standard = data::LoadTrainingData(job);
  ASSERT_TRUE(standard.ok()) << standard.status();
  EXPECT_TRUE(at::allclose(standard->train_inputs, (want_train - kFashionMnistMean) / kFashionMnistStd));
  EXPECT_TRUE(at::allclose(standard->test_inputs, (want_test - kFashionMnistMean) / kFashionMnistStd));
  EXPECT_EQ(standard->train_targets[1].item<int64_t>(), 7);
}

TEST(FashionMnist, ReadsTheInstalledDataset) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  auto d = LoadFashionMnist(dir);
  if (!d.ok() && d.status().code() == absl::StatusCode::kNotFound) GTEST_SKIP() << d.status();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->train.images.sizes().vec(), (std::vector<int64_t>{60000, 28, 28}));
  EXPECT_EQ(d->test.size(), 10000);
  // Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
  EXPECT_TRUE(at::bincount(d->train.labels).eq(6000).all().item<bool>());
  EXPECT_TRUE(at::bincount(d->test.labels).eq(1000).all().item<bool>());
  const double mean = d->train.images.to(at::kDouble).div(255).mean().item<double>();
  EXPECT_NEAR(mean, kFashionMnistMean, 1e-3);
}

}  // namespace
}  // namespace allround::data
