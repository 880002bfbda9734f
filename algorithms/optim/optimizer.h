#ifndef ALLROUND_ALGORITHMS_OPTIM_OPTIMIZER_H_
#define ALLROUND_ALGORITHMS_OPTIM_OPTIMIZER_H_

// Optimizers a job can name (LibTorch's SGD with momentum / Nesterov / weight decay, Adam, AdamW),
// with PyTorch's update rules so results compare one to one with a PyTorch run.

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/gradient_sync.h"
#include "common/job.h"
#include "tensor/named_tensors.h"

namespace torch::optim {
class Optimizer;
}

namespace allround::optim {

absl::StatusOr<std::unique_ptr<torch::optim::Optimizer>> MakeOptimizer(const OptimizerSpec& spec,
                                                                        const std::vector<at::Tensor>& params);

// Sets the learning rate of every parameter group.
void SetLearningRate(torch::optim::Optimizer& optimizer, double lr);

// One optimization step from `loss`: refuses (changing nothing) a non-finite loss, then backward
// between sync's BeforeBackward and AfterBackward (the group's gradient average; sync may be
// null), then the optimizer's step at `lr`. Returns the loss.
absl::StatusOr<double> BackwardAndStep(const at::Tensor& loss, comm::GradientSync* sync,
                                       torch::optim::Optimizer& optimizer, double lr);

using tensor::NamedTensors;

// The optimizer's state for the named parameters, as "optim/<name>/<slot>" tensors (SGD's
// momentum_buffer; Adam's and AdamW's step, exp_avg, exp_avg_sq), sharing storage; parameters
// without state (no step yet) have none.
NamedTensors OptimizerState(torch::optim::Optimizer& optimizer, const NamedTensors& named_params);
// Replaces the optimizer's state by the "optim/..." tensors of `by_name` for these parameters
// (a parameter without them starts fresh); a malformed slot is an error naming it.
absl::Status LoadOptimizerState(torch::optim::Optimizer& optimizer, const NamedTensors& named_params,
                                const std::map<std::string, at::Tensor>& by_name);

}  // namespace allround::optim

#endif  // ALLROUND_ALGORITHMS_OPTIM_OPTIMIZER_H_
