#include "algorithms/modes/learning_mode.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"

namespace allround::modes {

absl::Status CopyCheckedInto(const LearningMode::NamedTensors& targets,
                             const std::map<std::string, at::Tensor>& by_name) {
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;
  for (const auto& [name, dst] : targets) {
    auto it = by_name.find(name);
    if (it == by_name.end()) return absl::NotFoundError(absl::StrCat("state has no tensor '", name, "'"));
    if (it->second.sizes() != dst.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape ", c10::str(it->second.sizes()),
                                                     ", the model needs ", c10::str(dst.sizes())));
    }
    copies.emplace_back(dst, it->second);
  }
  at::NoGradGuard no_grad;
  for (auto& [dst, src] : copies) dst.copy_(src);
  return absl::OkStatus();
}

}  // namespace allround::modes
