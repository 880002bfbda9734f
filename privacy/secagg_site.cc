#include "privacy/secagg_site.h"

#include <sodium.h>

#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace allround::privacy {
namespace {

const char* StageName(int stage) {
  static const char* const kNames[] = {"new", "keys advertised", "keys shared", "masked input sent"};
  return kNames[stage];
}

void Wipe(ShamirShare& share) { sodium_memzero(share.y.data(), sizeof share.y); }

}  // namespace

absl::StatusOr<std::unique_ptr<SecAggSite>> SecAggSite::Create(const SecAggConfig& config, uint32_t site_id) {
  auto graph = SecAggGraph::Build(config);
  if (!graph.ok()) return graph.status();
  if (!graph->Contains(site_id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("secagg round ", config.round, ": site ", site_id, " was not sampled"));
  }
  if (auto s = InitCrypto(); !s.ok()) return s;
  return std::unique_ptr<SecAggSite>(new SecAggSite(config, site_id, *std::move(graph)));
}

SecAggSite::SecAggSite(const SecAggConfig& config, uint32_t id, SecAggGraph graph)
    : config_(config), id_(id), graph_(std::move(graph)) {}

SecAggSite::~SecAggSite() {
  sodium_memzero(c_.secret_key.data(), c_.secret_key.size());
  sodium_memzero(s_.secret_key.data(), s_.secret_key.size());
  sodium_memzero(b_.data(), b_.size());
  Wipe(own_seed_share_);
  for (auto& [id, held] : held_) {
    Wipe(held.seed_share);
    Wipe(held.key_share);
  }
}

absl::Status SecAggSite::CheckEnvelope(uint64_t round, uint32_t recipient, Stage expected, const char* what) const {
  if (round != config_.round || recipient != id_) {
    return absl::InvalidArgumentError(absl::StrCat("secagg site ", id_, ": ", what, " for site ", recipient,
                                                   " in round ", round, ", but this is site ", id_, " in round ",
                                                   config_.round));
  }
  if (stage_ != expected) {
    return absl::FailedPreconditionError(absl::StrCat("secagg site ", id_, ": ", what, " arrived in stage '",
                                                      StageName(static_cast<int>(stage_)), "', expected '",
                                                      StageName(static_cast<int>(expected)), "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<AdvertiseKeysMsg> SecAggSite::AdvertiseKeys() {
  if (auto s = CheckEnvelope(config_.round, id_, Stage::kNew, "AdvertiseKeys"); !s.ok()) return s;
  auto c = GenerateKeyPair();
  if (!c.ok()) return c.status();
  auto s = GenerateKeyPair();
  if (!s.ok()) return s.status();
  c_ = *c;
  s_ = *s;
  sodium_memzero(c->secret_key.data(), c->secret_key.size());
  sodium_memzero(s->secret_key.data(), s->secret_key.size());
  stage_ = Stage::kAdvertised;
  return AdvertiseKeysMsg{config_.round, id_, ToString(c_.public_key), ToString(s_.public_key)};
}

absl::StatusOr<ShareKeysMsg> SecAggSite::ShareKeys(const NeighbourKeysMsg& keys) {
  if (auto s = CheckEnvelope(keys.round, keys.recipient, Stage::kAdvertised, "neighbour keys"); !s.ok()) return s;
  std::map<uint32_t, Peer> peers;
  for (const PeerKeys& pk : keys.neighbours) {
    const std::string who = absl::StrCat("secagg site ", id_, ": neighbour keys of site ", pk.site_id);
    if (!graph_.AreNeighbours(id_, pk.site_id)) {
      return absl::InvalidArgumentError(absl::StrCat(who, ", which is not a neighbour"));
    }
    auto keys = ParsePublicKeys(pk.c_public_key, pk.s_public_key, who);
    if (!keys.ok()) return keys.status();
    if (!peers.emplace(pk.site_id, Peer{keys->c, keys->s}).second) {
      return absl::InvalidArgumentError(absl::StrCat(who, " given twice"));
    }
  }
  if (static_cast<int>(peers.size()) + 1 < config_.threshold) {
    return absl::FailedPreconditionError(
        absl::StrCat("secagg site ", id_, ": only ", peers.size(), " neighbours take part; with this site that is below the threshold ",
                     config_.threshold, ", so its shares could never be put together"));
  }

  auto b = RandomBytes32();
  if (!b.ok()) return b.status();
  const int holders = static_cast<int>(graph_.Holders(id_).size());
  auto b_shares = ShamirSplit(*b, config_.threshold, holders);
  if (!b_shares.ok()) return b_shares.status();
  auto s_shares = ShamirSplit(s_.secret_key, config_.threshold, holders);
  if (!s_shares.ok()) return s_shares.status();

  ShareKeysMsg msg{config_.round, id_, {}};
  absl::Status failed;
  for (const auto& [peer, key] : peers) {
    const uint32_t x = graph_.ShareX(id_, peer);
    auto agreed = Agree(c_.secret_key, key.c_public, c_.public_key);
    if (!agreed.ok()) {
      failed = agreed.status();
      break;
    }
    std::string plain = SerializeShare((*b_shares)[x - 1]) + SerializeShare((*s_shares)[x - 1]);
    auto ct = EncryptShare(*agreed, ShareAd{config_.round, id_, peer}, plain);
    sodium_memzero(plain.data(), plain.size());
    sodium_memzero(agreed->data(), agreed->size());
    if (!ct.ok()) {
      failed = ct.status();
      break;
    }
    msg.shares.push_back(EncryptedShare{id_, peer, *std::move(ct)});
  }
  const uint32_t own_x = graph_.ShareX(id_, id_);
  if (failed.ok()) {
    b_ = *b;
    own_seed_share_ = (*b_shares)[own_x - 1];
    peers_ = std::move(peers);
    stage_ = Stage::kShared;
  }
  sodium_memzero(b->data(), b->size());
  for (auto* v : {&*b_shares, &*s_shares}) {
    for (auto& share : *v) Wipe(share);
  }
  if (!failed.ok()) return failed;
  return msg;
}

absl::StatusOr<MaskedInputMsg> SecAggSite::MaskInput(const RelayedSharesMsg& relayed, absl::Span<const uint32_t> input) {
  if (auto s = CheckEnvelope(relayed.round, relayed.recipient, Stage::kShared, "relayed shares"); !s.ok()) return s;
  if (input.size() != config_.vector_length) {
    return absl::InvalidArgumentError(absl::StrCat("secagg site ", id_, ": input has ", input.size(),
                                                   " words, the round expects ", config_.vector_length));
  }
  std::map<uint32_t, Held> held;
  auto fail = [&](absl::Status status) {
    for (auto& [id, h] : held) {
      Wipe(h.seed_share);
      Wipe(h.key_share);
    }
    return status;
  };
  for (const EncryptedShare& es : relayed.shares) {
    const std::string who = absl::StrCat("secagg site ", id_, ": shares from site ", es.sender);
    auto peer = peers_.find(es.sender);
    if (peer == peers_.end()) return fail(absl::InvalidArgumentError(absl::StrCat(who, ", which was not named a neighbour in this round")));
    if (es.receiver != id_) return fail(absl::InvalidArgumentError(absl::StrCat(who, " are addressed to site ", es.receiver)));
    if (held.count(es.sender)) return fail(absl::InvalidArgumentError(absl::StrCat(who, " relayed twice")));
    auto agreed = Agree(c_.secret_key, peer->second.c_public, c_.public_key);
    if (!agreed.ok()) return fail(agreed.status());
    auto plain = DecryptShare(*agreed, ShareAd{config_.round, es.sender, id_}, es.ciphertext);
    sodium_memzero(agreed->data(), agreed->size());
    if (!plain.ok()) return fail(plain.status());
    const std::string_view p(*plain);
    absl::StatusOr<ShamirShare> seed_share = absl::InvalidArgumentError(absl::StrCat(who, ": plaintext has ", p.size(), " bytes"));
    absl::StatusOr<ShamirShare> key_share = seed_share;
    if (p.size() == 2 * kShamirShareBytes) {
      seed_share = ParseShare(p.substr(0, kShamirShareBytes));
      key_share = ParseShare(p.substr(kShamirShareBytes));
    }
    sodium_memzero(plain->data(), plain->size());
    if (!seed_share.ok()) return fail(absl::InvalidArgumentError(absl::StrCat(who, ": ", seed_share.status().message())));
    if (!key_share.ok()) return fail(absl::InvalidArgumentError(absl::StrCat(who, ": ", key_share.status().message())));
    const uint32_t want_x = graph_.ShareX(es.sender, id_);
    if (seed_share->x != want_x || key_share->x != want_x) {
      return fail(absl::InvalidArgumentError(absl::StrCat(who, " carry x = ", seed_share->x, "/", key_share->x, ", expected ", want_x)));
    }
    held.emplace(es.sender, Held{*seed_share, *key_share});
    Wipe(*seed_share);
    Wipe(*key_share);
  }
  if (static_cast<int>(held.size()) + 1 < config_.threshold) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "secagg site ", id_, ": shares came from only ", held.size(), " neighbours; with this site that is below the threshold ",
        config_.threshold)));
  }

  MaskedInputMsg msg{config_.round, id_, std::vector<uint32_t>(input.begin(), input.end())};
  const uint64_t stream = MaskStreamId(config_.round);
  AddMask(b_, stream, /*subtract=*/false, absl::MakeSpan(msg.masked));
  for (const auto& [peer, h] : held) {
    auto seed = PairwiseSeed(s_.secret_key, s_.public_key, peers_.at(peer).s_public);
    if (!seed.ok()) return fail(seed.status());
    AddMask(*seed, stream, /*subtract=*/!PairwiseMaskAdded(id_, peer), absl::MakeSpan(msg.masked));
    sodium_memzero(seed->data(), seed->size());
  }
  held_ = std::move(held);
  stage_ = Stage::kMasked;
  return msg;
}

absl::Status SecAggSite::CheckUnmaskRequest(const UnmaskRequest& r) const {
  auto refuse = [&](auto&&... parts) {
    return absl::PermissionDeniedError(absl::StrCat("secagg site ", id_, " refuses to unmask: ", parts...));
  };
  std::set<uint32_t> survivors, dropouts;
  for (uint32_t u : r.survivors) {
    if (!survivors.insert(u).second) return refuse("site ", u, " is named twice as a survivor");
  }
  for (uint32_t d : r.dropouts) {
    if (!dropouts.insert(d).second) return refuse("site ", d, " is named twice as a dropout");
    if (survivors.count(d)) return refuse("site ", d, " is named both as a survivor and as a dropout");
  }
  if (!survivors.count(id_)) return refuse("this site is not named among the survivors");
  if (static_cast<int>(survivors.size()) < config_.threshold) {
    return refuse("only ", survivors.size(), " survivors are named, below the threshold ", config_.threshold);
  }
  for (const auto* set : {&survivors, &dropouts}) {
    for (uint32_t peer : *set) {
      if (peer == id_) continue;
      if (!graph_.AreNeighbours(id_, peer)) return refuse("site ", peer, " is not a neighbour");
      if (!held_.count(peer)) return refuse("site ", peer, " did not share its keys with this site in this round");
    }
  }
  for (uint32_t u : survivors) {
    auto it = revealed_.find(u);
    if (it != revealed_.end() && it->second != ShareKind::kSelfMaskSeed) {
      return refuse("a share of the masking key of site ", u, " was revealed earlier in this round; "
                    "its self-mask seed share will not be revealed too");
    }
  }
  for (uint32_t d : dropouts) {
    auto it = revealed_.find(d);
    if (it != revealed_.end() && it->second != ShareKind::kMaskingKey) {
      return refuse("a share of the self-mask seed of site ", d, " was revealed earlier in this round; "
                    "its masking key share will not be revealed too");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<UnmaskResponse> SecAggSite::Unmask(const UnmaskRequest& request) {
  if (auto s = CheckEnvelope(request.round, request.recipient, Stage::kMasked, "unmask request"); !s.ok()) return s;
  if (auto s = CheckUnmaskRequest(request); !s.ok()) return s;
  UnmaskResponse response{config_.round, id_, {}};
  for (uint32_t u : request.survivors) {
    const ShamirShare& share = u == id_ ? own_seed_share_ : held_.at(u).seed_share;
    response.shares.push_back(RevealedShare{u, ShareKind::kSelfMaskSeed, SerializeShare(share)});
    revealed_[u] = ShareKind::kSelfMaskSeed;
  }
  for (uint32_t d : request.dropouts) {
    response.shares.push_back(RevealedShare{d, ShareKind::kMaskingKey, SerializeShare(held_.at(d).key_share)});
    revealed_[d] = ShareKind::kMaskingKey;
  }
  return response;
}

}  // namespace allround::privacy
