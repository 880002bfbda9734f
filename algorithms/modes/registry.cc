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

// A mode for text reads text, and text is read by such a mode only.
[[maybe_unused]] const bool kTextCheck = RegisterJobCheck([](const Job& job) -> absl::Status {
  const Registered* registered = Modes().Find(job.mode);
  if (registered == nullptr || registered->needs.text == (job.data.name == "text")) return absl::OkStatus();
  std::vector<std::string> text_modes;
  for (const ComponentInfo* info : Components("mode")) {
    if (const Registered* r = Modes().Find(info->name); r != nullptr && r->needs.text) text_modes.push_back(info->name);
  }
  return absl::InvalidArgumentError(absl::StrCat("job keys 'mode' and 'data.name': mode '", job.mode, "' ",
                                                 registered->needs.text ? "trains on text (give data.name text)"
                                                                        : "does not train on text",
                                                 "; text data needs a text mode (", absl::StrJoin(text_modes, ", "),
                                                 ")"));
});

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
