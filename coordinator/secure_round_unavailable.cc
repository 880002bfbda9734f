// SecureRound in a build without libsodium: Start refuses, so no instance ever exists (job
// validation refuses privacy.secure_aggregation in such a build before any round starts).

#include "coordinator/secure_round.h"

namespace allround::coordinator {

struct SecureRound::Impl {};

SecureRound::SecureRound(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SecureRound::~SecureRound() = default;

absl::StatusOr<std::unique_ptr<SecureRound>> SecureRound::Start(const SecureRoundConfig&, Time, Time) {
  return absl::FailedPreconditionError(
      "secure aggregation is not in this build (libsodium was not found: install libsodium-dev and rebuild)");
}

const SecureRoundConfig& SecureRound::config() const {
  static const SecureRoundConfig kNone;
  return kNone;
}
int SecureRound::stage() const { return 0; }
SecureStep SecureRound::StepFor(uint32_t) const { return {}; }
absl::Status SecureRound::Advertise(const privacy::AdvertiseKeysMsg&) { return Start({}, {}, {}).status(); }
absl::Status SecureRound::ShareKeys(const privacy::ShareKeysMsg&) { return Start({}, {}, {}).status(); }
absl::Status SecureRound::MaskedInput(const privacy::MaskedInputMsg&) { return Start({}, {}, {}).status(); }
absl::Status SecureRound::Unmask(const privacy::UnmaskResponse&) { return Start({}, {}, {}).status(); }
bool SecureRound::Advance(Time) { return true; }
absl::StatusOr<privacy::AggregateResult> SecureRound::Result() const { return Start({}, {}, {}).status(); }

}  // namespace allround::coordinator
