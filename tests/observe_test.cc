// The pieces of the TensorBoard writer that its reader cannot tell apart from luck: the record
// checksum, the histogram's buckets and the confusion picture. tests/tensorboard_test.py reads
// whole event files back with TensorBoard's own reader.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "absl/strings/str_cat.h"
#include "observe/http_server.h"
#include "observe/run_board.h"
#include "observe/tensorboard.h"

namespace allround::observe {

TEST(TensorBoard, RecordChecksumIsTheMaskedCrc32c) {
  // CRC-32C of "123456789" is 0xe3069283 (its check value); masked as TFRecord does.
  EXPECT_EQ(MaskedCrc32c("123456789", 9), 0xc78ab0e5u);
  EXPECT_EQ(MaskedCrc32c("", 0), 0xa282ead8u);
}

TEST(TensorBoard, HistogramBucketsHoldEveryValueOnce) {
  const std::vector<double> values = {1, 2, 3, 4};
  const Histogram h = MakeHistogram(values, 2);
  EXPECT_EQ(h.num, 4);
  EXPECT_EQ(h.min, 1);
  EXPECT_EQ(h.max, 4);
  EXPECT_EQ(h.sum, 10);
  EXPECT_EQ(h.sum_squares, 30);
  EXPECT_EQ(h.bucket_limit, (std::vector<double>{2.5, 4}));
  EXPECT_EQ(h.bucket, (std::vector<double>{2, 2}));
  // A value on a limit belongs to the bucket the limit closes.
  EXPECT_EQ(MakeHistogram(std::vector<double>{0, 1, 2}, 2).bucket, (std::vector<double>{2, 1}));
  const Histogram same = MakeHistogram(std::vector<double>{3, 3, 3});
  EXPECT_EQ(same.bucket, (std::vector<double>{3}));
  EXPECT_EQ(same.bucket_limit, (std::vector<double>{3}));
  EXPECT_EQ(MakeHistogram(std::vector<double>{}).num, 0);
  // A diverged run's NaN and Inf weights are left out, not bucketed.
  const Histogram diverged = MakeHistogram(std::vector<double>{1, std::nan(""), 3, INFINITY});
  EXPECT_EQ(diverged.num, 2);
  EXPECT_EQ(diverged.min, 1);
  EXPECT_EQ(diverged.max, 3);
  EXPECT_EQ(MakeHistogram(std::vector<double>{std::nan("")}).num, 0);
}

TEST(TensorBoard, ConfusionPictureShadesEachCellByItsRowShare) {
  const GrayImage image = ConfusionPicture({{3, 1}, {0, 0}}, 4);
  EXPECT_EQ(image.width, 2 * 5 + 1);
  EXPECT_EQ(image.height, image.width);
  const auto at = [&](int64_t x, int64_t y) { return image.pixels[y * image.width + x]; };
  EXPECT_EQ(at(1, 1), 191);  // 3 of 4: round(255 * 0.75)
  EXPECT_EQ(at(6, 1), 64);   // 1 of 4
  EXPECT_EQ(at(1, 6), 0);    // an empty row is dark
  EXPECT_EQ(at(0, 0), 40);   // the lines
}

TEST(TensorBoard, AnEventFileStartsWithItsVersionRecord) {
  if (!TensorBoardAvailable()) GTEST_SKIP() << "built without TensorBoard's definitions";
  const std::string dir = ::testing::TempDir() + "/tb-writer";
  std::filesystem::remove_all(dir);
  auto writer = TensorBoardWriter::Open(dir, "test");
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Scalar("loss", 3, 0.5).ok());
  ASSERT_TRUE((*writer)->Flush().ok());
  std::ifstream in((*writer)->path(), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(bytes.size(), 16u);
  uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  uint32_t crc = 0;
  for (int i = 0; i < 4; ++i) crc |= static_cast<uint32_t>(static_cast<uint8_t>(bytes[8 + i])) << (8 * i);
  EXPECT_EQ(crc, MaskedCrc32c(bytes.data(), 8));
  ASSERT_GE(bytes.size(), 12 + length + 4);
  EXPECT_NE(bytes.substr(12, length).find("brain.Event:2"), std::string::npos);
  // Two records in all: the version, then the scalar.
  const size_t second = 12 + length + 4;
  uint64_t length2 = 0;
  for (int i = 0; i < 8; ++i) length2 |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[second + i])) << (8 * i);
  EXPECT_EQ(bytes.size(), second + 12 + length2 + 4);
  EXPECT_NE(bytes.substr(second + 12, length2).find("loss"), std::string::npos);
}

}  // namespace allround::observe

namespace allround::observe {

TEST(HttpServer, LoopbackMeansANumericLoopbackAddress) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:0"));
  EXPECT_TRUE(IsLoopbackAddress("127.3.2.1:9464"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:9464"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:9464"));
  EXPECT_FALSE(IsLoopbackAddress("127.0.0.1.nip.io:80"));  // a name that may resolve anywhere
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:9464"));
  EXPECT_FALSE(IsLoopbackAddress("10.1.2.3:9464"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:9464"));
}

// The rules every request of the metrics and status server passes, whatever the transport.
TEST(HttpServer, AnswersGetOnlyWithTheTokenAndOnlyItsPaths) {
  if (!HttpServerAvailable()) GTEST_SKIP() << "built without an HTTP server";
  auto server = HttpServer::Start("127.0.0.1:0", {{"/metrics", [] { return HttpResponse{200, "text/plain", "m"}; }}},
                                  "s3cret");
  ASSERT_TRUE(server.ok()) << server.status();
  const HttpServer& s = **server;
  EXPECT_GT(s.port(), 0);
  EXPECT_EQ(s.Answer("GET", "/metrics", "", "Bearer s3cret").body, "m");
  EXPECT_EQ(s.Answer("GET", "/metrics", "token=s3cret", "").status, 200);
  EXPECT_EQ(s.Answer("GET", "/metrics", "", "").status, 401);
  EXPECT_EQ(s.Answer("GET", "/metrics", "token=s3cre", "Bearer s3cretx").status, 401);
  EXPECT_EQ(s.Answer("GET", "/other", "", "Bearer s3cret").status, 404);
  EXPECT_EQ(s.Answer("POST", "/metrics", "", "Bearer s3cret").status, 405);
  // A port taken is a clear error, not a crash.
  auto again = HttpServer::Start(absl::StrCat("127.0.0.1:", s.port()), {}, "");
  EXPECT_FALSE(again.ok());
  EXPECT_NE(std::string(again.status().message()).find("cannot listen on"), std::string::npos);
}

}  // namespace allround::observe
