// Site-level DP-FedAvg (privacy/site_dp.h): the coordinator's clipped, noised mean against the
// same mean computed by hand, adaptive clipping's step, the accountant and the budget stop, the
// checkpointed state, the job's refusals, and the RoundManager running Poisson-sampled DP rounds
// to the end of a budget and resuming from its state.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "common/job.h"
#include "coordinator/round_manager.h"
#include "privacy/accountant.h"
#include "privacy/site_dp.h"

namespace allround {
namespace {

using privacy::SiteDp;
using privacy::SiteDpSpec;
using tensor::NamedTensors;

double Norm(const NamedTensors& t) {
  double s = 0;
  for (const auto& [name, x] : t) s += x.to(at::kDouble).square().sum().item<double>();
  return std::sqrt(s);
}

SiteDpSpec Spec(double z, double clip) {
  SiteDpSpec spec;
  spec.on = true;
  spec.noise_multiplier = z;
  spec.clip = clip;
  spec.secret_seed = false;
  spec.job_seed = 5;
  spec.sampling_rate = 0.1;
  spec.rounds = 100;
  return spec;
}

// A delta of L2 norm `norm` along a fixed direction, on top of `global`.
NamedTensors Update(const NamedTensors& global, double norm, int64_t seed) {
  torch::manual_seed(seed);
  NamedTensors out;
  NamedTensors dirs;
  for (const auto& [name, g] : global) {
    if (at::isFloatingType(g.scalar_type())) dirs.emplace_back(name, torch::randn(g.sizes(), g.options()));
  }
  const double n = Norm(dirs);
  size_t j = 0;
  for (const auto& [name, g] : global) {
    out.emplace_back(name, at::isFloatingType(g.scalar_type()) ? g + dirs[j++].second * (norm / n) : g.clone());
  }
  return out;
}

TEST(PrivacySiteDp, ClipToNormBoundsTheWholeUpdate) {
  NamedTensors delta{{"a", torch::full({3}, 2.0)}, {"b", torch::full({4}, -1.0, torch::kDouble)},
                     {"n", torch::tensor({7}, torch::kLong)}};
  const double before = privacy::ClipToNorm(delta, 1.0);
  EXPECT_NEAR(before, std::sqrt(12.0 + 4.0), 1e-9);
  EXPECT_NEAR(Norm({delta[0], delta[1]}), 1.0, 1e-6);
  EXPECT_EQ(delta[2].second.item<int64_t>(), 7);  // integer tensors are not part of the update
  NamedTensors small{{"a", torch::full({2}, 0.1)}};
  EXPECT_NEAR(privacy::ClipToNorm(small, 1.0), std::sqrt(0.02), 1e-7);
  EXPECT_NEAR(small[0].second[0].item<float>(), 0.1f, 1e-7);
}

TEST(PrivacySiteDp, MeanIsTheClippedSumPlusNoiseOverTheExpectedCount) {
  const NamedTensors global{{"w", torch::rand({20000})}, {"b", torch::zeros({3}, torch::kDouble)},
                            {"n", torch::tensor({3}, torch::kLong)}};
  const NamedTensors u1 = Update(global, 0.5, 1), u2 = Update(global, 4.0, 2), u3 = Update(global, 2.0, 3);
  SiteDp dp(Spec(1.0, 1.0));
  // u2 claims to be within the clip and is not: the coordinator clips it and counts it outside.
  auto out = dp.Aggregate(global, {{&u1, 1.0}, {&u2, 1.0}, {&u3, 0.0}}, {7, 2.5});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->clipped_here, 2);  // u2 and u3 came unclipped
  EXPECT_EQ(out->clip, 1.0);
  EXPECT_EQ(out->next_clip, 1.0);  // no adaptive clipping
  ASSERT_EQ(out->mean_delta.size(), 2u);  // the integer tensor is not averaged
  // The residual after the clipped sum: Gaussian noise of std z C = 1 on every coordinate.
  std::vector<at::Tensor> residual;
  for (size_t k = 0; k < 2; ++k) {
    const at::Tensor d1 = u1[k].second.to(at::kDouble) - global[k].second.to(at::kDouble);
    const at::Tensor d2 = u2[k].second.to(at::kDouble) - global[k].second.to(at::kDouble);
    const at::Tensor d3 = u3[k].second.to(at::kDouble) - global[k].second.to(at::kDouble);
    const at::Tensor sum = d1 + d2 / 4.0 + d3 / 2.0;
    EXPECT_EQ(out->mean_delta[k].second.scalar_type(), global[k].second.scalar_type());
    residual.push_back((out->mean_delta[k].second.to(at::kDouble) * 2.5 - sum).reshape({-1}));
  }
  const at::Tensor r = at::cat(residual);
  EXPECT_NEAR(r.mean().item<double>(), 0.0, 0.03);
  EXPECT_NEAR(r.std().item<double>(), 1.0, 0.03);
  // The same round again draws the same noise (the round's seed); another round other noise.
  SiteDp again(Spec(1.0, 1.0));
  auto same = again.Aggregate(global, {{&u1, 1.0}, {&u2, 1.0}, {&u3, 0.0}}, {7, 2.5});
  auto other = again.Aggregate(global, {{&u1, 1.0}, {&u2, 1.0}, {&u3, 0.0}}, {8, 2.5});
  EXPECT_TRUE(same->mean_delta[0].second.equal(out->mean_delta[0].second));
  EXPECT_FALSE(other->mean_delta[0].second.equal(out->mean_delta[0].second));
  // A wrong layout is refused and changes nothing.
  const NamedTensors bad{{"w", torch::rand({5})}};
  EXPECT_FALSE(dp.Aggregate(global, {{&bad, 1.0}}, {9, 2.5}).ok());
  EXPECT_EQ(dp.rounds(), 1);
}

TEST(PrivacySiteDp, AdaptiveClipMovesGeometricallyTowardTheQuantile) {
  const NamedTensors global{{"w", torch::zeros({50})}};
  SiteDpSpec spec = Spec(0.01, 1.0);
  spec.quantile = 0.8;
  spec.clip_lr = 0.2;
  spec.count_noise = 0.01;
  SiteDp dp(spec);
  double sigma_b = 0;
  auto z_delta = dp.DeltaNoise(4.0, &sigma_b);
  ASSERT_TRUE(z_delta.ok());
  EXPECT_EQ(sigma_b, 0.01);
  // Andrew et al. Theorem 1: the combined release has multiplier z.
  EXPECT_NEAR(1.0 / std::sqrt(1.0 / (*z_delta * *z_delta) + 1.0 / (4 * sigma_b * sigma_b)), 0.01, 1e-12);
  const NamedTensors a = Update(global, 0.5, 1), b = Update(global, 0.5, 2), c = Update(global, 2, 3),
                     d = Update(global, 3, 4);
  auto out = dp.Aggregate(global, {{&a, 1}, {&b, 1}, {&c, 0}, {&d, 0}}, {0, 4.0});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_NEAR(out->within_fraction, 0.5, 0.01);
  EXPECT_NEAR(out->next_clip, std::exp(-0.2 * (out->within_fraction - 0.8)), 1e-12);
  EXPECT_NEAR(dp.clip(), 1.06, 0.005);  // half within, target 80%: C grows
  // A count noise that leaves nothing for the update's is refused with the reason.
  spec.count_noise = 0.004;
  auto refused = SiteDp(spec).DeltaNoise(4.0);
  EXPECT_THAT(refused.status().message(), ::testing::HasSubstr("2 sigma_b > z"));
}

TEST(PrivacySiteDp, AccountsEveryRoundAndStopsAtTheLastWithinBudget) {
  SiteDpSpec spec = Spec(2.0, 1.0);
  spec.target_epsilon = 1.0;
  SiteDp dp(spec);
  const NamedTensors global{{"w", torch::zeros({4})}};
  int64_t rounds = 0;
  while (dp.BudgetAllowsAnotherRound()) {
    ASSERT_TRUE(dp.Aggregate(global, {}, {static_cast<uint64_t>(rounds), 3.0}).ok());  // none sampled: noise alone
    ++rounds;
    ASSERT_LT(rounds, 10000);
  }
  privacy::RdpAccountant reference;
  reference.Compose(0.1, 2.0, rounds);
  EXPECT_DOUBLE_EQ(dp.Spent().epsilon, reference.Spent(1e-5).epsilon);
  EXPECT_LE(dp.Spent().epsilon, 1.0);
  reference.Compose(0.1, 2.0, 1);
  EXPECT_GT(reference.Spent(1e-5).epsilon, 1.0);
  EXPECT_GT(rounds, 10);
}

TEST(PrivacySiteDp, StateRoundTripsAndAPlainCheckpointIsRefused) {
  SiteDpSpec spec = Spec(1.0, 1.0);
  spec.quantile = 0.5;
  spec.secret_seed = true;
  SiteDp dp(spec);
  const NamedTensors global{{"w", torch::zeros({4})}};
  const NamedTensors u = Update(global, 3, 1);
  ASSERT_TRUE(dp.Aggregate(global, {{&u, 0}}, {0, 10.0}).ok());
  SiteDp fresh(spec);
  EXPECT_NE(fresh.secret(), dp.secret());  // OS entropy, each run its own
  ASSERT_TRUE(fresh.LoadState(dp.State()).ok());
  EXPECT_EQ(fresh.secret(), dp.secret());
  EXPECT_EQ(fresh.clip(), dp.clip());
  EXPECT_EQ(fresh.rounds(), 1);
  EXPECT_DOUBLE_EQ(fresh.Spent().epsilon, dp.Spent().epsilon);
  auto refused = fresh.LoadState({{"model/w", torch::zeros({4})}});
  EXPECT_EQ(refused.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(refused.message(), ::testing::HasSubstr("were not accounted"));
}

TEST(PrivacySiteDp, SecureAggregationSplitsTheNoiseAmongTheSites) {
  // Each site's share: z C / sqrt(t), so t shares sum to noise of std z C.
  EXPECT_DOUBLE_EQ(privacy::NoiseShareStd(2.0, 0.5, 4), 0.5);
  NamedTensors delta{{"w", torch::zeros({200000})}, {"n", torch::tensor({3}, torch::kLong)}};
  privacy::AddNoiseShare(delta, 0.5);
  EXPECT_NEAR(delta[0].second.std().item<double>(), 0.5, 0.01);
  EXPECT_EQ(delta[1].second.item<int64_t>(), 3);
  NamedTensors other{{"w", torch::zeros({200000})}};
  privacy::AddNoiseShare(other, 0.5);
  EXPECT_FALSE(other[0].second.equal(delta[0].second));  // each site's own entropy
  // The coordinator only divides the decoded sum by q N, and accounts the round.
  SiteDp dp(Spec(2.0, 0.5));
  const NamedTensors global{{"w", torch::zeros({3})}, {"n", torch::tensor({1}, torch::kLong)}};
  auto out = dp.FromNoisedSum(global, {{"w", torch::tensor({3.0, -6.0, 1.5}, torch::kDouble)}}, {0, 3.0});
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->mean_delta.size(), 1u);
  EXPECT_TRUE(out->mean_delta[0].second.allclose(torch::tensor({1.0f, -2.0f, 0.5f})));
  EXPECT_EQ(out->mean_delta[0].second.scalar_type(), torch::kFloat);
  privacy::RdpAccountant reference;
  reference.Compose(0.1, 2.0, 1);
  EXPECT_DOUBLE_EQ(dp.Spent().epsilon, reference.Spent(1e-5).epsilon);
  EXPECT_FALSE(dp.FromNoisedSum(global, {}, {1, 3.0}).ok());
  EXPECT_EQ(dp.rounds(), 1);
  // Against whoever knows the sample there is no amplification: the Gaussian mechanism at q = 1.
  privacy::RdpAccountant plain;
  plain.Compose(1.0, 2.0, 1);
  EXPECT_DOUBLE_EQ(dp.SpentKnowingTheSample(1).epsilon, plain.Spent(1e-5).epsilon);
  EXPECT_GT(dp.SpentKnowingTheSample(1).epsilon, dp.Spent().epsilon);
  dp.AccountUnreleased();  // a sum seen but not released is counted all the same
  EXPECT_EQ(dp.rounds(), 2);
}

TEST(PrivacySiteDp, JobRefusesWhatTheAccountingCannotCover) {
  Job job;
  ASSERT_TRUE(SetJobKey(job, "privacy.mode", "site").ok());
  ASSERT_TRUE(SetJobKey(job, "privacy.noise_multiplier", "1").ok());
  ASSERT_TRUE(SetJobKey(job, "federated.fraction", "0.1").ok());
  EXPECT_THAT(ValidateJob(job).message(), ::testing::HasSubstr("federated.sampling: poisson"));
  ASSERT_TRUE(SetJobKey(job, "federated.sampling", "poisson").ok());
  EXPECT_TRUE(ValidateJob(job).ok()) << ValidateJob(job);
  ASSERT_TRUE(SetJobKey(job, "strategy.name", "median").ok());
  EXPECT_THAT(ValidateJob(job).message(), ::testing::HasSubstr("site-level DP hands the strategy one noised mean"));
  ASSERT_TRUE(SetJobKey(job, "strategy.name", "fedadam").ok());
  EXPECT_TRUE(ValidateJob(job).ok()) << ValidateJob(job);
  Job secure = job;
  ASSERT_TRUE(SetJobKey(secure, "privacy.secure_aggregation", "secagg+").ok());
  ASSERT_TRUE(SetJobKey(secure, "strategy.name", "fedavg").ok());
  ASSERT_TRUE(SetJobKey(secure, "federated.min_sites", "2").ok());  // a secure sum of one site is that site's
  // The quantizer's range must leave the sites' noise unclamped: 1 + 6 z C at z = 1, C = 1.
  const absl::Status clamped = ValidateJob(secure);
  EXPECT_TRUE(clamped.message().find("would clamp the sites' noise") != std::string::npos ||
              clamped.message().find("libsodium") != std::string::npos) << clamped;
  ASSERT_TRUE(SetJobKey(secure, "privacy.secagg.clip_range", "7.5").ok());
  const absl::Status with_sodium = ValidateJob(secure);  // refused only in a build without libsodium
  EXPECT_TRUE(with_sodium.ok() || with_sodium.message().find("libsodium") != std::string::npos) << with_sodium;
  ASSERT_TRUE(SetJobKey(secure, "privacy.adaptive_clip_quantile", "0.5").ok());
  if (with_sodium.ok()) EXPECT_THAT(ValidateJob(secure).message(), ::testing::HasSubstr("would travel unmasked"));
  Job example = job;
  ASSERT_TRUE(SetJobKey(example, "privacy.mode", "none").ok());
  ASSERT_TRUE(SetJobKey(example, "privacy.adaptive_clip_quantile", "0.5").ok());
  EXPECT_THAT(ValidateJob(example).message(), ::testing::HasSubstr("adaptive clipping is part of site-level DP"));
  Job small = job;
  ASSERT_TRUE(SetJobKey(small, "privacy.adaptive_clip_quantile", "0.5").ok());
  ASSERT_TRUE(SetJobKey(small, "privacy.adaptive_clip_count_noise", "0.4").ok());
  EXPECT_THAT(ValidateJob(small).message(), ::testing::HasSubstr("2 sigma_b > z"));
  // A target alone: the noise that spends it over federated.rounds at rate q.
  ASSERT_TRUE(SetJobKey(job, "privacy.noise_multiplier", "0").ok());
  ASSERT_TRUE(SetJobKey(job, "privacy.target_epsilon", "4").ok());
  ASSERT_TRUE(SetJobKey(job, "federated.rounds", "50").ok());
  auto spec = privacy::SiteDpSpecFromJob(job);
  ASSERT_TRUE(spec.ok()) << spec.status();
  privacy::RdpAccountant a;
  a.Compose(0.1, spec->noise_multiplier, 50);
  EXPECT_LE(a.Spent(1e-5).epsilon, 4.0);
  EXPECT_GT(a.Spent(1e-5).epsilon, 3.99);
}

TEST(PrivacySiteDp, RoundManagerRunsPoissonRoundsToTheBudgetAndResumes) {
  using coordinator::RoundManager;
  using coordinator::RoundManagerOptions;
  using coordinator::Task;
  using coordinator::Time;
  RoundManagerOptions o;
  o.seed = 3;
  o.rounds = 1000;
  o.fraction = 0.3;
  o.poisson = true;
  o.update_norms = true;  // asked for (TensorBoard's histogram), and still not filled under site DP
  o.site_dp = Spec(2.0, 0.5);
  o.site_dp.sampling_rate = 0.3;
  o.site_dp.target_epsilon = 3.0;
  o.site_dp.quantile = 0.5;
  const NamedTensors initial{{"w", torch::zeros({2})}};
  auto make = [&] { return std::make_unique<RoundManager>(o, initial, *aggregation::MakeStrategy(Job{})); };
  auto m = make();
  const Time t0 = Time() + std::chrono::hours(1);
  std::vector<int64_t> ids;
  for (int i = 0; i < 10; ++i) ids.push_back(*m->Join("s" + std::to_string(i), 10, t0));
  std::set<size_t> sizes;
  int64_t version = 0;
  for (int step = 0; step < 20000 && !m->finished(); ++step) {
    for (int64_t id : ids) {
      auto task = m->GetTask(id, t0);
      ASSERT_TRUE(task.ok());
      if (task->kind != Task::Kind::kTrain) continue;
      EXPECT_GT(task->clip_norm, 0);  // the round's clip travels with the task
      // Each site moves by 1 along its own axis: half of them outside a clip of 0.5 at first.
      ASSERT_TRUE(m->SubmitUpdate(id, task->round, 10, {{"w", torch::tensor({id % 2 ? 1.0f : 0.2f, 0.0f})}}, t0).ok());
    }
    version = m->model_version();
  }
  ASSERT_TRUE(m->finished());
  const auto history = m->history();
  for (const auto& r : history) sizes.insert(r.participants.size());
  EXPECT_GT(sizes.size(), 2u) << "Poisson samples vary in size";
  for (size_t i = 1; i < history.size(); ++i) EXPECT_GT(history[i].epsilon, history[i - 1].epsilon);
  for (const auto& r : history) {
    EXPECT_TRUE(r.update_norms.empty()) << "an update's exact norm tells its clip bit";
    EXPECT_EQ(r.site_metrics.count("clip_within"), 0u) << "a site's own bit is never recorded";
    EXPECT_EQ(r.budget_spent, &r == &history.back());
  }
  const auto p = m->site_privacy();
  ASSERT_TRUE(p.has_value());
  EXPECT_TRUE(p->budget_spent);
  EXPECT_LE(p->spent.epsilon, 3.0);
  privacy::RdpAccountant reference;
  reference.Compose(0.3, 2.0, version);
  EXPECT_DOUBLE_EQ(p->spent.epsilon, reference.Spent(1e-5).epsilon);
  EXPECT_EQ(m->rounds_done(), version);
  auto stop = m->GetTask(ids[0], t0);
  EXPECT_EQ(stop->kind, Task::Kind::kStop);
  EXPECT_THAT(stop->reason, ::testing::HasSubstr("privacy budget"));
  // Adaptive clipping moved the clip from its start, round by round as the records say.
  EXPECT_NE(p->clip, 0.5);
  EXPECT_EQ(history.back().next_clip_norm, p->clip);
  for (size_t i = 1; i < history.size(); ++i) EXPECT_EQ(history[i].clip_norm, history[i - 1].next_clip_norm);
  // A restarted coordinator carries on from the state: the same spend, clip and finished run.
  auto resumed = make();
  ASSERT_TRUE(resumed->LoadState(m->State(), t0).ok());
  EXPECT_TRUE(resumed->finished());
  EXPECT_DOUBLE_EQ(resumed->site_privacy()->spent.epsilon, p->spent.epsilon);
  EXPECT_EQ(resumed->site_privacy()->clip, p->clip);
}

}  // namespace
}  // namespace allround
