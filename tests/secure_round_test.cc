// Secure aggregation in the RoundManager, driven with a fake clock and in-process SecAgg+ sites
// (privacy/secagg_site.h, the same state machine the site runner uses): the aggregate is exactly
// the decoding of the integer sum of the sites' quantized updates, and FedAvg of the plain updates
// to within the quantization step; dropouts after the shares are recovered, too few survivors
// abandon the round with the reason; jobs that cannot work are refused when read.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <memory>
#include <set>

#include "common/job.h"
#include "coordinator/round_manager.h"
#include "privacy/secagg_quantize.h"
#include "privacy/secagg_site.h"

namespace allround::coordinator {
namespace {

using ::testing::HasSubstr;
using std::chrono::seconds;

// A model with a float tensor and an integer one (BatchNorm's counter: not aggregated).
NamedTensors ModelOf(int64_t rows, int64_t cols) {
  return {{"w", torch::linspace(-0.5, 0.5, rows * cols).reshape({rows, cols})}, {"n", torch::tensor({7}, torch::kLong)}};
}

struct FakeSite {
  int64_t id = 0;
  int64_t examples = 0;
  torch::Tensor delta;  // the site's true update of "w"
  std::unique_ptr<privacy::SecAggSite> secagg;
  std::vector<uint32_t> words;     // quantized, before masking
  std::vector<uint32_t> received;  // what the coordinator received: the masked words
};

class SecureRoundTest : public ::testing::Test {
 protected:
  Time t0 = Time() + std::chrono::hours(1);
  Time At(int s) { return t0 + seconds(s); }

  NamedTensors Model() const { return ModelOf(rows_, cols_); }

  std::unique_ptr<RoundManager> Make(int sites, int threshold, int min_sites) {
    RoundManagerOptions o;
    o.rounds = 3;
    o.min_sites = min_sites;
    o.min_available = sites;
    o.round_timeout = seconds(100);
    o.site_timeout = seconds(1000);  // heartbeats keep the silent sites alive
    o.secure.enabled = true;
    o.secure.threshold = threshold;
    o.secure.clip_range = 1.0;
    o.secure.stage_timeout_s = 10;
    auto m = std::make_unique<RoundManager>(o, Model(), *aggregation::MakeStrategy({"fedavg"}));
    torch::manual_seed(3);
    for (int i = 0; i < sites; ++i) {
      FakeSite s;
      s.examples = 100 * (i + 1);
      s.id = *m->Join("site" + std::to_string(i), s.examples, At(0));
      s.delta = torch::randn({rows_, cols_}, torch::kDouble) * 0.1;
      sites_.push_back(std::move(s));
    }
    return m;
  }

  // Every site in `active` does what its task asks once (at time `now`); returns how many acted.
  int Step(RoundManager& m, const std::set<int64_t>& active, Time now) {
    int acted = 0;
    for (FakeSite& s : sites_) {
      if (!active.count(s.id)) continue;
      auto task = m.GetTask(s.id, now);
      EXPECT_TRUE(task.ok());
      if (!task.ok() || task->secure == nullptr) continue;
      const auto& step = task->secure->step;
      const auto& config = task->secure->config;
      switch (step.kind) {
        case SecureStep::Kind::kAdvertise: {
          s.secagg = *privacy::SecAggSite::Create(config.secagg, static_cast<uint32_t>(s.id));
          EXPECT_TRUE(m.SecureAdvertise(s.id, *s.secagg->AdvertiseKeys(), now).ok());
          break;
        }
        case SecureStep::Kind::kShareKeys:
          EXPECT_TRUE(m.SecureShareKeys(s.id, *s.secagg->ShareKeys(step.keys), now).ok());
          break;
        case SecureStep::Kind::kMaskInput: {
          const double r = static_cast<double>(s.examples) / config.max_weight;
          auto words = privacy::QuantizeUpdate(Model(), {{"w", s.delta}}, r, config.quantize, 42 + s.id);
          EXPECT_TRUE(words.ok()) << words.status();
          s.words = *words;
          auto masked = s.secagg->MaskInput(step.relayed, s.words);
          EXPECT_TRUE(masked.ok()) << masked.status();
          // What the coordinator receives is not the quantized update.
          EXPECT_NE(masked->masked, s.words);
          s.received = masked->masked;
          EXPECT_TRUE(m.SubmitMasked(s.id, task->round, masked->masked, now).ok());
          break;
        }
        case SecureStep::Kind::kUnmask:
          EXPECT_TRUE(m.SecureUnmask(s.id, *s.secagg->Unmask(step.unmask), now).ok());
          break;
        default: continue;
      }
      ++acted;
    }
    return acted;
  }

  std::set<int64_t> All() const {
    std::set<int64_t> out;
    for (const FakeSite& s : sites_) out.insert(s.id);
    return out;
  }

  // The model the round must give: the global one plus the decoding of the plain integer sum of
  // the counted sites' quantized words.
  torch::Tensor Expected(const std::set<int64_t>& counted, const privacy::QuantizeParams& q) {
    std::vector<uint32_t> sum(sites_[0].words.size(), 0);
    for (const FakeSite& s : sites_) {
      if (!counted.count(s.id)) continue;
      for (size_t j = 0; j < sum.size(); ++j) sum[j] += s.words[j];
    }
    auto decoded = privacy::DequantizeSum(Model(), sum, static_cast<int64_t>(counted.size()), q);
    EXPECT_TRUE(decoded.ok());
    return Model()[0].second + decoded->mean_delta[0].second;
  }

  torch::Tensor FedAvg(const std::set<int64_t>& counted) {
    torch::Tensor sum = torch::zeros({rows_, cols_}, torch::kDouble);
    double n = 0;
    for (const FakeSite& s : sites_) {
      if (!counted.count(s.id)) continue;
      sum += s.delta * static_cast<double>(s.examples);
      n += static_cast<double>(s.examples);
    }
    return Model()[0].second.to(torch::kDouble) + sum / n;
  }

  std::vector<FakeSite> sites_;
  int64_t rows_ = 3, cols_ = 4;
};

TEST_F(SecureRoundTest, TheAggregateIsTheDecodedIntegerSumAndFedAvgWithinTheStep) {
  auto m = Make(5, 3, 3);
  for (int stage = 0; stage < 4; ++stage) EXPECT_EQ(Step(*m, All(), At(1 + stage)), 5) << "stage " << stage;
  ASSERT_EQ(m->model_version(), 1);
  auto closed = m->TakeClosedRounds();
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_TRUE(closed[0].record.secure);
  EXPECT_EQ(closed[0].record.contributors.size(), 5u);
  EXPECT_EQ(closed[0].record.examples, 1500);  // 100 + ... + 500: the weights' sum, decoded
  const privacy::QuantizeParams q{1.0, privacy::LevelsFor(5)};
  const torch::Tensor got = (*m->Model(1))[0].second;
  EXPECT_TRUE(torch::equal(got, Expected(All(), q).to(got.scalar_type())));
  // FedAvg of the plain updates, to (m + 1) steps over the summed weights (float32 rounding aside).
  const double bound = 6 * (2.0 / q.levels) / (1500.0 / 500.0) + 1e-6;
  EXPECT_LT((got.to(torch::kDouble) - FedAvg(All())).abs().max().item<double>(), bound);
  // The integer tensor is the coordinator's own.
  EXPECT_EQ((*m->Model(1))[1].second.item<int64_t>(), 7);
  // No individual update in the coordinator's state.
  for (const auto& [name, t] : m->State()) EXPECT_THAT(name, ::testing::Not(HasSubstr("secagg")));
}

// Pearson correlation of two equally long series.
double Correlation(const std::vector<double>& a, const std::vector<double>& b) {
  double ma = 0, mb = 0;
  for (size_t i = 0; i < a.size(); ++i) ma += a[i], mb += b[i];
  ma /= a.size();
  mb /= b.size();
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += (a[i] - ma) * (b[i] - mb);
    aa += (a[i] - ma) * (a[i] - ma);
    bb += (b[i] - mb) * (b[i] - mb);
  }
  return ab / std::sqrt(aa * bb);
}

// What the coordinator receives of each site's update: 10^6 coordinates, masked. No received
// vector correlates with any site's true update (|corr| < 0.01: at 10^6 samples the standard error
// of a correlation of independent series is 0.001, so this bound sits 10 of them out and a masking
// bug, which leaves corr near 1, cannot pass), and the received bytes pass a chi-square test of
// uniformity over 256 bins (255 degrees of freedom; the bound 400 is exceeded by chance with
// probability below 1e-8).
TEST_F(SecureRoundTest, NothingTheCoordinatorReceivesCorrelatesWithAnUpdateAndItsBytesAreUniform) {
  rows_ = 1000;
  cols_ = 1000;
  auto m = Make(4, 3, 3);
  for (int stage = 0; stage < 4; ++stage) ASSERT_EQ(Step(*m, All(), At(1 + stage)), 4);
  ASSERT_EQ(m->model_version(), 1);
  for (const FakeSite& truth : sites_) {
    const torch::Tensor d = truth.delta.flatten().contiguous();
    std::vector<double> x(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
    for (const FakeSite& seen : sites_) {
      ASSERT_EQ(seen.received.size(), x.size() + 1);
      std::vector<double> y(seen.received.begin(), seen.received.end() - 1);
      EXPECT_LT(std::abs(Correlation(x, y)), 0.01) << "site " << truth.id << "'s update, site " << seen.id << "'s input";
    }
    // The quantized words before masking do correlate: the test can see a correlation.
    std::vector<double> q(truth.words.begin(), truth.words.end() - 1);
    EXPECT_GT(Correlation(x, q), 0.9);
  }
  for (const FakeSite& seen : sites_) {
    std::vector<double> bins(256, 0.0);
    const auto* bytes = reinterpret_cast<const uint8_t*>(seen.received.data());
    const size_t n = seen.received.size() * sizeof(uint32_t);
    for (size_t i = 0; i < n; ++i) bins[bytes[i]] += 1;
    double chi2 = 0;
    const double expected = static_cast<double>(n) / 256;
    for (double b : bins) chi2 += (b - expected) * (b - expected) / expected;
    EXPECT_LT(chi2, 400) << "site " << seen.id;
  }
}

TEST_F(SecureRoundTest, SitesThatDropAfterTheSharesAreRecoveredAndTheSumIsTheSurvivors) {
  auto m = Make(6, 3, 3);
  std::set<int64_t> live = All();
  EXPECT_EQ(Step(*m, live, At(1)), 6);  // keys
  EXPECT_EQ(Step(*m, live, At(2)), 6);  // shares
  live.erase(sites_[1].id);
  live.erase(sites_[4].id);  // two sites vanish before their masked input
  EXPECT_EQ(Step(*m, live, At(3)), 4);
  EXPECT_EQ(m->model_version(), 0);  // waiting for the two until the round's deadline
  m->Tick(At(200));
  EXPECT_EQ(Step(*m, live, At(201)), 4);  // unmasking: survivors reveal, dropouts' masks removed
  ASSERT_EQ(m->model_version(), 1);
  const privacy::QuantizeParams q{1.0, privacy::LevelsFor(6)};
  const torch::Tensor got = (*m->Model(1))[0].second;
  EXPECT_TRUE(torch::equal(got, Expected(live, q).to(got.scalar_type())));
  auto closed = m->TakeClosedRounds();
  ASSERT_EQ(closed.size(), 1u);
  EXPECT_EQ(closed[0].record.contributors, std::vector<int64_t>(live.begin(), live.end()));
}

TEST_F(SecureRoundTest, FewerThanTSurvivorsAbandonTheRoundWithTheReasonAndANewOneStarts) {
  auto m = Make(5, 4, 4);
  std::set<int64_t> live = All();
  EXPECT_EQ(Step(*m, live, At(1)), 5);
  EXPECT_EQ(Step(*m, live, At(2)), 5);
  live = {sites_[0].id, sites_[1].id, sites_[2].id};  // 3 masked inputs, t = 4
  EXPECT_EQ(Step(*m, live, At(3)), 3);
  m->Tick(At(200));  // the masked stage closes with 3 < t: abandoned, and a new round starts
  EXPECT_EQ(m->model_version(), 0);
  auto abandoned = m->TakeAbandonedRounds();
  ASSERT_EQ(abandoned.size(), 1u);
  EXPECT_THAT(abandoned[0].abandoned, HasSubstr("3"));
  EXPECT_TRUE(m->TakeClosedRounds().empty());
  // The next round is sampled afresh and runs to the end with everyone.
  for (int stage = 0; stage < 4; ++stage) EXPECT_EQ(Step(*m, All(), At(201 + stage)), 5);
  EXPECT_EQ(m->model_version(), 1);
}

TEST_F(SecureRoundTest, APlainUpdateAndAForgedSenderAreRefused) {
  auto m = Make(3, 2, 2);
  Step(*m, All(), At(1));
  auto task = m->GetTask(sites_[0].id, At(2));
  ASSERT_EQ(task->kind, Task::Kind::kSecure);
  // A site that names another as the sender of its shares.
  auto shares = *sites_[0].secagg->ShareKeys(task->secure->step.keys);
  shares.site_id = static_cast<uint32_t>(sites_[1].id);
  EXPECT_EQ(m->SecureShareKeys(sites_[0].id, shares, At(2)).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(m->refusals()["bad_secagg"], 1);
}

Job JobWith(std::vector<std::string> flags) {
  Job job;
  job.federated.min_sites = 3;
  EXPECT_TRUE(ApplyJobFlags(job, flags).ok());
  return job;
}

TEST(SecureAggregationJob, StrategiesThatNeedEachUpdateAreRefusedAndFedAvgFamilyRuns) {
  for (const char* name : {"median", "trimmed_mean", "krum"}) {
    Job job = JobWith({"--privacy.secure_aggregation", "secagg+"});
    job.strategy.name = name;
    const absl::Status s = ValidateJob(job);
    EXPECT_THAT(s.message(), HasSubstr("only their sum")) << name;
  }
  for (const char* name : {"fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi"}) {
    Job job = JobWith({"--privacy.secure_aggregation", "secagg+"});
    job.strategy.name = name;
    EXPECT_TRUE(ValidateJob(job).ok()) << name << ": " << ValidateJob(job);
  }
  Job one = JobWith({"--privacy.secure_aggregation", "secagg"});
  one.federated.min_sites = 1;
  EXPECT_THAT(ValidateJob(one).message(), HasSubstr("at least 2 sites"));
  Job odd = JobWith({"--privacy.secure_aggregation", "secagg+", "--privacy.secagg.degree", "3"});
  EXPECT_THAT(ValidateJob(odd).message(), HasSubstr("must be even"));
  Job bad;
  EXPECT_THAT(ApplyJobFlags(bad, {"--privacy.secure_aggregation", "yes"}).message(), HasSubstr("secagg+"));
}

}  // namespace
}  // namespace allround::coordinator
