#ifndef ALLROUND_PRIVACY_SECAGG_SERVER_H_
#define ALLROUND_PRIVACY_SECAGG_SERVER_H_

// The server's side of a SecAgg+ round (see privacy/secagg_types.h for the protocol): collects each
// stage's messages, and when the caller closes the stage (all expected messages in, or its
// deadline passed) answers with the next stage's messages. At the end, Finish() gives the exact
// sum mod 2^32 of the inputs of the sites whose masked input arrived.
//
//   AddAdvertisement* , CloseAdvertise()   -> NeighbourKeysMsg per site that takes part
//   AddShareKeys*     , CloseShareKeys()   -> RelayedSharesMsg per site that takes part
//   AddMaskedInput*   , CloseMaskedInput() -> UnmaskRequest per site asked to unmask
//   AddUnmaskResponse*, Finish()           -> AggregateResult
//
// Sites whose message did not arrive by a Close are dropped. A site is also left out at a Close
// when fewer than t of its share holders (itself and its neighbours) remain, since its secrets
// could never be reconstructed (repeated until no more drop out).
//
// Failure: an Add* refuses one message (wrong round, stage or sender, duplicate, malformed) with
// InvalidArgument or FailedPrecondition, and the round goes on without it. The round is abandoned,
// with an Aborted status naming the reason and the site concerned, when fewer than t sites remain
// at a Close, or when any secret needed to unmask has fewer than t valid shares (checked both
// before asking and in Finish); the status then sticks and every later call returns it. A round
// never yields a wrong sum: reconstructed masking keys are checked against their public keys.
//
// Not thread-safe: one caller drives a round. Does no I/O and never blocks. Memory: one sum vector
// (masked inputs are added as they arrive) plus O(n * k) small messages. Finish costs one ChaCha20
// expansion of vector_length words per survivor and per (dropout, surviving neighbour) pair,
// spread over Finish's threads.

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "privacy/secagg_types.h"
#include "privacy/shamir.h"

namespace allround::privacy {

class SecAggServer {
 public:
  // InvalidArgument when the config is invalid.
  static absl::StatusOr<std::unique_ptr<SecAggServer>> Create(const SecAggConfig& config);

  absl::Status AddAdvertisement(const AdvertiseKeysMsg& msg);
  absl::StatusOr<std::vector<NeighbourKeysMsg>> CloseAdvertise();
  absl::Status AddShareKeys(const ShareKeysMsg& msg);
  absl::StatusOr<std::vector<RelayedSharesMsg>> CloseShareKeys();
  absl::Status AddMaskedInput(const MaskedInputMsg& msg);
  absl::StatusOr<std::vector<UnmaskRequest>> CloseMaskedInput();
  absl::Status AddUnmaskResponse(const UnmaskResponse& msg);
  // Removes the masks on `threads` threads (each takes whole slices of the vector, so the result
  // is the same for any count).
  absl::StatusOr<AggregateResult> Finish(int threads = 1);

  // OK, or the Aborted status with which the round was abandoned.
  const absl::Status& status() const { return status_; }
  const SecAggGraph& graph() const { return graph_; }

 private:
  enum class Stage { kAdvertise, kShareKeys, kMaskedInput, kUnmask, kDone };
  struct Keys {
    Bytes32 c_public{};
    Bytes32 s_public{};
  };

  SecAggServer(const SecAggConfig& config, SecAggGraph graph);
  absl::Status CheckMessage(uint64_t round, Stage expected, const char* what) const;
  absl::Status Abandon(const std::string& reason);
  // Drops, until none is left to drop, each site with fewer than t share holders in `alive`.
  std::set<uint32_t> Prune(std::set<uint32_t> alive) const;
  // How many of `ids` are in `set`.
  static int CountIn(const std::vector<uint32_t>& ids, const std::set<uint32_t>& set);
  absl::Status CheckFeasible(const std::set<uint32_t>& responders) const;

  const SecAggConfig config_;
  const SecAggGraph graph_;
  Stage stage_ = Stage::kAdvertise;
  absl::Status status_;
  std::map<uint32_t, Keys> keys_;                                 // advertised
  std::set<uint32_t> live_;                                       // given neighbour keys
  std::map<uint32_t, std::vector<EncryptedShare>> shared_;        // ShareKeys received
  std::set<uint32_t> relayed_;                                    // given relayed shares
  std::set<uint32_t> masked_;                                     // masked input received (U)
  std::set<uint32_t> dropped_;                                    // relayed_ minus masked_ (D)
  std::vector<uint32_t> sum_;
  std::map<uint32_t, UnmaskRequest> requests_;
  std::set<uint32_t> responded_;
  std::map<uint32_t, std::vector<ShamirShare>> seed_shares_, key_shares_;  // by owner
};

}  // namespace allround::privacy

#endif  // ALLROUND_PRIVACY_SECAGG_SERVER_H_
