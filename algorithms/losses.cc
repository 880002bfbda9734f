#include "algorithms/losses.h"

#include <ATen/ATen.h>

#include <map>

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

TypedRegistry<LossFn>& Losses() {
  static auto* registry = new TypedRegistry<LossFn>("loss", "loss");
  return *registry;
}

[[maybe_unused]] const bool kRegistered = [] {
  RegisterLoss({"loss", "cross_entropy", "softmax cross-entropy on logits", {}}, &CrossEntropy);
  RegisterLoss({"loss", "l1", "L1 distance of softmax(logits) to the one-hot target", {}}, &L1);
  RegisterLoss({"loss", "mse", "squared distance of softmax(logits) to the one-hot target", {}}, &Mse);
  RegisterLoss({"loss", "hinge", "multi-class hinge, margin 1 (PyTorch's multi_margin_loss)", {}}, &Hinge);
  return true;
}();

}  // namespace

bool RegisterLoss(ComponentInfo info, LossFn loss) { return Losses().Register(std::move(info), loss); }

std::vector<std::string> LossNames() { return ComponentNames("loss"); }

absl::StatusOr<LossFn> FindLoss(const std::string& name) {
  auto loss = Losses().Get(name);
  if (!loss.ok()) return loss.status();
  return **loss;
}

}  // namespace allround::losses
