#include "runtime/secure_site.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "comm/wire.h"
#include "privacy/secagg_quantize.h"
#include "privacy/secagg_site.h"

namespace allround::runtime {
namespace {

namespace v1 = allround::v1;

v1::SecAggMessage Message(int64_t round, v1::SecAggTask::Stage stage) {
  v1::SecAggMessage msg;
  msg.set_round(round);
  msg.set_stage(stage);
  return msg;
}

}  // namespace

SecureSiteSession::SecureSiteSession(int64_t round, uint32_t id, std::unique_ptr<privacy::SecAggSite> site,
                                     double clip_range, uint32_t levels, int64_t max_weight)
    : round_(round), id_(id), site_(std::move(site)), clip_range_(clip_range), levels_(levels), max_weight_(max_weight) {}

SecureSiteSession::~SecureSiteSession() = default;

absl::StatusOr<std::unique_ptr<SecureSiteSession>> SecureSiteSession::Start(int64_t round, const v1::SecAggTask& task,
                                                                            int64_t site_id) {
  auto id = comm::SecAggSiteId(site_id);
  if (!id.ok()) return id.status();
  if (round < 0) return absl::InvalidArgumentError(absl::StrCat("secure aggregation: round ", round));
  privacy::SecAggConfig config;
  config.round = static_cast<uint64_t>(round);
  for (int64_t s : task.sampled()) {
    auto sid = comm::SecAggSiteId(s);
    if (!sid.ok()) return sid.status();
    config.sampled_ids.push_back(*sid);
  }
  config.degree = task.degree();
  config.threshold = task.threshold();
  config.graph_seed = task.graph_seed();
  config.vector_length = task.vector_length();
  if (task.levels() == 0 || !(task.clip_range() > 0) || task.max_weight() <= 0) {
    return absl::InvalidArgumentError("secure aggregation: the task's quantization (levels, clip range, weight) is unset");
  }
  // The sum of the sampled sites' words must not wrap: L * n < 2^32.
  if (uint64_t{task.levels()} * config.sampled_ids.size() > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation: ", task.levels(), " levels for ",
                                                   config.sampled_ids.size(), " sites would wrap the sum"));
  }
  auto site = privacy::SecAggSite::Create(config, *id);
  if (!site.ok()) return site.status();
  return std::unique_ptr<SecureSiteSession>(new SecureSiteSession(round, *id, *std::move(site), task.clip_range(),
                                                                  task.levels(), task.max_weight()));
}

absl::StatusOr<v1::SecAggMessage> SecureSiteSession::Advertise() {
  auto keys = site_->AdvertiseKeys();
  if (!keys.ok()) return keys.status();
  v1::SecAggMessage msg = Message(round_, v1::SecAggTask::ADVERTISE);
  msg.set_c_public_key(keys->c_public_key);
  msg.set_s_public_key(keys->s_public_key);
  return msg;
}

absl::StatusOr<v1::SecAggMessage> SecureSiteSession::ShareKeys(const v1::SecAggTask& task) {
  privacy::NeighbourKeysMsg keys{static_cast<uint64_t>(round_), id_, {}};
  for (const auto& peer : task.neighbours()) {
    auto pid = comm::SecAggSiteId(peer.site_id());
    if (!pid.ok()) return pid.status();
    keys.neighbours.push_back({*pid, peer.c_public_key(), peer.s_public_key()});
  }
  auto shared = site_->ShareKeys(keys);
  if (!shared.ok()) return shared.status();
  v1::SecAggMessage msg = Message(round_, v1::SecAggTask::SHARE_KEYS);
  for (const auto& share : shared->shares) {
    auto* out = msg.add_shares();
    out->set_sender(share.sender);
    out->set_receiver(share.receiver);
    out->set_ciphertext(share.ciphertext);
  }
  return msg;
}

absl::StatusOr<std::vector<uint32_t>> SecureSiteSession::MaskInput(const v1::SecAggTask& task,
                                                                   const tensor::NamedTensors& model,
                                                                   const tensor::NamedTensors& delta, int64_t examples,
                                                                   uint64_t seed) {
  privacy::RelayedSharesMsg relayed{static_cast<uint64_t>(round_), id_, {}};
  for (const auto& share : task.shares()) {
    auto sender = comm::SecAggSiteId(share.sender()), receiver = comm::SecAggSiteId(share.receiver());
    if (!sender.ok() || !receiver.ok()) return sender.ok() ? receiver.status() : sender.status();
    relayed.shares.push_back({*sender, *receiver, share.ciphertext()});
  }
  // r = n / W in (0, 1]: W is the largest count the sampled sites declared, this site's among them.
  const double r = std::min(1.0, static_cast<double>(std::max<int64_t>(examples, 1)) / static_cast<double>(max_weight_));
  auto words = privacy::QuantizeUpdate(model, delta, r, {clip_range_, levels_}, seed);
  if (!words.ok()) return words.status();
  auto masked = site_->MaskInput(relayed, *words);
  if (!masked.ok()) return masked.status();
  return std::move(masked->masked);
}

absl::StatusOr<v1::SecAggMessage> SecureSiteSession::Unmask(const v1::SecAggTask& task) {
  privacy::UnmaskRequest request{static_cast<uint64_t>(round_), id_, {}, {}};
  for (int64_t s : task.survivors()) {
    auto id = comm::SecAggSiteId(s);
    if (!id.ok()) return id.status();
    request.survivors.push_back(*id);
  }
  for (int64_t s : task.dropouts()) {
    auto id = comm::SecAggSiteId(s);
    if (!id.ok()) return id.status();
    request.dropouts.push_back(*id);
  }
  auto response = site_->Unmask(request);
  if (!response.ok()) return response.status();
  v1::SecAggMessage msg = Message(round_, v1::SecAggTask::UNMASK);
  for (const auto& share : response->shares) {
    auto* out = msg.add_revealed();
    out->set_owner(share.owner);
    out->set_kind(static_cast<uint32_t>(share.kind));
    out->set_share(share.share);
  }
  return msg;
}

}  // namespace allround::runtime
