#ifndef ALLROUND_PRIVACY_SECAGG_SITE_H_
#define ALLROUND_PRIVACY_SECAGG_SITE_H_

// One site's side of a SecAgg+ round (see privacy/secagg_types.h for the protocol): a state machine
// that turns each server message into the site's reply, and refuses, revealing nothing, a message
// that would let the server learn more than the sum.
//
// Stages, each called at most once successfully and in this order (a refused call changes nothing
// and may be retried with a corrected message):
//   AdvertiseKeys()            -> AdvertiseKeysMsg   fresh X25519 pairs c (shares) and s (masks)
//   ShareKeys(NeighbourKeys)   -> ShareKeysMsg       shares of b and of s's secret key, t-of-(k+1),
//                                                    encrypted for each neighbour named
//   MaskInput(RelayedShares,x) -> MaskedInputMsg     y = x + PRG(b) +- pairwise masks
//   Unmask(UnmaskRequest)      -> UnmaskResponse     may be called again (a retried request);
//                                                    every call is checked against all earlier ones
// Unmask refuses with PermissionDenied, revealing nothing, when the request names a peer both as
// survivor and as dropout, would make this site reveal over the round both a share of
// a peer's self-mask seed and one of its masking key, names fewer than t survivors, does not name
// this site as a survivor, or names a peer that is not a neighbour or whose shares this site did
// not receive. Every stage refuses a message of another round or recipient (InvalidArgument) and
// a call out of order (FailedPrecondition). A survivor's own share of its self-mask seed is revealed too (as in Bonawitz et al.
// and Flower): the seed is meant to be reconstructed once the site's masked input arrived, and
// without it t = k + 1 could never be met.
//
// Not thread-safe: one caller drives a site. Owns its secrets and wipes them on destruction. Does
// no I/O and never blocks; timeouts belong to the transport that carries the messages.

#include <cstdint>
#include <map>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "privacy/secagg_crypto.h"
#include "privacy/secagg_types.h"
#include "privacy/shamir.h"

namespace allround::privacy {

class SecAggSite {
 public:
  // InvalidArgument when the config is invalid or `site_id` was not sampled.
  static absl::StatusOr<std::unique_ptr<SecAggSite>> Create(const SecAggConfig& config, uint32_t site_id);
  ~SecAggSite();
  SecAggSite(const SecAggSite&) = delete;
  SecAggSite& operator=(const SecAggSite&) = delete;

  absl::StatusOr<AdvertiseKeysMsg> AdvertiseKeys();
  // Refuses keys of another round or recipient, of a non-neighbour, duplicates, malformed or
  // small-order keys, and fewer than t - 1 neighbours (its secrets could never be reconstructed).
  absl::StatusOr<ShareKeysMsg> ShareKeys(const NeighbourKeysMsg& keys);
  // `input` must hold vector_length words. Refuses a ciphertext from a peer not named in
  // ShareKeys, one that fails authentication or holds a share with the wrong x, and fewer than
  // t - 1 senders: masking with a peer whose shares are bad would make the sum unrecoverable.
  absl::StatusOr<MaskedInputMsg> MaskInput(const RelayedSharesMsg& relayed, absl::Span<const uint32_t> input);
  absl::StatusOr<UnmaskResponse> Unmask(const UnmaskRequest& request);

  uint32_t id() const { return id_; }
  const SecAggGraph& graph() const { return graph_; }

 private:
  enum class Stage { kNew, kAdvertised, kShared, kMasked };
  struct Peer {
    Bytes32 c_public{};
    Bytes32 s_public{};
  };
  struct Held {
    ShamirShare seed_share;  // of the peer's b
    ShamirShare key_share;   // of the peer's s secret key
  };

  SecAggSite(const SecAggConfig& config, uint32_t id, SecAggGraph graph);
  absl::Status CheckEnvelope(uint64_t round, uint32_t recipient, Stage expected, const char* what) const;
  absl::Status CheckUnmaskRequest(const UnmaskRequest& request) const;

  const SecAggConfig config_;
  const uint32_t id_;
  const SecAggGraph graph_;
  Stage stage_ = Stage::kNew;
  KeyPair c_, s_;
  Bytes32 b_{};
  ShamirShare own_seed_share_;
  std::map<uint32_t, Peer> peers_;             // from NeighbourKeysMsg
  std::map<uint32_t, Held> held_;              // from RelayedSharesMsg: the peers masked with
  std::map<uint32_t, ShareKind> revealed_;     // what Unmask revealed, per peer, this round
};

}  // namespace allround::privacy

#endif  // ALLROUND_PRIVACY_SECAGG_SITE_H_
