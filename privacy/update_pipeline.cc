#include "privacy/update_pipeline.h"

#include <ATen/ATen.h>

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace allround::privacy {
namespace {

constexpr char kSiteKey[] = "pipeline.site";
constexpr char kCoordinatorKey[] = "pipeline.coordinator";

struct Registered {
  TransformTraits traits;
  TransformFactory factory;
};

const char* KindOf(Side side) { return side == Side::kSite ? "site transform" : "coordinator transform"; }
const char* KeyOf(Side side) { return side == Side::kSite ? kSiteKey : kCoordinatorKey; }

TypedRegistry<Registered>& Transforms(Side side) {
  static auto* site = new TypedRegistry<Registered>(KindOf(Side::kSite), "site transform");
  static auto* coordinator = new TypedRegistry<Registered>(KindOf(Side::kCoordinator), "coordinator transform");
  return side == Side::kSite ? *site : *coordinator;
}

std::vector<std::string> SplitSteps(const std::string& text) {
  return absl::StrSplit(text, ',', absl::SkipWhitespace());
}

// The list key of one side: every name a registered step of that side, none twice.
ComponentKey StepsKey(Side side) {
  ComponentKey key;
  key.key = KeyOf(side);
  key.help = side == Side::kSite ? "steps an update passes at the site before it is sent, in order (e.g. [clip])"
                                 : "steps the coordinator applies to each arriving update before aggregating";
  key.check = [side](const std::string& value) -> absl::Status {
    std::set<std::string> seen;
    for (const std::string& step : SplitSteps(value)) {
      if (Transforms(side).Find(step) == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("job key '", KeyOf(side), "': ", UnknownComponentError(KindOf(side), KindOf(side), step).message()));
      }
      if (!seen.insert(step).second) {
        return absl::InvalidArgumentError(absl::StrCat("job key '", KeyOf(side), "': step '", step, "' is named twice"));
      }
    }
    return absl::OkStatus();
  };
  return key;
}

// Each site step that changes the update's form needs its coordinator counterpart, in mirror
// order (the last encoding is undone first); a coordinator step that undoes a site step needs it.
absl::Status CheckPipelines(const Job& job) {
  std::vector<std::string> expected;  // the counterparts, last site step first
  std::set<std::string> counterparts;
  for (const std::string& step : PipelineSteps(job, Side::kSite)) {
    const Registered* r = Transforms(Side::kSite).Find(step);
    if (r != nullptr && !r->traits.counterpart.empty()) expected.insert(expected.begin(), r->traits.counterpart);
  }
  for (const auto* info : Components(KindOf(Side::kSite))) {
    const Registered* r = Transforms(Side::kSite).Find(info->name);
    if (r != nullptr && !r->traits.counterpart.empty()) counterparts.insert(r->traits.counterpart);
  }
  std::vector<std::string> decoders;
  for (const std::string& step : PipelineSteps(job, Side::kCoordinator)) {
    if (counterparts.count(step) != 0) decoders.push_back(step);
    const Registered* r = Transforms(Side::kCoordinator).Find(step);
    if (r != nullptr && r->traits.per_update && JobParam(job, "privacy.secure_aggregation") != "none") {
      return absl::InvalidArgumentError(absl::StrCat("job key '", kCoordinatorKey, "': step '", step,
                                                     "' works on each site's update, which secure aggregation "
                                                     "(privacy.secure_aggregation) hides from the coordinator"));
    }
  }
  if (decoders != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "job keys '", kSiteKey, "' and '", kCoordinatorKey, "': the site steps [",
        absl::StrJoin(PipelineSteps(job, Side::kSite), ", "), "] must be undone at the coordinator by [",
        absl::StrJoin(expected, ", "), "] in that order, and the coordinator names [", absl::StrJoin(decoders, ", "),
        "]"));
  }
  return absl::OkStatus();
}

[[maybe_unused]] const bool kRegistered = [] {
  // The list keys belong to no one step: registered as a component of their own kind, so job
  // parsing and --help find them like any other component key.
  RegisterComponent({"pipeline", "pipeline", "the update pipeline: ordered steps at the site and the coordinator",
                     {StepsKey(Side::kSite), StepsKey(Side::kCoordinator)}});
  RegisterJobCheck(&CheckPipelines);
  return true;
}();

bool IsFloat(const at::Tensor& t) { return at::isFloatingType(t.scalar_type()); }

}  // namespace

bool RegisterTransform(Side side, ComponentInfo info, TransformTraits traits, TransformFactory factory) {
  return Transforms(side).Register(std::move(info), Registered{std::move(traits), std::move(factory)});
}

std::vector<std::string> PipelineSteps(const Job& job, Side side) {
  return SplitSteps(JobParam(job, KeyOf(side)));
}

absl::StatusOr<UpdatePipeline> UpdatePipeline::Make(const Job& job, Side side) {
  UpdatePipeline pipeline;
  for (const std::string& step : PipelineSteps(job, side)) {
    auto registered = Transforms(side).Get(step);
    if (!registered.ok()) return registered.status();
    auto made = (*registered)->factory(job);
    if (!made.ok()) {
      return absl::Status(made.status().code(), absl::StrCat("pipeline step '", step, "': ", made.status().message()));
    }
    pipeline.names_.push_back(step);
    pipeline.steps_.push_back(std::shared_ptr<UpdateTransform>(*std::move(made)));
  }
  return pipeline;
}

std::string UpdatePipeline::Describe() const { return absl::StrJoin(names_, ", "); }

absl::Status UpdatePipeline::Apply(const StepContext& context, Update& update) const {
  for (size_t i = 0; i < steps_.size(); ++i) {
    if (auto s = steps_[i]->Apply(context, update); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("pipeline step '", names_[i], "': ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<NamedTensors> UpdatePipeline::ApplyToWeights(const StepContext& context, const NamedTensors& global,
                                                            const NamedTensors& weights, double examples) const {
  if (steps_.empty()) return weights;
  std::map<std::string, at::Tensor> base;
  for (const auto& [name, t] : global) base[name] = t;
  Update update;
  update.weight = examples;
  for (const auto& [name, t] : weights) {
    if (!IsFloat(t)) continue;
    auto it = base.find(name);
    if (it == base.end() || !tensor::SameLayout(t, it->second)) {
      return absl::InvalidArgumentError(absl::StrCat("update tensor '", name, "' (", tensor::Describe(t),
                                                     ") is not in the global model as such"));
    }
    update.delta.emplace_back(name, t - it->second.to(t.device()));
  }
  if (auto s = Apply(context, update); !s.ok()) return s;
  std::map<std::string, at::Tensor> out;
  for (auto& [name, d] : update.delta) out[name] = std::move(d);
  NamedTensors result;
  result.reserve(weights.size());
  for (const auto& [name, t] : weights) {
    auto it = out.find(name);
    if (!IsFloat(t)) {
      result.emplace_back(name, t);
    } else if (it == out.end() || !tensor::SameLayout(it->second, t)) {
      return absl::InternalError(absl::StrCat("the site pipeline changed the form of tensor '", name,
                                              "', which the protocol cannot carry yet"));
    } else {
      result.emplace_back(name, base[name].to(t.device()) + it->second);
    }
  }
  return result;
}

NamedTensors UpdatePipeline::State() const {
  NamedTensors out;
  for (size_t i = 0; i < steps_.size(); ++i) {
    for (auto& [name, t] : steps_[i]->State()) out.emplace_back(absl::StrCat("pipeline/", names_[i], "/", name), t);
  }
  return out;
}

absl::Status UpdatePipeline::LoadState(const NamedTensors& state) {
  for (size_t i = 0; i < steps_.size(); ++i) {
    const std::string prefix = absl::StrCat("pipeline/", names_[i], "/");
    NamedTensors mine;
    for (const auto& [name, t] : state) {
      if (name.rfind(prefix, 0) == 0) mine.emplace_back(name.substr(prefix.size()), t);
    }
    if (auto s = steps_[i]->LoadState(mine); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("pipeline step '", names_[i], "': ", s.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace allround::privacy
