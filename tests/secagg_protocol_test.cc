// SecAgg+ rounds run in-process (privacy/secagg_site.h, privacy/secagg_server.h): exact sums with
// and without dropouts at every stage, abandoned rounds, a doctored server, and masked vectors that
// look random.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "privacy/secagg_server.h"
#include "privacy/secagg_site.h"

namespace allround::privacy {
namespace {

using ::testing::HasSubstr;

SecAggConfig Config(int n, int k, int t, size_t length) {
  SecAggConfig c;
  c.round = 17;
  for (int i = 0; i < n; ++i) c.sampled_ids.push_back(static_cast<uint32_t>(5 + 7 * i));
  c.degree = k;
  c.threshold = t;
  c.graph_seed = 2024;
  c.vector_length = length;
  return c;
}

// Who stops answering, and when.
struct Drops {
  std::set<uint32_t> before_advertise;  // never sends keys
  std::set<uint32_t> before_share;      // advertised, never shares keys
  std::set<uint32_t> after_share;       // shared keys, no masked input
  std::set<uint32_t> after_masked;      // masked input sent, no unmask response
};

// One round: a server, a site per sampled id with a random input, and the messages carried between
// them as a transport would (dropped sites' messages simply never arrive).
class Round {
 public:
  explicit Round(const SecAggConfig& config) : config_(config) {
    server_ = *SecAggServer::Create(config);
    std::mt19937 rng(config.graph_seed + config.round);
    for (uint32_t id : config.sampled_ids) {
      sites_[id] = *SecAggSite::Create(config, id);
      auto& x = inputs_[id];
      x.resize(config.vector_length);
      for (auto& w : x) w = rng();
    }
  }

  // Runs up to and including CloseMaskedInput; the unmask requests are then in requests().
  absl::Status RunToUnmask(const Drops& d) {
    for (uint32_t id : config_.sampled_ids) {
      if (d.before_advertise.count(id)) continue;
      auto msg = sites_[id]->AdvertiseKeys();
      if (!msg.ok()) return Unexpected(msg.status());
      if (auto s = server_->AddAdvertisement(*msg); !s.ok()) return Unexpected(s);
    }
    auto keys = server_->CloseAdvertise();
    if (!keys.ok()) return keys.status();
    for (const auto& m : *keys) {
      if (d.before_share.count(m.recipient)) continue;
      auto msg = sites_[m.recipient]->ShareKeys(m);
      if (!msg.ok()) return Unexpected(msg.status());
      if (auto s = server_->AddShareKeys(*msg); !s.ok()) return Unexpected(s);
    }
    auto relayed = server_->CloseShareKeys();
    if (!relayed.ok()) return relayed.status();
    for (const auto& m : *relayed) {
      if (d.after_share.count(m.recipient)) continue;
      auto msg = sites_[m.recipient]->MaskInput(m, inputs_[m.recipient]);
      if (!msg.ok()) return Unexpected(msg.status());
      masked_[m.recipient] = msg->masked;
      if (auto s = server_->AddMaskedInput(*msg); !s.ok()) return Unexpected(s);
    }
    auto requests = server_->CloseMaskedInput();
    if (!requests.ok()) return requests.status();
    requests_ = *std::move(requests);
    return absl::OkStatus();
  }

  absl::StatusOr<AggregateResult> Run(const Drops& d, int threads = 1) {
    if (auto s = RunToUnmask(d); !s.ok()) return s;
    for (const auto& r : requests_) {
      if (d.after_masked.count(r.recipient)) continue;
      auto msg = sites_[r.recipient]->Unmask(r);
      if (!msg.ok()) return Unexpected(msg.status());
      if (auto s = server_->AddUnmaskResponse(*msg); !s.ok()) return Unexpected(s);
    }
    return server_->Finish(threads);
  }

  // The plain sum mod 2^32 of `ids`' inputs, computed here independently.
  std::vector<uint32_t> PlainSum(const std::vector<uint32_t>& ids) const {
    std::vector<uint32_t> sum(config_.vector_length, 0);
    for (uint32_t id : ids) {
      for (size_t i = 0; i < sum.size(); ++i) sum[i] = static_cast<uint32_t>(uint64_t{sum[i]} + inputs_.at(id)[i]);
    }
    return sum;
  }
  // Ids at the given ring positions of the round's graph.
  std::set<uint32_t> AtRing(std::initializer_list<int> positions) const {
    std::set<uint32_t> out;
    for (int p : positions) out.insert(server_->graph().ring()[p]);
    return out;
  }
  std::vector<uint32_t> AllBut(const std::set<uint32_t>& gone) const {
    std::vector<uint32_t> out;
    for (uint32_t id : server_->graph().ids()) {
      if (!gone.count(id)) out.push_back(id);
    }
    return out;
  }

  SecAggSite& site(uint32_t id) { return *sites_.at(id); }
  SecAggServer& server() { return *server_; }
  const std::vector<UnmaskRequest>& requests() const { return requests_; }
  const std::vector<uint32_t>& masked(uint32_t id) const { return masked_.at(id); }
  const std::vector<uint32_t>& input(uint32_t id) const { return inputs_.at(id); }
  std::vector<uint32_t>& mutable_input(uint32_t id) { return inputs_.at(id); }

 private:
  // A refusal the honest parties should never produce.
  static absl::Status Unexpected(const absl::Status& s) {
    ADD_FAILURE() << "honest party refused: " << s;
    return absl::InternalError(absl::StrCat("unexpected: ", s.message()));
  }

  SecAggConfig config_;
  std::unique_ptr<SecAggServer> server_;
  std::map<uint32_t, std::unique_ptr<SecAggSite>> sites_;
  std::map<uint32_t, std::vector<uint32_t>> inputs_, masked_;
  std::vector<UnmaskRequest> requests_;
};

std::set<uint32_t> Union(const Drops& d) {
  std::set<uint32_t> all;
  for (const auto* s : {&d.before_advertise, &d.before_share, &d.after_share}) all.insert(s->begin(), s->end());
  return all;
}

// Runs one round and checks its outcome: the exact sum of the sites that are not in `gone`
// (dropouts after masked input count), or an Aborted status whose message holds `abort_reason`.
void ExpectRound(const SecAggConfig& config, const Drops& d, const char* abort_reason, const std::string& label) {
  SCOPED_TRACE(label);
  Round round(config);
  auto result = round.Run(d);
  if (abort_reason) {
    ASSERT_FALSE(result.ok()) << "expected the round to be abandoned";
    EXPECT_EQ(result.status().code(), absl::StatusCode::kAborted) << result.status();
    EXPECT_THAT(std::string(result.status().message()), HasSubstr(abort_reason));
    EXPECT_EQ(round.server().status().code(), absl::StatusCode::kAborted);  // sticks
    return;
  }
  ASSERT_TRUE(result.ok()) << result.status();
  const std::vector<uint32_t> want_counted = round.AllBut(Union(d));
  EXPECT_EQ(result->counted, want_counted);
  EXPECT_EQ(result->dropped, std::vector<uint32_t>(d.after_share.begin(), d.after_share.end()));
  for (uint32_t late : d.after_masked) EXPECT_TRUE(std::count(result->counted.begin(), result->counted.end(), late));
  EXPECT_EQ(result->sum, round.PlainSum(want_counted));
}

TEST(SecaggProtocol, SumIsExactWithoutDropouts) {
  for (int k : {6, 9}) {  // sparse (Harary), complete
    SCOPED_TRACE(k);
    Round round(Config(10, k, 6, 1000));
    auto result = round.Run({});
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->counted.size(), 10u);
    EXPECT_TRUE(result->dropped.empty());
    EXPECT_EQ(result->sum, round.PlainSum(result->counted));
    for (uint32_t id : result->counted) EXPECT_NE(round.masked(id), round.input(id));
  }
}

// n = 10, complete graph, t = 6: any 6 live sites can unmask any secret.
TEST(SecaggProtocol, CompleteGraphDropoutsAtEveryStage) {
  const SecAggConfig config = Config(10, 9, 6, 1000);
  const auto& ids = config.sampled_ids;  // 5, 12, 19, ...
  auto pick = [&](std::initializer_list<int> idx) {
    std::set<uint32_t> out;
    for (int i : idx) out.insert(ids[i]);
    return out;
  };
  ExpectRound(config, {}, nullptr, "none");
  ExpectRound(config, {pick({1, 7})}, nullptr, "2 before advertise");
  ExpectRound(config, {pick({0, 3, 4, 9})}, nullptr, "4 before advertise");
  ExpectRound(config, {pick({0, 2, 3, 4, 9})}, "5 of 10 sampled sites advertised", "5 before advertise");
  ExpectRound(config, {{}, pick({2, 8})}, nullptr, "2 before sharing keys");
  ExpectRound(config, {{}, pick({1, 2, 5, 6})}, nullptr, "4 before sharing keys");
  ExpectRound(config, {{}, {}, pick({0, 5})}, nullptr, "2 after sharing keys");
  ExpectRound(config, {{}, {}, pick({0, 1, 2, 3})}, nullptr, "4 after sharing keys");
  ExpectRound(config, {{}, {}, pick({0, 1, 2, 3, 4})}, "masked inputs came from 5 of 10", "5 after sharing keys");
  ExpectRound(config, {{}, {}, {}, pick({4, 6})}, nullptr, "2 after masked input");
  ExpectRound(config, {{}, {}, {}, pick({4, 6, 7, 8})}, nullptr, "4 after masked input");
  ExpectRound(config, {{}, {}, {}, pick({0, 4, 6, 7, 8})}, "5 shares came back, the threshold is 6",
              "5 after masked input");
  // One drop at each of the first three stages leaves 7 survivors; 6 or 5 of them answer.
  ExpectRound(config, {pick({0}), pick({1}), pick({2}), pick({3})}, nullptr, "mixed: 6 answer at the end");
  ExpectRound(config, {pick({0}), pick({1}), pick({2}), pick({3, 4})}, "5 shares came back", "mixed: 5 answer");
}

// n = 10, k = 6 (3 ring neighbours each side), t = 4: each secret has 7 holders, so it survives 3
// losses among them. Drops are chosen by ring position, so the outcome follows from the graph.
TEST(SecaggProtocol, SparseGraphDropoutsAtEveryStage) {
  const SecAggConfig config = Config(10, 6, 4, 1000);
  const Round probe(config);
  auto at = [&](std::initializer_list<int> p) { return probe.AtRing(p); };
  ExpectRound(config, {}, nullptr, "none");
  ExpectRound(config, {at({0, 5})}, nullptr, "2 before advertise");
  // Positions 4 and 9 keep exactly 4 of their 7 holders.
  ExpectRound(config, {at({0, 1, 2, 3})}, nullptr, "4 adjacent before advertise");
  // Position 3 keeps 3 holders (1, 3, 5) and drops out; then 5, 7, 8, 9, 1 follow, one by one.
  ExpectRound(config, {at({0, 2, 4, 6})}, "advertised keys and 0 of them", "4 spread before advertise");
  ExpectRound(config, {{}, at({0, 5})}, nullptr, "2 before sharing keys");
  ExpectRound(config, {{}, {}, at({0, 5})}, nullptr, "2 after sharing keys");
  // Dropout 0's masking key is held by 7, 8, 9 among the survivors: 3 < 4.
  ExpectRound(config, {{}, {}, at({0, 1, 2, 3})}, "masking key of dropped site", "4 after sharing keys");
  ExpectRound(config, {{}, {}, {}, at({0, 5})}, nullptr, "2 after masked input");
  // Every secret keeps 4 answering holders (e.g. b of 0: 1, 3, 8, 9).
  ExpectRound(config, {{}, {}, {}, at({0, 2, 5, 7})}, nullptr, "4 spread after masked input");
  // b of 0: only 7, 8, 9 answer.
  ExpectRound(config, {{}, {}, {}, at({0, 1, 2, 3})}, "cannot recover the self-mask seed", "4 adjacent after masked input");
}

// Finish shares the vector's slices among threads: the sum is the same exact one for any count,
// also when the last slice is partial and there are more threads than slices.
TEST(SecaggProtocol, UnmaskingOnManyThreadsGivesTheSameExactSum) {
  const size_t length = 3 * (size_t{1} << 16) + 123;  // three whole slices and a partial one
  for (int threads : {1, 2, 3, 8}) {
    SCOPED_TRACE(threads);
    Round round(Config(7, 4, 3, length));
    Drops d;
    d.after_share = round.AtRing({2});
    auto result = round.Run(d, threads);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->sum, round.PlainSum(round.AllBut(d.after_share)));
  }
}

TEST(SecaggProtocol, SiteThatDropsAfterMaskedInputIsCounted) {
  const SecAggConfig config = Config(10, 6, 6, 500);
  Round round(config);
  const uint32_t late = *round.AtRing({3}).begin();
  auto result = round.Run({{}, {}, {}, {late}});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(std::count(result->counted.begin(), result->counted.end(), late));
  EXPECT_EQ(result->sum, round.PlainSum(round.AllBut({})));
  // Dropping it instead changes the sum by exactly its input.
  Round again(config);
  auto without = again.Run({{}, {}, {late}});
  ASSERT_TRUE(without.ok()) << without.status();
  EXPECT_EQ(without->sum, again.PlainSum(again.AllBut({late})));
}

TEST(SecaggProtocol, ChangedSharesAbandonTheRoundInsteadOfGivingAWrongSum) {
  const SecAggConfig config = Config(8, 7, 4, 100);
  for (ShareKind kind : {ShareKind::kSelfMaskSeed, ShareKind::kMaskingKey}) {
    Round round(config);
    const uint32_t gone = config.sampled_ids[2];
    ASSERT_TRUE(round.RunToUnmask({{}, {}, {gone}}).ok());
    bool changed = false;
    for (const auto& r : round.requests()) {
      auto resp = round.site(r.recipient).Unmask(r);
      ASSERT_TRUE(resp.ok()) << resp.status();
      for (auto& s : resp->shares) {
        if (s.kind == kind && !changed) {
          s.share[4] ^= 0x01;  // the lowest bit of element 0: still a valid field element
          changed = true;
        }
      }
      ASSERT_TRUE(round.server().AddUnmaskResponse(*resp).ok());
    }
    auto result = round.server().Finish();
    ASSERT_FALSE(result.ok()) << "a changed share gave a sum";
    EXPECT_EQ(result.status().code(), absl::StatusCode::kAborted);
    EXPECT_THAT(std::string(result.status().message()),
                kind == ShareKind::kMaskingKey ? HasSubstr("masking key") : HasSubstr("shares do not belong together"));
  }
}

TEST(SecaggProtocol, SiteRefusesADoctoredServer) {
  const SecAggConfig config = Config(10, 6, 4, 50);
  Round round(config);
  const std::set<uint32_t> silent = round.AtRing({5});
  ASSERT_TRUE(round.RunToUnmask({{}, silent}).ok());
  const SecAggGraph& g = round.server().graph();
  const uint32_t a = g.ring()[0];
  const uint32_t peer = g.ring()[1], other = g.ring()[2];
  UnmaskRequest honest;
  for (const auto& r : round.requests()) {
    if (r.recipient == a) honest = r;
  }
  ASSERT_EQ(honest.recipient, a);
  auto refused = [&](uint32_t site, const UnmaskRequest& r, const char* why) {
    auto resp = round.site(site).Unmask(r);
    ASSERT_FALSE(resp.ok()) << why;
    EXPECT_EQ(resp.status().code(), absl::StatusCode::kPermissionDenied) << resp.status();
    EXPECT_THAT(std::string(resp.status().message()), HasSubstr(why));
  };
  auto without = [](std::vector<uint32_t> v, uint32_t id) {
    v.erase(std::remove(v.begin(), v.end(), id), v.end());
    return v;
  };

  // (a) one peer on both lists, in one request.
  UnmaskRequest both = honest;
  both.dropouts.push_back(peer);
  refused(a, both, "both as a survivor and as a dropout");
  // (c) fewer than t survivors.
  UnmaskRequest few = honest;
  few.survivors = {a, peer, other};
  refused(a, few, "only 3 survivors are named, below the threshold 4");
  // (d) not a neighbour; a neighbour that never shared keys; this site itself as a dropout.
  UnmaskRequest stranger = honest;
  stranger.dropouts.push_back(g.ring()[5]);
  refused(a, stranger, "is not a neighbour");
  const uint32_t b = g.ring()[4];  // a neighbour of the silent site at position 5
  UnmaskRequest for_b;
  for (const auto& r : round.requests()) {
    if (r.recipient == b) for_b = r;
  }
  ASSERT_EQ(for_b.recipient, b);
  UnmaskRequest never_shared = for_b;
  never_shared.dropouts.push_back(*silent.begin());
  refused(b, never_shared, "did not share its keys");
  UnmaskRequest self_dropped = honest;
  self_dropped.survivors = without(honest.survivors, a);
  self_dropped.dropouts.push_back(a);
  refused(a, self_dropped, "not named among the survivors");

  // (b) across two requests: first the seed share of `peer` (honest), then its key share.
  auto first = round.site(a).Unmask(honest);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(round.site(a).Unmask(honest).ok()) << "a repeated request reveals nothing new";
  UnmaskRequest turn = honest;
  turn.survivors = without(honest.survivors, peer);
  turn.dropouts.push_back(peer);
  refused(a, turn, "self-mask seed of site");
  // ... and the other way round at another site: key share first, then seed share.
  const uint32_t c = other;
  UnmaskRequest for_c;
  for (const auto& r : round.requests()) {
    if (r.recipient == c) for_c = r;
  }
  ASSERT_EQ(for_c.recipient, c);
  UnmaskRequest lie = for_c;
  lie.survivors = without(for_c.survivors, peer);
  lie.dropouts.push_back(peer);
  ASSERT_TRUE(round.site(c).Unmask(lie).ok()) << "a consistent lie can only be caught across requests";
  refused(c, for_c, "masking key of site");

  // Envelope: another round, another recipient.
  UnmaskRequest wrong_round = honest;
  wrong_round.round += 1;
  EXPECT_EQ(round.site(a).Unmask(wrong_round).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(round.site(peer).Unmask(honest).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SecaggProtocol, ServerRefusesMalformedMessagesAndKeepsGoing) {
  const SecAggConfig config = Config(5, 4, 3, 8);
  auto server = *SecAggServer::Create(config);
  auto site = *SecAggSite::Create(config, config.sampled_ids[0]);
  auto msg = *site->AdvertiseKeys();
  AdvertiseKeysMsg bad = msg;
  bad.site_id = 999;
  EXPECT_THAT(std::string(server->AddAdvertisement(bad).message()), HasSubstr("not sampled"));
  bad = msg;
  bad.c_public_key.pop_back();
  EXPECT_THAT(std::string(server->AddAdvertisement(bad).message()), HasSubstr("31 bytes, not 32"));
  bad = msg;
  bad.s_public_key = std::string(32, '\0');
  EXPECT_THAT(std::string(server->AddAdvertisement(bad).message()), HasSubstr("small order"));
  bad = msg;
  bad.round = 3;
  EXPECT_FALSE(server->AddAdvertisement(bad).ok());
  EXPECT_TRUE(server->AddAdvertisement(msg).ok());
  EXPECT_THAT(std::string(server->AddAdvertisement(msg).message()), HasSubstr("sent twice"));
  EXPECT_EQ(server->AddMaskedInput({config.round, msg.site_id, std::vector<uint32_t>(8)}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(server->status().ok());
  auto abandoned = server->CloseAdvertise();  // 1 of 5 advertised, t = 3
  EXPECT_EQ(abandoned.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(server->AddShareKeys({config.round, msg.site_id, {}}).code(), absl::StatusCode::kAborted);
  EXPECT_FALSE(SecAggSite::Create(config, 6).ok());
}

double ChiSquareOfBytes(const std::vector<uint32_t>& v) {
  std::vector<double> bins(256, 0);
  for (uint32_t w : v) {
    for (int b = 0; b < 4; ++b) bins[(w >> (8 * b)) & 0xff] += 1;
  }
  const double expected = 4.0 * v.size() / 256;
  double chi = 0;
  for (double o : bins) chi += (o - expected) * (o - expected) / expected;
  return chi;
}

double Correlation(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  double ma = 0, mb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ma += a[i];
    mb += b[i];
  }
  ma /= a.size();
  mb /= b.size();
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return sab / std::sqrt(saa * sbb);
}

TEST(SecaggProtocol, MaskedVectorsLookUniformAndUncorrelatedWithTheInput) {
  const SecAggConfig config = Config(5, 4, 3, 10000);
  Round round(config);
  const uint32_t id = config.sampled_ids[1];
  // A structured input (a ramp of small numbers): its bytes are far from uniform.
  std::vector<uint32_t>& x = round.mutable_input(id);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<uint32_t>(i * 1000);
  auto result = round.Run({});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->sum, round.PlainSum(result->counted));
  const auto& y = round.masked(id);
  // 255 degrees of freedom: mean 255, sd 22.6; 400 is beyond 6 sd.
  EXPECT_LT(ChiSquareOfBytes(y), 400.0);
  EXPECT_GT(ChiSquareOfBytes(x), 10000.0) << "the test must be able to tell";
  EXPECT_LT(std::abs(Correlation(y, x)), 0.05);
  EXPECT_GT(Correlation(x, x), 0.999);
}

}  // namespace
}  // namespace allround::privacy
