#include "algorithms/modes/registry.h"

#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace allround::modes {
namespace {

struct Registered {
  ModeNeeds needs;
  ModeFactory factory;
};

TypedRegistry<Registered>& Modes() {
  static auto* registry = new TypedRegistry<Registered>("mode", "learning mode");
  return *registry;
}

}  // namespace

bool RegisterMode(ComponentInfo info, ModeNeeds needs, ModeFactory factory) {
  return Modes().Register(std::move(info), Registered{needs, std::move(factory)});
}

ModeNeeds NeedsOf(const std::string& mode) {
  const Registered* registered = Modes().Find(mode);
  return registered == nullptr ? ModeNeeds{} : registered->needs;
}

absl::StatusOr<std::unique_ptr<LearningMode>> MakeLearningMode(const Job& job, const InputInfo& input,
                                                               at::Device device, const at::Tensor& bank_inputs,
                                                               const at::Tensor& bank_labels) {
  auto registered = Modes().Get(job.mode);
  if (!registered.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'mode': ", registered.status().message()));
  const ModeNeeds& needs = (*registered)->needs;
  return (*registered)->factory(ModeInputs{job, input, device, needs.eval_bank ? bank_inputs : at::Tensor(),
                                       needs.eval_bank ? bank_labels : at::Tensor()});
}

}  // namespace allround::modes
