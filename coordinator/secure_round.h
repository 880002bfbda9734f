#ifndef ALLROUND_COORDINATOR_SECURE_ROUND_H_
#define ALLROUND_COORDINATOR_SECURE_ROUND_H_

// The coordinator's side of one round under secure aggregation (privacy.secure_aggregation): the
// SecAgg+ server (privacy/secagg_server.h) driven by the round's clock. It says what each sampled
// site is to do now, takes the sites' messages, and closes each stage when every site it waits
// for has answered or the stage's deadline passed:
//
//   advertise keys  (stage deadline)  -> each live site gets its neighbours' keys
//   share keys      (stage deadline)  -> each live site gets the shares addressed to it, and trains
//   masked input    (round deadline)  -> survivors and dropouts named to the share holders
//   unmask          (stage deadline)  -> the sum over the sites whose masked input arrived
//
// A round with fewer than t sites left at a stage, or with a secret that fewer than t holders
// revealed, ends abandoned with the reason (Result() says it): never a wrong sum.
//
// Not thread-safe: the RoundManager calls it under its mutex. Does no I/O and never blocks. In a
// build without libsodium, Start fails with FailedPrecondition (job validation refuses such jobs
// before a round starts).

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "privacy/secagg_quantize.h"
#include "privacy/secagg_types.h"

namespace allround::coordinator {

struct SecureRoundConfig {
  privacy::SecAggConfig secagg;     // round, sampled ids, k, t, graph seed, vector length
  privacy::QuantizeParams quantize;  // what the sites quantize with (and the coordinator decodes)
  int64_t max_weight = 1;            // W: the largest example count the sampled sites declared
  std::chrono::milliseconds stage_timeout{30000};
  int unmask_threads = 1;            // Finish's threads
};

// What a sampled site is to do now.
struct SecureStep {
  enum class Kind { kWait, kAdvertise, kShareKeys, kMaskInput, kUnmask, kDone };
  Kind kind = Kind::kWait;
  std::string reason;                  // kWait, kDone: why
  privacy::NeighbourKeysMsg keys;      // kShareKeys
  privacy::RelayedSharesMsg relayed;   // kMaskInput
  privacy::UnmaskRequest unmask;       // kUnmask
};

class SecureRound {
 public:
  using Time = std::chrono::steady_clock::time_point;

  // The masked inputs may arrive until `input_deadline` (the round's deadline). InvalidArgument for
  // an invalid config (privacy::ValidateConfig), FailedPrecondition in a build without libsodium.
  static absl::StatusOr<std::unique_ptr<SecureRound>> Start(const SecureRoundConfig& config, Time now,
                                                            Time input_deadline);
  ~SecureRound();

  const SecureRoundConfig& config() const;
  SecureStep StepFor(uint32_t site) const;

  // Each refuses (InvalidArgument, FailedPrecondition) a message of another stage, round or site,
  // or a malformed one, and the round goes on without it.
  absl::Status Advertise(const privacy::AdvertiseKeysMsg& msg);
  absl::Status ShareKeys(const privacy::ShareKeysMsg& msg);
  absl::Status MaskedInput(const privacy::MaskedInputMsg& msg);
  absl::Status Unmask(const privacy::UnmaskResponse& msg);

  // Closes the stages that are complete or past their deadline. True when the round is over.
  bool Advance(Time now);
  // Moves with every stage closed, so the caller can wake the sites' long polls.
  int stage() const;
  // Once Advance returned true: the sum, or Aborted naming why the round was abandoned.
  absl::StatusOr<privacy::AggregateResult> Result() const;

 private:
  struct Impl;
  explicit SecureRound(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace allround::coordinator

#endif  // ALLROUND_COORDINATOR_SECURE_ROUND_H_
