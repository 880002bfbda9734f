#include "privacy/secagg_quantize.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/random.h"

namespace allround::privacy {
namespace {

bool IsFloat(const at::Tensor& t) { return at::isFloatingType(t.scalar_type()); }

// floor(x + u), u uniform in [0, 1): E[result] = x. `x` is in [0, levels].
uint32_t StochasticRound(double x, uint32_t levels, Rng& rng) {
  const double r = std::floor(x + rng.UniformDouble());
  return static_cast<uint32_t>(std::clamp(r, 0.0, static_cast<double>(levels)));
}

absl::Status CheckParams(const QuantizeParams& p) {
  if (p.levels == 0 || !(p.clip_range > 0) || !std::isfinite(p.clip_range)) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation: quantization needs levels > 0 and a finite ",
                                                   "clip range > 0 (got ", p.levels, " and ", p.clip_range, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

uint32_t LevelsFor(int64_t sampled) {
  if (sampled <= 0) return 0;
  return static_cast<uint32_t>(std::numeric_limits<uint32_t>::max() / static_cast<uint64_t>(sampled));
}

size_t SecureVectorLength(const NamedTensors& model) {
  size_t n = 1;  // the weight
  for (const auto& [name, t] : model) {
    if (IsFloat(t)) n += static_cast<size_t>(t.numel());
  }
  return n;
}

absl::StatusOr<std::vector<uint32_t>> QuantizeUpdate(const NamedTensors& model, const NamedTensors& delta, double r,
                                                     const QuantizeParams& params, uint64_t seed) {
  if (auto s = CheckParams(params); !s.ok()) return s;
  if (!(r > 0.0 && r <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation: the site's weight ", r, " is not in (0, 1]"));
  }
  std::map<std::string, at::Tensor> by_name(delta.begin(), delta.end());
  std::vector<uint32_t> out;
  out.reserve(SecureVectorLength(model));
  Rng rng(seed);
  const double c = params.clip_range, scale = params.levels / (2.0 * c);
  for (const auto& [name, m] : model) {
    if (!IsFloat(m)) continue;
    auto it = by_name.find(name);
    if (it == by_name.end() || it->second.sizes() != m.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat("secure aggregation: the update has no tensor '", name, "' ",
                                                     c10::str(m.sizes()), " as the model does"));
    }
    const at::Tensor d = it->second.detach().to(at::kCPU, at::kDouble).contiguous();
    const double* p = d.data_ptr<double>();
    for (int64_t j = 0; j < d.numel(); ++j) {
      if (!std::isfinite(p[j])) {
        return absl::InvalidArgumentError(absl::StrCat("secure aggregation: tensor '", name, "' holds NaN or Inf"));
      }
      out.push_back(StochasticRound((std::clamp(r * p[j], -c, c) + c) * scale, params.levels, rng));
    }
  }
  out.push_back(StochasticRound(r * params.levels, params.levels, rng));
  return out;
}

absl::StatusOr<DecodedSum> DequantizeSum(const NamedTensors& model, const std::vector<uint32_t>& sum, int64_t counted,
                                         const QuantizeParams& params) {
  if (auto s = CheckParams(params); !s.ok()) return s;
  if (sum.size() != SecureVectorLength(model)) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation: the sum has ", sum.size(),
                                                   " words, the model needs ", SecureVectorLength(model)));
  }
  DecodedSum out;
  out.weight_sum = static_cast<double>(sum.back()) / params.levels;
  if (!(out.weight_sum > 0.0)) {
    return absl::InvalidArgumentError("secure aggregation: the summed weight is 0: no counted site had examples");
  }
  const double step = 2.0 * params.clip_range / params.levels;
  const double offset = static_cast<double>(counted) * params.clip_range;
  size_t at = 0;
  for (const auto& [name, m] : model) {
    if (!IsFloat(m)) continue;
    at::Tensor d = at::empty(m.sizes(), at::TensorOptions().dtype(at::kDouble));
    double* p = d.data_ptr<double>();
    for (int64_t j = 0; j < d.numel(); ++j) p[j] = (sum[at++] * step - offset) / out.weight_sum;
    out.mean_delta.emplace_back(name, d.to(m.scalar_type()));
  }
  return out;
}

}  // namespace allround::privacy
