#ifndef ALLROUND_ALGORITHMS_MODES_CLASSIFIER_H_
#define ALLROUND_ALGORITHMS_MODES_CLASSIFIER_H_

// Internal to algorithms/modes: the classifier machinery (network, optimizer, evaluation by
// predictions, state, FedProx) that the supervised and semi-supervised modes share; they differ
// only in how a batch becomes a loss. Heavy (LibTorch nn): include it only from mode sources.

#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "algorithms/losses.h"
#include "algorithms/models/grad_sample.h"
#include "algorithms/models/network.h"
#include "algorithms/modes/learning_mode.h"
#include "algorithms/modes/supervised.h"
#include "algorithms/optim/dp_sgd.h"
#include "algorithms/optim/optimizer.h"

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

// The tensors of named entries, in order, without their names (a mode's ModelState).
inline std::vector<at::Tensor> TensorsOf(const LearningMode::NamedTensors& named) {
  std::vector<at::Tensor> out;
  out.reserve(named.size());
  for (const auto& [name, t] : named) out.push_back(t);
  return out;
}

// A module's parameters by name (what optimizer state is keyed by).
inline std::vector<std::pair<std::string, at::Tensor>> NamedParameters(const torch::nn::Module& module,
                                                                       const std::string& prefix = "") {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : module.named_parameters()) out.emplace_back(prefix + p.key(), p.value());
  return out;
}

// A mode with one network and one optimizer (the VAE, the masked LM): the state, parameters and
// FedProx term of that pair, so each such mode writes only its steps and evaluation.
class SingleNetworkMode : public LearningMode {
 public:
  SingleNetworkMode(std::shared_ptr<torch::nn::Module> net, std::unique_ptr<torch::optim::Optimizer> opt)
      : net_(std::move(net)), optimizer_(std::move(opt)) {}

  std::vector<at::Tensor> TrainableParameters() override { return net_->parameters(); }
  std::vector<at::Tensor> ModelState() override { return TensorsOf(ModuleTensors(*net_, "model/")); }
  std::vector<at::Tensor> Buffers() override { return net_->buffers(); }
  int64_t ParameterCount() override { return models::CountParameters(*net_); }
  NamedTensors State() override {
    NamedTensors out = ModuleTensors(*net_, "model/");
    for (auto& entry : optim::OptimizerState(*optimizer_, NamedParameters(*net_))) out.push_back(std::move(entry));
    return out;
  }
  absl::Status LoadState(const NamedTensors& state) override {
    std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
    if (auto s = CopyCheckedInto(ModuleTensors(*net_, "model/"), by_name); !s.ok()) return s;
    return optim::LoadOptimizerState(*optimizer_, NamedParameters(*net_), by_name);
  }
  absl::Status SetProximalTerm(double mu, const NamedTensors& reference) override {
    return proximal_.Set(mu, reference, NamedParameters(*net_));
  }

 protected:
  // loss + the FedProx term, backward (reduced by `sync`), optimizer step: the loss's value.
  absl::StatusOr<double> Step(torch::Tensor loss, GradientSync* sync, double lr) {
    if (proximal_.active()) loss = loss + proximal_.Penalty(net_->parameters());
    return optim::BackwardAndStep(loss, sync, *optimizer_, lr);
  }
  void ZeroGrad() { optimizer_->zero_grad(); }
  // DP-SGD's step (algorithms/optim/dp_sgd.h) after a forward recorded by `recorded` whose loss
  // is the SUM over `batch` examples; FedProx's term is added after the noise.
  absl::StatusOr<optim::DpStepResult> DpStep(const torch::Tensor& loss_sum, int64_t batch,
                                             models::PerExampleGradients& recorded, GradientSync* sync, double lr,
                                             const optim::DpStepContext& ctx) {
    optim::NamedParams params;
    for (const auto& p : net_->named_parameters()) {
      if (p.value().requires_grad()) params.emplace_back(p.key(), p.value());
    }
    const torch::Tensor penalty = proximal_.active() ? proximal_.Penalty(net_->parameters()) : torch::Tensor();
    return optim::DpSgdStep(loss_sum, batch, recorded, params, penalty, sync, *optimizer_, lr, ctx);
  }

 private:
  std::shared_ptr<torch::nn::Module> net_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  ProximalTerm proximal_;
};

absl::StatusOr<std::unique_ptr<LearningMode>> MakeClassifierMode(const Job& job, const InputInfo& input,
                                                                 at::Device device, BatchLossFn batch_loss);

}  // namespace allround::modes

#endif  // ALLROUND_ALGORITHMS_MODES_CLASSIFIER_H_
