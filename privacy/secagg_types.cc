#include "privacy/secagg_types.h"

#include <sodium.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "privacy/secagg_crypto.h"
#include "privacy/shamir.h"

namespace allround::privacy {
namespace {

constexpr char kGraphTag[] = "allround/secagg/graph/v1";

// Uniform integers from a ChaCha20 stream (ExpandMask) keyed by (graph_seed, round), so the graph
// is the same on every platform.
class GraphStream {
 public:
  GraphStream(uint64_t graph_seed, uint64_t round) {
    unsigned char in[sizeof kGraphTag - 1 + 16];
    std::copy(kGraphTag, kGraphTag + sizeof kGraphTag - 1, in);
    for (int i = 0; i < 8; ++i) {
      in[sizeof kGraphTag - 1 + i] = static_cast<unsigned char>((graph_seed >> (8 * i)) & 0xff);
      in[sizeof kGraphTag - 1 + 8 + i] = static_cast<unsigned char>((round >> (8 * i)) & 0xff);
    }
    crypto_generichash(seed_.data(), seed_.size(), in, sizeof in, nullptr, 0);
  }
  // Uniform in [0, n), n > 0, by rejection (no modulo bias).
  uint32_t Below(uint32_t n) {
    const uint32_t reject_below = static_cast<uint32_t>((uint64_t{1} << 32) % n);
    for (;;) {
      const uint32_t w = Next();
      if (w >= reject_below) return w % n;
    }
  }

 private:
  uint32_t Next() {
    if (pos_ == words_.size()) {
      words_ = ExpandMask(seed_, stream_++, 256);
      pos_ = 0;
    }
    return words_[pos_++];
  }
  Bytes32 seed_{};
  uint64_t stream_ = 0;
  std::vector<uint32_t> words_;
  size_t pos_ = 0;
};

const std::vector<uint32_t>& Empty() {
  static const std::vector<uint32_t> empty;
  return empty;
}

}  // namespace

absl::Status ValidateConfig(const SecAggConfig& c) {
  const size_t n = c.sampled_ids.size();
  if (n < 2) return absl::InvalidArgumentError(absl::StrCat("secagg: ", n, " sampled sites; at least 2 are needed"));
  std::set<uint32_t> seen;
  for (uint32_t id : c.sampled_ids) {
    if (id == 0) return absl::InvalidArgumentError("secagg: site id 0 is reserved; ids start at 1");
    if (!seen.insert(id).second) return absl::InvalidArgumentError(absl::StrCat("secagg: site ", id, " sampled twice"));
  }
  if (c.degree < 1) return absl::InvalidArgumentError(absl::StrCat("secagg: degree ", c.degree, " must be >= 1"));
  const int n_int = static_cast<int>(n);
  const bool complete = c.degree >= n_int - 1;
  if (!complete && c.degree % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: degree ", c.degree, " must be even below n - 1 = ",
                                                   n_int - 1, " (k/2 neighbours on each side of the ring)"));
  }
  const int k = complete ? n_int - 1 : c.degree;
  if (c.threshold < 2 || c.threshold > k + 1) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: threshold ", c.threshold, " must be in [2, ", k + 1,
                                                   "]: a site and its ", k, " neighbours hold its shares"));
  }
  if (k + 1 > kShamirMaxShares) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: ", k, " neighbours is too many for Shamir sharing"));
  }
  if (c.vector_length == 0) return absl::InvalidArgumentError("secagg: vector_length must be > 0");
  return absl::OkStatus();
}

absl::StatusOr<SecAggGraph> SecAggGraph::Build(const SecAggConfig& config) {
  if (auto s = ValidateConfig(config); !s.ok()) return s;
  SecAggGraph g;
  g.ids_ = config.sampled_ids;
  std::sort(g.ids_.begin(), g.ids_.end());
  const uint32_t n = static_cast<uint32_t>(g.ids_.size());
  g.ring_ = g.ids_;
  GraphStream stream(config.graph_seed, config.round);
  for (uint32_t i = n; i > 1; --i) std::swap(g.ring_[i - 1], g.ring_[stream.Below(i)]);  // Fisher-Yates
  const bool complete = config.degree >= static_cast<int>(n) - 1;
  g.degree_ = complete ? static_cast<int>(n) - 1 : config.degree;
  for (uint32_t pos = 0; pos < n; ++pos) {
    std::vector<uint32_t> nb;
    if (complete) {
      for (uint32_t id : g.ids_) {
        if (id != g.ring_[pos]) nb.push_back(id);
      }
    } else {
      for (int d = 1; d <= g.degree_ / 2; ++d) {
        nb.push_back(g.ring_[(pos + d) % n]);
        nb.push_back(g.ring_[(pos + n - d) % n]);
      }
      std::sort(nb.begin(), nb.end());
    }
    std::vector<uint32_t> holders = nb;
    holders.insert(std::upper_bound(holders.begin(), holders.end(), g.ring_[pos]), g.ring_[pos]);
    g.neighbours_[g.ring_[pos]] = std::move(nb);
    g.holders_[g.ring_[pos]] = std::move(holders);
  }
  return g;
}

const std::vector<uint32_t>& SecAggGraph::Neighbours(uint32_t id) const {
  auto it = neighbours_.find(id);
  return it == neighbours_.end() ? Empty() : it->second;
}

bool SecAggGraph::AreNeighbours(uint32_t a, uint32_t b) const {
  const auto& nb = Neighbours(a);
  return std::binary_search(nb.begin(), nb.end(), b);
}

const std::vector<uint32_t>& SecAggGraph::Holders(uint32_t owner) const {
  auto it = holders_.find(owner);
  return it == holders_.end() ? Empty() : it->second;
}

uint32_t SecAggGraph::ShareX(uint32_t owner, uint32_t holder) const {
  const auto& h = Holders(owner);
  auto it = std::lower_bound(h.begin(), h.end(), holder);
  return it != h.end() && *it == holder ? static_cast<uint32_t>(it - h.begin()) + 1 : 0;
}

absl::StatusOr<Bytes32> PairwiseSeed(const Bytes32& my_secret, const Bytes32& my_public, const Bytes32& their_public) {
  auto agreed = Agree(my_secret, their_public, my_public);
  if (!agreed.ok()) return agreed.status();
  Bytes32 seed = DeriveMaskSeed(*agreed);
  sodium_memzero(agreed->data(), agreed->size());
  return seed;
}

absl::Status AddModular(absl::Span<uint32_t> acc, absl::Span<const uint32_t> x) {
  if (acc.size() != x.size()) {
    return absl::InvalidArgumentError(absl::StrCat("modular sum: ", x.size(), " words added to ", acc.size()));
  }
  for (size_t i = 0; i < acc.size(); ++i) acc[i] += x[i];  // unsigned: wraps mod 2^32
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint32_t>> ModularSum(const std::vector<std::vector<uint32_t>>& inputs, size_t length) {
  std::vector<uint32_t> sum(length, 0);
  for (const auto& x : inputs) {
    if (auto s = AddModular(absl::MakeSpan(sum), x); !s.ok()) return s;
  }
  return sum;
}

}  // namespace allround::privacy
