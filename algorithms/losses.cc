#include "algorithms/losses.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace allround::losses {
namespace {

at::Tensor CrossEntropy(const at::Tensor& logits, const at::Tensor& targets) {
  return at::nll_loss(at::log_softmax(logits, 1), targets);
}

at::Tensor OneHot(const at::Tensor& targets, int64_t classes, const at::Tensor& like) {
  return at::one_hot(targets, classes).to(like.scalar_type());
}

at::Tensor L1(const at::Tensor& logits, const at::Tensor& targets) {
  at::Tensor p = at::softmax(logits, 1);
  return at::l1_loss(p, OneHot(targets, logits.size(1), p));
}

at::Tensor Mse(const at::Tensor& logits, const at::Tensor& targets) {
  at::Tensor p = at::softmax(logits, 1);
  return at::mse_loss(p, OneHot(targets, logits.size(1), p));
}

at::Tensor Hinge(const at::Tensor& logits, const at::Tensor& targets) {
  return at::multi_margin_loss(logits, targets, 1, 1.0);
}

}  // namespace

std::vector<std::string> LossNames() { return {"cross_entropy", "l1", "mse", "hinge"}; }

absl::StatusOr<LossFn> FindLoss(const std::string& name) {
  if (name == "cross_entropy") return &CrossEntropy;
  if (name == "l1") return &L1;
  if (name == "mse") return &Mse;
  if (name == "hinge") return &Hinge;
  return absl::InvalidArgumentError(absl::StrCat("unknown loss '", name, "' (known: ",
                                                 absl::StrJoin(LossNames(), ", "), ")"));
}

}  // namespace allround::losses
