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

std::map<std::string, Registered>& Modes() {
  static auto* modes = new std::map<std::string, Registered>;
  return *modes;
}

}  // namespace

bool RegisterMode(ComponentInfo info, ModeNeeds needs, ModeFactory factory) {
  info.kind = "mode";
  const std::string name = info.name;
  RegisterComponent(std::move(info));
  Modes()[name] = {needs, std::move(factory)};
  return true;
}

ModeNeeds NeedsOf(const std::string& mode) {
  auto it = Modes().find(mode);
  return it == Modes().end() ? ModeNeeds{} : it->second.needs;
}

absl::StatusOr<std::unique_ptr<LearningMode>> MakeLearningMode(const Job& job, const InputInfo& input,
                                                               at::Device device, const at::Tensor& bank_inputs,
                                                               const at::Tensor& bank_labels) {
  auto it = Modes().find(job.mode);
  if (it == Modes().end()) {
    return absl::InvalidArgumentError(absl::StrCat("job key 'mode': unknown learning mode '", job.mode, "' (known: ",
                                                   absl::StrJoin(ComponentNames("mode"), ", "), ")"));
  }
  const ModeNeeds& needs = it->second.needs;
  return it->second.factory(ModeInputs{job, input, device, needs.eval_bank ? bank_inputs : at::Tensor(),
                                       needs.eval_bank ? bank_labels : at::Tensor()});
}

}  // namespace allround::modes
