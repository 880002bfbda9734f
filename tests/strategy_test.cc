// Every strategy against numbers computed by hand (see the comments) on a two-element model.

#include "algorithms/aggregation/strategy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <string>

namespace allround::aggregation {
namespace {

using ::testing::HasSubstr;

NamedTensors Model(std::vector<float> w, int64_t count = 7) {
  return {{"w", torch::tensor(w)}, {"bn.count", torch::tensor(count)}};
}

SiteUpdate Update(int64_t site, int64_t n, std::vector<float> w) { return {site, n, Model(std::move(w), 100 + site)}; }

std::vector<float> W(const absl::StatusOr<NamedTensors>& r) {
  EXPECT_TRUE(r.ok()) << r.status();
  const at::Tensor t = (*r)[0].second;
  return {t[0].item<float>(), t[1].item<float>()};
}

// The strategy `name` with the job keys `keys`, set as a job file or flag would set them.
std::unique_ptr<Strategy> Make(const std::string& name, const std::map<std::string, std::string>& keys = {}) {
  Job job;
  EXPECT_TRUE(SetJobKey(job, "strategy.name", name).ok());
  for (const auto& [k, v] : keys) EXPECT_TRUE(SetJobKey(job, k, v).ok()) << k;
  auto s = MakeStrategy(job);
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

const std::vector<SiteUpdate> kTwo = {Update(1, 1, {1, 2}), Update(2, 3, {3, -2})};

TEST(Strategy, FedAvgIsTheExampleWeightedMean) {
  // 1/4 [1, 2] + 3/4 [3, -2] = [2.5, -1].
  auto s = Make("fedavg");
  auto r = s->Aggregate(Model({0, 0}), kTwo);
  EXPECT_THAT(W(r), ::testing::ElementsAre(2.5f, -1.0f));
  EXPECT_EQ((*r)[1].second.item<int64_t>(), 101);  // integer tensors: the first update's
}

TEST(Strategy, FedProxAggregatesLikeFedAvgAndCarriesMu) {
  auto s = Make("fedprox", {{"strategy.proximal_mu", "0.01"}});
  EXPECT_THAT(W(s->Aggregate(Model({0, 0}), kTwo)), ::testing::ElementsAre(2.5f, -1.0f));
  EXPECT_DOUBLE_EQ(s->proximal_mu(), 0.01);
}

TEST(Strategy, FedAvgMAccumulatesServerMomentum) {
  // Round 1 from 0: delta = [2.5, -1], m = delta, x = [2.5, -1].
  // Round 2 from there with the same updates: delta = 0, m = 0.9 m = [2.25, -0.9], x = [4.75, -1.9].
  auto s = Make("fedavgm");
  auto r1 = s->Aggregate(Model({0, 0}), kTwo);
  EXPECT_THAT(W(r1), ::testing::ElementsAre(2.5f, -1.0f));
  auto r2 = s->Aggregate(*r1, kTwo);
  EXPECT_NEAR(W(r2)[0], 4.75f, 1e-6);
  EXPECT_NEAR(W(r2)[1], -1.9f, 1e-6);
}

TEST(Strategy, AdaptiveServerOptimizers) {
  // delta = [2.5, -1]; m = 0.1 delta; v0 = tau^2 = 1e-6; x = 0.1 m / (sqrt(v) + 1e-3), with
  // adagrad v = v0 + d^2, adam v = 0.99 v0 + 0.01 d^2, yogi v = v0 + 0.01 d^2 (v0 < d^2).
  const std::vector<std::pair<std::string, std::vector<double>>> want = {
      {"fedadagrad", {0.009996000800, -0.009990005000}},
      {"fedadam", {0.099600807933, -0.099005048883}},
      {"fedyogi", {0.099600799997, -0.099004999875}}};
  for (const auto& [name, expected] : want) {
    auto s = Make(name, {{"strategy.server_lr", "0.1"}});
    auto r = W(s->Aggregate(Model({0, 0}), kTwo));
    EXPECT_NEAR(r[0], expected[0], 1e-6) << name;
    EXPECT_NEAR(r[1], expected[1], 1e-6) << name;
  }
}

TEST(Strategy, StateRoundTripContinuesExactly) {
  auto a = Make("fedadam", {{"strategy.server_lr", "0.1"}}), b = Make("fedadam", {{"strategy.server_lr", "0.1"}});
  auto r1 = a->Aggregate(Model({0, 0}), kTwo);
  ASSERT_TRUE(b->LoadState(a->State()).ok());
  EXPECT_EQ(a->State().size(), 2u);  // m and v of "w"; the integer tensor is not aggregated
  auto ra = a->Aggregate(*r1, kTwo), rb = b->Aggregate(*r1, kTwo);
  EXPECT_TRUE((*ra)[0].second.equal((*rb)[0].second));
}

const std::vector<SiteUpdate> kFive = {Update(1, 1, {1, 2}), Update(2, 9, {3, -2}), Update(3, 1, {10, 0}),
                                       Update(4, 1, {-5, 7}), Update(5, 1, {100, 100})};

TEST(Strategy, CoordinateWiseMedian) {
  auto s = Make("median");
  // Three updates: per coordinate {1, 3, 10} -> 3 and {2, -2, 0} -> 0. Example counts do not matter.
  EXPECT_THAT(W(s->Aggregate(Model({0, 0}), {kFive[0], kFive[1], kFive[2]})), ::testing::ElementsAre(3.0f, 0.0f));
  // Four: {-5, 1, 3, 10} -> 2 and {-2, 0, 2, 7} -> 1 (mean of the middle two).
  EXPECT_THAT(W(s->Aggregate(Model({0, 0}), {kFive[0], kFive[1], kFive[2], kFive[3]})),
              ::testing::ElementsAre(2.0f, 1.0f));
}

TEST(Strategy, TrimmedMean) {
  auto s = Make("trimmed_mean", {{"strategy.trim_beta", "0.2"}});  // 5 updates: drop 1 from each end
  // {-5, 1, 3, 10, 100} -> mean(1, 3, 10) = 14/3; {-2, 0, 2, 7, 100} -> mean(0, 2, 7) = 3.
  auto r = W(s->Aggregate(Model({0, 0}), kFive));
  EXPECT_NEAR(r[0], 14.0f / 3, 1e-5);
  EXPECT_NEAR(r[1], 3.0f, 1e-6);
}

TEST(Strategy, KrumPicksTheMostCentralAndMultiKrumAverages) {
  const std::vector<SiteUpdate> u = {Update(1, 1, {0, 0}), Update(2, 1, {1, 0}), Update(3, 1, {0, 1}),
                                     Update(4, 50, {100, 100})};
  // f = 0: each scores the squared distances to its 2 nearest others: a: 1 + 1 = 2, b: 1 + 2 = 3,
  // c: 1 + 2 = 3, d: 19801 + 19801 = 39602 (100^2 + 99^2 each). a wins.
  auto krum = Make("krum");
  EXPECT_THAT(W(krum->Aggregate(Model({5, 5}), u)), ::testing::ElementsAre(0.0f, 0.0f));
  // The three central ones, averaged plainly: [1/3, 1/3].
  auto r = W(Make("krum", {{"strategy.byzantine", "1"}, {"strategy.multi_krum", "3"}})->Aggregate(Model({5, 5}), u));
  EXPECT_NEAR(r[0], 1.0f / 3, 1e-6);
  EXPECT_NEAR(r[1], 1.0f / 3, 1e-6);
  EXPECT_THAT(std::string(Make("krum", {{"strategy.byzantine", "2"}})->Aggregate(Model({0, 0}), u).status().message()), HasSubstr("n > f + 2"));
}

TEST(CenteredClipping, ClipsEachDifferenceToTheRadiusAroundTheLastAggregate) {
  // Round 1, center 0, tau 1: deltas [3, 4] (norm 5 -> [0.6, 0.8]), [0, 0.5] (kept), [-0.6, 0]
  // (kept); v = ([0.6, 0.8] + [0, 0.5] + [-0.6, 0]) / 3 = [0, 0.4333].
  auto s = Make("centered_clipping", {{"strategy.cc_tau", "1"}});
  std::vector<SiteUpdate> u = {Update(1, 10, {3, 4}), Update(2, 10, {0, 0.5}), Update(3, 10, {-0.6, 0})};
  auto r1 = s->Aggregate(Model({0, 0}), u);
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_NEAR(W(r1)[0], 0.0, 1e-6);
  EXPECT_NEAR(W(r1)[1], 1.3 / 3, 1e-6);
  // Round 2 from x = [10, 10], center [0, 0.4333]: deltas [0, 0.4333] (diff 0), [0, 10.4333] (diff
  // [0, 10], clipped to [0, 1]), [0, 0.4333] (0): v = [0, 0.4333 + 1/3].
  u = {Update(1, 10, {10, 10 + 1.3f / 3}), Update(2, 10, {10, 20 + 1.3f / 3}), Update(3, 10, {10, 10 + 1.3f / 3})};
  auto r2 = s->Aggregate(Model({10, 10}), u);
  EXPECT_NEAR(W(r2)[0], 10.0, 1e-5);
  EXPECT_NEAR(W(r2)[1], 10 + 1.3 / 3 + 1.0 / 3, 1e-5);
  // The center is state: a fresh strategy loaded with it continues the same.
  auto t = Make("centered_clipping", {{"strategy.cc_tau", "1"}});
  ASSERT_TRUE(t->LoadState(s->State()).ok());
  auto a = s->Aggregate(Model({0, 0}), u), b = t->Aggregate(Model({0, 0}), u);
  EXPECT_EQ(W(a), W(b));
}

TEST(CenteredClipping, TheMedianRadiusBoundsAMinorityOfLiars) {
  // tau 0: the radius is the median distance. Four honest deltas near [1, 0], three liars at 1e6:
  // each liar is clipped to the median distance (about 1), so the aggregate stays within 3/7 of it.
  auto s = Make("centered_clipping");
  std::vector<SiteUpdate> u = {Update(1, 10, {1, 0}), Update(2, 10, {1.1f, 0}), Update(3, 10, {0.9f, 0}), Update(4, 10, {1, 0.1f}),
                               Update(5, 10, {-1e6, 0}), Update(6, 10, {-1e6, 0}), Update(7, 10, {-1e6, 0})};
  auto r = s->Aggregate(Model({0, 0}), u);
  ASSERT_TRUE(r.ok());
  EXPECT_GT(W(r)[0], 4.0 / 7 * 0.9 - 3.0 / 7 * 1.1);
  EXPECT_LT(std::abs(W(r)[1]), 0.1);
  auto mean = Make("fedavg")->Aggregate(Model({0, 0}), u);
  EXPECT_LT(W(mean)[0], -1e5);  // where a plain mean goes
}

TEST(MultiKrum, AveragesTheNMinusFBestByDefault) {
  // Five updates, f = 1: Krum scores sum the n - f - 2 = 2 smallest squared distances to others.
  // [0,0], [1,0], [0,1], [1,1] score 2 each; [9,9] scores 128 + 145 = 273: the best four are averaged.
  std::vector<SiteUpdate> u = {Update(1, 10, {0, 0}), Update(2, 10, {1, 0}), Update(3, 10, {0, 1}), Update(4, 10, {1, 1}),
                               Update(5, 10, {9, 9})};
  auto r = Make("multi_krum", {{"strategy.byzantine", "1"}})->Aggregate(Model({0, 0}), u);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(W(r), ::testing::ElementsAre(0.5f, 0.5f));
  auto k = Make("krum", {{"strategy.byzantine", "1"}})->Aggregate(Model({0, 0}), u);
  EXPECT_THAT(W(k), ::testing::ElementsAre(0.f, 0.f));  // the first of the tied best
}

TEST(Strategy, RefusesBadUpdatesNamingSiteAndTensor) {
  auto s = Make("fedadam");
  auto nan = s->Aggregate(Model({0, 0}), {Update(1, 1, {1, 2}), Update(7, 1, {NAN, 0})});
  EXPECT_THAT(std::string(nan.status().message()), HasSubstr("site 7: tensor w holds NaN or Inf"));
  SiteUpdate wrong{3, 1, {{"w", torch::zeros({3})}, {"bn.count", torch::tensor(int64_t{1})}}};
  auto shape = s->Aggregate(Model({0, 0}), {wrong});
  EXPECT_THAT(std::string(shape.status().message()), HasSubstr("site 3: tensor w [3]"));
  EXPECT_EQ(s->Aggregate(Model({0, 0}), {}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(s->State().empty());  // refused rounds leave no trace in the server state
}

// The strategies' names and keys come from their registrations: the job refuses a name none
// registered and a value out of a key's registered range, and --help lists each key with the
// strategies that read it.
TEST(Strategy, NamesAndKeysComeFromTheRegistrations) {
  Job job;
  absl::Status bad_name = SetJobKey(job, "strategy.name", "fedsgd");
  EXPECT_THAT(std::string(bad_name.message()), HasSubstr("one of: centered_clipping, fedadagrad, fedadam, fedavg, fedavgm"));
  job.strategy.name = "fedsgd";  // set past the job's check
  EXPECT_THAT(std::string(MakeStrategy(job).status().message()), HasSubstr("unknown strategy 'fedsgd' (known: "));
  absl::Status bad_value = SetJobKey(job, "strategy.trim_beta", "0.5");
  EXPECT_THAT(std::string(bad_value.message()), HasSubstr("job key 'strategy.trim_beta': bad value '0.5'"));
  EXPECT_THAT(std::string(SetJobKey(job, "strategy.momentun", "0.5").message()), HasSubstr("strategy.momentum"));
  bool listed = false;
  for (const auto& [key, help] : JobKeys()) {
    if (key == "strategy.server_lr") {
      listed = true;
      EXPECT_THAT(help, HasSubstr("(fedavgm, fedadagrad, fedadam, fedyogi) [1]"));
    }
  }
  EXPECT_TRUE(listed);
  // A job file round trip keeps a strategy key's value.
  ASSERT_TRUE(SetJobKey(job, "strategy.name", "fedadam").ok());
  ASSERT_TRUE(SetJobKey(job, "strategy.beta2", "0.95").ok());
  auto again = ParseJobYaml(JobToYaml(job), "round trip");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_DOUBLE_EQ(JobNumber(*again, "strategy.beta2"), 0.95);
  EXPECT_DOUBLE_EQ(JobNumber(*again, "strategy.tau"), 1e-3);
}

}  // namespace
}  // namespace allround::aggregation

namespace allround::aggregation {
namespace {

TEST(AllFinite, FindsNaNAndBothInfinitiesInFloatAndDoubleAnywhere) {
  for (auto dtype : {torch::kFloat, torch::kDouble}) {
    EXPECT_TRUE(AllFinite(torch::randn({1000}, dtype)));
    EXPECT_TRUE(AllFinite(torch::tensor({double{std::numeric_limits<float>::max()}, 0.0, -0.0}).to(dtype)));
    for (double bad : {std::nan(""), std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()}) {
      for (int64_t at : {0, 517, 999}) {
        at::Tensor t = torch::randn({1000}, dtype);
        t[at] = bad;
        EXPECT_FALSE(AllFinite(t)) << bad << " at " << at;
        EXPECT_FALSE(AllFinite(t.view({10, 100}).t())) << "non-contiguous";
      }
    }
  }
  EXPECT_TRUE(AllFinite(torch::tensor({1, 2}, torch::kLong)));
}

}  // namespace
}  // namespace allround::aggregation
