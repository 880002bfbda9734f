#include "coordinator/round_manager.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/random.h"

namespace allround::coordinator {

RoundManager::RoundManager(RoundManagerOptions options, NamedTensors initial_model,
                           std::unique_ptr<aggregation::Strategy> strategy)
    : options_(options), strategy_(std::move(strategy)), model_(std::move(initial_model)) {}

absl::StatusOr<int64_t> RoundManager::Join(const std::string& name, int64_t examples, Time now) {
  if (name.empty()) return absl::InvalidArgumentError("join: empty site name");
  if (examples <= 0) return absl::InvalidArgumentError(absl::StrCat("join: site '", name, "' has no examples"));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = site_by_name_.find(name);
  const int64_t id = it != site_by_name_.end() ? it->second : static_cast<int64_t>(sites_.size()) + 1;
  site_by_name_[name] = id;
  sites_[id] = Site{name, examples, now};
  return id;
}

absl::Status RoundManager::Heartbeat(int64_t site, Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sites_.find(site);
  if (it == sites_.end()) return Refuse("unknown_site", absl::NotFoundError(absl::StrCat("unknown site ", site)));
  it->second.last_seen = now;
  return absl::OkStatus();
}

bool RoundManager::Alive(const Site& s, Time now) const { return now - s.last_seen <= options_.site_timeout; }

void RoundManager::MaybeStartRound(Time now) {
  if (current_ || rounds_done_ >= options_.rounds) return;
  std::vector<int64_t> alive;
  for (const auto& [id, s] : sites_) {
    if (Alive(s, now)) alive.push_back(id);
  }
  if (static_cast<int64_t>(alive.size()) < std::max(options_.min_available, options_.min_sites)) return;
  const int64_t want = std::min<int64_t>(
      static_cast<int64_t>(alive.size()),
      std::max<int64_t>(options_.min_sites, static_cast<int64_t>(std::ceil(options_.fraction * alive.size()))));
  // Seeded by (job seed, round index): the same sites are sampled on a rerun.
  Rng rng(DeriveSeed(options_.seed, "site-sampling", static_cast<uint64_t>(next_round_index_)));
  rng.Shuffle(alive);
  alive.resize(want);
  std::sort(alive.begin(), alive.end());
  current_ = Round{next_round_index_++, alive, now + options_.round_timeout, {}};
}

void RoundManager::MaybeCloseRound(Time now) {
  if (!current_) return;
  const bool all_in = current_->updates.size() == current_->participants.size();
  const bool expired = now >= current_->deadline;
  if (!all_in && !expired) return;
  RoundRecord record;
  record.round = current_->index;
  record.participants = current_->participants;
  record.closed_by_deadline = !all_in;
  if (static_cast<int64_t>(current_->updates.size()) < options_.min_sites) {
    history_.push_back(record);  // abandoned: too few updates by the deadline
    current_.reset();
    return;
  }
  std::vector<aggregation::SiteUpdate> updates;
  for (auto& [id, u] : current_->updates) {
    record.contributors.push_back(id);
    record.examples += u.examples;
    updates.push_back(std::move(u));
  }
  auto next = strategy_->Aggregate(model_, updates);
  if (next.ok()) {
    model_ = *std::move(next);
    ++version_;
    ++rounds_done_;
  }
  history_.push_back(record);
  current_.reset();
}

void RoundManager::Tick(Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  MaybeCloseRound(now);
  MaybeStartRound(now);
}

absl::StatusOr<Task> RoundManager::GetTask(int64_t site, Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sites_.find(site);
  if (it == sites_.end()) return Refuse("unknown_site", absl::NotFoundError(absl::StrCat("unknown site ", site)));
  it->second.last_seen = now;
  MaybeCloseRound(now);
  MaybeStartRound(now);
  if (rounds_done_ >= options_.rounds) return Task{Task::Kind::kStop, 0, 0, "all rounds done"};
  if (!current_) return Task{Task::Kind::kWait, 0, 0, "waiting for enough sites"};
  const auto& p = current_->participants;
  if (!std::binary_search(p.begin(), p.end(), site)) return Task{Task::Kind::kWait, 0, 0, "not sampled this round"};
  if (current_->updates.count(site)) return Task{Task::Kind::kWait, 0, 0, "update received; waiting for the round"};
  return Task{Task::Kind::kTrain, current_->index, version_, ""};
}

absl::StatusOr<NamedTensors> RoundManager::Model(int64_t version) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (version != version_) {
    return absl::NotFoundError(absl::StrCat("model version ", version, " is not the current one (", version_, ")"));
  }
  return model_;
}

absl::Status RoundManager::SubmitUpdate(int64_t site, int64_t round, int64_t examples, NamedTensors weights, Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!sites_.count(site)) return Refuse("unknown_site", absl::NotFoundError(absl::StrCat("unknown site ", site)));
  sites_[site].last_seen = now;
  MaybeCloseRound(now);
  if (!current_ || current_->index != round) {
    const bool late = !current_ || current_->index > round;
    return Refuse(late ? "late" : "wrong_round",
                  absl::FailedPreconditionError(absl::StrCat("update for round ", round, " refused: ",
                                                             current_ ? absl::StrCat("round ", current_->index, " is open")
                                                                      : "no round is open",
                                                             late ? " (the round closed before it arrived)" : "")));
  }
  const auto& p = current_->participants;
  if (!std::binary_search(p.begin(), p.end(), site)) {
    return Refuse("not_participant", absl::PermissionDeniedError(
                                         absl::StrCat("site ", site, " was not sampled for round ", round)));
  }
  if (current_->updates.count(site)) {
    return Refuse("duplicate", absl::AlreadyExistsError(
                                   absl::StrCat("site ", site, " already submitted an update for round ", round)));
  }
  if (examples <= 0) {
    return Refuse("bad_tensor", absl::InvalidArgumentError(absl::StrCat("update from site ", site, " claims ",
                                                                        examples, " examples")));
  }
  if (weights.size() != model_.size()) {
    return Refuse("bad_tensor", absl::InvalidArgumentError(absl::StrCat("update has ", weights.size(),
                                                                        " tensors, the model ", model_.size())));
  }
  for (size_t k = 0; k < model_.size(); ++k) {
    const auto& [name, g] = model_[k];
    const auto& [uname, t] = weights[k];
    if (uname != name || t.sizes() != g.sizes() || t.scalar_type() != g.scalar_type()) {
      return Refuse("bad_tensor", absl::InvalidArgumentError(absl::StrCat(
                                      "tensor ", uname, " ", c10::str(t.sizes()), " ", c10::toString(t.scalar_type()),
                                      " does not match the model's ", name, " ", c10::str(g.sizes()), " ",
                                      c10::toString(g.scalar_type()))));
    }
    if (at::isFloatingType(t.scalar_type()) && !at::isfinite(t).all().item<bool>()) {
      return Refuse("non_finite", absl::InvalidArgumentError(absl::StrCat("tensor ", name, " holds NaN or Inf")));
    }
  }
  current_->updates[site] = aggregation::SiteUpdate{site, examples, std::move(weights)};
  MaybeCloseRound(now);
  MaybeStartRound(now);
  return absl::OkStatus();
}

absl::Status RoundManager::Refuse(const std::string& reason, absl::Status status) {
  ++refusals_[reason];
  return status;
}

int64_t RoundManager::model_version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_;
}
int64_t RoundManager::rounds_done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rounds_done_;
}
bool RoundManager::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rounds_done_ >= options_.rounds;
}
std::vector<RoundRecord> RoundManager::history() const {
  std::lock_guard<std::mutex> lock(mu_);
  return history_;
}
std::map<std::string, int64_t> RoundManager::refusals() const {
  std::lock_guard<std::mutex> lock(mu_);
  return refusals_;
}

}  // namespace allround::coordinator
