// SecureSiteSession in a build without libsodium: Start refuses, so no session ever exists (job
// validation refuses privacy.secure_aggregation in such a build).

#include "runtime/secure_site.h"

namespace allround::privacy {
class SecAggSite {};
}  // namespace allround::privacy

namespace allround::runtime {
namespace {
absl::Status Unavailable() {
  return absl::FailedPreconditionError(
      "secure aggregation is not in this build (libsodium was not found: install libsodium-dev and rebuild)");
}
}  // namespace

SecureSiteSession::~SecureSiteSession() = default;
absl::StatusOr<std::unique_ptr<SecureSiteSession>> SecureSiteSession::Start(int64_t, const allround::v1::SecAggTask&,
                                                                            int64_t) {
  return Unavailable();
}
absl::StatusOr<allround::v1::SecAggMessage> SecureSiteSession::Advertise() { return Unavailable(); }
absl::StatusOr<allround::v1::SecAggMessage> SecureSiteSession::ShareKeys(const allround::v1::SecAggTask&) {
  return Unavailable();
}
absl::StatusOr<std::vector<uint32_t>> SecureSiteSession::MaskInput(const allround::v1::SecAggTask&,
                                                                   const tensor::NamedTensors&,
                                                                   const tensor::NamedTensors&, int64_t, uint64_t) {
  return Unavailable();
}
absl::StatusOr<allround::v1::SecAggMessage> SecureSiteSession::Unmask(const allround::v1::SecAggTask&) {
  return Unavailable();
}

}  // namespace allround::runtime
