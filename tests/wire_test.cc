#include "comm/wire.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

namespace allround::comm {
namespace {

using ::testing::HasSubstr;

NamedTensors Sample() {
  torch::manual_seed(2);
  return {{"model/w", torch::randn({33, 17})}, {"model/b", torch::randn({5}, torch::kDouble)},
          {"count", torch::tensor(int64_t{9})}, {"empty", torch::empty({0})}, {"mask", torch::tensor({true, false})}};
}

absl::StatusOr<NamedTensors> Decode(const std::vector<allround::v1::TensorChunk>& chunks, uint64_t limit = 1 << 30) {
  TensorAssembler a(limit);
  for (const auto& c : chunks) {
    if (auto s = a.Add(c); !s.ok()) return s;
  }
  return a.Finish();
}

TEST(Wire, RoundTripInSmallChunks) {
  auto chunks = EncodeTensors(Sample(), 100);
  EXPECT_GT(chunks.size(), 20u);  // 2,244 bytes of w alone in 100-byte chunks
  for (const auto& c : chunks) EXPECT_LE(c.data().size(), 100u);
  auto back = Decode(chunks);
  ASSERT_TRUE(back.ok()) << back.status();
  const NamedTensors want = Sample();
  ASSERT_EQ(back->size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ((*back)[i].first, want[i].first);
    EXPECT_TRUE((*back)[i].second.equal(want[i].second)) << want[i].first;
  }
}

TEST(Wire, MalformedStreamsAreRefusedWithTheReason) {
  const auto good = EncodeTensors(Sample(), 100);
  auto gap = good;
  gap.erase(gap.begin() + 2);
  EXPECT_THAT(std::string(Decode(gap).status().message()), HasSubstr("does not continue tensor model/w"));
  auto cut = good;
  cut.resize(5);
  EXPECT_THAT(std::string(Decode(cut).status().message()), HasSubstr("model/w ended after 500 of 2244 bytes"));
  auto lying = good;
  lying[0].set_total_bytes(10);
  EXPECT_THAT(std::string(Decode(lying).status().message()), HasSubstr("do not fit its dtype and shape"));
  auto dtype = good;
  dtype[0].set_dtype("complex1024");
  EXPECT_THAT(std::string(Decode(dtype).status().message()), HasSubstr("unknown dtype"));
  auto orphan = good;
  orphan.erase(orphan.begin());
  EXPECT_THAT(std::string(Decode(orphan).status().message()), HasSubstr("does not continue any tensor"));
  auto big = Decode(good, 1000);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  auto extra = good;
  auto more = extra[0];
  more.set_offset(0);
  extra.insert(extra.begin() + 1, more);  // restarts w before it is complete
  EXPECT_THAT(std::string(Decode(extra).status().message()), HasSubstr("ended after 100 of 2244"));
}

}  // namespace
}  // namespace allround::comm
