#ifndef ALLROUND_ALGORITHMS_OPTIM_OPTIMIZER_H_
#define ALLROUND_ALGORITHMS_OPTIM_OPTIMIZER_H_

// Optimizers a job can name (LibTorch's SGD with momentum / Nesterov / weight decay, Adam, AdamW),
// with PyTorch's update rules so results compare one to one with a PyTorch run.

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job.h"

namespace torch::optim {
class Optimizer;
}

namespace allround::optim {

absl::StatusOr<std::unique_ptr<torch::optim::Optimizer>> MakeOptimizer(const OptimizerSpec& spec,
                                                                        const std::vector<at::Tensor>& params);

// Sets the learning rate of every parameter group.
void SetLearningRate(torch::optim::Optimizer& optimizer, double lr);

}  // namespace allround::optim

#endif  // ALLROUND_ALGORITHMS_OPTIM_OPTIMIZER_H_
