#ifndef ALLROUND_PRIVACY_ACCOUNTANT_H_
#define ALLROUND_PRIVACY_ACCOUNTANT_H_

// The privacy accountant: Renyi differential privacy (RDP) of the Poisson-subsampled Gaussian
// mechanism (Mironov, Talwar and Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian
// Mechanism"), composed over steps, and converted to (epsilon, delta) with the conversion of
// Balle et al. 2020 (Proposition 12) / Canonne, Kamath and Steinke 2020 (Eq. 20).
//
// What it bounds: each step releases the sum of per-record (DP-SGD: per-example; DP-FedAvg:
// per-site) contributions clipped to L2 norm C, each record included independently with
// probability q, plus Gaussian noise of standard deviation noise_multiplier * C. After `steps`
// such releases, the whole sequence of released sums is (epsilon, delta)-DP with respect to adding
// or removing one record. Integer orders are computed exactly (the binomial expansion); fractional
// orders by the series of Mironov et al. Section 3.3 summed with absolute values, an upper bound.
// Checked against Google's dp_accounting RdpAccountant (tests/accountant_test.py).
//
// Pure functions and a small value type; thread-compatible.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace allround::privacy {

// The orders at which RDP is tracked: 1.1, 1.2, ..., 10.9, 11, 12, ..., 63, 128, 256, 512, 1024
// (those of dp_accounting's RdpAccountant).
std::vector<double> DefaultRdpOrders();

// RDP at `order` (> 1) of one step of the sampled Gaussian mechanism with sampling rate q in
// [0, 1] and noise multiplier sigma >= 0: 0 for q = 0, infinity for sigma = 0, order / (2 sigma^2)
// for q = 1.
double SampledGaussianRdp(double q, double noise_multiplier, double order);

struct PrivacySpent {
  double epsilon = 0;  // infinity when no order gives a finite bound
  double order = 0;    // the order that gave it
};

// The smallest epsilon over the orders for `delta` in (0, 1), from RDP values at those orders.
PrivacySpent EpsilonFromRdp(const std::vector<double>& orders, const std::vector<double>& rdp, double delta);

class RdpAccountant {
 public:
  explicit RdpAccountant(std::vector<double> orders = DefaultRdpOrders());

  // `steps` more steps at sampling rate q with this noise multiplier (RDP adds up over steps).
  void Compose(double q, double noise_multiplier, int64_t steps);
  PrivacySpent Spent(double delta) const;

  const std::vector<double>& orders() const { return orders_; }
  // The accumulated RDP at each order: what a checkpoint keeps, so a resumed run goes on counting.
  const std::vector<double>& rdp() const { return rdp_; }
  // Restores rdp(); fails when the length differs from orders().
  absl::Status SetRdp(std::vector<double> rdp);

 private:
  std::vector<double> orders_;
  std::vector<double> rdp_;
};

// The smallest noise multiplier (to a relative `tolerance`) with which `steps` steps at rate q
// spend at most `target_epsilon` at `delta`. Fails, saying so, when even a huge multiplier cannot
// (a target of 0, say) or the arguments are out of range.
absl::StatusOr<double> NoiseForEpsilon(double q, int64_t steps, double target_epsilon, double delta,
                                       double tolerance = 1e-4);

}  // namespace allround::privacy

#endif  // ALLROUND_PRIVACY_ACCOUNTANT_H_
