#ifndef ALLROUND_RUNTIME_SECURE_SITE_H_
#define ALLROUND_RUNTIME_SECURE_SITE_H_

// A site's side of one secure round (privacy.secure_aggregation) on the wire: the SecAgg+ site
// state machine (privacy/secagg_site.h) fed from the coordinator's TaskReply.secagg and answering
// with SecAggMessage, plus the quantization of the update (privacy/secagg_quantize.h) before it is
// masked. Every check of what the coordinator asks is the state machine's: a coordinator that asks
// for both shares of one peer, or names too few survivors, gets PermissionDenied and nothing.
//
// A session lives for one round and holds that round's secrets only in memory (never in a
// checkpoint); a site that restarts mid-round has none, and the round counts it as a dropout.
// Not thread-safe: one site drives it. In a build without libsodium, Start fails.

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/proto/federated.pb.h"
#include "tensor/named_tensors.h"

namespace allround::privacy {
class SecAggSite;
}

namespace allround::runtime {

class SecureSiteSession {
 public:
  // From the ADVERTISE task of `round`. InvalidArgument when the config is invalid or does not
  // sample `site_id`.
  static absl::StatusOr<std::unique_ptr<SecureSiteSession>> Start(int64_t round, const allround::v1::SecAggTask& task,
                                                                  int64_t site_id);
  ~SecureSiteSession();

  int64_t round() const { return round_; }

  // Each returns the message to send (site id and token are the caller's to fill).
  absl::StatusOr<allround::v1::SecAggMessage> Advertise();
  absl::StatusOr<allround::v1::SecAggMessage> ShareKeys(const allround::v1::SecAggTask& task);
  // The masked words of the update: `delta` (new weights minus `model`, floating-point tensors)
  // weighted by examples / the round's largest count, quantized with `seed`'s stochastic rounding
  // and masked with the shares of `task` (MASK_INPUT).
  absl::StatusOr<std::vector<uint32_t>> MaskInput(const allround::v1::SecAggTask& task, const tensor::NamedTensors& model,
                                                  const tensor::NamedTensors& delta, int64_t examples, uint64_t seed);
  absl::StatusOr<allround::v1::SecAggMessage> Unmask(const allround::v1::SecAggTask& task);

 private:
  SecureSiteSession(int64_t round, uint32_t id, std::unique_ptr<privacy::SecAggSite> site, double clip_range,
                    uint32_t levels, int64_t max_weight);
  int64_t round_;
  uint32_t id_;
  std::unique_ptr<privacy::SecAggSite> site_;
  double clip_range_;
  uint32_t levels_;
  int64_t max_weight_;
};

}  // namespace allround::runtime

#endif  // ALLROUND_RUNTIME_SECURE_SITE_H_
