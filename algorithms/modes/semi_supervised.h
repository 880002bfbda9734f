#ifndef ALLROUND_ALGORITHMS_MODES_SEMI_SUPERVISED_H_
#define ALLROUND_ALGORITHMS_MODES_SEMI_SUPERVISED_H_

// Semi-supervised classification: a few labelled images and many unlabelled ones.
//  - fixmatch (Sohn et al. 2020): for each unlabelled image, the model's prediction on a weak
//    view becomes a pseudo-label where its probability is >= tau; the strong view's
//    cross-entropy against it, weighted lambda_u and averaged over all mu x B unlabelled
//    images, joins the labelled images' loss (on their weak views). One forward pass over
//    [labelled weak; unlabelled weak; unlabelled strong], as the paper does, so batch norm sees
//    them together.
//  - pseudolabel (Lee 2013), the baseline: the same thresholded pseudo-labels, but the
//    unlabelled loss is on the weak view itself (no strong augmentation).
// The modules, optimizer, evaluation and checkpoint state are the supervised mode's. A batch
// brings its unlabelled images (Batch::unlabeled) and a seed for the views (Batch::seed).

#include <ATen/core/Tensor.h>

#include <memory>

#include "absl/status/statusor.h"
#include "algorithms/modes/learning_mode.h"
#include "algorithms/modes/supervised.h"

namespace allround::modes {

struct FixMatchLoss {
  at::Tensor total;         // supervised + lambda_u * unsupervised
  double supervised = 0;    // mean cross-entropy of the labelled images
  double unsupervised = 0;  // sum over confident images of CE(strong, pseudo) / all unlabelled
  double mask_rate = 0;     // fraction of unlabelled images with a pseudo-label
};

// The loss from the three groups of logits (differentiable in `labeled` and `strong`; `weak`
// only gives the pseudo-labels).
FixMatchLoss ComputeFixMatchLoss(const at::Tensor& labeled, const at::Tensor& targets, const at::Tensor& weak,
                                 const at::Tensor& strong, double tau, double lambda_u);

// job.mode "fixmatch" or "pseudolabel", with the keys both register in semi_supervised.cc: per
// step B labelled and semi.mu x B unlabelled images (the trainer cuts the batches); pseudo-labels
// where the weak view's probability >= semi.tau; the unlabelled loss weighted by semi.lambda_u.
absl::StatusOr<std::unique_ptr<LearningMode>> MakeSemiSupervisedMode(const Job& job, const InputInfo& input,
                                                                     at::Device device = at::Device(at::kCPU));

}  // namespace allround::modes

#endif  // ALLROUND_ALGORITHMS_MODES_SEMI_SUPERVISED_H_
