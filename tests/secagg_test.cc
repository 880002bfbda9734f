// Shamir sharing, the SecAgg+ crypto wrappers and the communication graph (privacy/). The protocol
// itself is in secagg_protocol_test.cc.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "privacy/secagg_crypto.h"
#include "privacy/secagg_types.h"
#include "privacy/shamir.h"

namespace allround::privacy {
namespace {

using ::testing::HasSubstr;

Bytes32 Pattern(uint8_t start) {
  Bytes32 b;
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(start + 37 * i);
  return b;
}

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

TEST(SecaggShamir, EveryThresholdSubsetReconstructs) {
  const Bytes32 secret = Pattern(0xf0);  // high bytes set: every 56-bit element is near full
  auto shares = ShamirSplit(secret, 4, 7);
  ASSERT_TRUE(shares.ok()) << shares.status();
  ASSERT_EQ(shares->size(), 7u);
  int subsets = 0;
  for (int mask = 0; mask < (1 << 7); ++mask) {
    if (__builtin_popcount(mask) < 4) continue;
    std::vector<ShamirShare> pick;
    for (int i = 0; i < 7; ++i) {
      if (mask & (1 << i)) pick.push_back((*shares)[i]);
    }
    auto back = ShamirReconstruct(pick, 4);
    ASSERT_TRUE(back.ok()) << back.status() << " subset " << mask;
    EXPECT_EQ(*back, secret) << "subset " << mask;
    ++subsets;
  }
  EXPECT_EQ(subsets, 35 + 21 + 7 + 1);  // sizes 4, 5, 6, 7
  // Random secrets, random shuffled subsets of a larger sharing.
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    Bytes32 s;
    for (auto& b : s) b = static_cast<uint8_t>(rng());
    auto sh = ShamirSplit(s, 6, 11);
    ASSERT_TRUE(sh.ok());
    std::shuffle(sh->begin(), sh->end(), rng);
    sh->resize(6 + rng() % 6);
    auto back = ShamirReconstruct(*sh, 6);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, s);
  }
}

TEST(SecaggShamir, FewerThanThresholdDuplicatesAndZeroAreRefused) {
  auto shares = ShamirSplit(Pattern(1), 4, 7);
  ASSERT_TRUE(shares.ok());
  std::vector<ShamirShare> three(shares->begin(), shares->begin() + 3);
  EXPECT_THAT(Msg(ShamirReconstruct(three, 4).status()), HasSubstr("3 shares given, the threshold is 4"));
  std::vector<ShamirShare> dup(shares->begin(), shares->begin() + 4);
  dup[3] = dup[0];
  EXPECT_THAT(Msg(ShamirReconstruct(dup, 4).status()), HasSubstr("two shares have x = 1"));
  std::vector<ShamirShare> zero(shares->begin(), shares->begin() + 4);
  zero[2].x = 0;
  EXPECT_THAT(Msg(ShamirReconstruct(zero, 4).status()), HasSubstr("x = 0"));
  EXPECT_FALSE(ShamirSplit(Pattern(1), 5, 4).ok());
  EXPECT_FALSE(ShamirSplit(Pattern(1), 0, 4).ok());
}

TEST(SecaggShamir, SharesOfSameSecretDifferAndAChangedShareNeverGivesTheSecret) {
  const Bytes32 secret = Pattern(9);
  auto a = ShamirSplit(secret, 3, 5), b = ShamirSplit(secret, 3, 5);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE((*a)[0].y, (*b)[0].y);  // fresh random polynomials
  for (int e = 0; e < kShamirElements; ++e) {
    for (size_t n : {3, 5}) {  // exactly t shares, and more
      std::vector<ShamirShare> pick(a->begin(), a->begin() + n);
      pick[1].y[e] = (pick[1].y[e] + 1) % kShamirPrime;
      auto back = ShamirReconstruct(pick, 3);
      EXPECT_TRUE(!back.ok() || *back != secret) << "element " << e;
      if (!back.ok()) {
        EXPECT_THAT(Msg(back.status()), HasSubstr("shares do not belong together"));
      } else if (n > 3) {
        ADD_FAILURE() << "a changed share among more than t was not caught";
      }
    }
  }
  // Shares of two different secrets mixed together.
  auto other = ShamirSplit(Pattern(200), 3, 5);
  ASSERT_TRUE(other.ok());
  std::vector<ShamirShare> mixed = {(*a)[0], (*a)[1], (*other)[2], (*other)[3], (*a)[4]};
  auto back = ShamirReconstruct(mixed, 3);
  EXPECT_TRUE(!back.ok() || (*back != secret && *back != Pattern(200)));
}

TEST(SecaggShamir, SerializationRoundTripsAndRefusesMalformedBytes) {
  auto shares = ShamirSplit(Pattern(3), 2, 3);
  ASSERT_TRUE(shares.ok());
  const std::string bytes = SerializeShare((*shares)[2]);
  ASSERT_EQ(bytes.size(), kShamirShareBytes);
  auto back = ParseShare(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->x, 3u);
  EXPECT_EQ(back->y, (*shares)[2].y);
  EXPECT_THAT(Msg(ParseShare(bytes.substr(1)).status()), HasSubstr("43 bytes, not 44"));
  EXPECT_THAT(Msg(ParseShare(bytes + "x").status()), HasSubstr("45 bytes"));
  std::string zero_x = bytes;
  zero_x[0] = zero_x[1] = zero_x[2] = zero_x[3] = 0;
  EXPECT_THAT(Msg(ParseShare(zero_x).status()), HasSubstr("x = 0"));
  std::string big = bytes;
  for (int i = 0; i < 8; ++i) big[4 + 8 * 2 + i] = '\xff';  // element 2 = 2^64 - 1 >= p
  EXPECT_THAT(Msg(ParseShare(big).status()), HasSubstr("element 2 is not below p"));
  ShamirShare p_exact = (*shares)[0];
  p_exact.y[4] = kShamirPrime;
  EXPECT_FALSE(ParseShare(SerializeShare(p_exact)).ok());
}

TEST(SecaggCrypto, AgreementIsSymmetricAndPairSpecific) {
  auto a = GenerateKeyPair(), b = GenerateKeyPair(), c = GenerateKeyPair();
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  auto ab = Agree(a->secret_key, b->public_key, a->public_key);
  auto ba = Agree(b->secret_key, a->public_key, b->public_key);
  auto ac = Agree(a->secret_key, c->public_key, a->public_key);
  ASSERT_TRUE(ab.ok() && ba.ok() && ac.ok());
  EXPECT_EQ(*ab, *ba);
  EXPECT_NE(*ab, *ac);
  EXPECT_NE(DeriveMaskSeed(*ab), *ab);
  auto pk = PublicKeyOf(a->secret_key);
  ASSERT_TRUE(pk.ok());
  EXPECT_EQ(*pk, a->public_key);
  // The all-zero point has small order: X25519 gives zero, and libsodium refuses.
  Bytes32 zero{};
  EXPECT_THAT(Msg(Agree(a->secret_key, zero, a->public_key).status()), HasSubstr("small order"));
  EXPECT_FALSE(CheckPublicKey(zero).ok());
  EXPECT_TRUE(CheckPublicKey(b->public_key).ok());
}

TEST(SecaggCrypto, ExpandMaskIsChaCha20DeterministicAndSliceable) {
  // RFC 8439 2.3.2: key 00..1f, nonce 00000009 0000004a 00000000, block 1 (= words 16..31).
  Bytes32 key;
  for (int i = 0; i < 32; ++i) key[i] = static_cast<uint8_t>(i);
  const uint64_t stream = 0x4a00000009000000ull;  // the nonce's first 8 bytes, little-endian
  auto words = ExpandMask(key, stream, 32);
  EXPECT_EQ(words[16], 0xe4e7f110u);
  EXPECT_EQ(words[17], 0x15593bd1u);
  EXPECT_EQ(words[18], 0x1fdd0f50u);
  EXPECT_EQ(words[19], 0xc47120a3u);

  const Bytes32 seed = Pattern(5);
  const auto m1 = ExpandMask(seed, 7, 10007), m2 = ExpandMask(seed, 7, 10007);
  EXPECT_EQ(m1, m2);
  const auto other_stream = ExpandMask(seed, 8, 10007);
  const auto other_seed = ExpandMask(Pattern(6), 7, 10007);
  int same_stream = 0, same_seed = 0;
  for (size_t i = 0; i < m1.size(); ++i) {
    same_stream += m1[i] == other_stream[i];
    same_seed += m1[i] == other_seed[i];
  }
  EXPECT_LE(same_stream, 2);
  EXPECT_LE(same_seed, 2);
  // A prefix is a prefix; an offset slice (AddMask's first_word) continues the same stream; adding
  // then subtracting gives zeros back.
  EXPECT_EQ(ExpandMask(seed, 7, 5000), std::vector<uint32_t>(m1.begin(), m1.begin() + 5000));
  std::vector<uint32_t> slice(3000, 0);
  AddMask(seed, 7, false, absl::MakeSpan(slice), 4096 + 16);
  EXPECT_EQ(slice, std::vector<uint32_t>(m1.begin() + 4112, m1.begin() + 7112));
  std::vector<uint32_t> acc(10007, 12345);
  AddMask(seed, 7, false, absl::MakeSpan(acc));
  EXPECT_EQ(acc[9999], m1[9999] + 12345u);
  AddMask(seed, 7, true, absl::MakeSpan(acc));
  EXPECT_EQ(acc, std::vector<uint32_t>(10007, 12345));
}

TEST(SecaggCrypto, ShareEncryptionRoundTripsAndRefusesTamperingAndWrongBinding) {
  auto a = GenerateKeyPair(), b = GenerateKeyPair();
  ASSERT_TRUE(a.ok() && b.ok());
  auto key = Agree(a->secret_key, b->public_key, a->public_key);
  auto key_b = Agree(b->secret_key, a->public_key, b->public_key);
  ASSERT_TRUE(key.ok() && key_b.ok());
  const std::string plain = "share bytes \x01\x02\x00 end";
  const ShareAd ad{42, 3, 9};
  auto ct = EncryptShare(*key, ad, plain);
  ASSERT_TRUE(ct.ok()) << ct.status();
  EXPECT_EQ(ct->size(), plain.size() + kShareCiphertextOverhead);
  EXPECT_EQ(ct->find("share bytes"), std::string::npos);
  auto back = DecryptShare(*key_b, ad, *ct);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, plain);
  auto ct2 = EncryptShare(*key, ad, plain);
  EXPECT_NE(*ct, *ct2);  // fresh nonce

  for (size_t pos : {size_t{0}, size_t{30}, ct->size() - 1}) {  // nonce, body, tag
    std::string bad = *ct;
    bad[pos] ^= 0x01;
    EXPECT_EQ(DecryptShare(*key_b, ad, bad).status().code(), absl::StatusCode::kPermissionDenied) << pos;
  }
  EXPECT_THAT(Msg(DecryptShare(*key_b, ShareAd{43, 3, 9}, *ct).status()),
              HasSubstr("from site 3 to site 9 (round 43) failed authentication"));
  EXPECT_FALSE(DecryptShare(*key_b, ShareAd{42, 9, 3}, *ct).ok());  // reversed direction
  EXPECT_FALSE(DecryptShare(*key_b, ShareAd{42, 3, 8}, *ct).ok());
  EXPECT_FALSE(DecryptShare(DeriveMaskSeed(*key), ad, *ct).ok());  // another key
  EXPECT_EQ(DecryptShare(*key_b, ad, ct->substr(0, 39)).status().code(), absl::StatusCode::kInvalidArgument);
}

SecAggConfig GraphConfig(int n, int k, int t, uint64_t seed = 11, uint64_t round = 3) {
  SecAggConfig c;
  c.round = round;
  for (int i = 0; i < n; ++i) c.sampled_ids.push_back(static_cast<uint32_t>(1000 - 7 * i));  // unsorted
  c.degree = k;
  c.threshold = t;
  c.graph_seed = seed;
  c.vector_length = 1;
  return c;
}

TEST(SecaggGraph, HararyGraphIsDeterministicRegularAndSymmetric) {
  for (auto [n, k] : std::vector<std::pair<int, int>>{{10, 6}, {20, 4}, {33, 2}, {50, 10}}) {
    const SecAggConfig config = GraphConfig(n, k, 2);
    auto g = SecAggGraph::Build(config);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_FALSE(g->complete());
    SecAggConfig shuffled = config;
    std::reverse(shuffled.sampled_ids.begin(), shuffled.sampled_ids.end());
    auto again = SecAggGraph::Build(shuffled);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(g->ring(), again->ring()) << "the listing order of the sampled ids must not matter";
    for (uint32_t id : g->ids()) {
      const auto& nb = g->Neighbours(id);
      EXPECT_EQ(nb.size(), static_cast<size_t>(k)) << id;
      EXPECT_TRUE(std::is_sorted(nb.begin(), nb.end()));
      EXPECT_EQ(std::set<uint32_t>(nb.begin(), nb.end()).size(), nb.size());
      EXPECT_FALSE(std::count(nb.begin(), nb.end(), id));
      EXPECT_EQ(nb, again->Neighbours(id));
      for (uint32_t peer : nb) EXPECT_TRUE(g->AreNeighbours(peer, id)) << id << "-" << peer;
      EXPECT_EQ(g->Holders(id).size(), static_cast<size_t>(k) + 1);
      EXPECT_EQ(g->ShareX(id, g->Holders(id)[0]), 1u);
    }
    // Ring order: neighbours are the k/2 on each side.
    const auto& ring = g->ring();
    for (int d = 1; d <= k / 2; ++d) EXPECT_TRUE(g->AreNeighbours(ring[0], ring[(n - d) % n]));
    if (k / 2 + 1 < n - k / 2) {
      EXPECT_FALSE(g->AreNeighbours(ring[0], ring[k / 2 + 1]));
    }
  }
  auto g1 = SecAggGraph::Build(GraphConfig(20, 4, 2, 11, 3));
  auto g2 = SecAggGraph::Build(GraphConfig(20, 4, 2, 12, 3));
  auto g3 = SecAggGraph::Build(GraphConfig(20, 4, 2, 11, 4));
  ASSERT_TRUE(g1.ok() && g2.ok() && g3.ok());
  EXPECT_NE(g1->ring(), g2->ring());
  EXPECT_NE(g1->ring(), g3->ring());
}

TEST(SecaggGraph, DegreeAtLeastNMinusOneIsTheCompleteGraph) {
  for (int k : {9, 10, 15}) {
    auto g = SecAggGraph::Build(GraphConfig(10, k, 6));
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_TRUE(g->complete());
    EXPECT_EQ(g->degree(), 9);
    for (uint32_t id : g->ids()) EXPECT_EQ(g->Neighbours(id).size(), 9u);
  }
  EXPECT_TRUE(SecAggGraph::Build(GraphConfig(10, 15, 10)).ok());  // t = n
  EXPECT_TRUE(SecAggGraph::Build(GraphConfig(2, 1, 2)).ok());
}

TEST(SecaggGraph, InvalidConfigsAreRefusedWithTheRule) {
  EXPECT_THAT(Msg(SecAggGraph::Build(GraphConfig(10, 5, 3)).status()), HasSubstr("must be even"));
  EXPECT_THAT(Msg(SecAggGraph::Build(GraphConfig(10, 4, 6)).status()), HasSubstr("threshold 6 must be in [2, 5]"));
  EXPECT_THAT(Msg(SecAggGraph::Build(GraphConfig(10, 4, 1)).status()), HasSubstr("threshold 1"));
  EXPECT_THAT(Msg(SecAggGraph::Build(GraphConfig(1, 4, 2)).status()), HasSubstr("at least 2"));
  auto dup = GraphConfig(5, 2, 2);
  dup.sampled_ids[3] = dup.sampled_ids[1];
  EXPECT_THAT(Msg(ValidateConfig(dup)), HasSubstr("sampled twice"));
  auto zero = GraphConfig(5, 2, 2);
  zero.sampled_ids[2] = 0;
  EXPECT_THAT(Msg(ValidateConfig(zero)), HasSubstr("id 0"));
  auto empty = GraphConfig(5, 2, 2);
  empty.vector_length = 0;
  EXPECT_THAT(Msg(ValidateConfig(empty)), HasSubstr("vector_length"));
}

TEST(SecaggTypes, ModularSumWrapsAndChecksLengths) {
  auto s = ModularSum({{0xffffffffu, 1, 7}, {2, 0xfffffffeu, 0}, {0, 3, 1}}, 3);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, (std::vector<uint32_t>{1, 2, 8}));
  EXPECT_FALSE(ModularSum({{1, 2}, {1}}, 2).ok());
  EXPECT_EQ(*ModularSum({}, 4), std::vector<uint32_t>(4, 0));
}

}  // namespace
}  // namespace allround::privacy
