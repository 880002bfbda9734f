#include "algorithms/modes/supervised.h"

#include "algorithms/modes/classifier.h"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "algorithms/losses.h"
#include "algorithms/metrics.h"
#include "algorithms/models/network.h"
#include "algorithms/modes/registry.h"
#include "algorithms/optim/optimizer.h"
#include "common/random.h"

namespace allround::modes {
namespace {


// A classifier: one network, one optimizer, evaluated by its predictions. The batch loss is the
// job's loss on the labels, or a semi-supervised mode's (BatchLossFn).
class ClassifierMode final : public SingleNetworkMode {
 public:
  ClassifierMode(std::shared_ptr<models::Network> model, std::unique_ptr<torch::optim::Optimizer> opt,
                 losses::LossFn loss, const InputInfo& input, BatchLossFn batch_loss)
      : SingleNetworkMode(model, std::move(opt)),
        model_(std::move(model)),
        loss_(loss),
        input_(input),
        batch_loss_(std::move(batch_loss)) {}

  absl::StatusOr<StepResult> TrainStep(const Batch& batch, double lr, GradientSync* sync) override {
    if (auto s = CheckBatch(batch); !s.ok()) return s;
    if (batch.dp != nullptr) return PrivateStep(batch, lr, sync);
    model_->train();
    ZeroGrad();
    torch::Tensor loss;
    try {
      if (batch_loss_) {
        auto l = batch_loss_(*model_, loss_, batch);
        if (!l.ok()) return l.status();
        loss = *std::move(l);
      } else {
        loss = loss_(model_->forward(batch.inputs), batch.targets);
      }
    } catch (const c10::Error& e) {
      return absl::InvalidArgumentError(absl::StrCat("forward failed: ", e.what_without_backtrace()));
    }
    auto value = Step(loss, sync, lr);
    if (!value.ok()) return value.status();
    return StepResult{*value, batch.inputs.size(0) + (batch.unlabeled.defined() ? batch.unlabeled.size(0) : 0)};
  }

  // DP-SGD: the forward recorded for per-example gradients, the loss summed over the examples.
  absl::StatusOr<StepResult> PrivateStep(const Batch& batch, double lr, GradientSync* sync) {
    if (batch_loss_) return absl::FailedPreconditionError("DP-SGD runs the supervised mode's loss only");
    model_->train();
    ZeroGrad();
    const int64_t n = batch.inputs.size(0);
    models::PerExampleGradients recorded;
    torch::Tensor loss_sum;
    if (n > 0) {
      try {
        loss_sum = loss_(model_->forward(batch.inputs), batch.targets) * static_cast<double>(n);
      } catch (const c10::Error& e) {
        return absl::InvalidArgumentError(absl::StrCat("forward failed: ", e.what_without_backtrace()));
      }
    }
    auto r = DpStep(loss_sum, n, recorded, sync, lr, *batch.dp);
    if (!r.ok()) return r.status();
    return StepResult{r->loss, n};
  }

  absl::StatusOr<EvalSums> Evaluate(const at::Tensor& inputs, const at::Tensor& targets,
                                    int64_t batch_size) override {
    torch::NoGradGuard no_grad;
    model_->eval();
    EvalSums sums;
    sums.confusion = torch::zeros({input_.num_classes, input_.num_classes}, inputs.options().dtype(torch::kLong));
    const int64_t n = inputs.size(0);
    for (int64_t start = 0; start < n; start += batch_size) {
      const int64_t len = std::min(batch_size, n - start);
      Batch b{inputs.narrow(0, start, len), targets.narrow(0, start, len)};
      if (auto s = CheckBatch(b); !s.ok()) return s;
      torch::Tensor logits = model_->forward(b.inputs);
      sums.loss_sum += loss_(logits, b.targets).item<double>() * static_cast<double>(len);
      metrics::AccumulateConfusion(sums.confusion, logits.argmax(1), b.targets);
      sums.examples += len;
    }
    return sums;
  }

 private:
  absl::Status CheckBatch(const Batch& b) const {
    if (b.inputs.dim() != 4 || b.inputs.size(1) != input_.channels || b.inputs.size(2) != input_.height ||
        b.inputs.size(3) != input_.width) {
      return absl::InvalidArgumentError(absl::StrCat("batch inputs of shape ", c10::str(b.inputs.sizes()),
                                                     ", expected [B, ", input_.channels, ", ", input_.height,
                                                     ", ", input_.width, "]"));
    }
    if (b.targets.dim() != 1 || b.targets.size(0) != b.inputs.size(0)) {
      return absl::InvalidArgumentError(absl::StrCat("batch targets of shape ", c10::str(b.targets.sizes()),
                                                     " for ", b.inputs.size(0), " inputs"));
    }
    return absl::OkStatus();
  }

  std::shared_ptr<models::Network> model_;
  losses::LossFn loss_;
  InputInfo input_;
  BatchLossFn batch_loss_;
};

// DP-SGD needs each parameter's per-example gradient: a model with batch norm, or a parameter
// that no layer with a per-example rule owns, is refused by name before training starts (a
// backward through two blank examples, which changes nothing).
absl::Status CheckPerExampleGradients(models::Network& model, const std::string& name, const InputInfo& input,
                                      at::Device device) {
  for (const auto& m : model.named_modules()) {
    if (dynamic_cast<torch::nn::BatchNorm2dImpl*>(m.value().get()) != nullptr ||
        dynamic_cast<torch::nn::BatchNorm1dImpl*>(m.value().get()) != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "job key 'privacy.mode': model ", name, "'s layer '", m.key(),
          "' is a batch norm, which mixes the examples of a batch, so no example has a gradient of its own",
          name == "resnet" ? " (set model.norm: group)" : ""));
    }
  }
  optim::NamedParams params;
  for (const auto& p : model.named_parameters()) {
    if (p.value().requires_grad()) params.emplace_back(p.key(), p.value());
  }
  models::PerExampleGradients recorded;
  const torch::Tensor x = torch::zeros({2, input.channels, input.height, input.width}, torch::TensorOptions(device));
  recorded.Backward(model.forward(x).sum());
  auto norms = recorded.SquaredNorms(params, 2);
  if (!norms.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("job key 'privacy.mode': model ", name, ": ", norms.status().message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<LearningMode>> MakeSupervisedMode(const Job& job, const InputInfo& input,
                                                                 at::Device device) {
  return MakeClassifierMode(job, input, device, nullptr);
}

absl::StatusOr<std::unique_ptr<LearningMode>> MakeClassifierMode(const Job& job, const InputInfo& input,
                                                                 at::Device device, BatchLossFn batch_loss) {
  auto loss = losses::FindLoss(job.loss);
  if (!loss.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'loss': ", loss.status().message()));
  torch::manual_seed(DeriveSeed(job.seed, "model-init"));
  auto model = models::MakeModel(models::ModelSpecFromJob(job), {input.channels, input.height, input.width, input.num_classes});
  if (!model.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'model.name': ", model.status().message()));
  (*model)->to(device);  // before the optimizer takes the parameters
  if (optim::DpSpecFromJob(job).example_level()) {
    if (auto s = CheckPerExampleGradients(**model, job.model.name, input, device); !s.ok()) return s;
  }
  auto opt = optim::MakeOptimizer(job.optimizer, (*model)->parameters());
  if (!opt.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'optimizer.name': ", opt.status().message()));
  return std::unique_ptr<LearningMode>(
      std::make_unique<ClassifierMode>(*std::move(model), *std::move(opt), *loss, input, std::move(batch_loss)));
}

namespace {
[[maybe_unused]] const bool kRegistered =
    RegisterMode({"mode", "supervised", "classification with the job's model, loss and optimizer", {}}, ModeNeeds{},
                 [](const ModeInputs& in) { return MakeSupervisedMode(in.job, in.input, in.device); });
}  // namespace

}  // namespace allround::modes
