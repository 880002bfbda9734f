#ifndef ALLROUND_ALGORITHMS_AGGREGATION_STRATEGY_H_
#define ALLROUND_ALGORITHMS_AGGREGATION_STRATEGY_H_

// How the coordinator turns a round's updates into the next global model. Each site returns its
// new weights and its example count; updates arrive in the order the RoundManager gives them
// (coordinator/round_manager.h says which: by site name), so the result never depends on arrival
// or join order. The strategy's own state (server momentum, adaptive moments) comes out
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
//    sum least; with strategy.multi_krum m > 1, the mean of the m best.
//  - multi_krum: krum's mean of the m best, m = n - f unless strategy.multi_krum says.
//  - centered_clipping (Karimireddy et al. 2021): from the last round's aggregate delta v,
//    v <- v + (1/n) sum_i clip_tau(delta_i - v), L times; x + v (strategies.cc says more).
// Only floating-point tensors are aggregated; integer ones (e.g. BatchNorm's batch counter) are
// taken from the first update. Thread-compatible.

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job.h"
#include "common/registry.h"
#include "tensor/named_tensors.h"

namespace allround::aggregation {

using tensor::NamedTensors;

struct SiteUpdate {
  int64_t site_id = 0;
  int64_t examples = 0;
  NamedTensors weights;  // same names, shapes and dtypes as the global state
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

// What makes a strategy from the job: its keys' values are the job's (JobNumber(job,
// "strategy.server_lr")), defaulted and checked as the strategy registered them.
using StrategyFactory = std::function<absl::StatusOr<std::unique_ptr<Strategy>>(const Job& job)>;

// Registers a strategy beside its code (common/registry.h): its name, help and job keys go where
// job parsing and --help find them, its factory where MakeStrategy does. `info.kind` is set to
// "strategy". Returns true, to initialize a static: `const bool kRegistered = RegisterStrategy(...)`.
bool RegisterStrategy(ComponentInfo info, StrategyFactory factory);

// The job's strategy (strategy.name). Fails naming the known ones for a name none registered.
absl::StatusOr<std::unique_ptr<Strategy>> MakeStrategy(const Job& job);

// True if `t` holds no NaN or Inf (tensor/named_tensors.h; one pass, no allocation for contiguous
// float32/float64); the coordinator checks every update with it.
using tensor::AllFinite;

}  // namespace allround::aggregation

#endif  // ALLROUND_ALGORITHMS_AGGREGATION_STRATEGY_H_
