// Byzantine robustness (issue 33): the simulated attacks against numbers computed by hand, the
// attackers' draw, the coordinator's norm_bound step, the job checks, and a RoundManager round in
// which the attackers are replaced and the label flippers told so. (Centered clipping and
// multi-Krum are tested with the other strategies, in strategy_test.cc.)

#include "algorithms/aggregation/byzantine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <string>

#include "coordinator/round_manager.h"
#include "privacy/secure_aggregation.h"
#include "privacy/update_pipeline.h"

namespace allround::aggregation {
namespace {

using ::testing::HasSubstr;

NamedTensors Model(std::vector<float> w) { return {{"w", torch::tensor(w)}, {"bn.count", torch::tensor(int64_t{7})}}; }
SiteUpdate Update(int64_t site, std::vector<float> w) { return {site, 10, Model(std::move(w))}; }
std::vector<float> W(const NamedTensors& m) {
  const at::Tensor t = m[0].second.contiguous();
  return {t.data_ptr<float>(), t.data_ptr<float>() + t.numel()};
}

// Site names for a round's updates, one per flag.
std::vector<std::string> Names(const std::vector<bool>& flags) {
  std::vector<std::string> out;
  for (size_t i = 0; i < flags.size(); ++i) out.push_back("s" + std::to_string(i));
  return out;
}

AttackSpec Spec(const std::string& kind, int64_t sites) {
  Job job;
  EXPECT_TRUE(SetJobKey(job, "attack.kind", kind).ok());
  EXPECT_TRUE(SetJobKey(job, "attack.sites", std::to_string(sites)).ok());
  return AttackSpecFromJob(job);
}

absl::Status Validate(const std::map<std::string, std::string>& keys) {
  Job job;
  for (const auto& [k, v] : keys) {
    if (auto s = SetJobKey(job, k, v); !s.ok()) return s;
  }
  return ValidateJob(job);
}

TEST(Attack, SignFlipAndScalingMoveOnlyTheAttackersAlongTheirOwnDelta) {
  const NamedTensors global = Model({1, 1});
  std::vector<SiteUpdate> u = {Update(1, {2, 3}), Update(2, {0, 1})};
  ASSERT_TRUE(ApplyAttack(Spec("sign_flip", 1), global, 0, {true, false}, Names({true, false}), u).ok());
  EXPECT_THAT(W(u[0].weights), ::testing::ElementsAre(0.f, -1.f));  // 1 - (2 - 1), 1 - (3 - 1)
  EXPECT_THAT(W(u[1].weights), ::testing::ElementsAre(0.f, 1.f));   // honest: untouched
  EXPECT_EQ(u[0].weights[1].second.item<int64_t>(), 7);             // integer tensors untouched
  u = {Update(1, {2, 3}), Update(2, {0, 1})};
  AttackSpec scaling = Spec("scaling", 1);
  scaling.scale = 10;
  ASSERT_TRUE(ApplyAttack(scaling, global, 0, {false, true}, Names({false, true}), u).ok());
  EXPECT_THAT(W(u[1].weights), ::testing::ElementsAre(-9.f, 1.f));  // 1 + 10 (0 - 1), 1 + 10 (1 - 1)
  EXPECT_THAT(W(u[0].weights), ::testing::ElementsAre(2.f, 3.f));
}

TEST(Attack, GaussianIsSeededByJobSeedAndRoundAndHasItsSigma) {
  const NamedTensors global = {{"w", torch::zeros({20000})}};
  AttackSpec spec = Spec("gaussian", 1);
  spec.sigma = 2.0;
  auto run = [&](uint64_t seed, int64_t round) {
    spec.seed = seed;
    std::vector<SiteUpdate> u = {{1, 10, {{"w", torch::ones({20000})}}}};
    EXPECT_TRUE(ApplyAttack(spec, global, round, {true}, Names({true}), u).ok());
    return u[0].weights[0].second;
  };
  const at::Tensor a = run(5, 3);
  EXPECT_TRUE(at::equal(a, run(5, 3)));
  EXPECT_FALSE(at::equal(a, run(5, 4)));
  EXPECT_FALSE(at::equal(a, run(6, 3)));
  EXPECT_NEAR(a.mean().item<double>(), 0.0, 0.05);  // the honest delta is replaced, not added to
  EXPECT_NEAR(a.std().item<double>(), 2.0, 0.05);
}

TEST(Attack, AlieSendsTheHonestMeanMinusZStandardDeviations) {
  // Baruch et al.: n = 10, f = 2: s = floor(10/2 + 1) - 2 = 4, z = Phi^-1(6/10) = 0.253347.
  EXPECT_NEAR(AlieZ(10, 2), 0.2533471, 1e-6);
  EXPECT_NEAR(AlieZ(50, 12), 0.5828415, 1e-6);  // Phi^-1(36/50), their own setting
  EXPECT_EQ(AlieZ(10, 1), 0.0);                 // (10 - 5) / 10 = 0.5: the mean itself
  // Honest deltas (from 0) of the second coordinate: 1, 3 (mean 2, population std 1); the
  // attackers' own updates do not count; z forced to 2: 2 - 2 * 1 = 0. First coordinate: all 4.
  AttackSpec spec = Spec("alie", 2);
  spec.alie_z = 2;
  std::vector<SiteUpdate> u = {Update(1, {4, 1}), Update(2, {100, 100}), Update(3, {4, 3}), Update(4, {-50, 9})};
  ASSERT_TRUE(ApplyAttack(spec, Model({0, 0}), 0, {false, true, false, true}, Names({false, true, false, true}), u).ok());
  EXPECT_THAT(W(u[1].weights), ::testing::ElementsAre(4.f, 0.f));
  EXPECT_THAT(W(u[3].weights), ::testing::ElementsAre(4.f, 0.f));
  EXPECT_THAT(W(u[2].weights), ::testing::ElementsAre(4.f, 3.f));
}

TEST(Attack, LabelFlipLeavesUpdatesAndFlipsLabels) {
  std::vector<SiteUpdate> u = {Update(1, {2, 3})};
  ASSERT_TRUE(ApplyAttack(Spec("label_flip", 1), Model({0, 0}), 0, {true}, Names({true}), u).ok());
  EXPECT_THAT(W(u[0].weights), ::testing::ElementsAre(2.f, 3.f));
  const at::Tensor flipped = FlipLabels(torch::tensor({0, 3, 9}, torch::kLong), 10);
  EXPECT_EQ(flipped[0].item<int64_t>(), 9);
  EXPECT_EQ(flipped[1].item<int64_t>(), 6);
  EXPECT_EQ(flipped[2].item<int64_t>(), 0);
}

TEST(Attack, RefusesMismatchedFlagsOrLayoutsChangingNothing) {
  std::vector<SiteUpdate> u = {Update(1, {2, 3}), Update(2, {0, 1})};
  EXPECT_FALSE(ApplyAttack(Spec("sign_flip", 1), Model({0, 0}), 0, {true}, Names({true}), u).ok());
  u.push_back({3, 10, {{"w", torch::zeros({3})}, {"bn.count", torch::tensor(int64_t{7})}}});
  auto s = ApplyAttack(Spec("sign_flip", 1), Model({0, 0}), 0, {true, false, false}, Names({true, false, false}), u);
  EXPECT_THAT(std::string(s.message()), HasSubstr("site 3"));
  EXPECT_THAT(W(u[0].weights), ::testing::ElementsAre(2.f, 3.f));
}

TEST(Attack, AttackersAreASeededDrawOfTheJoinedSitesWhateverTheirOrder) {
  AttackSpec spec = Spec("sign_flip", 3);
  std::vector<std::string> names;
  for (int i = 0; i < 10; ++i) names.push_back("s" + std::to_string(i));
  const auto chosen = ChooseAttackers(spec, names);
  EXPECT_EQ(chosen.size(), 3u);
  std::vector<std::string> reversed(names.rbegin(), names.rend());
  EXPECT_EQ(ChooseAttackers(spec, reversed), chosen);
  spec.seed = 2;
  std::set<std::set<std::string>> draws;
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    spec.seed = seed;
    draws.insert(ChooseAttackers(spec, names));
  }
  EXPECT_GT(draws.size(), 1u);  // the seed decides
  spec.sites = 20;
  EXPECT_EQ(ChooseAttackers(spec, names).size(), 10u);
  EXPECT_TRUE(ChooseAttackers(Spec("none", 3), names).empty());
}

TEST(Attack, JobChecksRefuseWhatCannotWork) {
  EXPECT_TRUE(Validate({{"attack.kind", "scaling"}, {"attack.sites", "2"}}).ok());
  EXPECT_THAT(std::string(Validate({{"attack.kind", "scaling"}}).message()), HasSubstr("attack.sites"));
  EXPECT_THAT(std::string(Validate({{"attack.kind", "flip"}, {"attack.sites", "1"}}).message()), HasSubstr("alie"));
  EXPECT_THAT(std::string(Validate({{"attack.kind", "label_flip"}, {"attack.sites", "1"}, {"mode", "dino"}}).message()),
              HasSubstr("label_flip"));
  if (privacy::SecureAggregationBuilt()) {
    EXPECT_THAT(std::string(Validate({{"attack.kind", "alie"}, {"attack.sites", "1"}, {"federated.min_sites", "2"},
                                      {"privacy.secure_aggregation", "secagg+"}})
                                .message()),
                HasSubstr("secure aggregation"));
    EXPECT_THAT(std::string(Validate({{"pipeline.coordinator", "norm_bound"}, {"federated.min_sites", "2"},
                                      {"privacy.secure_aggregation", "secagg+"}})
                                .message()),
                HasSubstr("norm_bound"));
    // Label flipping happens at the sites: it runs under secure aggregation.
    EXPECT_TRUE(Validate({{"attack.kind", "label_flip"}, {"attack.sites", "1"}, {"federated.min_sites", "2"},
                          {"privacy.secure_aggregation", "secagg+"}})
                    .ok());
  }
}

TEST(NormBound, TheCoordinatorStepBoundsEachUpdate) {
  Job job;
  ASSERT_TRUE(SetJobKey(job, "pipeline.coordinator", "norm_bound").ok());
  ASSERT_TRUE(SetJobKey(job, "pipeline.norm_bound", "2").ok());
  auto pipeline = privacy::UpdatePipeline::Make(job, privacy::Side::kCoordinator);
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  auto out = pipeline->ApplyToWeights({1, 0, "s"}, Model({1, 1}), Model({7, 9}), 10);  // delta [6, 8], norm 10
  ASSERT_TRUE(out.ok());
  EXPECT_THAT(W(*out), ::testing::ElementsAre(1 + 1.2f, 1 + 1.6f));
  out = pipeline->ApplyToWeights({1, 0, "s"}, Model({1, 1}), Model({2, 1}), 10);  // within: unchanged
  EXPECT_THAT(W(*out), ::testing::ElementsAre(2.f, 1.f));
}

using coordinator::RoundManager;
using coordinator::RoundManagerOptions;
using coordinator::Task;
using coordinator::Time;

TEST(ByzantineRound, TheCoordinatorReplacesTheAttackersAndTellsLabelFlippers) {
  const Time t = Time() + std::chrono::hours(1);
  for (const std::string kind : {"scaling", "label_flip"}) {
    RoundManagerOptions o;
    o.rounds = 1;
    o.min_sites = 4;
    o.min_available = 4;
    o.attack = Spec(kind, 1);
    o.attack.scale = -3;
    Job job;
    ASSERT_TRUE(SetJobKey(job, "pipeline.coordinator", "norm_bound").ok());
    ASSERT_TRUE(SetJobKey(job, "pipeline.norm_bound", "100").ok());
    o.pipeline = *privacy::UpdatePipeline::Make(job, privacy::Side::kCoordinator);
    RoundManager m(o, Model({0, 0}), *MakeStrategy(Job{}));
    std::vector<int64_t> ids;
    std::vector<std::string> names = {"d", "c", "b", "a"};
    for (const auto& n : names) ids.push_back(*m.Join(n, 10, t));
    const std::string attacker = *ChooseAttackers(o.attack, names).begin();
    for (size_t i = 0; i < ids.size(); ++i) {
      auto task = m.GetTask(ids[i], t);
      ASSERT_EQ(task->kind, Task::Kind::kTrain);
      EXPECT_EQ(task->flip_labels, kind == "label_flip" && names[i] == attacker) << names[i];
    }
    for (int64_t id : ids) ASSERT_TRUE(m.SubmitUpdate(id, 0, 10, Model({4, 0}), t).ok());
    const auto history = m.history();
    ASSERT_EQ(history.size(), 1u);
    const auto& record = history[0];
    ASSERT_EQ(record.attackers.size(), 1u);
    EXPECT_EQ(*m.SiteName(record.attackers[0]), attacker);
    // scaling by -3: three sites send [4, 0], the attacker [-12, 0]: the mean is [0, 0].
    // label_flip: the coordinator changes nothing (the site trained on flipped labels).
    const float expect = kind == "scaling" ? 0.f : 4.f;
    EXPECT_THAT(W(*m.Model(1)), ::testing::ElementsAre(expect, 0.f)) << kind;
  }
}

TEST(ByzantineRound, NormBoundLimitsWhatAScaledAttackerMovesAnyStrategy) {
  const Time t = Time() + std::chrono::hours(1);
  RoundManagerOptions o;
  o.rounds = 1;
  o.min_sites = 2;
  o.min_available = 2;
  o.attack = Spec("scaling", 1);
  o.attack.scale = 1000;
  Job job;
  ASSERT_TRUE(SetJobKey(job, "pipeline.coordinator", "norm_bound").ok());
  ASSERT_TRUE(SetJobKey(job, "pipeline.norm_bound", "1").ok());
  o.pipeline = *privacy::UpdatePipeline::Make(job, privacy::Side::kCoordinator);
  RoundManager m(o, Model({0, 0}), *MakeStrategy(Job{}));
  const int64_t a = *m.Join("a", 10, t), b = *m.Join("b", 10, t);
  for (int64_t id : {a, b}) ASSERT_EQ(m.GetTask(id, t)->kind, Task::Kind::kTrain);
  for (int64_t id : {a, b}) ASSERT_TRUE(m.SubmitUpdate(id, 0, 10, Model({0, 0.5f}), t).ok());
  // The honest update [0, 0.5] is within 1; the attacker's [0, 500] is bounded to [0, 1]: mean 0.75.
  EXPECT_NEAR(W(*m.Model(1))[1], 0.75, 1e-6);
}

}  // namespace
}  // namespace allround::aggregation
