#ifndef ALLROUND_PRIVACY_SITE_DP_H_
#define ALLROUND_PRIVACY_SITE_DP_H_

// Site-level differential privacy (privacy.mode site): DP-FedAvg (McMahan et al. 2018, "Learning
// Differentially Private Recurrent Language Models", Algorithm 1 with uniform site weights) with
// adaptive clipping to a quantile of the update norms (Andrew et al. 2021, "Differentially Private
// Learning with Adaptive Clipping", Algorithm 1).
//
// A round: each alive site is sampled independently with probability q (federated.sampling:
// poisson, federated.fraction q), trains, and clips its delta (new weights minus the global ones,
// every floating-point tensor together) to L2 norm C, reporting whether it was within C. The
// coordinator clips every update again (so the bound does not rest on the sites' honesty), sums,
// adds Gaussian noise of standard deviation z_delta * C to the sum and divides by the EXPECTED
// number of sampled sites q * N (a fixed denominator; N the sites alive when the round was
// sampled): the strategy sees that one mean update. With adaptive clipping the coordinator also
// sums the sites' within-C bits centred (+1/2 within, -1/2 not: sensitivity 1/2), adds noise of
// standard deviation sigma_b, and moves C geometrically toward the target quantile:
// C <- C * exp(-eta * (noised fraction within - gamma)).
//
// Under secure aggregation (privacy.secure_aggregation secagg or secagg+) the noise is split among
// the sites instead: each sampled site adds Gaussian noise of standard deviation z C / sqrt(t) to
// its clipped delta (t the round's secure-aggregation threshold; the noise from the site's own OS
// entropy) before it quantizes and masks, so the coordinator never holds an un-noised sum; a round
// is unmasked only with at least t inputs counted, so the sum carries noise of standard deviation
// at least z C. The coordinator divides the decoded sum by q N. There it cannot clip: the bound
// then rests on the sites clipping honestly (the quantizer's range c bounds each coordinate
// whatever a site sends), and adaptive clipping is refused (the sites' bits would travel
// unmasked).
//
// What is protected, against whom: the sequence of global models (and everything computed from
// them) is (epsilon, delta)-DP with respect to adding or removing one site's whole data, against
// anyone who sees the models but not the coordinator's noise or sample (the coordinator is
// trusted: it sees each clipped update). The accountant composes one sampled Gaussian mechanism per
// closed round with the noise multiplier z of the combined release (update sum and, with adaptive
// clipping, the count: z = (z_delta^-2 + (2 sigma_b)^-2)^-1/2, Andrew et al. Theorem 1), at
// sampling rate q. Not protected: the sites' federated-evaluation sums and example counts, which
// the coordinator reports in the clear.
//
// Thread-compatible.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job.h"
#include "privacy/accountant.h"
#include "tensor/named_tensors.h"

namespace allround::privacy {

using tensor::NamedTensors;

// federated.sampling: "fixed" (ceil(fraction * alive) sites) or "poisson" (each alive site with
// probability fraction, independently).
bool PoissonSampling(const Job& job);

struct SiteDpSpec {
  bool on = false;
  double noise_multiplier = 0;  // z of the combined release (computed from target_epsilon when 0)
  double target_epsilon = 0;    // 0: none
  double clip = 1.0;            // C (the initial C with adaptive clipping)
  double delta = 1e-5;
  double quantile = 0;          // gamma: adaptive clipping's target quantile (0: C stays fixed)
  double clip_lr = 0.2;         // eta: adaptive clipping's geometric learning rate
  double count_noise = 0;       // sigma_b (0: max(expected sites / 20, z), Andrew et al.'s default)
  bool secret_seed = true;      // privacy.noise_seed secret (OS entropy) or job
  double sampling_rate = 1.0;   // q: federated.fraction
  int64_t rounds = 1;           // federated.rounds: the horizon a target epsilon is spread over
  uint64_t job_seed = 1;        // the secret's source under noise_seed: job
};

// The job's site-level settings; `on` is false unless privacy.mode is site. With a target and no
// noise multiplier, the multiplier that spends the target over federated.rounds at rate q.
absl::StatusOr<SiteDpSpec> SiteDpSpecFromJob(const Job& job);

// The standard deviation of the noise one site adds under secure aggregation: z C / sqrt(t).
double NoiseShareStd(double noise_multiplier, double clip, int64_t threshold);

// Adds Gaussian noise of standard deviation `std` to every floating-point tensor of `delta`, from
// 64 bits of OS entropy (the site's own: no one else can remove it).
void AddNoiseShare(NamedTensors& delta, double std);

// Scales `delta` (floating-point tensors together) to L2 norm at most `bound`; returns the norm it
// had (computed in float64). A non-finite norm is returned as is and nothing is changed.
double ClipToNorm(NamedTensors& delta, double bound);

// One round at the coordinator.
struct SiteDpRound {
  uint64_t round = 0;           // the round index (seeds the noise)
  double expected_sites = 0;    // q * N: the mean's denominator (> 0)
};

struct SiteDpUpdate {
  const NamedTensors* weights = nullptr;  // the site's new weights (the global model's layout)
  double within = 1.0;                    // the site's report: 1 if its delta was within C, else 0
};

struct SiteDpOutcome {
  NamedTensors mean_delta;       // floating-point tensors of the global model: (sum + noise) / (q N)
  double clip = 0;               // C this round
  double next_clip = 0;          // C for the next round
  double within_fraction = std::nan("");  // the noised fraction within C (adaptive clipping; it can
                                          // fall below 0 or above 1), else NaN
  int64_t clipped_here = 0;      // updates the coordinator had to clip (their site did not)
  double delta_noise = 0;        // z_delta
};

class SiteDp {
 public:
  explicit SiteDp(SiteDpSpec spec);

  const SiteDpSpec& spec() const { return spec_; }
  double clip() const { return clip_; }
  bool adaptive() const { return spec_.quantile > 0; }

  // The secret the noise and the sample come from: drawn from OS entropy (or derived from the job
  // seed with noise_seed: job) at construction; restored from a checkpoint by LoadState.
  uint64_t secret() const { return secret_; }

  // sigma_b and z_delta for a round with `expected_sites` (fails when the count's noise leaves
  // nothing for the update's: 2 sigma_b <= z).
  absl::StatusOr<double> DeltaNoise(double expected_sites, double* count_noise = nullptr) const;

  // The round's noisy mean delta from the sampled sites' updates (any number, none included), and
  // the next C; composes the round into the accountant and adopts the next C. Fails, changing
  // nothing, on an update whose layout is not the global model's.
  absl::StatusOr<SiteDpOutcome> Aggregate(const NamedTensors& global, const std::vector<SiteDpUpdate>& updates,
                                          const SiteDpRound& round);

  // Under secure aggregation: the round's mean from the decoded sum of the sites' clipped and
  // noised deltas (floating-point tensors of `global`, each site with weight 1), divided by q N;
  // composes the round into the accountant. C stays fixed.
  absl::StatusOr<SiteDpOutcome> FromNoisedSum(const NamedTensors& global, const NamedTensors& noised_sum,
                                              const SiteDpRound& round);

  // A round whose sum was seen but not released as a model (refused after unmasking): counted all
  // the same, since the coordinator learned it.
  void AccountUnreleased();

  // Against whoever knows which sites were sampled (under secure aggregation the coordinator
  // itself, which draws the sample): no amplification by sampling, so the spend of a site that
  // took part in `rounds` rounds is the Gaussian mechanism's (q = 1) over those rounds.
  PrivacySpent SpentKnowingTheSample(int64_t rounds) const;

  // The spend so far, and whether one more round would pass privacy.target_epsilon.
  PrivacySpent Spent() const { return accountant_.Spent(spec_.delta); }
  int64_t rounds() const { return rounds_; }
  bool BudgetAllowsAnotherRound() const;

  // "privacy/rdp", "privacy/clip", "privacy/secret", "privacy/rounds": for the coordinator's
  // checkpoints (its own store only: the secret removes the noise).
  NamedTensors State() const;
  absl::Status LoadState(const NamedTensors& state);

 private:
  SiteDpSpec spec_;
  double clip_;
  uint64_t secret_ = 0;
  // Mixed into the noise's seed under noise_seed: secret, fresh at each start and never saved: a
  // coordinator resumed from an older checkpoint reruns rounds whose models may have been released
  // already, and the same noise on a different sum would give their difference away.
  uint64_t start_entropy_ = 0;
  int64_t rounds_ = 0;
  RdpAccountant accountant_;
};

}  // namespace allround::privacy

#endif  // ALLROUND_PRIVACY_SITE_DP_H_
