#include "algorithms/modes/learning_mode.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/str_cat.h"

namespace allround::modes {

at::Tensor SeededNormal(at::IntArrayRef sizes, uint64_t seed, const at::TensorOptions& like) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randn(sizes, gen, at::TensorOptions().dtype(like.dtype())).to(like.device());
}

absl::Status ProximalTerm::Set(double mu, const LearningMode::NamedTensors& reference,
                               const std::vector<std::pair<std::string, at::Tensor>>& named_params) {
  if (mu <= 0) {
    mu_ = 0;
    reference_.clear();
    return absl::OkStatus();
  }
  std::map<std::string, at::Tensor> by_name(reference.begin(), reference.end());
  std::vector<at::Tensor> ref;
  for (const auto& [name, p] : named_params) {
    auto it = by_name.find("model/" + name);
    if (it == by_name.end() || it->second.sizes() != p.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat("proximal reference lacks a tensor like model/", name));
    }
    ref.push_back(it->second.detach().to(p.device(), p.scalar_type()).clone());
  }
  mu_ = mu;
  reference_ = std::move(ref);
  return absl::OkStatus();
}

at::Tensor ProximalTerm::Penalty(const std::vector<at::Tensor>& params) const {
  at::Tensor prox = at::zeros({}, params.empty() ? at::TensorOptions() : params[0].options());
  if (mu_ <= 0) return prox;
  for (size_t i = 0; i < params.size(); ++i) prox = prox + (params[i] - reference_[i]).pow(2).sum();
  return 0.5 * mu_ * prox;
}

absl::Status LearningMode::WriteImages(const std::string& dir, int64_t epoch) {
  for (const GrayImage& image : Images()) {
    if (auto s = WriteGrayPng(absl::StrCat(dir, "/", image.name, "-epoch", epoch, ".png"), image.width, image.height,
                              image.pixels);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace allround::modes
