#ifndef ALLROUND_PRIVACY_SECURE_AGGREGATION_H_
#define ALLROUND_PRIVACY_SECURE_AGGREGATION_H_

// Secure aggregation as a job asks for it (job keys privacy.*), read the same way by the
// coordinator and the sites: on or off, the graph's degree k and the threshold t for a round's
// number of sampled sites, the clip range of the quantization and the stage deadline.
//
// privacy.secure_aggregation: none (default), secagg+ (SecAgg+: a random k-regular graph, Bell et
// al. 2020) or secagg (the complete graph, Bonawitz et al. 2017). The job is refused when it is
// read if the build has no libsodium, if its strategy looks at individual updates (median,
// trimmed_mean, krum: registered with the trait "individual_updates"), or if its site pipeline or
// min_sites cannot work with it.
//
// Defaults for n sampled sites: k grows as O(log n), as Bell et al.'s analysis asks: the smallest
// even number >= 3 log2(n), or n - 1 (the complete graph) when that is no smaller; t = ceil(2(k +
// 1) / 3), Flower's default share of the holders (at least 2). Explicit keys override both (an
// explicit t above the default k + 1 raises k to fit it).

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/job.h"

namespace allround::privacy {

struct SecureAggregationSpec {
  bool enabled = false;
  bool complete_graph = false;  // "secagg"
  int64_t degree = 0;           // privacy.secagg.degree, 0: the default for n
  int64_t threshold = 0;        // privacy.secagg.threshold, 0: the default for k
  double clip_range = 1.0;      // privacy.secagg.clip_range
  double stage_timeout_s = 30;  // privacy.secagg.stage_timeout_s: key and unmask stages
};

SecureAggregationSpec SecureAggregationFromJob(const Job& job);

// The mode's name as the job gives it ("none", "secagg+", "secagg"); sites send it at Join.
std::string SecureAggregationName(const Job& job);

// k and t for n sampled sites (n >= 2).
struct GraphShape {
  int degree = 0;
  int threshold = 0;
};
GraphShape SecAggShapeFor(const SecureAggregationSpec& spec, int64_t n);

// Whether this build has secure aggregation (libsodium was found).
bool SecureAggregationBuilt();

}  // namespace allround::privacy

#endif  // ALLROUND_PRIVACY_SECURE_AGGREGATION_H_
