// The federated RoundManager driven with a fake clock: sampling, deadlines, stragglers, rejoining
// and every refusal, each followed by a good update that is accepted.

#include "coordinator/round_manager.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

namespace allround::coordinator {
namespace {

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
  m->GetTask(a, At(0));
  ASSERT_TRUE(m->SubmitUpdate(a, 0, 10, Weights(1, 1), At(1)).ok());
  m->Tick(At(11));
  EXPECT_EQ(m->model_version(), 0);  // nothing aggregated from a single update
  ASSERT_EQ(m->history().size(), 1u);
  EXPECT_TRUE(m->history()[0].contributors.empty());
  auto task = m->GetTask(b, At(12));  // a fresh round is sampled
  ASSERT_EQ(task->kind, Task::Kind::kTrain);
  EXPECT_EQ(task->round, 1);
}

TEST_F(RoundManagerTest, EveryRefusalHasAReasonAndAGoodUpdateStillCounts) {
  RoundManagerOptions o;
  o.min_sites = 2;
  auto m = Manager(o);
  const int64_t a = *m->Join("a", 10, At(0)), b = *m->Join("b", 10, At(0));
  m->GetTask(a, At(0));
  struct Case {
    std::string name;
    absl::Status got;
    std::string want;
  };
  const std::vector<Case> cases = {
      {"wrong shape", m->SubmitUpdate(a, 0, 10, {{"w", torch::zeros({3})}}, At(1)), "does not match the model's w [2]"},
      {"wrong dtype", m->SubmitUpdate(a, 0, 10, {{"w", torch::zeros({2}, torch::kDouble)}}, At(1)), "Double"},
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
  EXPECT_EQ(r.at("bad_tensor"), 4);
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

}  // namespace
}  // namespace allround::coordinator
