#include "algorithms/modes/semi_supervised.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "algorithms/augment/image_ops.h"
#include "algorithms/modes/classifier.h"
#include "algorithms/modes/registry.h"
#include "common/random.h"

namespace allround::modes {

FixMatchLoss ComputeFixMatchLoss(const at::Tensor& labeled, const at::Tensor& targets, const at::Tensor& weak,
                                 const at::Tensor& strong, double tau, double lambda_u) {
  FixMatchLoss out;
  const at::Tensor sup = at::cross_entropy_loss(labeled, targets);
  at::Tensor probs = at::softmax(weak.detach(), 1);
  auto [confidence, pseudo] = probs.max(1);
  const at::Tensor mask = (confidence >= tau).to(strong.scalar_type());
  const at::Tensor per = at::cross_entropy_loss(strong, pseudo, {}, at::Reduction::None);
  const at::Tensor unsup = (per * mask).sum() / std::max<int64_t>(1, strong.size(0));
  out.total = sup + lambda_u * unsup;
  out.supervised = sup.item<double>();
  out.unsupervised = unsup.item<double>();
  out.mask_rate = mask.mean().item<double>();
  return out;
}

absl::StatusOr<std::unique_ptr<LearningMode>> MakeSemiSupervisedMode(const Job& job, const InputInfo& input,
                                                                     at::Device device) {
  if (job.mode != "fixmatch" && job.mode != "pseudolabel") {
    return absl::InvalidArgumentError(absl::StrCat("job key 'mode': '", job.mode, "' is not semi-supervised"));
  }
  const bool fixmatch = job.mode == "fixmatch";
  const double tau = JobNumber(job, "semi.tau"), lambda_u = JobNumber(job, "semi.lambda_u");
  BatchLossFn loss = [fixmatch, tau, lambda_u](models::Network& model, const losses::LossFn&,
                                               const Batch& batch) -> absl::StatusOr<torch::Tensor> {
    if (!batch.unlabeled.defined() || batch.unlabeled.size(0) == 0) {
      return absl::InvalidArgumentError("a semi-supervised step needs unlabelled images (data.labels_per_class)");
    }
    if (batch.unlabeled.sizes().slice(1) != batch.inputs.sizes().slice(1)) {
      return absl::InvalidArgumentError(absl::StrCat("unlabelled images of shape ", c10::str(batch.unlabeled.sizes()),
                                                     " beside labelled ", c10::str(batch.inputs.sizes())));
    }
    Rng rng(batch.seed);
    const int64_t b = batch.inputs.size(0), u = batch.unlabeled.size(0);
    std::vector<at::Tensor> views = {augment::WeakView(batch.inputs, rng, kImageMean, kImageStd),
                                     augment::WeakView(batch.unlabeled, rng, kImageMean, kImageStd)};
    if (fixmatch) views.push_back(augment::StrongView(batch.unlabeled, rng, kImageMean, kImageStd));
    const at::Tensor logits = model.forward(at::cat(views, 0));
    const at::Tensor weak = logits.narrow(0, b, u);
    const at::Tensor strong = fixmatch ? logits.narrow(0, b + u, u) : weak;
    return ComputeFixMatchLoss(logits.narrow(0, 0, b), batch.targets, weak, strong, tau, lambda_u).total;
  };
  return MakeClassifierMode(job, input, device, std::move(loss));
}

namespace {
[[maybe_unused]] const bool kRegistered = [] {
  ModeNeeds needs;
  needs.unlabeled = true;
  const auto make = [](const ModeInputs& in) { return MakeSemiSupervisedMode(in.job, in.input, in.device); };
  const std::vector<ComponentKey> keys = {
      IntegerKey("semi.mu", 7, "unlabelled images per labelled one in a step", 1, 1024),
      NumberKey("semi.tau", 0.95, "confidence a pseudo-label needs", 0.0, 1.0),
      NumberKey("semi.lambda_u", 1.0, "weight of the unlabelled loss", 0.0, 1e6),
  };
  RegisterMode({"mode", "fixmatch", "semi-supervised: weak-view pseudo-labels teach strong views (Sohn et al. 2020)",
                keys},
               needs, make);
  RegisterMode({"mode", "pseudolabel", "semi-supervised: confident pseudo-labels on weak views (Lee 2013)", keys},
               needs, make);
  return true;
}();
}  // namespace

}  // namespace allround::modes
