#include "coordinator/round_manager.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/echo.h"
#include "common/job.h"
#include "common/timeline.h"
#include "common/random.h"

namespace allround::coordinator {
namespace {

// The round's sum of the sites' figures (example counts, evaluation sums); a site's "epsilon" (its
// example-level DP spend) is not a sum: the round keeps the largest.
void AddSiteMetric(std::map<std::string, double>& into, const std::string& key, double value) {
  if (key == "epsilon") {
    auto [it, fresh] = into.emplace(key, value);
    if (!fresh) it->second = std::max(it->second, value);
    return;
  }
  into[key] += value;
}

// A site-level DP round's figures into its record (both the plain and the secure close).
void RecordSiteDp(RoundRecord& record, const privacy::SiteDpOutcome& outcome, const privacy::SiteDp& dp,
                  double expected_sites) {
  record.epsilon = dp.Spent().epsilon;
  record.clip_norm = outcome.clip;
  record.next_clip_norm = outcome.next_clip;
  record.within_fraction = outcome.within_fraction;
  record.expected_sites = expected_sites;
  record.clipped_here = outcome.clipped_here;
}

// ||weights - global|| over the floating-point tensors (matched by position: a validated update has
// the model's layout), in double.
double UpdateNorm(const NamedTensors& global, const NamedTensors& weights) {
  double sum = 0;
  for (size_t i = 0; i < global.size() && i < weights.size(); ++i) {
    const at::Tensor& g = global[i].second;
    if (!at::isFloatingType(g.scalar_type())) continue;
    sum += (weights[i].second - g).pow(2).sum(at::kDouble).item<double>();
  }
  return std::sqrt(sum);
}

}  // namespace

RoundManager::RoundManager(RoundManagerOptions options, NamedTensors initial_model,
                           std::unique_ptr<aggregation::Strategy> strategy)
    : options_(options), strategy_(std::move(strategy)), pipeline_(options_.pipeline), model_(std::move(initial_model)) {
  if (options_.site_dp.on) {
    site_dp_ = std::make_unique<privacy::SiteDp>(options_.site_dp);
    budget_spent_ = !site_dp_->BudgetAllowsAnotherRound();
  }
}

absl::StatusOr<int64_t> RoundManager::Join(const std::string& name, int64_t examples, Time now,
                                           const std::vector<TensorLayout>& model) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t echo = options_.limits.max_echo_chars;
  if (!IsPlainName(name)) {
    // Names go into logs, dumped updates' file names and the tokens file's 'name token' lines.
    return Refuse("bad_name", absl::InvalidArgumentError(absl::StrCat("join: site name '", Echo(name, echo),
                                                                      "' is not ", kPlainNameRule)));
  }
  if (examples <= 0 || examples > options_.limits.max_site_examples) {
    // FedAvg weighs updates by these counts: one site claiming 2^63-1 would silence the others.
    return Refuse("bad_examples", absl::InvalidArgumentError(absl::StrCat(
                                      "join: site '", name, "' declares ", examples, " examples (from 1 to ",
                                      options_.limits.max_site_examples, ", job key federated.max_site_examples)")));
  }
  if (!model.empty()) {
    const auto refuse = [&](const std::string& what) {
      return Refuse("bad_model", absl::FailedPreconditionError(absl::StrCat(
                                     "join: site '", name, "' trains another model than the job's: ", what,
                                     " (the site's mode and model keys must be the coordinator's)")));
    };
    if (model.size() != model_.size()) {
      return refuse(absl::StrCat(model.size(), " tensors at the site, ", model_.size(), " in the job's model"));
    }
    for (size_t k = 0; k < model.size(); ++k) {
      const auto& [want_name, want] = model_[k];
      const TensorLayout& got = model[k];
      if (got.name != want_name || got.dtype != want.scalar_type() || at::IntArrayRef(got.shape) != want.sizes()) {
        return refuse(absl::StrCat("tensor ", k, " is ", Echo(got.name, echo), " ", c10::toString(got.dtype), " ",
                                   got.shape.size() <= 8 ? c10::str(at::IntArrayRef(got.shape))
                                                         : absl::StrCat("of ", got.shape.size(), " dimensions"),
                                   " at the site, ", want_name, " ",
                                   c10::toString(want.scalar_type()), " ", c10::str(want.sizes()), " in the job's model"));
      }
    }
  }
  auto it = site_by_name_.find(name);
  const int64_t id = it != site_by_name_.end() ? it->second : next_site_id_++;
  site_by_name_[name] = id;
  sites_[id] = Site{name, examples, now};
  Changed();
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
  if (current_ || rounds_done_ >= options_.rounds || budget_spent_ || now < no_round_before_) return;
  std::vector<int64_t> alive;  // in name order (site_by_name_'s): ids follow the join order
  for (const auto& [name, id] : site_by_name_) {
    if (Alive(sites_.at(id), now)) alive.push_back(id);
  }
  if (static_cast<int64_t>(alive.size()) < std::max(options_.min_available, options_.min_sites)) return;
  if (options_.poisson) {
    // Each alive site with probability q, independently: the sample's size varies, none included.
    // Under site-level DP the coins come from the DP secret (who was sampled is part of what the
    // guarantee hides), else from the job seed and the round index.
    const uint64_t source = site_dp_ ? site_dp_->secret() : options_.seed;
    Rng rng(DeriveSeed(source, "site-sampling-poisson", static_cast<uint64_t>(next_round_index_)));
    std::vector<int64_t> sampled;
    for (int64_t id : alive) {
      if (rng.UniformDouble() < options_.fraction) sampled.push_back(id);
    }
    std::sort(sampled.begin(), sampled.end());
    const double expected = options_.fraction * static_cast<double>(alive.size());
    Round round{next_round_index_++, sampled, now + options_.round_timeout, {}, {}, nullptr, expected};
    round.attackers = AttackersAmong(round.participants);
    Changed();
    if (options_.secure.enabled && !StartSecure(round, now)) return;
    current_ = std::move(round);
    return;
  }
  const int64_t want = std::min<int64_t>(
      static_cast<int64_t>(alive.size()),
      std::max<int64_t>(options_.min_sites, static_cast<int64_t>(std::ceil(options_.fraction * alive.size()))));
  // Seeded by (job seed, round index) and drawn from the sites in name order: the same sites are
  // sampled on a rerun, whatever order they joined in.
  Rng rng(DeriveSeed(options_.seed, "site-sampling", static_cast<uint64_t>(next_round_index_)));
  rng.Shuffle(alive);
  alive.resize(want);
  std::sort(alive.begin(), alive.end());
  Round round{next_round_index_++, alive, now + options_.round_timeout, {}, {}, nullptr, 0.0};
  round.attackers = AttackersAmong(round.participants);
  Changed();
  if (options_.secure.enabled && !StartSecure(round, now)) return;
  current_ = std::move(round);
}

bool RoundManager::StartSecure(Round& round, Time now) {
  SecureRoundConfig c;
  c.secagg.round = static_cast<uint64_t>(round.index);
  for (int64_t id : round.participants) {
    c.secagg.sampled_ids.push_back(static_cast<uint32_t>(id));
    c.max_weight = std::max(c.max_weight, sites_.at(id).examples);
  }
  const int64_t n = static_cast<int64_t>(round.participants.size());
  const privacy::GraphShape shape = privacy::SecAggShapeFor(options_.secure, n);
  c.secagg.degree = shape.degree;
  c.secagg.threshold = shape.threshold;
  c.secagg.graph_seed = DeriveSeed(options_.seed, "secagg-graph");
  c.secagg.vector_length = privacy::SecureVectorLength(model_);
  c.quantize = {options_.secure.clip_range, privacy::LevelsFor(n)};
  c.stage_timeout = std::chrono::milliseconds(static_cast<int64_t>(options_.secure.stage_timeout_s * 1000));
  c.unmask_threads = options_.compute_threads;
  auto started = SecureRound::Start(c, now, round.deadline);
  if (!started.ok()) {
    // Abandoned at once, and no new round for a stage's time: a config that cannot start (more
    // shares asked than sites sampled) must not spin through round indices.
    RoundRecord record;
    record.round = round.index;
    record.participants = round.participants;
    record.secure = true;
    record.abandoned = std::string(started.status().message());
    history_.push_back(record);
    abandoned_.push_back(std::move(record));
    no_round_before_ = now + c.stage_timeout;
    return false;
  }
  round.secure = std::shared_ptr<SecureRound>(*std::move(started));
  return true;
}

void RoundManager::MaybeCloseRound(Time now) {
  if (!current_) return;
  if (current_->secure) return MaybeCloseSecureRound(now);
  const bool all_in = current_->updates.size() == current_->participants.size();
  const bool expired = now >= current_->deadline;
  if (!all_in && !expired) return;
  RoundRecord record;
  record.round = current_->index;
  record.participants = current_->participants;
  record.closed_by_deadline = !all_in;
  Changed();
  // Under site-level DP a round closes with whatever arrived: its noise and fixed denominator make
  // a round of few (or no) updates as private as any, and skipping it would not be accounted.
  if (!site_dp_ && static_cast<int64_t>(current_->updates.size()) < options_.min_sites) {
    record.abandoned = absl::StrCat("only ", current_->updates.size(), " updates by the deadline (federated.min_sites is ",
                                    options_.min_sites, ")");
    history_.push_back(record);
    abandoned_.push_back(record);
    current_.reset();
    return;
  }
  std::vector<aggregation::SiteUpdate> updates;
  for (const auto& [name, id] : site_by_name_) {  // name order, whatever the join order
    auto found = current_->updates.find(id);
    if (found == current_->updates.end()) continue;
    aggregation::SiteUpdate& u = found->second;
    record.contributors.push_back(id);
    // Each count is at most its site's declared one (<= limits.max_site_examples): no overflow
    // unless ~10^7 sites declare the maximum; then the total saturates rather than wraps.
    if (__builtin_add_overflow(record.examples, u.examples, &record.examples)) {
      record.examples = std::numeric_limits<int64_t>::max();
    }
    for (const auto& [k, v] : current_->metrics[id]) {
      // Under site-level DP a site's clip bit is seen here only: the records carry its noised count.
      if (site_dp_ && k == "clip_within") continue;
      AddSiteMetric(record.site_metrics, k, v);  // bounded: finite
    }
    if (current_->attackers.count(id)) record.attackers.push_back(id);
    updates.push_back(std::move(u));
  }
  const auto start = std::chrono::steady_clock::now();
  timeline::Span span("aggregate", "federated");
  absl::Status prepared = PrepareUpdates(updates);
  // Each update's exact norm would tell its clip bit (and more): not under site-level DP.
  if (options_.update_norms && !site_dp_) {
    for (const auto& u : updates) record.update_norms.push_back(UpdateNorm(model_, u.weights));
  }
  auto next = !prepared.ok() ? absl::StatusOr<NamedTensors>(prepared)
              : site_dp_     ? AggregateSiteDp(record, updates)
                             : strategy_->Aggregate(model_, updates);
  record.aggregate_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!next.ok()) record.abandoned = std::string(next.status().message());
  Commit(std::move(record), std::move(next));
}

std::set<int64_t> RoundManager::AttackersAmong(const std::vector<int64_t>& sampled) const {
  if (!options_.attack.on()) return {};
  std::vector<std::string> joined;
  for (const auto& [name, id] : site_by_name_) joined.push_back(name);
  const std::set<std::string> chosen = aggregation::ChooseAttackers(options_.attack, joined);
  std::set<int64_t> out;
  for (int64_t id : sampled) {
    if (chosen.count(sites_.at(id).name)) out.insert(id);
  }
  return out;
}

absl::Status RoundManager::PrepareUpdates(std::vector<aggregation::SiteUpdate>& updates) const {
  std::vector<bool> attacker;
  std::vector<std::string> names;
  for (const auto& u : updates) {
    attacker.push_back(current_->attackers.count(u.site_id) != 0);
    names.push_back(sites_.at(u.site_id).name);
  }
  if (auto s = aggregation::ApplyAttack(options_.attack, model_, current_->index, attacker, names, updates); !s.ok()) {
    return s;
  }
  if (pipeline_.empty()) return absl::OkStatus();
  for (auto& u : updates) {
    const privacy::StepContext context{options_.seed, current_->index, sites_.at(u.site_id).name};
    auto piped = pipeline_.ApplyToWeights(context, model_, u.weights, static_cast<double>(u.examples));
    // Every update was checked finite with the model's layout: a step that fails on one is a bug
    // or a setting (a bound of 0) that fails on all; the round is abandoned saying which.
    if (!piped.ok()) {
      return absl::Status(piped.status().code(), absl::StrCat("site '", context.site, "': ", piped.status().message()));
    }
    u.weights = *std::move(piped);
  }
  return absl::OkStatus();
}

absl::StatusOr<NamedTensors> RoundManager::AggregateSiteDp(RoundRecord& record,
                                                         const std::vector<aggregation::SiteUpdate>& updates) {
  std::vector<privacy::SiteDpUpdate> dp_updates;
  for (const aggregation::SiteUpdate& u : updates) {
    const auto& m = current_->metrics[u.site_id];
    auto it = m.find("clip_within");
    dp_updates.push_back({&u.weights, it == m.end() ? 1.0 : it->second});
  }
  auto outcome = site_dp_->Aggregate(
      model_, dp_updates, {static_cast<uint64_t>(current_->index), current_->expected_sites});
  if (!outcome.ok()) return outcome.status();
  RecordSiteDp(record, *outcome, *site_dp_, current_->expected_sites);
  budget_spent_ = !site_dp_->BudgetAllowsAnotherRound();
  record.budget_spent = budget_spent_;
  // One update, the noised mean: every sum-only strategy gives from it what it gives from a
  // mean (as under secure aggregation).
  std::map<std::string, at::Tensor> mean(outcome->mean_delta.begin(), outcome->mean_delta.end());
  aggregation::SiteUpdate update;
  for (const auto& [name, t] : model_) {
    auto it = mean.find(name);
    update.weights.emplace_back(name, it == mean.end() ? t.clone() : t + it->second);
  }
  update.examples = std::max<int64_t>(1, record.examples);
  return strategy_->Aggregate(model_, {update});
}

std::optional<RoundManager::PrivacyStatus> RoundManager::site_privacy() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!site_dp_) return std::nullopt;
  return PrivacyStatus{site_dp_->Spent(), site_dp_->rounds(), site_dp_->clip(), budget_spent_};
}

void RoundManager::Commit(RoundRecord record, absl::StatusOr<NamedTensors> next) {
  history_.push_back(record);
  if (!record.abandoned.empty()) abandoned_.push_back(record);
  current_.reset();
  if (next.ok()) {
    model_ = *std::move(next);
    ++version_;
    ++rounds_done_;
    // The state as of this close, before the next round starts: what a checkpoint must hold.
    ClosedRound closed{version_, {}, record, StateLocked()};
    closed.model.assign(closed.state.begin(), closed.state.begin() + static_cast<int64_t>(model_.size()));
    closed_.push_back(std::move(closed));
  }
}

void RoundManager::MaybeCloseSecureRound(Time now) {
  SecureRound& secure = *current_->secure;
  const int stage = secure.stage();
  const bool over = secure.Advance(now);
  if (secure.stage() != stage) Changed();
  if (!over) return;
  RoundRecord record;
  record.round = current_->index;
  record.participants = current_->participants;
  record.secure = true;
  record.closed_by_deadline = now >= current_->deadline;
  const auto start = std::chrono::steady_clock::now();
  timeline::Span span("unmask and aggregate", "federated");
  auto result = secure.Result();
  absl::StatusOr<NamedTensors> next = absl::InternalError("the secure round ended without a result");
  if (!result.ok()) {
    next = result.status();
  } else if (!site_dp_ && static_cast<int64_t>(result->counted.size()) < options_.min_sites) {
    // (Under site-level DP the sum is unmasked and seen by now: it is released, and accounted,
    // with its fixed denominator, however few inputs it counts.)
    next = absl::AbortedError(absl::StrCat("only ", result->counted.size(), " masked inputs arrived (federated.min_sites is ",
                                           options_.min_sites, ")"));
  } else {
    const SecureRoundConfig& config = secure.config();
    auto decoded = privacy::DequantizeSum(model_, result->sum, static_cast<int64_t>(result->counted.size()),
                                          config.quantize);
    if (!decoded.ok()) {
      next = decoded.status();
    } else {
      // One update, the decoded weighted mean: every sum-only strategy gives from it what it
      // gives from the individual updates (each aggregates their example-weighted mean). Under
      // site-level DP each site weighed 1 and added its share of the noise: the decoded sum over
      // q N instead.
      NamedTensors mean_delta = decoded->mean_delta;
      absl::Status dp_status;
      if (site_dp_ && std::abs(decoded->weight_sum - static_cast<double>(result->counted.size())) > 1e-6) {
        // Every site weighs 1 under site-level DP: a sum of other weights is not the mechanism
        // the accountant counts (a site of an older version, or one that ignores the job). The
        // sum was seen: it is accounted all the same, and the round produces no model.
        site_dp_->AccountUnreleased();
        record.epsilon = site_dp_->Spent().epsilon;
        budget_spent_ = !site_dp_->BudgetAllowsAnotherRound();
        record.budget_spent = budget_spent_;
        dp_status = absl::FailedPreconditionError(absl::StrCat(
            "site-level DP: the sites' weights sum to ", decoded->weight_sum, " over ", result->counted.size(),
            " inputs (each must weigh 1): a site does not run the job's privacy.mode site"));
      } else if (site_dp_) {
        NamedTensors sum;
        for (const auto& [name, t] : decoded->mean_delta) sum.emplace_back(name, t.to(at::kDouble) * decoded->weight_sum);
        auto outcome = site_dp_->FromNoisedSum(model_, sum, {static_cast<uint64_t>(current_->index),
                                                             current_->expected_sites});
        if (!outcome.ok()) {
          dp_status = outcome.status();
        } else {
          mean_delta = std::move(outcome->mean_delta);
          RecordSiteDp(record, *outcome, *site_dp_, current_->expected_sites);
          budget_spent_ = !site_dp_->BudgetAllowsAnotherRound();
          record.budget_spent = budget_spent_;
        }
      }
      std::map<std::string, at::Tensor> mean(mean_delta.begin(), mean_delta.end());
      aggregation::SiteUpdate update;
      for (const auto& [name, t] : model_) {
        auto it = mean.find(name);
        update.weights.emplace_back(name, it == mean.end() ? t.clone() : t + it->second);
      }
      // Under site-level DP every site sent weight 1: the counts stay at the sites.
      update.examples = site_dp_ ? 1 : std::max<int64_t>(1, std::llround(decoded->weight_sum * static_cast<double>(config.max_weight)));
      record.examples = site_dp_ ? 0 : update.examples;
      for (uint32_t id : result->counted) {
        record.contributors.push_back(id);
        if (current_->attackers.count(id)) record.attackers.push_back(id);
        for (const auto& [k, v] : current_->metrics[id]) {
          if (site_dp_ && k == "clip_within") continue;  // never a site's own bit (sites do not send it here)
          AddSiteMetric(record.site_metrics, k, v);
        }
      }
      if (site_dp_) {
        // The coordinator draws the sample, so against it there is no amplification by sampling:
        // the Gaussian mechanism over the rounds the most frequent contributor took part in.
        std::map<int64_t, int64_t> times;
        for (const RoundRecord& r : history_) {
          if (r.secure && r.epsilon >= 0) {
            for (int64_t id : r.contributors) ++times[id];
          }
        }
        int64_t most = 0;
        for (int64_t id : record.contributors) most = std::max(most, ++times[id]);
        for (const auto& [id, n] : times) most = std::max(most, n);
        record.epsilon_knowing_sample = site_dp_->SpentKnowingTheSample(most).epsilon;
      }
      next = dp_status.ok() ? strategy_->Aggregate(model_, {update}) : absl::StatusOr<NamedTensors>(dp_status);
    }
  }
  record.aggregate_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!next.ok()) record.abandoned = std::string(next.status().message());
  Changed();
  Commit(std::move(record), std::move(next));
}

void RoundManager::Changed() {
  ++changes_;
  changed_cv_.notify_all();
}

void RoundManager::Tick(Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  MaybeCloseRound(now);
  MaybeStartRound(now);
}

bool RoundManager::FlipsLabels(int64_t site) const {
  return options_.attack.kind == aggregation::AttackKind::kLabelFlip && current_ && current_->attackers.count(site);
}

absl::StatusOr<Task> RoundManager::GetTask(int64_t site, Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sites_.find(site);
  if (it == sites_.end()) return Refuse("unknown_site", absl::NotFoundError(absl::StrCat("unknown site ", site)));
  it->second.last_seen = now;
  MaybeCloseRound(now);
  MaybeStartRound(now);
  if (rounds_done_ >= options_.rounds) return Task{Task::Kind::kStop, 0, 0, "all rounds done"};
  if (budget_spent_ && !current_) {
    return Task{Task::Kind::kStop, 0, 0, "the privacy budget is spent (privacy.target_epsilon)"};
  }
  if (!current_) return Task{Task::Kind::kWait, 0, 0, "waiting for enough sites"};
  const auto& p = current_->participants;
  if (!std::binary_search(p.begin(), p.end(), site)) return Task{Task::Kind::kWait, 0, 0, "not sampled this round"};
  if (current_->secure) {
    auto secure = std::make_shared<Task::Secure>(
        Task::Secure{current_->secure->StepFor(static_cast<uint32_t>(site)), current_->secure->config()});
    switch (secure->step.kind) {
      case SecureStep::Kind::kAdvertise:
      case SecureStep::Kind::kShareKeys:
      case SecureStep::Kind::kUnmask: return Task{Task::Kind::kSecure, current_->index, version_, "", secure};
      case SecureStep::Kind::kMaskInput: {
        Task task{Task::Kind::kTrain, current_->index, version_, "", secure};
        task.flip_labels = FlipsLabels(site);
        if (site_dp_) {  // the site clips, adds its share of the noise, masks
          task.clip_norm = site_dp_->clip();
          task.noise_multiplier = site_dp_->spec().noise_multiplier;
        }
        return task;
      }
      default: return Task{Task::Kind::kWait, 0, 0, secure->step.reason};
    }
  }
  if (current_->updates.count(site)) return Task{Task::Kind::kWait, 0, 0, "update received; waiting for the round"};
  Task task{Task::Kind::kTrain, current_->index, version_, ""};
  task.flip_labels = FlipsLabels(site);
  if (site_dp_) {
    task.clip_norm = site_dp_->clip();
    task.noise_multiplier = site_dp_->spec().noise_multiplier;
  }
  return task;
}

absl::StatusOr<NamedTensors> RoundManager::Model(int64_t version) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (version != version_) {
    return absl::NotFoundError(absl::StrCat("model version ", version, " is not the current one (", version_, ")"));
  }
  return model_;
}

absl::Status RoundManager::SubmitUpdate(int64_t site, int64_t round, int64_t examples, NamedTensors weights, Time now,
                                        const std::map<std::string, double>& metrics) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto s = CheckRoundCall(site, round, now, "update"); !s.ok()) return s;
  if (current_->secure) {
    return Refuse("bad_secagg", absl::FailedPreconditionError(
                                    "this job aggregates securely (privacy.secure_aggregation): a site sends its "
                                    "masked input, never its update"), site);
  }
  if (current_->updates.count(site)) {
    return Refuse("duplicate", absl::AlreadyExistsError(
                                   absl::StrCat("site ", site, " already submitted an update for round ", round)), site);
  }
  if (examples <= 0 || examples > sites_[site].examples) {
    return Refuse("bad_examples", absl::InvalidArgumentError(absl::StrCat(
                                      "update from site ", site, " claims ", examples,
                                      " examples; it declared ", sites_[site].examples, " at Join")), site);
  }
  if (std::string bad = tensor::LayoutMismatch(weights, model_); !bad.empty()) {
    return Refuse("bad_tensor", absl::InvalidArgumentError(bad), site);
  }
  for (const auto& [name, t] : weights) {
    if (!tensor::AllFinite(t)) {
      return Refuse("non_finite", absl::InvalidArgumentError(absl::StrCat("tensor ", name, " holds NaN or Inf")), site);
    }
  }
  if (auto s = CheckMetrics(metrics); !s.ok()) return Refuse("bad_metrics", s, site);
  current_->updates[site] = aggregation::SiteUpdate{site, examples, std::move(weights)};
  current_->metrics[site] = metrics;
  MaybeCloseRound(now);
  MaybeStartRound(now);
  return absl::OkStatus();
}

absl::Status RoundManager::CheckRoundCall(int64_t site, int64_t round, Time now, const char* what) {
  if (!sites_.count(site)) return Refuse("unknown_site", absl::NotFoundError(absl::StrCat("unknown site ", site)));
  sites_[site].last_seen = now;
  MaybeCloseRound(now);
  if (!current_ || current_->index != round) {
    const bool late = !current_ || current_->index > round;
    return Refuse(late ? "late" : "wrong_round",
                  absl::FailedPreconditionError(absl::StrCat(what, " for round ", round, " refused: ",
                                                             current_ ? absl::StrCat("round ", current_->index, " is open")
                                                                      : "no round is open",
                                                             late ? " (the round closed before it arrived)" : "")), site);
  }
  const auto& p = current_->participants;
  if (!std::binary_search(p.begin(), p.end(), site)) {
    return Refuse("not_participant", absl::PermissionDeniedError(
                                         absl::StrCat("site ", site, " was not sampled for round ", round)), site);
  }
  return absl::OkStatus();
}

absl::Status RoundManager::CheckSecureCall(int64_t site, int64_t round, uint32_t named, Time now) {
  if (auto s = CheckRoundCall(site, round, now, "secure aggregation message"); !s.ok()) return s;
  if (!current_->secure) {
    return Refuse("bad_secagg", absl::FailedPreconditionError(
                                    "this job does not aggregate securely (privacy.secure_aggregation is none)"), site);
  }
  if (named != static_cast<uint64_t>(site)) {
    return Refuse("bad_secagg", absl::PermissionDeniedError(absl::StrCat("site ", site, " sent a message naming site ",
                                                                         named, " as its sender")), site);
  }
  return absl::OkStatus();
}

absl::Status RoundManager::AfterSecureCall(absl::Status s, int64_t site, Time now) {
  if (!s.ok()) return Refuse("bad_secagg", s, site);
  MaybeCloseRound(now);
  MaybeStartRound(now);
  return absl::OkStatus();
}

absl::Status RoundManager::SecureAdvertise(int64_t site, const privacy::AdvertiseKeysMsg& msg, Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto s = CheckSecureCall(site, static_cast<int64_t>(msg.round), msg.site_id, now); !s.ok()) return s;
  return AfterSecureCall(current_->secure->Advertise(msg), site, now);
}

absl::Status RoundManager::SecureShareKeys(int64_t site, const privacy::ShareKeysMsg& msg, Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto s = CheckSecureCall(site, static_cast<int64_t>(msg.round), msg.site_id, now); !s.ok()) return s;
  return AfterSecureCall(current_->secure->ShareKeys(msg), site, now);
}

absl::Status RoundManager::SecureUnmask(int64_t site, const privacy::UnmaskResponse& msg, Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto s = CheckSecureCall(site, static_cast<int64_t>(msg.round), msg.site_id, now); !s.ok()) return s;
  return AfterSecureCall(current_->secure->Unmask(msg), site, now);
}

absl::Status RoundManager::SubmitMasked(int64_t site, int64_t round, std::vector<uint32_t> masked, Time now,
                                        const std::map<std::string, double>& metrics) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto s = CheckSecureCall(site, round, static_cast<uint32_t>(site), now); !s.ok()) return s;
  if (auto s = CheckMetrics(metrics); !s.ok()) return Refuse("bad_metrics", s, site);
  privacy::MaskedInputMsg msg{static_cast<uint64_t>(round), static_cast<uint32_t>(site), std::move(masked)};
  SecureRound* secure = current_->secure.get();
  if (auto s = secure->MaskedInput(msg); !s.ok()) return Refuse("bad_secagg", s, site);
  current_->metrics[site] = metrics;
  return AfterSecureCall(absl::OkStatus(), site, now);
}

absl::Status RoundManager::CheckMetrics(const std::map<std::string, double>& metrics) const {
  const size_t echo = options_.limits.max_echo_chars;
  if (metrics.size() > Limits::kMaxMetrics) {
    return absl::InvalidArgumentError(absl::StrCat("an update carries ", metrics.size(), " metrics (at most ",
                                                   Limits::kMaxMetrics, ")"));
  }
  for (const auto& [k, v] : metrics) {
    if (k.size() > Limits::kMaxMetricName || !IsPlainName(k)) {
      return absl::InvalidArgumentError(absl::StrCat("metric name '", Echo(k, echo), "' is not 1 to ",
                                                     Limits::kMaxMetricName, " letters, digits, '_', '-' and '.'"));
    }
    // Sums of such values over any number of sites stay finite: a checkpoint never holds an Inf
    // that its JSON would write as null.
    if (!std::isfinite(v) || v < 0 || v > Limits::kMaxMetricValue) {
      return absl::InvalidArgumentError(absl::StrCat("metric '", k, "' = ", v, " is not a finite sum in [0, ",
                                                     Limits::kMaxMetricValue, "]"));
    }
  }
  return absl::OkStatus();
}

std::vector<std::pair<std::string, at::Tensor>> RoundManager::ModelLayoutTensors() const {
  std::lock_guard<std::mutex> lock(mu_);
  return model_;
}

absl::Status RoundManager::Refuse(const std::string& reason, absl::Status status) {
  ++refusals_[reason];
  return status;
}

absl::Status RoundManager::Refuse(const std::string& reason, absl::Status status, int64_t site) {
  if (auto it = sites_.find(site); it != sites_.end()) ++it->second.refusals;
  return Refuse(reason, std::move(status));
}

std::vector<SiteStatus> RoundManager::Sites(Time now) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<int64_t, int64_t> contributed;
  for (const RoundRecord& r : history_) {
    if (!r.abandoned.empty()) continue;
    for (int64_t id : r.contributors) ++contributed[id];
  }
  std::vector<SiteStatus> out;
  for (const auto& [name, id] : site_by_name_) {
    const Site& s = sites_.at(id);
    out.push_back(SiteStatus{id, s.name, s.examples, Alive(s, now),
                             std::chrono::duration<double>(now - s.last_seen).count(), contributed[id], s.refusals});
  }
  return out;
}

void RoundManager::CountRefusal(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  ++refusals_[reason];
}

absl::StatusOr<std::string> RoundManager::SiteName(int64_t site) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sites_.find(site);
  if (it == sites_.end()) return absl::NotFoundError(absl::StrCat("unknown site ", site));
  return it->second.name;
}

uint64_t RoundManager::change_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return changes_;
}

void RoundManager::WaitForChange(uint64_t seen, std::chrono::steady_clock::time_point until) const {
  std::unique_lock<std::mutex> lock(mu_);
  changed_cv_.wait_until(lock, until, [&] { return changes_ != seen; });
}

std::vector<RoundRecord> RoundManager::TakeAbandonedRounds() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(abandoned_, {});
}

std::vector<ClosedRound> RoundManager::TakeClosedRounds() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ClosedRound> out(std::make_move_iterator(closed_.begin()), std::make_move_iterator(closed_.end()));
  closed_.clear();
  return out;
}

namespace {

constexpr char kCounters[] = "coordinator/counters";  // int64 [version, rounds done, next round index]
constexpr char kRegistry[] = "coordinator/registry";  // uint8: JSON of sites, history and refusals

at::Tensor JsonTensor(const nlohmann::json& j) {
  const std::string text = j.dump();
  at::Tensor t = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
  std::memcpy(t.data_ptr<uint8_t>(), text.data(), text.size());
  return t;
}

}  // namespace

NamedTensors RoundManager::State() const {
  std::lock_guard<std::mutex> lock(mu_);
  return StateLocked();
}

NamedTensors RoundManager::StateLocked() const {
  NamedTensors out;
  for (const auto& [name, t] : model_) out.emplace_back(name, t.clone());
  for (const auto& [name, t] : strategy_->State()) out.emplace_back(name, t.clone());
  // An open round is not saved: the restored manager opens it again under the same index.
  const int64_t next_index = current_ ? current_->index : next_round_index_;
  out.emplace_back(kCounters, at::tensor({version_, rounds_done_, next_index}, at::kLong));
  nlohmann::json sites = nlohmann::json::array(), history = nlohmann::json::array();
  for (const auto& [id, s] : sites_) sites.push_back({{"id", id}, {"name", s.name}, {"examples", s.examples}});
  for (const auto& r : history_) {
    history.push_back({{"round", r.round},
                       {"participants", r.participants},
                       {"contributors", r.contributors},
                       {"examples", r.examples},
                       {"closed_by_deadline", r.closed_by_deadline},
                       {"abandoned", r.abandoned},
                       {"secure", r.secure},
                       {"site_metrics", r.site_metrics},
                       {"epsilon", r.epsilon},
                       {"clip_norm", r.clip_norm},
                       {"next_clip_norm", r.next_clip_norm},
                       {"attackers", r.attackers}});
  }
  out.emplace_back(kRegistry, JsonTensor({{"sites", sites},
                                          {"history", history},
                                          {"refusals", refusals_},
                                          {"next_site_id", next_site_id_}}));
  if (site_dp_) {
    for (auto& [name, t] : site_dp_->State()) out.emplace_back(name, std::move(t));
  }
  for (auto& [name, t] : pipeline_.State()) out.emplace_back(name, std::move(t));
  return out;
}

absl::Status RoundManager::LoadState(const NamedTensors& state, Time now) {
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  std::lock_guard<std::mutex> lock(mu_);
  NamedTensors model;
  for (const auto& [name, g] : model_) {
    auto it = by_name.find(name);
    if (it == by_name.end()) return absl::NotFoundError(absl::StrCat("coordinator state has no tensor '", name, "'"));
    if (it->second.sizes() != g.sizes() || it->second.scalar_type() != g.scalar_type()) {
      return absl::InvalidArgumentError(absl::StrCat("coordinator state: tensor '", name, "' is ",
                                                     c10::str(it->second.sizes()), ", the model needs ",
                                                     c10::str(g.sizes())));
    }
    model.emplace_back(name, it->second.clone());
  }
  auto counters = by_name.find(kCounters);
  auto registry = by_name.find(kRegistry);
  if (counters == by_name.end() || counters->second.numel() != 3 || registry == by_name.end()) {
    return absl::DataLossError("coordinator state: missing or malformed coordinator/ tensors");
  }
  const at::Tensor bytes = registry->second.contiguous();
  const auto j = nlohmann::json::parse(
      std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), bytes.numel()), nullptr, false);
  if (j.is_discarded() || !j.contains("sites") || !j.contains("history") || !j.contains("refusals")) {
    return absl::DataLossError("coordinator state: the registry is not valid JSON");
  }
  NamedTensors strategy_state;
  for (const auto& [name, t] : state) {
    if (name.rfind("strategy/", 0) == 0) strategy_state.emplace_back(name, t.clone());
  }
  std::map<int64_t, Site> sites;
  std::map<std::string, int64_t> by_site_name;
  std::vector<RoundRecord> history;
  std::map<std::string, int64_t> refusals;
  int64_t next_site_id = 1;
  try {
    next_site_id = j.value("next_site_id", int64_t{1});  // absent before it was saved
    for (const auto& s : j["sites"]) {
      const int64_t id = s["id"];
      const std::string name = s["name"];
      // One entry per id and per name: sampling walks the names and expects each id once.
      if (sites.count(id) || by_site_name.count(name)) {
        return absl::DataLossError(absl::StrCat("coordinator state: site id ", id, " or name '", name, "' twice"));
      }
      sites[id] = Site{name, s["examples"], now};
      by_site_name[name] = id;
      next_site_id = std::max(next_site_id, id + 1);
    }
    for (const auto& h : j["history"]) {
      RoundRecord r;
      r.round = h["round"];
      r.participants = h["participants"].get<std::vector<int64_t>>();
      r.contributors = h["contributors"].get<std::vector<int64_t>>();
      r.examples = h["examples"];
      r.closed_by_deadline = h["closed_by_deadline"];
      r.abandoned = h.value("abandoned", std::string());  // absent in checkpoints before secure aggregation
      r.secure = h.value("secure", false);
      r.epsilon = h.value("epsilon", -1.0);  // absent before site-level DP
      r.clip_norm = h.value("clip_norm", 0.0);
      r.next_clip_norm = h.value("next_clip_norm", 0.0);
      r.attackers = h.value("attackers", std::vector<int64_t>{});
      // A number per key; a null (an Inf that checkpoints written before the metric bounds held,
      // which nlohmann writes as null) is dropped rather than making the whole run unresumable.
      for (const auto& [k, v] : h["site_metrics"].items()) {
        if (v.is_number()) r.site_metrics[k] = v.get<double>();
      }
      history.push_back(std::move(r));
    }
    refusals = j["refusals"].get<std::map<std::string, int64_t>>();
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat("coordinator state: malformed registry: ", e.what()));
  }
  std::unique_ptr<privacy::SiteDp> site_dp;
  if (site_dp_) {
    site_dp = std::make_unique<privacy::SiteDp>(*site_dp_);
    if (auto s = site_dp->LoadState(state); !s.ok()) return s;
  }
  if (auto s = strategy_->LoadState(strategy_state); !s.ok()) return s;
  if (auto s = pipeline_.LoadState(state); !s.ok()) return s;  // the coordinator steps' own ("pipeline/...")
  if (site_dp) {
    site_dp_ = std::move(site_dp);
    budget_spent_ = !site_dp_->BudgetAllowsAnotherRound();
  }
  model_ = std::move(model);
  const at::Tensor c = counters->second.to(at::kLong);
  version_ = c[0].item<int64_t>();
  rounds_done_ = c[1].item<int64_t>();
  next_round_index_ = c[2].item<int64_t>();
  sites_ = std::move(sites);
  site_by_name_ = std::move(by_site_name);
  // Sites that joined after this checkpoint still hold the ids they were given, which this state
  // does not know: new ids start past any the lost incarnation can have handed out, so no site
  // is ever given another's id (without tokens, it would then speak as that site).
  next_site_id_ = next_site_id + kSiteIdsPerIncarnation;
  history_ = std::move(history);
  refusals_ = std::move(refusals);
  current_.reset();
  closed_.clear();
  Changed();
  return absl::OkStatus();
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
  return rounds_done_ >= options_.rounds || budget_spent_;
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
