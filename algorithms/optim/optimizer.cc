#include "algorithms/optim/optimizer.h"

#include <torch/optim.h>

#include "absl/strings/str_cat.h"

namespace allround::optim {

absl::StatusOr<std::unique_ptr<torch::optim::Optimizer>> MakeOptimizer(const OptimizerSpec& spec,
                                                                        const std::vector<at::Tensor>& params) {
  if (spec.name == "sgd") {
    return std::unique_ptr<torch::optim::Optimizer>(std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(spec.lr)
                    .momentum(spec.momentum)
                    .nesterov(spec.nesterov)
                    .weight_decay(spec.weight_decay)));
  }
  if (spec.name == "adam" || spec.name == "adamw") {
    const auto betas = std::make_tuple(spec.beta1, spec.beta2);
    if (spec.name == "adam") {
      return std::unique_ptr<torch::optim::Optimizer>(std::make_unique<torch::optim::Adam>(
          params, torch::optim::AdamOptions(spec.lr).betas(betas).eps(spec.eps).weight_decay(spec.weight_decay)));
    }
    return std::unique_ptr<torch::optim::Optimizer>(std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(spec.lr).betas(betas).eps(spec.eps).weight_decay(spec.weight_decay)));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown optimizer '", spec.name, "' (known: sgd, adam, adamw)"));
}

void SetLearningRate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

}  // namespace allround::optim
