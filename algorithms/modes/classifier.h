#ifndef ALLROUND_ALGORITHMS_MODES_CLASSIFIER_H_
#define ALLROUND_ALGORITHMS_MODES_CLASSIFIER_H_

// Internal to algorithms/modes: the classifier machinery (network, optimizer, evaluation by
// predictions, state, FedProx) that the supervised and semi-supervised modes share; they differ
// only in how a batch becomes a loss. Heavy (LibTorch nn): include it only from mode sources.

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "algorithms/losses.h"
#include "algorithms/models/network.h"
#include "algorithms/modes/learning_mode.h"
#include "algorithms/modes/supervised.h"

namespace allround::modes {

// The loss of one training batch, with the model in training mode (nullptr: the job's loss on
// the batch's labels).
using BatchLossFn =
    std::function<absl::StatusOr<torch::Tensor>(models::Network& model, const losses::LossFn& loss, const Batch& batch)>;

// A module's parameters then buffers as "<prefix><name>" entries sharing its storage (detached):
// the "model/" part of a mode's State, and the targets its LoadState copies into.
inline LearningMode::NamedTensors ModuleTensors(const torch::nn::Module& module, const std::string& prefix) {
  LearningMode::NamedTensors out;
  for (const auto& p : module.named_parameters()) out.emplace_back(prefix + p.key(), p.value().detach());
  for (const auto& b : module.named_buffers()) out.emplace_back(prefix + b.key(), b.value().detach());
  return out;
}

// A module's parameters by name (what optimizer state is keyed by).
inline std::vector<std::pair<std::string, at::Tensor>> NamedParameters(const torch::nn::Module& module,
                                                                       const std::string& prefix = "") {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : module.named_parameters()) out.emplace_back(prefix + p.key(), p.value());
  return out;
}

absl::StatusOr<std::unique_ptr<LearningMode>> MakeClassifierMode(const Job& job, const InputInfo& input,
                                                                 at::Device device, BatchLossFn batch_loss);

}  // namespace allround::modes

#endif  // ALLROUND_ALGORITHMS_MODES_CLASSIFIER_H_
