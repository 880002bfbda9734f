#ifndef ALLROUND_PRIVACY_SECAGG_TYPES_H_
#define ALLROUND_PRIVACY_SECAGG_TYPES_H_

// What the SecAgg+ site (privacy/secagg_site.h) and server (privacy/secagg_server.h) share: the
// round's configuration, its communication graph, the messages of the four stages, and the mask
// conventions both ends must apply identically.
//
// The protocol (Bonawitz et al. 2017, "Practical Secure Aggregation", with the sparse graph of Bell
// et al. 2020 as Flower's SecAgg+ builds it): the server learns sum_{u in U} x_u mod 2^32 over the
// sites U whose masked input arrived, and nothing else about any x_u, as long as fewer than t sites
// of any neighbourhood collude with it. Each site i sends
//   y_i = x_i + PRG(b_i) + sum_{j in N(i)} sign(i, j) * PRG(seed_ij)   (mod 2^32)
// with b_i a fresh self-mask seed, seed_ij = DeriveMaskSeed(Agree(s_i, s_j)), sign + when i < j.
// Pairwise masks cancel between survivors; the server removes PRG(b_u) of each survivor and the
// pairwise masks of each dropout from t Shamir shares held by the neighbours.
//
// Messages are plain structs (ids, std::string bytes) so that a transport maps them one to one onto
// protobuf messages; keys travel as 32-byte strings. Every message carries the round; receivers
// refuse one of another round.

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "privacy/bytes.h"

namespace allround::privacy {

struct SecAggConfig {
  uint64_t round = 0;
  std::vector<uint32_t> sampled_ids;  // site ids, each > 0, distinct; order does not matter
  // Neighbours per site: even and < n - 1 for a sparse (Harary) graph; >= n - 1 means the complete
  // graph, i.e. plain SecAgg.
  int degree = 0;
  // Shares needed to reconstruct a secret; 1 < t <= (effective degree) + 1, since a site and its
  // neighbours hold its shares.
  int threshold = 0;
  uint64_t graph_seed = 0;
  size_t vector_length = 0;  // uint32 words per input, > 0
};

// InvalidArgument naming the first broken rule.
absl::Status ValidateConfig(const SecAggConfig& config);

// The round's communication graph: the sampled ids permuted by a ChaCha20 stream keyed by
// (graph_seed, round), on a ring, each joined to the degree/2 next and degree/2 previous ones (a
// random Harary graph); the complete graph when degree >= n - 1. Deterministic: sites and server
// build the same graph from the same config. Immutable, so thread-safe after Build.
class SecAggGraph {
 public:
  // Fails as ValidateConfig does.
  static absl::StatusOr<SecAggGraph> Build(const SecAggConfig& config);

  bool Contains(uint32_t id) const { return neighbours_.count(id) > 0; }
  // Sorted neighbours of `id`, without `id`; empty for an id not in the graph.
  const std::vector<uint32_t>& Neighbours(uint32_t id) const;
  bool AreNeighbours(uint32_t a, uint32_t b) const;
  // The holders of `owner`'s shares: `owner` and its neighbours, sorted. The share a holder gets
  // has x = 1 + its position here, so every party can check the x of a share it sees.
  const std::vector<uint32_t>& Holders(uint32_t owner) const;
  // 1 + position of `holder` in Holders(owner); 0 when it holds no share of owner.
  uint32_t ShareX(uint32_t owner, uint32_t holder) const;

  const std::vector<uint32_t>& ids() const { return ids_; }    // sorted
  const std::vector<uint32_t>& ring() const { return ring_; }  // the permuted order
  int degree() const { return degree_; }                       // neighbours per site
  bool complete() const { return degree_ == static_cast<int>(ids_.size()) - 1; }

 private:
  std::vector<uint32_t> ids_, ring_;
  std::unordered_map<uint32_t, std::vector<uint32_t>> neighbours_, holders_;
  int degree_ = 0;
};

// Mask conventions. The PRG stream id is the round (keys and seeds are fresh every round too).
inline uint64_t MaskStreamId(uint64_t round) { return round; }
// Site `self` adds the pairwise mask shared with `peer` when self < peer, subtracts it otherwise.
inline bool PairwiseMaskAdded(uint32_t self, uint32_t peer) { return self < peer; }
// The pairwise mask seed of two sites' masking keys (same result at both ends and at the server,
// which uses a dropout's reconstructed secret key). InvalidArgument for a small-order key.
absl::StatusOr<Bytes32> PairwiseSeed(const Bytes32& my_secret, const Bytes32& my_public, const Bytes32& their_public);

// acc[i] += x[i] mod 2^32. InvalidArgument when the lengths differ.
absl::Status AddModular(absl::Span<uint32_t> acc, absl::Span<const uint32_t> x);
// The element-wise sum mod 2^32 of equally long vectors (zeros of `length` for none).
absl::StatusOr<std::vector<uint32_t>> ModularSum(const std::vector<std::vector<uint32_t>>& inputs, size_t length);

// ---- Messages, in stage order. ----

// Stage 0, site -> server: the site's two fresh X25519 public keys of this round.
struct AdvertiseKeysMsg {
  uint64_t round = 0;
  uint32_t site_id = 0;
  std::string c_public_key;  // encryption of shares
  std::string s_public_key;  // pairwise masks
};

struct PeerKeys {
  uint32_t site_id = 0;
  std::string c_public_key;
  std::string s_public_key;
};
// Server -> site: the keys of the site's neighbours that take part (sorted by id).
struct NeighbourKeysMsg {
  uint64_t round = 0;
  uint32_t recipient = 0;
  std::vector<PeerKeys> neighbours;
};

struct EncryptedShare {
  uint32_t sender = 0;
  uint32_t receiver = 0;
  // EncryptShare(...) of SerializeShare(share of b_sender) || SerializeShare(share of s_sender).
  std::string ciphertext;
};
// Stage 1, site -> server: one ciphertext for each neighbour named in its NeighbourKeysMsg.
struct ShareKeysMsg {
  uint64_t round = 0;
  uint32_t site_id = 0;
  std::vector<EncryptedShare> shares;
};
// Server -> site: the ciphertexts addressed to the site by neighbours that shared. The senders
// named here are exactly the peers the site masks with.
struct RelayedSharesMsg {
  uint64_t round = 0;
  uint32_t recipient = 0;
  std::vector<EncryptedShare> shares;
};

// Stage 2, site -> server.
struct MaskedInputMsg {
  uint64_t round = 0;
  uint32_t site_id = 0;
  std::vector<uint32_t> masked;  // y, vector_length words
};

// Stage 3, server -> site: which of the site's neighbours survived (their masked input arrived;
// the site itself among them) and which dropped after sharing keys.
struct UnmaskRequest {
  uint64_t round = 0;
  uint32_t recipient = 0;
  std::vector<uint32_t> survivors;
  std::vector<uint32_t> dropouts;
};
enum class ShareKind : uint8_t {
  kSelfMaskSeed = 1,  // a share of b_owner: asked for survivors
  kMaskingKey = 2,    // a share of s_owner's secret key: asked for dropouts
};
struct RevealedShare {
  uint32_t owner = 0;
  ShareKind kind = ShareKind::kSelfMaskSeed;
  std::string share;  // SerializeShare
};
// Site -> server.
struct UnmaskResponse {
  uint64_t round = 0;
  uint32_t site_id = 0;
  std::vector<RevealedShare> shares;
};

// What the server computes at the end of a round.
struct AggregateResult {
  std::vector<uint32_t> sum;      // sum of the counted sites' inputs, mod 2^32
  std::vector<uint32_t> counted;  // sites whose masked input arrived (sorted)
  std::vector<uint32_t> dropped;  // sites that shared keys but whose masked input did not arrive
};

}  // namespace allround::privacy

#endif  // ALLROUND_PRIVACY_SECAGG_TYPES_H_
