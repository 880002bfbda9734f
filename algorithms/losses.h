#ifndef ALLROUND_ALGORITHMS_LOSSES_H_
#define ALLROUND_ALGORITHMS_LOSSES_H_

// Classification losses a job can name, each the mean over the batch:
//  - cross_entropy: softmax cross-entropy on logits;
//  - l1, mse: distance between softmax(logits) and the one-hot target;
//  - hinge: multi-class hinge (Crammer-Singer style margin 1, PyTorch's multi_margin_loss).

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/registry.h"

namespace allround::losses {

using LossFn = at::Tensor (*)(const at::Tensor& logits, const at::Tensor& targets);

// The loss function that `name` names; unknown names are an error listing the known ones.
absl::StatusOr<LossFn> FindLoss(const std::string& name);

// Registers a loss beside its code (common/registry.h, kind "loss"): the job's loss key accepts its
// name. Returns true, to initialize a static.
bool RegisterLoss(ComponentInfo info, LossFn loss);

// The registered losses' names, sorted.
std::vector<std::string> LossNames();

}  // namespace allround::losses

#endif  // ALLROUND_ALGORITHMS_LOSSES_H_
