#include "algorithms/aggregation/byzantine.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/random.h"
#include "common/registry.h"

namespace allround::aggregation {
namespace {

constexpr char kKind[] = "attack.kind";
constexpr char kSites[] = "attack.sites";

const std::map<std::string, AttackKind>& Kinds() {
  static const auto* kinds = new std::map<std::string, AttackKind>{
      {"none", AttackKind::kNone},          {"sign_flip", AttackKind::kSignFlip}, {"scaling", AttackKind::kScaling},
      {"gaussian", AttackKind::kGaussian}, {"label_flip", AttackKind::kLabelFlip}, {"alie", AttackKind::kAlie}};
  return *kinds;
}

// The learning modes whose training batches carry class labels to flip.
bool ModeHasLabels(const std::string& mode) {
  return mode == "supervised" || mode == "fixmatch" || mode == "pseudolabel";
}

absl::Status CheckJob(const Job& job) {
  const AttackSpec spec = AttackSpecFromJob(job);
  if (spec.kind == AttackKind::kNone) return absl::OkStatus();
  if (spec.sites <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("job key '", kKind, "': ", spec.name, " needs attackers: set ",
                                                   kSites, " to how many sites attack"));
  }
  if (spec.kind == AttackKind::kLabelFlip && !ModeHasLabels(job.mode)) {
    return absl::InvalidArgumentError(absl::StrCat("job key '", kKind, "': label_flip poisons class labels; mode '",
                                                   job.mode, "' trains without them"));
  }
  // The coordinator plays the attackers on the updates it sees: under secure aggregation it sees
  // none (the key is registered by the privacy layer, linked into every binary that reads jobs).
  if (spec.poisons_updates() && FindComponentKey("privacy.secure_aggregation") != nullptr &&
      JobParam(job, "privacy.secure_aggregation") != "none") {
    return absl::InvalidArgumentError(absl::StrCat(
        "job key '", kKind, "': ", spec.name, " is simulated by the coordinator on the sites' updates, which secure "
        "aggregation hides from it (label_flip works at the sites)"));
  }
  return absl::OkStatus();
}

[[maybe_unused]] const bool kRegistered = [] {
  std::vector<std::string> names;
  for (const auto& [name, kind] : Kinds()) names.push_back(name);
  RegisterComponent(
      {"simulation", "attack",
       "Byzantine sites in simulation: the coordinator plays the attackers (label_flip: the sites train on "
       "flipped labels)",
       {ChoiceKey(kKind, "none", "what the attacking sites send: none, sign_flip, scaling, gaussian, label_flip, alie",
                  names),
        IntegerKey(kSites, 0, "f: how many joined sites attack (drawn by the job seed)", 0, int64_t{1} << 40),
        NumberKey("attack.scale", 10.0, "scaling: the factor on the attacker's update", -1e6, 1e6),
        NumberKey("attack.sigma", 1.0, "gaussian: the standard deviation of each coordinate sent", 0, 1e6),
        NumberKey("attack.alie_z", 0.0, "alie: standard deviations from the honest mean (0: Baruch et al.'s z_max)",
                  0, 1e3)}});
  RegisterJobCheck(&CheckJob);
  return true;
}();

bool Floating(const at::Tensor& t) { return at::isFloatingType(t.scalar_type()); }

// Phi^-1(p) for p in (0, 1), by bisection on the normal CDF (the precision of double suffices).
double NormalQuantile(double p) {
  double lo = -40, hi = 40;
  for (int i = 0; i < 200; ++i) {
    const double mid = (lo + hi) / 2;
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
  }
  return (lo + hi) / 2;
}

// FNV-1a: a name's hash that is the same in every build and process (std::hash need not be).
uint64_t NameHash(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

AttackSpec AttackSpecFromJob(const Job& job) {
  AttackSpec spec;
  spec.name = JobParam(job, kKind);
  auto it = Kinds().find(spec.name);
  spec.kind = it == Kinds().end() ? AttackKind::kNone : it->second;  // the key's check refused others
  spec.sites = JobInteger(job, kSites);
  spec.scale = JobNumber(job, "attack.scale");
  spec.sigma = JobNumber(job, "attack.sigma");
  spec.alie_z = JobNumber(job, "attack.alie_z");
  spec.seed = job.seed;
  return spec;
}

std::set<std::string> ChooseAttackers(const AttackSpec& spec, std::vector<std::string> joined) {
  if (!spec.on()) return {};
  std::sort(joined.begin(), joined.end());
  Rng rng(DeriveSeed(spec.seed, "byzantine-sites"));
  rng.Shuffle(joined);
  joined.resize(std::min<size_t>(joined.size(), static_cast<size_t>(spec.sites)));
  return {joined.begin(), joined.end()};
}

double AlieZ(int64_t n, int64_t f) {
  if (n <= 0) return 0;
  const int64_t s = n / 2 + 1 - f;
  const double p = static_cast<double>(n - s) / static_cast<double>(n);
  if (p <= 0.5) return 0;  // no attacker beyond the majority's edge: the mean itself
  if (p >= 1) return NormalQuantile(1 - 1e-12);
  return NormalQuantile(p);
}

absl::Status ApplyAttack(const AttackSpec& spec, const NamedTensors& global, int64_t round,
                         const std::vector<bool>& attacker, const std::vector<std::string>& names,
                         std::vector<SiteUpdate>& updates) {
  if (!spec.poisons_updates()) return absl::OkStatus();
  if (attacker.size() != updates.size() || names.size() != updates.size()) {
    return absl::InvalidArgumentError(absl::StrCat("attack: ", attacker.size(), " flags and ", names.size(),
                                                   " names for ", updates.size(), " updates"));
  }
  for (const SiteUpdate& u : updates) {
    if (std::string bad = tensor::LayoutMismatch(u.weights, global); !bad.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("attack: site ", u.site_id, ": ", bad));
    }
  }
  const int64_t n = static_cast<int64_t>(updates.size());
  const int64_t f = std::count(attacker.begin(), attacker.end(), true);
  if (f == 0) return absl::OkStatus();
  const double z = spec.alie_z > 0 ? spec.alie_z : AlieZ(n, f);
  for (size_t k = 0; k < global.size(); ++k) {
    const at::Tensor& g = global[k].second;
    if (!Floating(g)) continue;
    const at::Tensor g64 = g.to(at::kDouble);
    at::Tensor alie;  // mu - z sigma of the honest deltas (of all, if none is honest)
    if (spec.kind == AttackKind::kAlie) {
      std::vector<at::Tensor> honest;
      for (int64_t i = 0; i < n; ++i) {
        if (!attacker[i] || f == n) honest.push_back(updates[i].weights[k].second.to(at::kDouble) - g64);
      }
      const at::Tensor stacked = at::stack(honest);
      const at::Tensor sigma = honest.size() > 1 ? stacked.std(0, /*unbiased=*/false) : at::zeros_like(g64);
      alie = stacked.mean(0) - z * sigma;
    }
    for (int64_t i = 0; i < n; ++i) {
      if (!attacker[i]) continue;
      at::Tensor& w = updates[i].weights[k].second;
      const at::Tensor delta = w.to(at::kDouble) - g64;
      at::Tensor sent;
      switch (spec.kind) {
        case AttackKind::kSignFlip: sent = -delta; break;
        case AttackKind::kScaling: sent = spec.scale * delta; break;
        case AttackKind::kGaussian: {
          // By the site's name, not its id (which follows the join order) or its place in the round.
          auto gen = at::detail::createCPUGenerator(
              DeriveSeed(spec.seed, "byzantine-gaussian", static_cast<uint64_t>(round), NameHash(names[i]) + k));
          sent = at::normal(0.0, spec.sigma, g.sizes(), gen, g64.options());
          break;
        }
        case AttackKind::kAlie: sent = alie; break;
        default: sent = delta;
      }
      w = (g64 + sent).to(w.scalar_type());
    }
  }
  return absl::OkStatus();
}

at::Tensor FlipLabels(const at::Tensor& labels, int64_t classes) {
  if (!labels.defined()) return labels;
  return (classes - 1) - labels;
}

}  // namespace allround::aggregation
