#include "privacy/accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace allround::privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// log(exp(x) + exp(y)), exact for -infinity (the log of 0).
double LogAdd(double x, double y) {
  const double lo = std::min(x, y), hi = std::max(x, y);
  if (lo == -kInf) return hi;
  return std::log1p(std::exp(lo - hi)) + hi;
}

// log|Gamma(x)|, reentrant.
double LogAbsGamma(double x) {
  int sign = 0;
  return lgamma_r(x, &sign);
}

// log|binomial(n, k)| for real n (through Gamma: a negative argument gives log|Gamma|).
double LogAbsBinomial(double n, double k) { return LogAbsGamma(n + 1) - LogAbsGamma(k + 1) - LogAbsGamma(n - k + 1); }

// log(erfc(x)), accurate far in the tail where erfc underflows (its asymptotic series there).
double LogErfc(double x) {
  const double r = std::erfc(x);
  if (r > 1e-300) return std::log(r);
  const double x2 = x * x;
  return -0.5 * std::log(M_PI) - std::log(x) - x2 - 0.5 / x2 + 0.625 / (x2 * x2) - 37.0 / 24.0 / (x2 * x2 * x2) +
         353.0 / 64.0 / (x2 * x2 * x2 * x2);
}

// log(A_alpha) for an integer order: the binomial expansion of E[(p/q)^alpha] (Mironov et al. 2019,
// Section 3.2).
double LogAInteger(double q, double sigma, int64_t alpha) {
  double log_a = -kInf;
  const double log_q = std::log(q), log1mq = std::log1p(-q);
  for (int64_t i = 0; i <= alpha; ++i) {
    const double d = static_cast<double>(i);
    const double term = LogAbsBinomial(static_cast<double>(alpha), d) + d * log_q +
                        static_cast<double>(alpha - i) * log1mq + (d * d - d) / (2 * sigma * sigma);
    log_a = LogAdd(log_a, term);
  }
  return log_a;
}

// log(A_alpha) for a fractional order: the two series of Mironov et al. Section 3.3 split at z0,
// summed term by term in absolute value (an upper bound), until both terms fall and are 30 nats
// below the total; infinity (the order is then useless) if that takes over 1000 terms.
double LogAFractional(double q, double sigma, double alpha) {
  double log_a0 = -kInf, log_a1 = -kInf;
  const double z0 = sigma * sigma * std::log(1 / q - 1) + 0.5;
  const double log_q = std::log(q), log1mq = std::log1p(-q);
  double last0 = -kInf, last1 = -kInf;
  for (int i = 0; i < 1000; ++i) {
    const double d = i, j = alpha - i;
    const double log_coef = LogAbsBinomial(alpha, d);
    const double log_t0 = log_coef + d * log_q + j * log1mq;
    const double log_t1 = log_coef + j * log_q + d * log1mq;
    const double log_e0 = std::log(0.5) + LogErfc((d - z0) / (std::sqrt(2.0) * sigma));
    const double log_e1 = std::log(0.5) + LogErfc((z0 - j) / (std::sqrt(2.0) * sigma));
    const double log_s0 = log_t0 + (d * d - d) / (2 * sigma * sigma) + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / (2 * sigma * sigma) + log_e1;
    log_a0 = LogAdd(log_a0, log_s0);
    log_a1 = LogAdd(log_a1, log_s1);
    const double total = LogAdd(log_a0, log_a1);
    if (log_s0 < last0 && log_s1 < last1 && std::max(log_s0, log_s1) < total - 30) return total;
    last0 = log_s0;
    last1 = log_s1;
  }
  return kInf;
}

}  // namespace

std::vector<double> DefaultRdpOrders() {
  std::vector<double> orders;
  for (int x = 11; x < 110; ++x) orders.push_back(x / 10.0);  // 1.1 .. 10.9
  for (int x = 11; x < 64; ++x) orders.push_back(x);
  for (double x : {128.0, 256.0, 512.0, 1024.0}) orders.push_back(x);
  return orders;
}

double SampledGaussianRdp(double q, double noise_multiplier, double order) {
  if (q <= 0) return 0;
  if (noise_multiplier <= 0 || std::isinf(order)) return kInf;
  if (q >= 1) return order / (2 * noise_multiplier * noise_multiplier);
  const double log_a = order == std::floor(order) ? LogAInteger(q, noise_multiplier, static_cast<int64_t>(order))
                                                  : LogAFractional(q, noise_multiplier, order);
  return log_a / (order - 1);
}

PrivacySpent EpsilonFromRdp(const std::vector<double>& orders, const std::vector<double>& rdp, double delta) {
  PrivacySpent best{kInf, 0};
  for (size_t k = 0; k < orders.size() && k < rdp.size(); ++k) {
    const double a = orders[k], r = rdp[k];
    double epsilon;
    if (r < 0 || delta * delta + std::expm1(-r) > 0) {
      epsilon = 0;  // delta <= sqrt(1 - exp(-KL)) already
    } else if (a > 1.01) {
      epsilon = r + std::log1p(-1 / a) - std::log(delta * a) / (a - 1);
    } else {
      epsilon = kInf;  // unstable as the order approaches 1, and never the best there
    }
    if (epsilon < best.epsilon) best = PrivacySpent{epsilon, a};
  }
  best.epsilon = std::max(0.0, best.epsilon);
  return best;
}

RdpAccountant::RdpAccountant(std::vector<double> orders) : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {}

void RdpAccountant::Compose(double q, double noise_multiplier, int64_t steps) {
  if (steps <= 0) return;
  for (size_t k = 0; k < orders_.size(); ++k) {
    rdp_[k] += static_cast<double>(steps) * SampledGaussianRdp(q, noise_multiplier, orders_[k]);
  }
}

PrivacySpent RdpAccountant::Spent(double delta) const { return EpsilonFromRdp(orders_, rdp_, delta); }

absl::Status RdpAccountant::SetRdp(std::vector<double> rdp) {
  if (rdp.size() != orders_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("accountant state: ", rdp.size(), " RDP values for ", orders_.size(), " orders"));
  }
  rdp_ = std::move(rdp);
  return absl::OkStatus();
}

absl::StatusOr<double> NoiseForEpsilon(double q, int64_t steps, double target_epsilon, double delta,
                                       double tolerance) {
  if (!(q > 0 && q <= 1) || steps <= 0 || !(target_epsilon > 0) || !(delta > 0 && delta < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("noise for epsilon: needs 0 < q <= 1 (", q, "), steps > 0 (",
                                                   steps, "), epsilon > 0 (", target_epsilon, ") and 0 < delta < 1 (",
                                                   delta, ")"));
  }
  const auto spent = [&](double sigma) {
    RdpAccountant accountant;
    accountant.Compose(q, sigma, steps);
    return accountant.Spent(delta).epsilon;
  };
  // Epsilon falls as the multiplier grows: bracket the target, then bisect.
  double lo = 0, hi = 1;
  while (spent(hi) > target_epsilon) {
    lo = hi;
    hi *= 2;
    if (hi > 1e6) {
      return absl::InvalidArgumentError(absl::StrCat("no noise multiplier up to 1e6 keeps ", steps, " steps at rate ",
                                                     q, " within epsilon ", target_epsilon, " at delta ", delta));
    }
  }
  while (hi - lo > tolerance * hi) {
    const double mid = (lo + hi) / 2;
    (spent(mid) > target_epsilon ? lo : hi) = mid;
  }
  return hi;
}

}  // namespace allround::privacy
