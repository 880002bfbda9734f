#include "privacy/secagg_server.h"

#include <sodium.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "privacy/secagg_crypto.h"

namespace allround::privacy {
namespace {

const char* StageName(int stage) {
  static const char* const kNames[] = {"advertise keys", "share keys", "masked input", "unmask", "done"};
  return kNames[stage];
}

// Words unmasked at a time: every mask is applied to one slice of the sum while it is in cache.
constexpr size_t kSliceWords = size_t{1} << 16;

struct Mask {
  Bytes32 seed;
  bool subtract;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SecAggServer>> SecAggServer::Create(const SecAggConfig& config) {
  auto graph = SecAggGraph::Build(config);
  if (!graph.ok()) return graph.status();
  if (auto s = InitCrypto(); !s.ok()) return s;
  return std::unique_ptr<SecAggServer>(new SecAggServer(config, *std::move(graph)));
}

SecAggServer::SecAggServer(const SecAggConfig& config, SecAggGraph graph)
    : config_(config), graph_(std::move(graph)) {}

absl::Status SecAggServer::CheckMessage(uint64_t round, Stage expected, const char* what) const {
  if (!status_.ok()) return status_;
  if (round != config_.round) {
    return absl::InvalidArgumentError(
        absl::StrCat("secagg server: ", what, " of round ", round, " in round ", config_.round));
  }
  if (stage_ != expected) {
    return absl::FailedPreconditionError(absl::StrCat("secagg server: ", what, " in stage '",
                                                      StageName(static_cast<int>(stage_)), "', expected '",
                                                      StageName(static_cast<int>(expected)), "'"));
  }
  return absl::OkStatus();
}

absl::Status SecAggServer::Abandon(const std::string& reason) {
  status_ = absl::AbortedError(absl::StrCat("secagg round ", config_.round, " abandoned: ", reason));
  return status_;
}

int SecAggServer::CountIn(const std::vector<uint32_t>& ids, const std::set<uint32_t>& set) {
  return static_cast<int>(std::count_if(ids.begin(), ids.end(), [&](uint32_t id) { return set.count(id) > 0; }));
}

std::set<uint32_t> SecAggServer::Prune(std::set<uint32_t> alive) const {
  for (bool changed = true; changed;) {
    changed = false;
    for (auto it = alive.begin(); it != alive.end();) {
      if (CountIn(graph_.Holders(*it), alive) < config_.threshold) {
        it = alive.erase(it);
        changed = true;
      } else {
        ++it;
      }
    }
  }
  return alive;
}

absl::Status SecAggServer::AddAdvertisement(const AdvertiseKeysMsg& msg) {
  if (auto s = CheckMessage(msg.round, Stage::kAdvertise, "keys"); !s.ok()) return s;
  const std::string who = absl::StrCat("secagg server: keys of site ", msg.site_id);
  if (!graph_.Contains(msg.site_id)) return absl::InvalidArgumentError(absl::StrCat(who, ", which was not sampled"));
  if (keys_.count(msg.site_id)) return absl::InvalidArgumentError(absl::StrCat(who, " sent twice"));
  auto keys = ParsePublicKeys(msg.c_public_key, msg.s_public_key, who);
  if (!keys.ok()) return keys.status();
  keys_.emplace(msg.site_id, Keys{keys->c, keys->s});
  return absl::OkStatus();
}

absl::StatusOr<std::vector<NeighbourKeysMsg>> SecAggServer::CloseAdvertise() {
  if (auto s = CheckMessage(config_.round, Stage::kAdvertise, "close of advertise keys"); !s.ok()) return s;
  std::set<uint32_t> advertised;
  for (const auto& [id, k] : keys_) advertised.insert(id);
  live_ = Prune(advertised);
  if (static_cast<int>(live_.size()) < config_.threshold) {
    return Abandon(absl::StrCat(advertised.size(), " of ", graph_.ids().size(), " sampled sites advertised keys and ",
                                live_.size(), " of them have enough neighbours left; the threshold is ",
                                config_.threshold));
  }
  std::vector<NeighbourKeysMsg> out;
  for (uint32_t id : live_) {
    NeighbourKeysMsg msg{config_.round, id, {}};
    for (uint32_t peer : graph_.Neighbours(id)) {
      if (!live_.count(peer)) continue;
      const Keys& k = keys_.at(peer);
      msg.neighbours.push_back(PeerKeys{peer, ToString(k.c_public), ToString(k.s_public)});
    }
    out.push_back(std::move(msg));
  }
  stage_ = Stage::kShareKeys;
  return out;
}

absl::Status SecAggServer::AddShareKeys(const ShareKeysMsg& msg) {
  if (auto s = CheckMessage(msg.round, Stage::kShareKeys, "shares"); !s.ok()) return s;
  const std::string who = absl::StrCat("secagg server: shares of site ", msg.site_id);
  if (!live_.count(msg.site_id)) return absl::InvalidArgumentError(absl::StrCat(who, ", which does not take part"));
  if (shared_.count(msg.site_id)) return absl::InvalidArgumentError(absl::StrCat(who, " sent twice"));
  // Exactly one ciphertext per live neighbour: the relay must stay symmetric (i masks with j iff j
  // masks with i), or the pairwise masks would not cancel.
  std::set<uint32_t> want;
  for (uint32_t peer : graph_.Neighbours(msg.site_id)) {
    if (live_.count(peer)) want.insert(peer);
  }
  std::set<uint32_t> got;
  for (const EncryptedShare& es : msg.shares) {
    if (es.sender != msg.site_id) return absl::InvalidArgumentError(absl::StrCat(who, " claim to come from site ", es.sender));
    if (!want.count(es.receiver) || !got.insert(es.receiver).second) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": unexpected or repeated receiver ", es.receiver));
    }
    if (es.ciphertext.size() != 2 * kShamirShareBytes + kShareCiphertextOverhead) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": ciphertext for site ", es.receiver, " has ",
                                                     es.ciphertext.size(), " bytes"));
    }
  }
  if (got != want) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": ", got.size(), " ciphertexts for ", want.size(),
                                                   " neighbours that take part"));
  }
  shared_.emplace(msg.site_id, msg.shares);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RelayedSharesMsg>> SecAggServer::CloseShareKeys() {
  if (auto s = CheckMessage(config_.round, Stage::kShareKeys, "close of share keys"); !s.ok()) return s;
  std::set<uint32_t> sent;
  for (const auto& [id, shares] : shared_) sent.insert(id);
  relayed_ = Prune(sent);
  if (static_cast<int>(relayed_.size()) < config_.threshold) {
    return Abandon(absl::StrCat(sent.size(), " of ", live_.size(), " sites shared their keys and ", relayed_.size(),
                                " of them have enough neighbours left; the threshold is ", config_.threshold));
  }
  std::map<uint32_t, RelayedSharesMsg> out;
  for (uint32_t id : relayed_) out[id] = RelayedSharesMsg{config_.round, id, {}};
  for (uint32_t sender : relayed_) {
    for (EncryptedShare& es : shared_.at(sender)) {
      if (relayed_.count(es.receiver)) out[es.receiver].shares.push_back(std::move(es));
    }
  }
  shared_.clear();
  sum_.assign(config_.vector_length, 0);
  stage_ = Stage::kMaskedInput;
  std::vector<RelayedSharesMsg> msgs;
  for (auto& [id, msg] : out) msgs.push_back(std::move(msg));
  return msgs;
}

absl::Status SecAggServer::AddMaskedInput(const MaskedInputMsg& msg) {
  if (auto s = CheckMessage(msg.round, Stage::kMaskedInput, "masked input"); !s.ok()) return s;
  const std::string who = absl::StrCat("secagg server: masked input of site ", msg.site_id);
  if (!relayed_.count(msg.site_id)) return absl::InvalidArgumentError(absl::StrCat(who, ", which does not take part"));
  if (masked_.count(msg.site_id)) return absl::InvalidArgumentError(absl::StrCat(who, " sent twice"));
  if (msg.masked.size() != config_.vector_length) {
    return absl::InvalidArgumentError(absl::StrCat(who, " has ", msg.masked.size(), " words, not ", config_.vector_length));
  }
  if (auto s = AddModular(absl::MakeSpan(sum_), msg.masked); !s.ok()) return s;
  masked_.insert(msg.site_id);
  return absl::OkStatus();
}

absl::Status SecAggServer::CheckFeasible(const std::set<uint32_t>& responders) const {
  for (uint32_t j : masked_) {
    const int have = CountIn(graph_.Holders(j), responders);
    if (have < config_.threshold) {
      return absl::FailedPreconditionError(absl::StrCat("the self mask of site ", j, " can be recovered from at most ",
                                                        have, " shares, below the threshold ", config_.threshold));
    }
  }
  for (uint32_t j : dropped_) {
    const int have = CountIn(graph_.Neighbours(j), responders);
    if (have < config_.threshold) {
      return absl::FailedPreconditionError(absl::StrCat("the masking key of dropped site ", j,
                                                        " can be recovered from at most ", have,
                                                        " shares, below the threshold ", config_.threshold));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<UnmaskRequest>> SecAggServer::CloseMaskedInput() {
  if (auto s = CheckMessage(config_.round, Stage::kMaskedInput, "close of masked input"); !s.ok()) return s;
  for (uint32_t id : relayed_) {
    if (!masked_.count(id)) dropped_.insert(id);
  }
  if (static_cast<int>(masked_.size()) < config_.threshold) {
    return Abandon(absl::StrCat("masked inputs came from ", masked_.size(), " of ", relayed_.size(),
                                " sites, below the threshold ", config_.threshold));
  }
  // A survivor refuses a request naming fewer than t survivors, so ask only those that can answer.
  std::set<uint32_t> askable;
  for (uint32_t id : masked_) {
    if (CountIn(graph_.Holders(id), masked_) >= config_.threshold) askable.insert(id);
  }
  if (auto s = CheckFeasible(askable); !s.ok()) return Abandon(std::string(s.message()));
  std::vector<UnmaskRequest> out;
  for (uint32_t id : askable) {
    UnmaskRequest r{config_.round, id, {}, {}};
    for (uint32_t h : graph_.Holders(id)) {
      if (masked_.count(h)) r.survivors.push_back(h);
      if (dropped_.count(h)) r.dropouts.push_back(h);
    }
    requests_[id] = r;
    out.push_back(std::move(r));
  }
  stage_ = Stage::kUnmask;
  return out;
}

absl::Status SecAggServer::AddUnmaskResponse(const UnmaskResponse& msg) {
  if (auto s = CheckMessage(msg.round, Stage::kUnmask, "unmask response"); !s.ok()) return s;
  const std::string who = absl::StrCat("secagg server: unmask response of site ", msg.site_id);
  auto req = requests_.find(msg.site_id);
  if (req == requests_.end()) return absl::InvalidArgumentError(absl::StrCat(who, ", which was not asked"));
  if (responded_.count(msg.site_id)) return absl::InvalidArgumentError(absl::StrCat(who, " sent twice"));
  std::map<std::pair<uint32_t, ShareKind>, bool> want;  // -> seen
  for (uint32_t u : req->second.survivors) want[{u, ShareKind::kSelfMaskSeed}] = false;
  for (uint32_t d : req->second.dropouts) want[{d, ShareKind::kMaskingKey}] = false;
  std::vector<std::pair<RevealedShare, ShamirShare>> parsed;
  for (const RevealedShare& rs : msg.shares) {
    auto w = want.find({rs.owner, rs.kind});
    if (w == want.end() || w->second) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": unrequested or repeated share of site ", rs.owner));
    }
    w->second = true;
    auto share = ParseShare(rs.share);
    if (!share.ok()) return absl::InvalidArgumentError(absl::StrCat(who, ": ", share.status().message()));
    if (share->x != graph_.ShareX(rs.owner, msg.site_id)) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": share of site ", rs.owner, " has x = ", share->x));
    }
    parsed.emplace_back(rs, *share);
  }
  if (parsed.size() != want.size()) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": ", parsed.size(), " of ", want.size(), " requested shares"));
  }
  for (const auto& [rs, share] : parsed) {
    (rs.kind == ShareKind::kSelfMaskSeed ? seed_shares_ : key_shares_)[rs.owner].push_back(share);
  }
  responded_.insert(msg.site_id);
  return absl::OkStatus();
}

absl::StatusOr<AggregateResult> SecAggServer::Finish(int threads) {
  if (auto s = CheckMessage(config_.round, Stage::kUnmask, "finish"); !s.ok()) return s;
  std::vector<Mask> masks;
  auto wipe = [&masks] {
    for (Mask& m : masks) sodium_memzero(m.seed.data(), m.seed.size());
  };
  auto reconstruct = [&](uint32_t owner, bool seed) -> absl::StatusOr<Bytes32> {
    const auto& shares = (seed ? seed_shares_ : key_shares_)[owner];
    const std::string what = seed ? absl::StrCat("the self-mask seed of site ", owner)
                                  : absl::StrCat("the masking key of dropped site ", owner);
    if (static_cast<int>(shares.size()) < config_.threshold) {
      return absl::FailedPreconditionError(absl::StrCat("cannot recover ", what, ": ", shares.size(),
                                                        " shares came back, the threshold is ", config_.threshold));
    }
    auto secret = ShamirReconstruct(shares, config_.threshold);
    if (!secret.ok()) return absl::DataLossError(absl::StrCat("cannot recover ", what, ": ", secret.status().message()));
    return secret;
  };
  for (uint32_t j : masked_) {
    auto b = reconstruct(j, true);
    if (!b.ok()) {
      wipe();
      return Abandon(std::string(b.status().message()));
    }
    masks.push_back(Mask{*b, /*subtract=*/true});
  }
  for (uint32_t j : dropped_) {
    auto sk = reconstruct(j, false);
    if (!sk.ok()) {
      wipe();
      return Abandon(std::string(sk.status().message()));
    }
    auto pk = PublicKeyOf(*sk);
    if (!pk.ok() || *pk != keys_.at(j).s_public) {
      sodium_memzero(sk->data(), sk->size());
      wipe();
      return Abandon(absl::StrCat("the shares of dropped site ", j,
                                  " do not give the secret key of its advertised masking key"));
    }
    for (uint32_t u : graph_.Neighbours(j)) {
      if (!masked_.count(u)) continue;
      auto seed = PairwiseSeed(*sk, keys_.at(j).s_public, keys_.at(u).s_public);
      if (!seed.ok()) {
        sodium_memzero(sk->data(), sk->size());
        wipe();
        return Abandon(std::string(seed.status().message()));
      }
      // Survivor u added the mask shared with j when u < j; take it back out.
      masks.push_back(Mask{*seed, /*subtract=*/PairwiseMaskAdded(u, j)});
    }
    sodium_memzero(sk->data(), sk->size());
  }
  const uint64_t stream = MaskStreamId(config_.round);
  // Slice by slice (every mask over one slice while it is in cache), the slices shared out among
  // the threads by a counter; slices are disjoint, so any interleaving gives the same words.
  const size_t slices = (sum_.size() + kSliceWords - 1) / kSliceWords;
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < slices; i = next++) {
      auto slice = absl::MakeSpan(sum_).subspan(i * kSliceWords, kSliceWords);
      for (const Mask& m : masks) AddMask(m.seed, stream, m.subtract, slice, i * kSliceWords);
    }
  };
  // This thread works too; no more threads than slices.
  const size_t workers = std::min(slices, static_cast<size_t>(std::max(1, threads)));
  std::vector<std::thread> helpers;
  for (size_t i = 1; i < workers; ++i) helpers.emplace_back(work);
  work();
  for (std::thread& t : helpers) t.join();
  wipe();
  stage_ = Stage::kDone;
  AggregateResult result;
  result.sum = std::move(sum_);
  result.counted.assign(masked_.begin(), masked_.end());
  result.dropped.assign(dropped_.begin(), dropped_.end());
  return result;
}

}  // namespace allround::privacy
