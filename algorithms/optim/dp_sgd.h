#ifndef ALLROUND_ALGORITHMS_OPTIM_DP_SGD_H_
#define ALLROUND_ALGORITHMS_OPTIM_DP_SGD_H_

// Differential privacy settings of a job (keys privacy.*), and the DP-SGD step (Abadi et al. 2016)
// as Opacus takes it: each example's whole gradient clipped to L2 norm C, the clipped gradients
// summed over the worker group's batch, Gaussian noise of standard deviation z * C added once to
// that sum, and the result divided by the EXPECTED batch size q * N (a fixed denominator, which
// the accounting of Poisson-sampled batches assumes), then the job's optimizer steps.
//
// Under a worker group of W ranks each rank clips its own examples, the group sums (one
// allreduce of the flattened clipped sums), and every rank adds the same noise, drawn from the
// step's group seed: the noise is drawn once per step for the group, not once per rank.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/gradient_sync.h"
#include "common/job.h"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace allround::models {
class PerExampleGradients;
}  // namespace allround::models

namespace allround::optim {

// privacy.mode and its figures.
struct DpSpec {
  std::string mode = "none";    // none | example (DP-SGD) | site (DP-FedAvg)
  double noise_multiplier = 0;  // z; 0 with target_epsilon > 0: computed before training starts
  double target_epsilon = 0;    // the budget: a run stops at the last step within it (0: none)
  double clip = 1.0;            // C: the L2 bound on one example's (site's) contribution
  double delta = 1e-5;
  // Where the Poisson draws and the noise come from: "secret" (64 bits of OS entropy drawn when
  // training starts, kept only in the run's own checkpoints, so a resumed run stays exact) or
  // "job" (derived from the job seed: reproducible from the job file, and the guarantee then
  // holds only against whoever does not know the seed).
  std::string noise_seed = "secret";
  bool example_level() const { return mode == "example"; }
  bool site_level() const { return mode == "site"; }
  bool on() const { return mode != "none"; }
};

DpSpec DpSpecFromJob(const Job& job);

// One DP-SGD step's group-wide figures (the trainer's, through the batch).
struct DpStepContext {
  uint64_t noise_seed = 0;    // the same on every rank of the group
  int group_size = 1;
  double expected_batch = 0;  // q * N over the whole group: the mean's denominator (> 0)
  double noise_multiplier = 0;
  double clip = 1.0;
};

struct DpStepResult {
  double loss = 0;           // the local batch's mean loss (0 for an empty batch)
  double clipped_share = 0;  // the fraction of the local batch whose gradient was clipped
};

using NamedParams = std::vector<std::pair<std::string, at::Tensor>>;

// After a forward of `batch` examples recorded by `recorded`, with `loss_sum` the SUM of their
// losses: backward, per-example clipping, the group's sum, noise, the fixed denominator, then
// `penalty`'s gradient (a data-independent term such as FedProx's, undefined for none) is added
// and the optimizer steps at `lr`. An empty local batch (Poisson sampling can draw one) takes part
// in the group's sum with zeros. Fails, changing nothing, on a non-finite loss or a parameter
// without a per-example gradient. `sync` may be null in a group of one.
absl::StatusOr<DpStepResult> DpSgdStep(const at::Tensor& loss_sum, int64_t batch,
                                       models::PerExampleGradients& recorded, const NamedParams& params,
                                       const at::Tensor& penalty, comm::GradientSync* sync,
                                       torch::optim::Optimizer& optimizer, double lr, const DpStepContext& ctx);

// Clips per-example gradients [B, ...] (one tensor per parameter) so that each example's norm
// over all of them is at most `clip`: the factors min(1, C / (norm + 1e-6)), as float64 [B].
at::Tensor ClipFactors(const at::Tensor& squared_norms, double clip);

}  // namespace allround::optim

#endif  // ALLROUND_ALGORITHMS_OPTIM_DP_SGD_H_
