#include "algorithms/modes/supervised.h"

#include <torch/torch.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "algorithms/losses.h"
#include "algorithms/metrics.h"
#include "algorithms/models/network.h"
#include "algorithms/optim/optimizer.h"
#include "common/random.h"

namespace allround::modes {
namespace {

class SupervisedMode final : public LearningMode {
 public:
  SupervisedMode(std::shared_ptr<models::Network> model, std::unique_ptr<torch::optim::Optimizer> opt,
                 losses::LossFn loss, const InputInfo& input)
      : model_(std::move(model)), optimizer_(std::move(opt)), loss_(loss), input_(input) {}

  absl::StatusOr<StepResult> TrainStep(const Batch& batch, double lr, GradientSync* sync) override {
    if (auto s = CheckBatch(batch); !s.ok()) return s;
    model_->train();
    optimizer_->zero_grad();
    torch::Tensor loss;
    try {
      loss = loss_(model_->forward(batch.inputs), batch.targets);
    } catch (const c10::Error& e) {
      return absl::InvalidArgumentError(absl::StrCat("forward failed: ", e.what_without_backtrace()));
    }
    const double value = loss.item<double>();
    if (!std::isfinite(value)) {
      return absl::FailedPreconditionError(absl::StrCat("loss is ", value, ": step skipped (learning rate too high?)"));
    }
    if (sync != nullptr) sync->BeforeBackward();
    loss.backward();
    if (sync != nullptr) {
      if (auto s = sync->AfterBackward(); !s.ok()) return s;
    }
    optim::SetLearningRate(*optimizer_, lr);
    optimizer_->step();
    return StepResult{value, batch.inputs.size(0)};
  }

  absl::StatusOr<EvalSums> Evaluate(const at::Tensor& inputs, const at::Tensor& targets,
                                    int64_t batch_size) override {
    torch::NoGradGuard no_grad;
    model_->eval();
    EvalSums sums;
    sums.confusion = torch::zeros({input_.num_classes, input_.num_classes}, torch::kLong);
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

  std::vector<at::Tensor> TrainableParameters() override { return model_->parameters(); }
  std::vector<at::Tensor> ModelState() override {
    std::vector<at::Tensor> out = model_->parameters();
    for (const auto& b : model_->buffers()) out.push_back(b);
    return out;
  }
  int64_t ParameterCount() override { return models::CountParameters(*model_); }

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
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  losses::LossFn loss_;
  InputInfo input_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<LearningMode>> MakeSupervisedMode(const Job& job, const InputInfo& input) {
  auto loss = losses::FindLoss(job.loss);
  if (!loss.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'loss': ", loss.status().message()));
  torch::manual_seed(DeriveSeed(job.seed, "model-init"));
  auto model = models::MakeModel(job.model, {input.channels, input.height, input.width, input.num_classes});
  if (!model.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'model.name': ", model.status().message()));
  auto opt = optim::MakeOptimizer(job.optimizer, (*model)->parameters());
  if (!opt.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'optimizer.name': ", opt.status().message()));
  return std::unique_ptr<LearningMode>(
      std::make_unique<SupervisedMode>(*std::move(model), *std::move(opt), *loss, input));
}

}  // namespace allround::modes
