#ifndef ALLROUND_ALGORITHMS_AGGREGATION_STRATEGY_H_
#define ALLROUND_ALGORITHMS_AGGREGATION_STRATEGY_H_

// How the coordinator turns a round's updates into the next global model. Each site returns its
// new weights and its example count; updates arrive sorted by site id, so the result never
// depends on arrival order. The strategy's own state (server momentum, adaptive moments) comes out
// of State() and goes back through LoadState() like any other checkpointed tensors.
//
// Strategies (x: global weights, x_i: site i's weights, w_i = n_i / sum n, delta = sum w_i (x_i - x)):
//  - fedavg (McMahan et al. 2017): x + delta, the example-weighted mean.
//  - fedprox (Li et al. 2020): aggregates as fedavg; mu is applied at the sites (proximal_mu()).
//  - fedavgm (Hsu et al. 2019): m = beta m + delta; x + lr m.
//  - fedadagrad / fedadam / fedyogi (Reddi et al. 2021, Algorithm 2): m = b1 m + (1 - b1) delta;
//    v = v + delta^2 | b2 v + (1 - b2) delta^2 | v - (1 - b2) delta^2 sign(v - delta^2);
//    x + lr m / (sqrt(v) + tau), with v starting at tau^2.
//  - median (Yin et al. 2018): coordinate-wise median of the x_i (mean of the middle two if even).
//  - trimmed_mean (Yin et al. 2018): per coordinate, drop floor(beta n) smallest and largest, mean.
//  - krum (Blanchard et al. 2017): the x_i whose squared distances to its n - f - 2 nearest others
//    sum least; with multi_krum m > 1, the mean of the m best.
// Only floating-point tensors are aggregated; integer ones (e.g. BatchNorm's batch counter) are
// taken from the first update. Thread-compatible.

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace allround::aggregation {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct SiteUpdate {
  int64_t site_id = 0;
  int64_t examples = 0;
  NamedTensors weights;  // same names, shapes and dtypes as the global state
};

struct StrategySpec {
  std::string name = "fedavg";
  double server_lr = 1.0;      // fedavgm, fedadagrad, fedadam, fedyogi
  double momentum = 0.9;       // fedavgm
  double beta1 = 0.9;          // adaptive
  double beta2 = 0.99;         // adaptive
  double tau = 1e-3;           // adaptive
  double proximal_mu = 0.0;    // fedprox
  double trim_beta = 0.1;      // trimmed_mean
  int64_t byzantine = 0;       // krum: f
  int64_t multi_krum = 1;      // krum: m
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;

  // The next global state. Fails, changing nothing, on no updates, on an update whose tensors do
  // not match the global state (naming the site and tensor), or on a non-finite value.
  virtual absl::StatusOr<NamedTensors> Aggregate(const NamedTensors& global, const std::vector<SiteUpdate>& updates) = 0;

  // The proximal term sites must add to their loss (fedprox), else 0.
  virtual double proximal_mu() const { return 0.0; }

  // Strategy state as named tensors ("strategy/...") for checkpoints; empty for stateless ones.
  virtual NamedTensors State() const { return {}; }
  virtual absl::Status LoadState(const NamedTensors& state) { return absl::OkStatus(); }
};

absl::StatusOr<std::unique_ptr<Strategy>> MakeStrategy(const StrategySpec& spec);

// True if `t` holds no NaN or Inf (integer tensors always). One pass, no allocation for
// contiguous float32/float64; the coordinator checks every update with it.
bool AllFinite(const at::Tensor& t);
std::vector<std::string> StrategyNames();

}  // namespace allround::aggregation

#endif  // ALLROUND_ALGORITHMS_AGGREGATION_STRATEGY_H_
