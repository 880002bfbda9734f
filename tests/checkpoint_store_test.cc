#include "storage/checkpoint_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "storage/crc32c.h"
#include "storage/safetensors.h"
#include "tests/test_util.h"

namespace allround::storage {
namespace {

using ::allround::testing::ScratchDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(Crc32c, KnownVectors) {
  // RFC 3720 B.4 test vectors.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff), inc(32);
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(Crc32c(0, zeros.data(), 32), 0x8a9136aau);
  EXPECT_EQ(Crc32c(0, ones.data(), 32), 0x62a8ab43u);
  EXPECT_EQ(Crc32c(0, inc.data(), 32), 0x46dd794eu);
  EXPECT_EQ(Crc32c(0, "123456789", 9), 0xe3069283u);
  // Extending in pieces equals one pass.
  EXPECT_EQ(Crc32c(Crc32c(0, "1234", 4), "56789", 5), 0xe3069283u);
}

NamedTensors Sample() {
  torch::manual_seed(1);
  return {{"model/w", torch::randn({300, 70})},                         // 84,000 bytes: several chunks
          {"model/b", torch::randn({7}, torch::kDouble)},
          {"optim/step", torch::tensor(int64_t{42})},                    // a scalar
          {"empty", torch::empty({0, 3})},
          {"mask", torch::tensor({true, false, true})},
          {"ids", torch::arange(10, torch::kInt)},
          {"bytes", torch::randint(0, 255, {5000}, torch::kByte)}};
}

void ExpectSame(const NamedTensors& a, const NamedTensors& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_EQ(a[i].second.scalar_type(), b[i].second.scalar_type()) << a[i].first;
    EXPECT_EQ(a[i].second.sizes(), b[i].second.sizes()) << a[i].first;
    EXPECT_TRUE(a[i].second.equal(b[i].second)) << a[i].first;
  }
}

TEST(CheckpointStore, SaveListLoadRoundTrip) {
  ScratchDir dir;
  StoreOptions opt;
  opt.chunk_bytes = 16 << 10;
  auto store = OpenCheckpointStore(dir / "db", opt);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->Latest("run").status().code(), absl::StatusCode::kNotFound);
  CheckpointInfo info;
  info.round = 3;
  info.step = 300;
  info.epoch = 3;
  info.step_in_epoch = 0;
  info.mode = "supervised";
  info.metrics = {{"test_accuracy", 0.875}};
  auto id1 = (*store)->Save("run", info, Sample());
  ASSERT_TRUE(id1.ok()) << id1.status();
  info.round = 4;
  auto id2 = (*store)->Save("run", info, Sample());
  ASSERT_TRUE(id2.ok());
  EXPECT_EQ(*id1, "run/0000000001");
  EXPECT_EQ(*id2, "run/0000000002");
  EXPECT_EQ(*(*store)->Latest("run"), *id2);
  store->reset();

  // Reopen read-only: everything is there, as saved.
  opt.read_only = true;
  auto ro = OpenCheckpointStore(dir / "db", opt);
  ASSERT_TRUE(ro.ok()) << ro.status();
  auto list = (*ro)->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  const CheckpointRecord& r = (*list)[1];
  EXPECT_EQ(r.info.round, 4);
  EXPECT_EQ(r.info.step, 300);
  EXPECT_EQ(r.info.mode, "supervised");
  EXPECT_DOUBLE_EQ(r.info.metrics.at("test_accuracy"), 0.875);
  EXPECT_EQ(r.tensors[0].name, "model/w");
  EXPECT_EQ(r.tensors[0].dtype, "float32");
  EXPECT_EQ(r.tensors[0].chunks, 6u);  // 84,000 bytes in 16 KiB chunks
  EXPECT_EQ(r.tensors[0].crc32c, Crc32c(0, Sample()[0].second.data_ptr(), 84000));
  EXPECT_TRUE(r.versions.count("libtorch") && r.versions.count("rocksdb"));
  auto loaded = (*ro)->Load(*id2);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSame(*loaded, Sample());
  EXPECT_TRUE((*ro)->Verify(*id1)->empty());
  EXPECT_EQ((*ro)->Save("run", info, Sample()).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*ro)->Load("run/0000000009").status().code(), absl::StatusCode::kNotFound);
}

TEST(CheckpointStore, OneWriterAtATime) {
  ScratchDir dir;
  auto a = OpenCheckpointStore(dir / "db");
  ASSERT_TRUE(a.ok());
  auto b = OpenCheckpointStore(dir / "db");
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(b.status().message()), HasSubstr("another process"));
}

TEST(CheckpointStore, PruneKeepsLastNAndEveryMthAndLatest) {
  ScratchDir dir;
  auto store = OpenCheckpointStore(dir / "db");
  ASSERT_TRUE(store.ok());
  NamedTensors t = {{"x", torch::ones({4})}};
  for (int i = 1; i <= 10; ++i) ASSERT_TRUE((*store)->Save("r", {}, t).ok());
  ASSERT_TRUE((*store)->Save("other", {}, t).ok());
  auto deleted = (*store)->Prune("r", {2, 4});
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  std::vector<uint64_t> kept;
  const auto list = (*store)->List();
  ASSERT_TRUE(list.ok());
  for (const auto& r : *list) {
    if (r.run_id == "r") kept.push_back(r.sequence);
  }
  EXPECT_THAT(kept, ElementsAre(4, 8, 9, 10));
  EXPECT_EQ(deleted->size(), 6u);
  EXPECT_EQ((*store)->Delete("r/0000000010").code(), absl::StatusCode::kFailedPrecondition);  // latest
  EXPECT_EQ((*store)->List()->size(), 5u);
  // A policy that would keep nothing (or a negative count) is refused, not read as "all but the latest".
  EXPECT_EQ((*store)->Prune("r", {0, 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*store)->Prune("r", {2, -1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*store)->List()->size(), 5u);
}

TEST(CheckpointStore, FlippedByteIsNamedByVerifyAndRefusedByLoad) {
  ScratchDir dir;
  StoreOptions opt;
  opt.chunk_bytes = 1 << 20;
  {
    auto store = OpenCheckpointStore(dir / "db", opt);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->Save("r", {}, {{"small", torch::ones({4})}, {"victim", torch::randn({100000})}}).ok());

  }
  // Flip one byte in the middle of the blob file that holds the large tensor's chunk.
  std::string blob;
  for (const auto& f : std::filesystem::directory_iterator(dir / "db")) {
    if (f.path().extension() == ".blob") blob = f.path();
  }
  ASSERT_FALSE(blob.empty()) << "chunks should live in BlobDB blob files";
  {
    std::fstream f(blob, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(0, std::ios::end);
    const auto size = static_cast<std::streamoff>(f.tellg());
    f.seekg(size / 2);
    char c;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    f.seekp(size / 2);
    f.write(&c, 1);
  }
  auto store = OpenCheckpointStore(dir / "db", opt);
  ASSERT_TRUE(store.ok()) << store.status();
  auto bad = (*store)->Verify("r/0000000001");
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_THAT(*bad, ElementsAre("victim"));
  auto load = (*store)->Load("r/0000000001");
  EXPECT_EQ(load.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(load.status().message()), HasSubstr("victim"));
}

TEST(Safetensors, AShapeLargerThanTheFileIsRefusedBeforeAnythingIsAllocated) {
  ScratchDir dir;
  // A 10^12-element tensor, a 2^62 x 8 product that wraps, a negative dimension and dimensions that
  // are not integers (2.2e21 as int64 was undefined behaviour, found by tests/fuzz), each in a
  // file of a few bytes: each one error naming the tensor, and no multi-terabyte allocation.
  for (const std::string shape : {"[1000000000000]", "[4611686018427387904, 8]", "[-4]", "[2, 2.2e21, 16]", "[1.5]"}) {
    const std::string header = R"({"w":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,4]}})";
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    bytes += header + std::string(4, '\0');
    const std::string path = dir / "big.safetensors";
    std::ofstream(path, std::ios::binary) << bytes;
    auto read = ReadSafetensors(path);
    ASSERT_FALSE(read.ok()) << shape;
    EXPECT_THAT(std::string(read.status().message()), HasSubstr("tensor w")) << shape;
  }
}

TEST(Safetensors, TensorsMustTileTheDataAndBoolsAreZeroOrOne) {
  ScratchDir dir;
  const auto write = [&](const std::string& header, const std::string& data) {
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    const std::string path = dir / "t.safetensors";
    std::ofstream(path, std::ios::binary) << bytes + header + data;
    return ReadSafetensors(path);
  };
  // Two entries over the same bytes (K of them would make a small file ask for K times its size).
  auto shared = write(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
                      std::string(4, '\1'));
  ASSERT_FALSE(shared.ok());
  EXPECT_THAT(std::string(shared.status().message()), HasSubstr("overlap"));
  auto trailing = write(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", std::string(4, '\1'));
  ASSERT_FALSE(trailing.ok());
  EXPECT_THAT(std::string(trailing.status().message()), HasSubstr("after the last tensor"));
  auto bools = write(R"({"a":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})", std::string("\0\1\7", 3));
  ASSERT_TRUE(bools.ok()) << bools.status();
  EXPECT_TRUE((*bools)[0].second.equal(torch::tensor({false, true, true})));
}

}  // namespace
}  // namespace allround::storage
