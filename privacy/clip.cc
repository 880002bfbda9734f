// Site step `clip` and coordinator step `norm_bound`. `clip` scales the whole update (every floating-point tensor together) so that its L2
// norm is at most pipeline.clip_norm: delta * min(1, C / ||delta||). It bounds what one site can
// move the global model by, the basis of site-level differential privacy (McMahan et al. 2018)
// and of norm-bounding against scaled (Byzantine) updates. Computed in float64 whatever the
// tensors' dtype, so the bound holds to rounding of the tensors' own type.
// `norm_bound` (Sun et al. 2019, "Can You Really Backdoor Federated Learning?") is the same
// scaling done by the coordinator to every arriving update (pipeline.norm_bound), so that a site
// which does not clip itself (a lying one) still moves the model by at most M; it works with any
// strategy, and is refused under secure aggregation, where no single update is seen.

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "privacy/site_dp.h"
#include "privacy/update_pipeline.h"

namespace allround::privacy {
namespace {

class Clip final : public UpdateTransform {
 public:
  Clip(std::string name, double bound) : name_(std::move(name)), bound_(bound) {}
  std::string name() const override { return name_; }

  // Refuses, changing nothing, an update whose norm is not finite.
  absl::Status Apply(const StepContext&, Update& update) override {
    // The delta holds floating-point tensors only; ClipToNorm changes nothing at a non-finite norm.
    const double norm = ClipToNorm(update.delta, bound_);
    if (!std::isfinite(norm)) {
      return absl::InvalidArgumentError(absl::StrCat("the update's L2 norm is not finite (", norm, ")"));
    }
    return absl::OkStatus();
  }

 private:
  const std::string name_;
  const double bound_;
};

[[maybe_unused]] const bool kRegistered = RegisterTransform(
    Side::kSite,
    {"", "clip", "scales the update so its L2 norm is at most pipeline.clip_norm",
     {NumberKey("pipeline.clip_norm", 1.0, "clip: the bound C on the L2 norm of a site's update", 1e-12, 1e12)}},
    TransformTraits{},
    [](const Job& job) -> absl::StatusOr<std::unique_ptr<UpdateTransform>> {
      return std::make_unique<Clip>("clip", JobNumber(job, "pipeline.clip_norm"));
    });

[[maybe_unused]] const bool kRegisteredBound = RegisterTransform(
    Side::kCoordinator,
    {"", "norm_bound", "scales each arriving update so its L2 norm is at most pipeline.norm_bound",
     {NumberKey("pipeline.norm_bound", 1.0, "norm_bound: the bound M the coordinator puts on each update's L2 norm",
                1e-12, 1e12)}},
    TransformTraits{"", false, true},
    [](const Job& job) -> absl::StatusOr<std::unique_ptr<UpdateTransform>> {
      return std::make_unique<Clip>("norm_bound", JobNumber(job, "pipeline.norm_bound"));
    });

}  // namespace
}  // namespace allround::privacy
