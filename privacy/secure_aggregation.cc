#include "privacy/secure_aggregation.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/registry.h"

namespace allround::privacy {
namespace {

constexpr char kMode[] = "privacy.secure_aggregation";

absl::Status CheckMode(const std::string& value) {
  if (value == "none" || value == "secagg+" || value == "secagg") return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("job key '", kMode, "': '", value, "' is not none, secagg+ (sparse graph) or secagg (complete graph)"));
}

// What cannot work together with secure aggregation, said when the job is read.
absl::Status CheckJob(const Job& job) {
  const SecureAggregationSpec spec = SecureAggregationFromJob(job);
  if (!spec.enabled) return absl::OkStatus();
  const std::string prefix = absl::StrCat("job key ", kMode, " = ", SecureAggregationName(job), ": ");
  if (!SecureAggregationBuilt()) {
    return absl::FailedPreconditionError(absl::StrCat(
        prefix, "this build has no secure aggregation (libsodium was not found: install libsodium-dev and rebuild)"));
  }
  if (ComponentHasTrait("strategy", job.strategy.name, "individual_updates")) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, "strategy '", job.strategy.name,
        "' looks at each site's update, and under secure aggregation the coordinator learns only their sum "
        "(use fedavg, fedprox, fedavgm, fedadagrad, fedadam or fedyogi)"));
  }
  if (job.federated.min_sites < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, "federated.min_sites is ", job.federated.min_sites,
        "; a round needs at least 2 sites (the sum of one site's update is that update)"));
  }
  if (spec.threshold > job.federated.min_sites) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "privacy.secagg.threshold ", spec.threshold,
                                                   " is above federated.min_sites ", job.federated.min_sites,
                                                   ": a round of min_sites sites could never be unmasked"));
  }
  if (!spec.complete_graph && spec.degree > 0 && spec.degree % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "privacy.secagg.degree ", spec.degree, " must be even (a k-regular ring graph)"));
  }
  if (spec.degree > 0 && spec.threshold > spec.degree + 1) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "privacy.secagg.threshold ", spec.threshold,
                                                   " is above the degree + 1 = ", spec.degree + 1,
                                                   " holders of each site's shares"));
  }
  return absl::OkStatus();
}

[[maybe_unused]] const bool kRegistered = [] {
  ComponentKey mode;
  mode.key = kMode;
  mode.default_value = "none";
  mode.help = "none, secagg+ or secagg: the coordinator learns only the sum of the sampled sites' updates";
  mode.check = &CheckMode;
  RegisterComponent(
      {"privacy", "secure_aggregation", "secure aggregation of the sites' updates (SecAgg+, Bell et al. 2020)",
       {mode,
        IntegerKey("privacy.secagg.degree", 0, "k: neighbours per site in SecAgg+'s graph (even; 0: O(log n) default)",
                   0, 1 << 20),
        IntegerKey("privacy.secagg.threshold", 0, "t: shares that reconstruct a secret (0: 2/3 of k + 1)", 0, 1 << 20),
        NumberKey("privacy.secagg.clip_range", 1.0, "each weighted update coordinate is clamped to [-c, c]", 1e-9, 1e9),
        NumberKey("privacy.secagg.stage_timeout_s", 30, "deadline of the key and unmasking stages", 0.01, 86400)}});
  RegisterJobCheck(&CheckJob);
  return true;
}();

}  // namespace

std::string SecureAggregationName(const Job& job) { return JobParam(job, kMode); }

SecureAggregationSpec SecureAggregationFromJob(const Job& job) {
  SecureAggregationSpec spec;
  const std::string mode = SecureAggregationName(job);
  spec.enabled = mode != "none";
  spec.complete_graph = mode == "secagg";
  spec.degree = JobInteger(job, "privacy.secagg.degree");
  spec.threshold = JobInteger(job, "privacy.secagg.threshold");
  spec.clip_range = JobNumber(job, "privacy.secagg.clip_range");
  spec.stage_timeout_s = JobNumber(job, "privacy.secagg.stage_timeout_s");
  return spec;
}

GraphShape SecAggShapeFor(const SecureAggregationSpec& spec, int64_t n) {
  GraphShape shape;
  const int complete = static_cast<int>(std::max<int64_t>(1, n - 1));
  if (spec.complete_graph) {
    shape.degree = complete;
  } else if (spec.degree > 0) {
    shape.degree = static_cast<int>(std::min<int64_t>(spec.degree, complete));
  } else {
    int k = static_cast<int>(std::ceil(3.0 * std::log2(static_cast<double>(std::max<int64_t>(n, 2)))));
    k += k % 2;
    shape.degree = std::min(k, complete);
  }
  shape.threshold = spec.threshold > 0
                        ? static_cast<int>(spec.threshold)
                        : std::max(2, static_cast<int>(std::ceil(2.0 * (shape.degree + 1) / 3.0)));
  if (shape.threshold > shape.degree + 1 && spec.degree == 0) {
    // An explicit t above the default graph's holders: a denser graph, not an unmaskable round.
    const int k = shape.threshold - 1 + (shape.threshold - 1) % 2;
    shape.degree = std::min(k, complete);
  }
  return shape;
}

bool SecureAggregationBuilt() {
#ifdef ALLROUND_HAVE_SODIUM
  return true;
#else
  return false;
#endif
}

}  // namespace allround::privacy
