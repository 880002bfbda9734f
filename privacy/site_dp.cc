#include "privacy/site_dp.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/random.h"
#include "common/registry.h"
#include "tensor/named_tensors.h"

namespace allround::privacy {
namespace {

constexpr char kRdp[] = "privacy/rdp";
constexpr char kClip[] = "privacy/clip";
constexpr char kSecret[] = "privacy/secret";
constexpr char kRounds[] = "privacy/rounds";

bool IsFloat(const at::Tensor& t) { return at::isFloatingType(t.scalar_type()); }

// What site-level DP asks of the rest of the job.
absl::Status CheckJob(const Job& job) {
  const bool poisson = PoissonSampling(job);
  if (JobParam(job, "privacy.mode") != "site") {
    if (JobNumber(job, "privacy.adaptive_clip_quantile") > 0) {
      return absl::InvalidArgumentError(
          "job key 'privacy.adaptive_clip_quantile': adaptive clipping is part of site-level DP (privacy.mode site)");
    }
    return absl::OkStatus();
  }
  if (!poisson) {
    return absl::InvalidArgumentError(
        "job key 'privacy.mode': site-level DP-FedAvg's accounting assumes each site is sampled independently; "
        "set federated.sampling: poisson (federated.fraction is then each site's probability)");
  }
  if (job.federated.fraction <= 0) {
    return absl::InvalidArgumentError("job key 'federated.fraction': site-level DP needs a sampling rate above 0");
  }
  if (ComponentHasTrait("strategy", job.strategy.name, "individual_updates")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "job key 'strategy.name': ", job.strategy.name,
        " looks at each site's update; site-level DP hands the strategy one noised mean (use fedavg, fedavgm, "
        "fedadam, fedyogi, fedadagrad or fedprox)"));
  }
  if (auto spec = SiteDpSpecFromJob(job); !spec.ok()) {
    return spec.status();
  } else if (spec->quantile > 0 && spec->count_noise > 0 && !(2 * spec->count_noise > spec->noise_multiplier)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "job key 'privacy.adaptive_clip_count_noise': ", spec->count_noise, " leaves nothing for the update's noise at "
        "noise multiplier ", spec->noise_multiplier, " (adaptive clipping needs 2 sigma_b > z)"));
  }
  if (JobParam(job, "privacy.secure_aggregation") != "none") {
    // The quantizer clamps each coordinate of (clipped delta + noise share) to [-c, c]: a clamped
    // Gaussian has less variance than the accounting assumes. c must leave 6 standard deviations
    // of the largest share (threshold 1) above C.
    auto spec = SiteDpSpecFromJob(job);
    const double c = JobNumber(job, "privacy.secagg.clip_range");
    if (spec.ok() && c < spec->clip + 6 * NoiseShareStd(spec->noise_multiplier, spec->clip, 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "job key 'privacy.secagg.clip_range': ", c, " would clamp the sites' noise (site-level DP under secure "
          "aggregation needs at least privacy.clip + 6 z privacy.clip = ",
          spec->clip + 6 * NoiseShareStd(spec->noise_multiplier, spec->clip, 1), ")"));
    }
  }
  if (JobParam(job, "privacy.secure_aggregation") != "none" && JobNumber(job, "privacy.adaptive_clip_quantile") > 0) {
    return absl::InvalidArgumentError(
        "job keys 'privacy.adaptive_clip_quantile' and 'privacy.secure_aggregation': adaptive clipping needs each "
        "site's within-the-clip bit, which would travel unmasked; under secure aggregation the clip stays fixed");
  }
  return absl::OkStatus();
}

[[maybe_unused]] const bool kRegistered = [] {
  RegisterComponent(
      {"privacy", "dp_fedavg",
       "site-level DP (privacy.mode site): DP-FedAvg with adaptive clipping; federated.sampling: poisson",
       {NumberKey("privacy.adaptive_clip_quantile", 0,
                  "site-level DP: the target quantile of the sites' update norms that the clip follows (Andrew "
                  "et al. 2021; 0.5 is theirs); 0 keeps privacy.clip fixed",
                  0, 0.999),
        NumberKey("privacy.adaptive_clip_lr", 0.2, "adaptive clipping: eta, C <- C exp(-eta (within - quantile))",
                  1e-6, 10),
        NumberKey("privacy.adaptive_clip_count_noise", 0,
                  "adaptive clipping: sigma_b, the noise on the count of sites within the clip (0: max(expected "
                  "sites / 20, noise multiplier))",
                  0, 1e9)}});
  RegisterComponent({"federated", "sampling", "how a round's sites are drawn",
                     {ChoiceKey("federated.sampling", "fixed",
                                "fixed (ceil(federated.fraction * alive) sites, at least federated.min_sites) or "
                                "poisson (each alive site with probability federated.fraction; what site-level DP "
                                "assumes)",
                                {"fixed", "poisson"})}});
  RegisterJobCheck(&CheckJob);
  return true;
}();

// 64 bits of OS entropy.
uint64_t OsEntropy() {
  std::random_device entropy;
  return (static_cast<uint64_t>(entropy()) << 32) ^ static_cast<uint64_t>(entropy());
}

uint64_t DrawSecret(const SiteDpSpec& spec) {
  return spec.secret_seed ? OsEntropy() : DeriveSeed(spec.job_seed, "site-dp-secret");
}

}  // namespace

bool PoissonSampling(const Job& job) { return JobParam(job, "federated.sampling") == "poisson"; }

absl::StatusOr<SiteDpSpec> SiteDpSpecFromJob(const Job& job) {
  SiteDpSpec spec;
  spec.on = JobParam(job, "privacy.mode") == "site";
  spec.noise_multiplier = JobNumber(job, "privacy.noise_multiplier");
  spec.target_epsilon = JobNumber(job, "privacy.target_epsilon");
  spec.clip = JobNumber(job, "privacy.clip");
  spec.delta = JobNumber(job, "privacy.delta");
  spec.quantile = JobNumber(job, "privacy.adaptive_clip_quantile");
  spec.clip_lr = JobNumber(job, "privacy.adaptive_clip_lr");
  spec.count_noise = JobNumber(job, "privacy.adaptive_clip_count_noise");
  spec.secret_seed = JobParam(job, "privacy.noise_seed") != "job";
  spec.sampling_rate = job.federated.fraction;
  spec.rounds = job.federated.rounds;
  spec.job_seed = job.seed;
  if (spec.on && spec.noise_multiplier <= 0) {
    auto z = NoiseForEpsilon(spec.sampling_rate, spec.rounds, spec.target_epsilon, spec.delta);
    if (!z.ok()) return z.status();
    spec.noise_multiplier = *z;
  }
  return spec;
}

double ClipToNorm(NamedTensors& delta, double bound) {
  double squares = 0.0;
  for (const auto& [name, t] : delta) {
    if (IsFloat(t)) squares += t.to(at::kDouble).square().sum().item<double>();
  }
  const double norm = std::sqrt(squares);
  if (!std::isfinite(norm) || norm <= bound) return norm;
  const double scale = bound / norm;
  for (auto& [name, t] : delta) {
    if (IsFloat(t)) t = t.mul(scale);
  }
  return norm;
}

double NoiseShareStd(double noise_multiplier, double clip, int64_t threshold) {
  return noise_multiplier * clip / std::sqrt(static_cast<double>(std::max<int64_t>(threshold, 1)));
}

void AddNoiseShare(NamedTensors& delta, double std) {
  auto gen = at::detail::createCPUGenerator(OsEntropy());
  for (auto& [name, t] : delta) {
    if (!IsFloat(t)) continue;
    const at::Tensor noise = at::normal(0.0, std, t.sizes(), gen, t.options().dtype(at::kDouble).device(at::kCPU));
    t = (t.to(at::kDouble) + noise.to(t.device())).to(t.scalar_type());
  }
}

SiteDp::SiteDp(SiteDpSpec spec)
    : spec_(std::move(spec)), clip_(spec_.clip), secret_(DrawSecret(spec_)), start_entropy_(spec_.secret_seed ? DrawSecret(spec_) : 0) {}

absl::StatusOr<double> SiteDp::DeltaNoise(double expected_sites, double* count_noise) const {
  const double z = spec_.noise_multiplier;
  if (!adaptive()) {
    if (count_noise != nullptr) *count_noise = 0;
    return z;
  }
  const double sigma_b = spec_.count_noise > 0 ? spec_.count_noise : std::max(expected_sites / 20.0, z);
  if (count_noise != nullptr) *count_noise = sigma_b;
  const double rest = 1.0 / (z * z) - 1.0 / (4.0 * sigma_b * sigma_b);
  if (!(rest > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "site-level DP: the count's noise sigma_b = ", sigma_b, " leaves nothing for the update's at noise multiplier ",
        z, " (adaptive clipping needs 2 sigma_b > z; raise privacy.adaptive_clip_count_noise)"));
  }
  return 1.0 / std::sqrt(rest);
}

absl::StatusOr<SiteDpOutcome> SiteDp::Aggregate(const NamedTensors& global, const std::vector<SiteDpUpdate>& updates,
                                                const SiteDpRound& round) {
  if (!(round.expected_sites > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("site-level DP: expected sites ", round.expected_sites, " (q N) must be > 0"));
  }
  for (const SiteDpUpdate& u : updates) {
    if (u.weights == nullptr) return absl::InvalidArgumentError("site-level DP: an update without weights");
    if (std::string bad = tensor::LayoutMismatch(*u.weights, global); !bad.empty()) return absl::InvalidArgumentError(bad);
  }
  double count_noise = 0;
  auto z_delta = DeltaNoise(round.expected_sites, &count_noise);
  if (!z_delta.ok()) return z_delta.status();
  SiteDpOutcome out;
  out.clip = clip_;
  out.delta_noise = *z_delta;
  // The clipped sum, in float64, in the order given (the manager's: by site name).
  std::vector<at::Tensor> sum;
  for (const auto& [name, g] : global) {
    sum.push_back(IsFloat(g) ? at::zeros(g.sizes(), g.options().dtype(at::kDouble)) : at::Tensor());
  }
  // The count of sites within C, centred (each site adds +1/2 or -1/2): adding or removing one site
  // moves it by 1/2, the sensitivity Andrew et al.'s split of the noise assumes (as TF Privacy's
  // quantile estimator centres its bits).
  double within = 0;
  for (const SiteDpUpdate& u : updates) {
    NamedTensors delta;
    for (size_t k = 0; k < global.size(); ++k) {
      const at::Tensor& g = global[k].second;
      if (IsFloat(g)) delta.emplace_back(global[k].first, (*u.weights)[k].second.to(at::kDouble) - g.to(at::kDouble));
    }
    const double norm = ClipToNorm(delta, clip_);
    if (!std::isfinite(norm)) return absl::InvalidArgumentError("site-level DP: an update's norm is not finite");
    // A hair above C is the site's own float rounding of a clipped update, not a refusal to clip.
    if (norm > clip_ * (1 + 1e-5)) ++out.clipped_here;
    // The count takes what the coordinator can check: a site claiming to be within C while its
    // update is not counts as outside; the bit is 0 or 1 whatever the site sent.
    within += (u.within >= 0.5 && norm <= clip_ * (1 + 1e-5)) ? 0.5 : -0.5;
    size_t j = 0;
    for (size_t k = 0; k < global.size(); ++k) {
      if (IsFloat(global[k].second)) sum[k].add_(delta[j++].second);
    }
  }
  // Noise of std z_delta * C on each coordinate of the sum, from the round's secret seed.
  auto gen = at::detail::createCPUGenerator(DeriveSeed(secret_ ^ start_entropy_, "site-dp-noise", round.round));
  for (size_t k = 0; k < global.size(); ++k) {
    const at::Tensor& g = global[k].second;
    if (!IsFloat(g)) continue;
    const at::Tensor noise = at::normal(0.0, *z_delta * clip_, g.sizes(), gen, g.options().dtype(at::kDouble).device(at::kCPU));
    out.mean_delta.emplace_back(global[k].first,
                                ((sum[k] + noise.to(sum[k].device())) / round.expected_sites).to(g.scalar_type()));
  }
  out.next_clip = clip_;
  if (adaptive()) {
    Rng rng(DeriveSeed(secret_ ^ start_entropy_, "site-dp-count", round.round));
    const double noised = within + count_noise * rng.Normal();
    out.within_fraction = noised / round.expected_sites + 0.5;
    out.next_clip = clip_ * std::exp(-spec_.clip_lr * (out.within_fraction - spec_.quantile));
  }
  accountant_.Compose(spec_.sampling_rate, spec_.noise_multiplier, 1);
  ++rounds_;
  clip_ = out.next_clip;
  return out;
}

absl::StatusOr<SiteDpOutcome> SiteDp::FromNoisedSum(const NamedTensors& global, const NamedTensors& noised_sum,
                                                    const SiteDpRound& round) {
  if (!(round.expected_sites > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("site-level DP: expected sites ", round.expected_sites, " (q N) must be > 0"));
  }
  std::map<std::string, at::Tensor> sum(noised_sum.begin(), noised_sum.end());
  SiteDpOutcome out;
  out.clip = clip_;
  out.next_clip = clip_;
  out.delta_noise = spec_.noise_multiplier;
  for (const auto& [name, g] : global) {
    if (!IsFloat(g)) continue;
    auto it = sum.find(name);
    if (it == sum.end() || it->second.sizes() != g.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat("site-level DP: the decoded sum has no tensor '", name, "' of ",
                                                     c10::str(g.sizes())));
    }
    out.mean_delta.emplace_back(name, (it->second.to(at::kDouble) / round.expected_sites).to(g.scalar_type()));
  }
  accountant_.Compose(spec_.sampling_rate, spec_.noise_multiplier, 1);
  ++rounds_;
  return out;
}

void SiteDp::AccountUnreleased() {
  accountant_.Compose(spec_.sampling_rate, spec_.noise_multiplier, 1);
  ++rounds_;
}

PrivacySpent SiteDp::SpentKnowingTheSample(int64_t rounds) const {
  RdpAccountant a(accountant_.orders());
  a.Compose(1.0, spec_.noise_multiplier, rounds);
  return a.Spent(spec_.delta);
}

bool SiteDp::BudgetAllowsAnotherRound() const {
  if (spec_.target_epsilon <= 0) return true;
  RdpAccountant next = accountant_;
  next.Compose(spec_.sampling_rate, spec_.noise_multiplier, 1);
  // A hair of slack: the noise for a target is found for all rounds at once, the spend adds up.
  return next.Spent(spec_.delta).epsilon <= spec_.target_epsilon * (1 + 1e-9);
}

NamedTensors SiteDp::State() const {
  return {{kRdp, at::tensor(accountant_.rdp(), at::kDouble)},
          {kClip, at::tensor({clip_}, at::kDouble)},
          {kSecret, at::tensor({static_cast<int64_t>(secret_)}, at::kLong)},
          {kRounds, at::tensor({rounds_}, at::kLong)}};
}

absl::Status SiteDp::LoadState(const NamedTensors& state) {
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  for (const char* key : {kRdp, kClip, kSecret, kRounds}) {
    if (!by_name.count(key)) {
      return absl::DataLossError(absl::StrCat(
          "coordinator state: no '", key, "' (a checkpoint of a run without site-level DP cannot go on under it: "
          "its rounds were not accounted)"));
    }
  }
  const at::Tensor rdp = by_name[kRdp].to(at::kDouble).contiguous().cpu();
  const at::Tensor clip = by_name[kClip].to(at::kDouble).cpu();
  const at::Tensor secret = by_name[kSecret].cpu();
  const at::Tensor rounds = by_name[kRounds].cpu();
  if (clip.numel() != 1 || secret.numel() != 1 || secret.scalar_type() != at::kLong || rounds.numel() != 1 ||
      !(clip.item<double>() > 0) || !std::isfinite(clip.item<double>())) {
    return absl::DataLossError("coordinator state: malformed privacy/ tensors");
  }
  std::vector<double> values(rdp.data_ptr<double>(), rdp.data_ptr<double>() + rdp.numel());
  RdpAccountant accountant = accountant_;
  if (auto s = accountant.SetRdp(std::move(values)); !s.ok()) return absl::DataLossError(s.message());
  accountant_ = std::move(accountant);
  clip_ = clip.item<double>();
  secret_ = static_cast<uint64_t>(secret.item<int64_t>());
  rounds_ = rounds.item<int64_t>();
  return absl::OkStatus();
}

}  // namespace allround::privacy
