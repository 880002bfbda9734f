#include "tensor/named_tensors.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "tensor/dtype.h"

namespace allround::tensor {

std::string Describe(const at::Tensor& t) { return absl::StrCat(c10::str(t.sizes()), " ", DtypeName(t.scalar_type())); }

bool SameLayout(const at::Tensor& t, const at::Tensor& like) {
  return t.sizes() == like.sizes() && t.scalar_type() == like.scalar_type();
}

std::string LayoutMismatch(const NamedTensors& got, const NamedTensors& want) {
  if (got.size() != want.size()) return absl::StrCat("update has ", got.size(), " tensors, the model ", want.size());
  for (size_t k = 0; k < want.size(); ++k) {
    const auto& [name, w] = want[k];
    const auto& [gname, g] = got[k];
    if (gname != name || !SameLayout(g, w)) {
      return absl::StrCat("tensor ", gname, " ", Describe(g), " does not match the model's ", name, " ", Describe(w));
    }
  }
  return "";
}

absl::Status CopyCheckedInto(const NamedTensors& targets, const std::map<std::string, at::Tensor>& source) {
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;
  copies.reserve(targets.size());
  for (const auto& [name, dst] : targets) {
    auto it = source.find(name);
    if (it == source.end()) return absl::NotFoundError(absl::StrCat("state has no tensor '", name, "'"));
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

bool AllFinite(const at::Tensor& t) {
  if (!at::isFloatingType(t.scalar_type())) return true;
  if (t.device().is_cpu() && t.is_contiguous() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble)) {
    // NaN and Inf are the values whose exponent bits are all ones: an integer test with no
    // dependency between elements, which the compiler vectorizes.
    const int64_t n = t.numel();
    if (t.scalar_type() == at::kFloat) {
      const uint32_t* p = static_cast<const uint32_t*>(t.data_ptr());
      uint32_t bad = 0;
      for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint32_t>((p[i] & 0x7f800000u) == 0x7f800000u);
      return bad == 0;
    }
    const uint64_t* p = static_cast<const uint64_t*>(t.data_ptr());
    uint64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      bad |= static_cast<uint64_t>((p[i] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull);
    }
    return bad == 0;
  }
  return at::isfinite(t).all().item<bool>();
}

}  // namespace allround::tensor
