// The federated RoundManager driven with a fake clock: sampling, deadlines, stragglers, rejoining
// and every refusal, each followed by a good update that is accepted.

#include "coordinator/round_manager.h"
#include "runtime/site_runner.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <thread>

namespace allround::coordinator {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using std::chrono::seconds;

NamedTensors Weights(float a, float b) { return {{"w", torch::tensor({a, b})}}; }

std::unique_ptr<RoundManager> Manager(RoundManagerOptions o) {
  return std::make_unique<RoundManager>(o, Weights(0, 0), *aggregation::MakeStrategy({"fedavg"}));
}

class RoundManagerTest : public ::testing::Test {
 protected:
  Time t0 = Time() + std::chrono::hours(1);
  Time At(int s) { return t0 + seconds(s); }
};

TEST_F(RoundManagerTest, ThreeSitesAggregateInSiteOrderAsAWeightedMean) {
  RoundManagerOptions o;
  o.rounds = 2;
  o.min_sites = 3;
  o.min_available = 3;
  auto m = Manager(o);
  const int64_t a = *m->Join("a", 100, At(0)), b = *m->Join("b", 300, At(0));
  EXPECT_EQ(m->GetTask(a, At(1))->kind, Task::Kind::kWait);  // only 2 of 3 sites so far
  const int64_t c = *m->Join("c", 600, At(1));
  for (int64_t s : {a, b, c}) {
    auto task = m->GetTask(s, At(2));
    ASSERT_EQ(task->kind, Task::Kind::kTrain);
    EXPECT_EQ(task->round, 0);
  }
  // Arrival order c, a, b; the aggregate is 0.1 [1,1] + 0.3 [2,0] + 0.6 [0,4] = [0.7, 2.5].
  ASSERT_TRUE(m->SubmitUpdate(c, 0, 600, Weights(0, 4), At(3)).ok());
  ASSERT_TRUE(m->SubmitUpdate(a, 0, 100, Weights(1, 1), At(3)).ok());
  EXPECT_EQ(m->model_version(), 0);
  ASSERT_TRUE(m->SubmitUpdate(b, 0, 300, Weights(2, 0), At(4)).ok());
  EXPECT_EQ(m->model_version(), 1);
  auto model = m->Model(1);
  ASSERT_TRUE(model.ok());
  EXPECT_NEAR((*model)[0].second[0].item<float>(), 0.7f, 1e-6);
  EXPECT_NEAR((*model)[0].second[1].item<float>(), 2.5f, 1e-6);
  EXPECT_THAT(m->history()[0].contributors, ElementsAre(a, b, c));
  EXPECT_EQ(m->Model(0).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RoundManagerTest, StragglerMissesTheDeadlineAndRejoinsNextRound) {
  RoundManagerOptions o;
  o.rounds = 3;
  o.min_sites = 2;
  o.round_timeout = seconds(30);
  auto m = Manager(o);
  const int64_t a = *m->Join("a", 10, At(0)), b = *m->Join("b", 10, At(0)), c = *m->Join("c", 10, At(0));
  for (int64_t s : {a, b, c}) ASSERT_EQ(m->GetTask(s, At(0))->kind, Task::Kind::kTrain);
  ASSERT_TRUE(m->SubmitUpdate(a, 0, 10, Weights(1, 1), At(5)).ok());
  ASSERT_TRUE(m->SubmitUpdate(b, 0, 10, Weights(3, 3), At(6)).ok());
  // c dies mid-round. At the deadline the round closes with a and b.
  m->Tick(At(31));
  EXPECT_EQ(m->model_version(), 1);
  EXPECT_TRUE(m->history()[0].closed_by_deadline);
  EXPECT_THAT(m->history()[0].contributors, ElementsAre(a, b));
  // c's late update (for round 0) is refused with a reason, and never reaches the aggregate.
  auto late = m->SubmitUpdate(c, 0, 10, Weights(100, 100), At(32));
  EXPECT_THAT(std::string(late.message()), HasSubstr("round closed before it arrived"));
  EXPECT_NEAR((*m->Model(1))[0].second[0].item<float>(), 2.0f, 1e-6);
  // c restarts, rejoins under its name (same id) and takes part in the next round.
  EXPECT_EQ(*m->Join("c", 10, At(40)), c);
  auto task = m->GetTask(c, At(40));
  ASSERT_EQ(task->kind, Task::Kind::kTrain);
  EXPECT_EQ(task->model_version, 1);
  EXPECT_TRUE(m->SubmitUpdate(c, task->round, 10, Weights(5, 5), At(41)).ok());
  EXPECT_EQ(m->refusals().at("late"), 1);
}

TEST_F(RoundManagerTest, TooFewUpdatesByTheDeadlineAbandonsTheRound) {
  RoundManagerOptions o;
  o.min_sites = 2;
  o.round_timeout = seconds(10);
  auto m = Manager(o);
  const int64_t a = *m->Join("a", 10, At(0)), b = *m->Join("b", 10, At(0));
  ASSERT_TRUE(m->GetTask(a, At(0)).ok());
  ASSERT_TRUE(m->SubmitUpdate(a, 0, 10, Weights(1, 1), At(1)).ok());
  m->Tick(At(11));
  EXPECT_EQ(m->model_version(), 0);  // nothing aggregated from a single update
  ASSERT_EQ(m->history().size(), 1u);
  EXPECT_TRUE(m->history()[0].contributors.empty());
  auto task = m->GetTask(b, At(12));  // a fresh round is sampled
  ASSERT_EQ(task->kind, Task::Kind::kTrain);
  EXPECT_EQ(task->round, 1);
}

// A site name stands in logs, file names and the tokens file: one that could not is refused at
// Join, counted, and the registry is left as it was.
TEST_F(RoundManagerTest, JoinRefusesNamesThatAreNotPlain) {
  auto m = Manager(RoundManagerOptions{});
  const std::vector<std::string> names = {"", "a b", "../x", "a/b", "new\nline", std::string(129, 'x')};
  for (const std::string& bad : names) {
    const auto id = m->Join(bad, 10, At(0));
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(id.status().message()), HasSubstr("is not 1 to 128 letters")) << bad;
  }
  EXPECT_EQ(m->refusals().at("bad_name"), 6);
  EXPECT_EQ(*m->Join("site-7.b_c", 10, At(0)), 1);
}

// A site that describes its model at Join must describe the job's: another model (a count, a name,
// a dtype or a shape apart) is refused there, counted, and never registered; no description
// (an older client) is not checked; the right one joins.
TEST_F(RoundManagerTest, JoinRefusesASiteWhoseModelIsNotTheJobs) {
  auto m = Manager(RoundManagerOptions{});  // the model: w, float32 [2]
  const std::vector<std::pair<std::vector<TensorLayout>, std::string>> bad = {
      {{{"w", at::kFloat, {2}}, {"b", at::kFloat, {1}}}, "2 tensors at the site, 1 in the job's model"},
      {{{"v", at::kFloat, {2}}}, "tensor 0 is v Float [2] at the site, w Float [2] in the job's model"},
      {{{"w", at::kDouble, {2}}}, "tensor 0 is w Double [2] at the site"},
      {{{"w", at::kFloat, {2, 1}}}, "tensor 0 is w Float [2, 1] at the site"},
  };
  for (const auto& [layout, want] : bad) {
    const auto id = m->Join("a", 10, At(0), layout);
    EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition) << want;
    EXPECT_THAT(std::string(id.status().message()),
                AllOf(HasSubstr("site 'a' trains another model than the job's"), HasSubstr(want)));
  }
  EXPECT_EQ(m->refusals().at("bad_model"), 4);
  EXPECT_FALSE(m->SiteName(1).ok());  // nothing registered
  EXPECT_EQ(*m->Join("a", 10, At(0), {{"w", at::kFloat, {2}}}), 1);
  EXPECT_EQ(*m->Join("b", 10, At(0)), 2);
}

TEST_F(RoundManagerTest, EveryRefusalHasAReasonAndAGoodUpdateStillCounts) {
  RoundManagerOptions o;
  o.min_sites = 2;
  auto m = Manager(o);
  const int64_t a = *m->Join("a", 10, At(0)), b = *m->Join("b", 10, At(0));
  ASSERT_TRUE(m->GetTask(a, At(0)).ok());
  struct Case {
    std::string name;
    absl::Status got;
    std::string want;
  };
  const std::vector<Case> cases = {
      {"wrong shape", m->SubmitUpdate(a, 0, 10, {{"w", torch::zeros({3})}}, At(1)), "does not match the model's w [2]"},
      {"wrong dtype", m->SubmitUpdate(a, 0, 10, {{"w", torch::zeros({2}, torch::kDouble)}}, At(1)), "[2] float64 does not match the model's w [2] float32"},
      {"wrong name", m->SubmitUpdate(a, 0, 10, {{"v", torch::zeros({2})}}, At(1)), "tensor v"},
      {"NaN", m->SubmitUpdate(a, 0, 10, Weights(NAN, 0), At(1)), "NaN or Inf"},
      {"Inf", m->SubmitUpdate(a, 0, 10, Weights(INFINITY, 0), At(1)), "NaN or Inf"},
      {"wrong round", m->SubmitUpdate(a, 5, 10, Weights(1, 1), At(1)), "round 0 is open"},
      {"unknown site", m->SubmitUpdate(99, 0, 10, Weights(1, 1), At(1)), "unknown site 99"},
      {"no examples", m->SubmitUpdate(a, 0, 0, Weights(1, 1), At(1)), "claims 0 examples"},
  };
  for (const auto& c : cases) {
    EXPECT_FALSE(c.got.ok()) << c.name;
    EXPECT_THAT(std::string(c.got.message()), HasSubstr(c.want)) << c.name;
  }
  ASSERT_TRUE(m->SubmitUpdate(a, 0, 10, Weights(1, 1), At(2)).ok());  // the good one is accepted
  auto dup = m->SubmitUpdate(a, 0, 10, Weights(9, 9), At(2));
  EXPECT_EQ(dup.code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(m->SubmitUpdate(b, 0, 10, Weights(3, 3), At(3)).ok());
  EXPECT_NEAR((*m->Model(1))[0].second[0].item<float>(), 2.0f, 1e-6);  // no refused value leaked in
  const auto r = m->refusals();
  EXPECT_EQ(r.at("bad_tensor"), 3);
  EXPECT_EQ(r.at("bad_examples"), 1);
  EXPECT_EQ(r.at("non_finite"), 2);
  EXPECT_EQ(r.at("wrong_round"), 1);
  EXPECT_EQ(r.at("unknown_site"), 1);
  EXPECT_EQ(r.at("duplicate"), 1);
}

TEST_F(RoundManagerTest, SamplingIsSeededAndRespectsFractionAndMinimum) {
  const auto sample = [&](uint64_t seed) {
    RoundManagerOptions o;
    o.seed = seed;
    o.fraction = 0.3;
    o.min_sites = 2;
    auto m = Manager(o);
    std::vector<int64_t> ids;
    for (int i = 0; i < 10; ++i) ids.push_back(*m->Join("s" + std::to_string(i), 5, At(0)));
    std::vector<int64_t> chosen;
    for (int64_t s : ids) {
      auto task = m->GetTask(s, At(1));
      if (task->kind == Task::Kind::kTrain) {
        chosen.push_back(s);
      } else {
        EXPECT_EQ(task->reason, "not sampled this round");  // the others are told why
      }
    }
    return chosen;
  };
  EXPECT_EQ(sample(1).size(), 3u);  // ceil(0.3 x 10)
  EXPECT_EQ(sample(1), sample(1));
  bool differs = false;
  for (uint64_t s = 2; s < 6; ++s) differs = differs || sample(s) != sample(1);
  EXPECT_TRUE(differs);
}

// Ids follow the join order, which is timing (100 sites joining from a few threads join in a
// different order each run). Sampling and the aggregate must not depend on it.
TEST_F(RoundManagerTest, SamplingAndTheAggregateDoNotDependOnTheJoinOrder) {
  struct Outcome {
    std::vector<std::string> sampled;
    float aggregate = 0;
  };
  // Three sites of 1e30, 1 and -1e30 with equal weights: summed in the order 1e30, 1, -1e30 the
  // 1 is lost (0); in the order 1e30, -1e30, 1 it is not (1/3). So the aggregate shows the order.
  const std::map<std::string, float> value = {{"a", 1e30f}, {"b", 1.0f}, {"c", -1e30f}};
  const auto run = [&](const std::vector<std::string>& join_order) {
    RoundManagerOptions o;
    o.seed = 7;
    o.rounds = 1;
    o.fraction = 0.3;
    o.min_available = 13;
    auto m = Manager(o);
    std::map<std::string, int64_t> id;
    for (const auto& name : join_order) id[name] = *m->Join(name, 10, At(0));
    Outcome out;
    for (const auto& [name, site] : id) {
      if (m->GetTask(site, At(1))->kind == Task::Kind::kTrain) out.sampled.push_back(name);
    }
    for (const auto& name : out.sampled) {
      const float v = value.count(name) ? value.at(name) : 0.0f;
      EXPECT_TRUE(m->SubmitUpdate(id[name], 0, 10, Weights(v, v), At(2)).ok());
    }
    if (m->model_version() == 1) out.aggregate = (*m->Model(1))[0].second[0].item<float>();
    return out;
  };
  std::vector<std::string> names;
  for (int i = 0; i < 10; ++i) names.push_back("s" + std::to_string(i));
  names.insert(names.end(), {"a", "b", "c"});
  const Outcome first = run(names);
  EXPECT_EQ(first.sampled.size(), 4u);  // ceil(0.3 x 13)
  for (int shuffle = 0; shuffle < 5; ++shuffle) {
    std::vector<std::string> order = names;
    std::rotate(order.begin(), order.begin() + 3 * shuffle + 1, order.end());
    if (shuffle % 2) std::reverse(order.begin(), order.end());
    const Outcome other = run(order);
    EXPECT_EQ(other.sampled, first.sampled) << "join order " << shuffle;
    EXPECT_EQ(std::memcmp(&other.aggregate, &first.aggregate, sizeof(float)), 0) << "join order " << shuffle;
  }
  // The sums themselves: joined a, c, b (ids a < c < b), they are still summed a, b, c, so the 1
  // is lost (in id order it would give 1/3).
  RoundManagerOptions o;
  o.min_available = 3;
  auto m = Manager(o);
  const int64_t a = *m->Join("a", 10, At(0)), c = *m->Join("c", 10, At(0)), b = *m->Join("b", 10, At(0));
  for (int64_t s : {a, b, c}) ASSERT_EQ(m->GetTask(s, At(1))->kind, Task::Kind::kTrain);
  ASSERT_TRUE(m->SubmitUpdate(a, 0, 10, Weights(1e30f, 0), At(2)).ok());
  ASSERT_TRUE(m->SubmitUpdate(b, 0, 10, Weights(1, 0), At(2)).ok());
  ASSERT_TRUE(m->SubmitUpdate(c, 0, 10, Weights(-1e30f, 0), At(2)).ok());
  EXPECT_EQ((*m->Model(1))[0].second[0].item<float>(), 0.0f);
  EXPECT_THAT(m->history()[0].contributors, ElementsAre(a, b, c));
}

TEST_F(RoundManagerTest, SitesWithoutHeartbeatAreNotSampledAndAllRoundsEndInStop) {
  RoundManagerOptions o;
  o.rounds = 1;
  o.site_timeout = seconds(60);
  auto m = Manager(o);
  const int64_t a = *m->Join("a", 10, At(0)), b = *m->Join("b", 10, At(0));
  ASSERT_TRUE(m->Heartbeat(a, At(100)).ok());
  auto task = m->GetTask(a, At(100));  // b went silent 100 s ago: only a is sampled
  ASSERT_EQ(task->kind, Task::Kind::kTrain);
  EXPECT_EQ(m->GetTask(b, At(101))->kind, Task::Kind::kWait);
  ASSERT_TRUE(m->SubmitUpdate(a, 0, 10, Weights(1, 1), At(102)).ok());
  EXPECT_EQ(m->GetTask(a, At(103))->kind, Task::Kind::kStop);
  EXPECT_TRUE(m->finished());
}

TEST_F(RoundManagerTest, FederatedEvaluationSumsAreAddedOverContributorsAndBadOnesRefused) {
  RoundManagerOptions o;
  o.rounds = 1;
  o.min_sites = 2;
  o.min_available = 2;
  auto m = Manager(o);
  const int64_t a = *m->Join("a", 10, At(0)), b = *m->Join("b", 30, At(0));
  ASSERT_EQ(m->GetTask(a, At(1))->kind, Task::Kind::kTrain);
  auto refused = m->SubmitUpdate(a, 0, 10, Weights(1, 1), At(2), {{"eval_correct", std::nan("")}});
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("eval_correct"));
  EXPECT_EQ(m->refusals().at("bad_metrics"), 1);
  // Then good ones: site a got 3 of 4 right, site b 6 of 12: 9 / 16 overall.
  ASSERT_TRUE(m->SubmitUpdate(a, 0, 10, Weights(1, 1), At(2), {{"eval_correct", 3}, {"eval_examples", 4}}).ok());
  ASSERT_TRUE(m->SubmitUpdate(b, 0, 30, Weights(1, 1), At(2), {{"eval_correct", 6}, {"eval_examples", 12}}).ok());
  const auto closed = m->TakeClosedRounds();
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_EQ(closed[0].version, 1);
  EXPECT_DOUBLE_EQ(closed[0].record.site_metrics.at("eval_correct"), 9);
  EXPECT_DOUBLE_EQ(closed[0].record.site_metrics.at("eval_examples"), 16);
  EXPECT_TRUE(m->TakeClosedRounds().empty());  // taken once
}

TEST_F(RoundManagerTest, StateRestoresModelRegistryCountersAndTheOpenRoundsIndex) {
  RoundManagerOptions o;
  o.rounds = 3;
  o.min_sites = 2;
  o.min_available = 2;
  o.fraction = 0.5;  // 2 of 4 sampled: the sample depends on the round index
  auto m = std::make_unique<RoundManager>(o, Weights(0, 0), *aggregation::MakeStrategy({"fedavgm"}));
  for (const char* name : {"a", "b", "c", "d"}) ASSERT_TRUE(m->Join(name, 10, At(0)).ok());
  auto play_round = [&](RoundManager& rm, int64_t round, Time t) {
    std::vector<int64_t> chosen;
    for (int64_t s = 1; s <= 4; ++s) {
      auto task = rm.GetTask(s, t);
      if (task->kind == Task::Kind::kTrain) chosen.push_back(s);
    }
    for (int64_t s : chosen) EXPECT_TRUE(rm.SubmitUpdate(s, round, 10, Weights(s, round), t).ok());
    return chosen;
  };
  play_round(*m, 0, At(1));
  const auto closed = m->TakeClosedRounds();
  ASSERT_EQ(closed.size(), 1u);
  // Round 1 opened when round 0 closed. The state saved at round 0's close, and State() taken
  // now with round 1 open, both restore to "round 1 next", so it is reopened under its index.
  for (const auto& state : {closed[0].state, m->State()}) {
    auto restored = std::make_unique<RoundManager>(o, Weights(0, 0), *aggregation::MakeStrategy({"fedavgm"}));
    ASSERT_TRUE(restored->LoadState(state, At(50)).ok());
    EXPECT_EQ(restored->model_version(), 1);
    EXPECT_EQ(restored->rounds_done(), 1);
    EXPECT_EQ(*restored->SiteName(3), "c");
    EXPECT_EQ(*restored->Join("c", 10, At(50)), 3);  // a rejoining site keeps its id
    // A site that joined the lost incarnation after this state (as 5) may still use that id: a new
    // site never gets it, nor any other the lost incarnation could have handed out.
    RoundManager other(o, Weights(0, 0), *aggregation::MakeStrategy({"fedavgm"}));
    ASSERT_TRUE(other.LoadState(state, At(50)).ok());
    EXPECT_EQ(*other.Join("e", 10, At(50)), 5 + (1 << 16));
    EXPECT_EQ(*other.Join("f", 10, At(50)), 6 + (1 << 16));
    EXPECT_EQ(*other.Join("a", 10, At(50)), 1);
    RoundManager again(o, Weights(0, 0), *aggregation::MakeStrategy({"fedavgm"}));  // and after a second restore
    ASSERT_TRUE(again.LoadState(other.State(), At(60)).ok());
    EXPECT_EQ(*again.Join("g", 10, At(60)), 7 + 2 * (1 << 16));
    EXPECT_EQ(restored->history().size(), 1u);
    // Both managers go on identically: same samples, same (momentum) aggregates.
    auto twin = std::make_unique<RoundManager>(o, Weights(0, 0), *aggregation::MakeStrategy({"fedavgm"}));
    ASSERT_TRUE(twin->LoadState(closed[0].state, At(50)).ok());
    for (int64_t r = 1; r < 3; ++r) {
      EXPECT_EQ(play_round(*restored, r, At(50 + r)), play_round(*twin, r, At(50 + r)));
    }
    EXPECT_TRUE(restored->finished());
    EXPECT_TRUE(at::equal((*restored->Model(3))[0].second, (*twin->Model(3))[0].second));
  }
  // A malformed state changes nothing.
  auto fresh = Manager(o);
  EXPECT_FALSE(fresh->LoadState({{"w", torch::zeros({3})}}, At(0)).ok());
  EXPECT_EQ(fresh->model_version(), 0);
  // Nor does a registry that names a site twice (sampling walks the names: a site would be
  // sampled twice).
  NamedTensors twice = m->State();
  for (auto& [name, t] : twice) {
    if (name != "coordinator/registry") continue;
    std::string text(static_cast<const char*>(t.data_ptr()), t.numel());
    const std::string d = "\"name\":\"d\"";
    ASSERT_NE(text.find(d), std::string::npos) << text;
    text.replace(text.find(d), d.size(), "\"name\":\"c\"");
    t = torch::from_blob(text.data(), {static_cast<int64_t>(text.size())}, torch::kUInt8).clone();
  }
  const absl::Status refused = fresh->LoadState(twice, At(0));
  EXPECT_EQ(refused.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("name 'c' twice"));
  EXPECT_EQ(fresh->model_version(), 0);
}

TEST_F(RoundManagerTest, WaitForChangeWakesOnAJoinAndTimesOutOtherwise) {
  auto m = Manager({});
  const uint64_t seen = m->change_count();
  const auto start = std::chrono::steady_clock::now();
  m->WaitForChange(seen, start + std::chrono::milliseconds(50));  // nothing happens: returns at the timeout
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(50));
  std::thread joiner([&] { ASSERT_TRUE(m->Join("a", 1, At(0)).ok()); });
  m->WaitForChange(seen, std::chrono::steady_clock::now() + std::chrono::seconds(60));
  joiner.join();
  EXPECT_NE(m->change_count(), seen);
}

}  // namespace
}  // namespace allround::coordinator

namespace allround::runtime {
namespace {

TEST(SiteIndices, SingleRangesAndListsAndClearRefusals) {
  EXPECT_THAT(*ParseSiteIndices("3"), ::testing::ElementsAre(3));
  EXPECT_THAT(*ParseSiteIndices("0-3"), ::testing::ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(*ParseSiteIndices("1,4,7-8"), ::testing::ElementsAre(1, 4, 7, 8));
  EXPECT_EQ(ParseSiteIndices("0-99")->size(), 100u);
  for (const char* bad : {"", "a", "3-1", "-2", "1,1", "0-2,2", "1-", "1.5"}) {
    auto r = ParseSiteIndices(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("--site-index")) << bad;
  }
}

}  // namespace
}  // namespace allround::runtime
