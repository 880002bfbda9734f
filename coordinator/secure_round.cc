#include "coordinator/secure_round.h"

#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "privacy/secagg_server.h"

namespace allround::coordinator {

struct SecureRound::Impl {
  enum Stage { kAdvertise = 0, kShareKeys = 1, kMaskedInput = 2, kUnmask = 3, kDone = 4 };

  SecureRoundConfig config;
  std::unique_ptr<privacy::SecAggServer> server;
  Stage stage = kAdvertise;
  Time deadline, input_deadline;
  std::set<uint32_t> expected, received;  // in the current stage
  std::map<uint32_t, privacy::NeighbourKeysMsg> keys;
  std::map<uint32_t, privacy::RelayedSharesMsg> relayed;
  std::map<uint32_t, privacy::UnmaskRequest> requests;
  absl::StatusOr<privacy::AggregateResult> result = absl::UnavailableError("the round is not over");

  absl::Status Take(Stage want, uint32_t site, const char* what) {
    if (stage != want) {
      return absl::FailedPreconditionError(
          absl::StrCat("secure aggregation: ", what, " from site ", site, " refused: the round is past that stage"));
    }
    if (!expected.count(site)) {
      return absl::FailedPreconditionError(
          absl::StrCat("secure aggregation: ", what, " from site ", site, " refused: not asked of it"));
    }
    if (received.count(site)) {
      return absl::AlreadyExistsError(absl::StrCat("secure aggregation: ", what, " from site ", site, " twice"));
    }
    return absl::OkStatus();
  }

  template <typename Msg>
  void Next(Stage next, const std::vector<Msg>& out, std::map<uint32_t, Msg>& into, Time stage_deadline) {
    into.clear();
    expected.clear();
    for (const Msg& m : out) {
      into[m.recipient] = m;
      expected.insert(m.recipient);
    }
    received.clear();
    stage = next;
    deadline = stage_deadline;
  }

  void End(absl::StatusOr<privacy::AggregateResult> r) {
    result = std::move(r);
    stage = kDone;
    expected.clear();
  }
};

SecureRound::SecureRound(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SecureRound::~SecureRound() = default;

absl::StatusOr<std::unique_ptr<SecureRound>> SecureRound::Start(const SecureRoundConfig& config, Time now,
                                                                Time input_deadline) {
  auto server = privacy::SecAggServer::Create(config.secagg);
  if (!server.ok()) return server.status();
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->server = *std::move(server);
  impl->deadline = now + config.stage_timeout;
  impl->input_deadline = input_deadline;
  impl->expected.insert(config.secagg.sampled_ids.begin(), config.secagg.sampled_ids.end());
  return std::unique_ptr<SecureRound>(new SecureRound(std::move(impl)));
}

const SecureRoundConfig& SecureRound::config() const { return impl_->config; }
int SecureRound::stage() const { return impl_->stage; }

SecureStep SecureRound::StepFor(uint32_t site) const {
  const Impl& m = *impl_;
  SecureStep step;
  if (m.stage == Impl::kDone) {
    step.kind = SecureStep::Kind::kDone;
    step.reason = "the secure round is over";
    return step;
  }
  if (!m.expected.count(site)) {
    // Left out at an earlier stage (its message did not arrive in time, or too few of its share
    // holders remain), or not asked to unmask: nothing more for it this round.
    step.kind = m.stage == Impl::kUnmask ? SecureStep::Kind::kWait : SecureStep::Kind::kDone;
    step.reason = m.stage == Impl::kUnmask ? "waiting for the unmasking" : "left out of this secure round";
    return step;
  }
  if (m.received.count(site)) {
    step.reason = "answered; waiting for the other sites";
    return step;
  }
  switch (m.stage) {
    case Impl::kAdvertise: step.kind = SecureStep::Kind::kAdvertise; break;
    case Impl::kShareKeys:
      step.kind = SecureStep::Kind::kShareKeys;
      step.keys = m.keys.at(site);
      break;
    case Impl::kMaskedInput:
      step.kind = SecureStep::Kind::kMaskInput;
      step.relayed = m.relayed.at(site);
      break;
    case Impl::kUnmask:
      step.kind = SecureStep::Kind::kUnmask;
      step.unmask = m.requests.at(site);
      break;
    default: break;
  }
  return step;
}

absl::Status SecureRound::Advertise(const privacy::AdvertiseKeysMsg& msg) {
  if (auto s = impl_->Take(Impl::kAdvertise, msg.site_id, "keys"); !s.ok()) return s;
  if (auto s = impl_->server->AddAdvertisement(msg); !s.ok()) return s;
  impl_->received.insert(msg.site_id);
  return absl::OkStatus();
}

absl::Status SecureRound::ShareKeys(const privacy::ShareKeysMsg& msg) {
  if (auto s = impl_->Take(Impl::kShareKeys, msg.site_id, "shares"); !s.ok()) return s;
  if (auto s = impl_->server->AddShareKeys(msg); !s.ok()) return s;
  impl_->received.insert(msg.site_id);
  return absl::OkStatus();
}

absl::Status SecureRound::MaskedInput(const privacy::MaskedInputMsg& msg) {
  if (auto s = impl_->Take(Impl::kMaskedInput, msg.site_id, "masked input"); !s.ok()) return s;
  if (auto s = impl_->server->AddMaskedInput(msg); !s.ok()) return s;
  impl_->received.insert(msg.site_id);
  return absl::OkStatus();
}

absl::Status SecureRound::Unmask(const privacy::UnmaskResponse& msg) {
  if (auto s = impl_->Take(Impl::kUnmask, msg.site_id, "unmasking shares"); !s.ok()) return s;
  if (auto s = impl_->server->AddUnmaskResponse(msg); !s.ok()) return s;
  impl_->received.insert(msg.site_id);
  return absl::OkStatus();
}

bool SecureRound::Advance(Time now) {
  Impl& m = *impl_;
  for (;;) {
    if (m.stage == Impl::kDone) return true;
    const bool complete = m.received.size() >= m.expected.size();
    if (!complete && now < m.deadline) return false;
    switch (m.stage) {
      case Impl::kAdvertise: {
        auto out = m.server->CloseAdvertise();
        if (!out.ok()) {
          m.End(out.status());
          break;
        }
        m.Next(Impl::kShareKeys, *out, m.keys, now + m.config.stage_timeout);
        break;
      }
      case Impl::kShareKeys: {
        auto out = m.server->CloseShareKeys();
        if (!out.ok()) {
          m.End(out.status());
          break;
        }
        m.Next(Impl::kMaskedInput, *out, m.relayed, std::max(m.input_deadline, now));
        break;
      }
      case Impl::kMaskedInput: {
        auto out = m.server->CloseMaskedInput();
        if (!out.ok()) {
          m.End(out.status());
          break;
        }
        m.Next(Impl::kUnmask, *out, m.requests, now + m.config.stage_timeout);
        break;
      }
      case Impl::kUnmask: m.End(m.server->Finish(m.config.unmask_threads)); break;
      default: return true;
    }
  }
}

absl::StatusOr<privacy::AggregateResult> SecureRound::Result() const { return impl_->result; }

}  // namespace allround::coordinator
