#ifndef ALLROUND_COORDINATOR_ROUND_MANAGER_H_
#define ALLROUND_COORDINATOR_ROUND_MANAGER_H_

// The federated coordinator's brain, in plain C++ (no gRPC): the site registry, per-round
// sampling, deadlines, straggler handling, update validation and aggregation in site-name order.
// The gRPC service is a thin adapter over it. Time is passed in by the caller, so tests drive it
// with a fake clock.
//
// A round: when at least `min_available` sites are alive, `max(min_sites, ceil(fraction * alive))`
// of them are sampled (seeded by the job seed and the round index) and given the round. Sampling
// and aggregation go by site name, not id: ids follow the order in which sites joined, which is
// timing, so a rerun with the same seed samples and sums the same sites in the same order. It closes
// when every participant has submitted, or at its deadline if at least `min_sites` have; a round
// that reaches its deadline with fewer is abandoned and a new one is sampled. Updates are checked
// (participant, round, first submission, before the deadline, shapes and dtypes, finite values)
// and every refusal carries a reason and is counted.
//
// Thread-safe: every method takes the one mutex.

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "algorithms/aggregation/byzantine.h"
#include "algorithms/aggregation/strategy.h"
#include "coordinator/limits.h"
#include "coordinator/secure_round.h"
#include "privacy/secure_aggregation.h"
#include "privacy/site_dp.h"
#include "privacy/update_pipeline.h"

namespace allround::coordinator {

using Time = std::chrono::steady_clock::time_point;
using aggregation::NamedTensors;

struct RoundManagerOptions {
  uint64_t seed = 1;
  int64_t rounds = 10;
  double fraction = 1.0;
  int64_t min_sites = 1;
  int64_t min_available = 1;
  std::chrono::milliseconds round_timeout{std::chrono::minutes(10)};
  std::chrono::milliseconds site_timeout{std::chrono::seconds(60)};  // no heartbeat for this long: not alive
  Limits limits;  // examples, metrics and echo bounds (the stream bounds are the service's)
  // Secure aggregation (privacy.secure_aggregation): each round runs SecAgg+ among its sampled
  // sites, and the strategy sees one update, the decoded weighted mean.
  privacy::SecureAggregationSpec secure;
  int compute_threads = 1;  // threads that unmask a secure round (allround-coordinator: the cores)
  bool update_norms = false;  // fill RoundRecord::update_norms (a pass over each update at the close)
  // federated.sampling: poisson: each alive site is sampled with probability `fraction`
  // independently (min_sites then bounds nothing at sampling, only at the close).
  bool poisson = false;
  // Site-level DP (privacy.mode site, privacy/site_dp.h): the round's updates are clipped, summed,
  // noised and divided by the expected number of sampled sites; the strategy sees that one mean.
  // Rounds close with whatever arrived (none included), and the run stops when one more round
  // would pass privacy.target_epsilon.
  privacy::SiteDpSpec site_dp;
  // pipeline.coordinator: the steps each update of a plain round passes before the strategy
  // (norm_bound), on its delta from the round's global model.
  privacy::UpdatePipeline pipeline;
  // Byzantine sites in simulation (attack.*, algorithms/aggregation/byzantine.h): the attackers'
  // updates are replaced before the pipeline; under label_flip they are told to flip labels.
  aggregation::AttackSpec attack;
};

struct Task {
  // kSecure: a stage of secure aggregation other than the masked input (secure->step says which);
  // under secure aggregation kTrain carries the shares the site masks its input with.
  enum class Kind { kTrain, kWait, kStop, kSecure };
  Kind kind = Kind::kWait;
  int64_t round = 0;          // kTrain, kSecure: the round
  int64_t model_version = 0;  // kTrain: the global model to fetch
  std::string reason;         // kWait / kStop: why
  struct Secure {
    SecureStep step;
    SecureRoundConfig config;
  };
  std::shared_ptr<const Secure> secure;  // set under secure aggregation
  double clip_norm = 0;  // kTrain under site-level DP: the bound the site clips its update to
  double noise_multiplier = 0;  // with clip_norm: the job's z (a site checks its own against it)
  bool flip_labels = false;  // kTrain, attack.kind label_flip: this site attacks (simulation)
};

struct RoundRecord {
  int64_t round = 0;
  std::vector<int64_t> participants;
  std::vector<int64_t> contributors;  // sites whose updates were aggregated, in aggregation (name) order
  int64_t examples = 0;
  bool closed_by_deadline = false;
  std::string abandoned;     // why the round produced no model ("" when it did)
  bool secure = false;       // aggregated by secure aggregation: contributors are the counted sites
  double aggregate_s = 0.0;  // the strategy's time (under secure aggregation, unmasking included)
  // Federated evaluation: the contributors' reported metrics summed over sites (each site reports
  // sums, e.g. eval_examples, eval_correct, eval_loss_sum, so sums are example-weighted).
  std::map<std::string, double> site_metrics;
  // The L2 norm of each contributor's update minus the round's global model (floating-point
  // tensors together), in contributor order; empty under secure aggregation, where no update is
  // seen. For the run's TensorBoard histogram; not checkpointed.
  std::vector<double> update_norms;
  // Site-level DP: the spend after this round (else -1), the round's clip and the next one, the
  // noised fraction of sites within the clip (adaptive clipping, else NaN), the mean's denominator
  // q N, and the updates the coordinator had to clip itself.
  double epsilon = -1;
  double clip_norm = 0;
  double next_clip_norm = 0;
  double within_fraction = std::nan("");
  double expected_sites = 0;
  int64_t clipped_here = 0;
  bool budget_spent = false;  // one more round would pass privacy.target_epsilon: this is the last
  // Under secure aggregation with site-level DP: the spend against whoever knows the sample (the
  // coordinator): no amplification, over the rounds the most frequent contributor took part in.
  double epsilon_knowing_sample = -1;
  // Simulated Byzantine sites (attack.*): the contributors that attacked, in contributor order.
  std::vector<int64_t> attackers;
};

// A round that produced a new global model, queued for the caller to evaluate and checkpoint
// (the manager itself keeps only the current model).
struct ClosedRound {
  int64_t version = 0;
  NamedTensors model;  // a snapshot
  RoundRecord record;
  NamedTensors state;  // State() as of the close (the model's tensors shared with `model`)
};

using tensor::TensorLayout;

// One joined site as an operator sees it (the status page's table).
struct SiteStatus {
  int64_t id = 0;
  std::string name;
  int64_t examples = 0;               // declared at Join
  bool alive = false;
  double seconds_since_seen = 0;      // since its last call
  int64_t rounds_contributed = 0;     // closed rounds whose aggregate counted it
  int64_t refusals = 0;               // of its own calls (an unknown caller's are not a site's)
};

class RoundManager {
 public:
  RoundManager(RoundManagerOptions options, NamedTensors initial_model,
               std::unique_ptr<aggregation::Strategy> strategy);

  // Registers a site, or re-registers it (a restarted site keeps its id). Returns the site id.
  // `examples` must be in [1, limits.max_site_examples]: updates claim at most this many.
  // `model`, when given, must be the global model's layout (names, dtypes and shapes in order):
  // a site that trains another model is refused (FailedPrecondition, counted as bad_model).
  absl::StatusOr<int64_t> Join(const std::string& name, int64_t examples, Time now,
                               const std::vector<TensorLayout>& model = {});
  absl::Status Heartbeat(int64_t site, Time now);

  // What the site should do now. Also advances the round state (starts and closes rounds).
  absl::StatusOr<Task> GetTask(int64_t site, Time now);

  // The global model of `version` (the current one; older ones are not kept).
  absl::StatusOr<NamedTensors> Model(int64_t version) const;

  // Accepts or refuses an update; a refusal's status says why and nothing reaches the aggregate.
  // `examples` is at most what the site declared at Join. `metrics` are the site's
  // federated-evaluation sums: at most Limits::kMaxMetrics, plain names, finite values in
  // [0, Limits::kMaxMetricValue].
  absl::Status SubmitUpdate(int64_t site, int64_t round, int64_t examples, NamedTensors weights, Time now,
                            const std::map<std::string, double>& metrics = {});

  // Secure aggregation's stage messages for `round` (the site id inside each must be `site`, whose
  // token the caller checked). A refusal's status says why and counts as "bad_secagg" (or
  // "late", "wrong_round", "not_participant"); the round goes on without the message.
  absl::Status SecureAdvertise(int64_t site, const privacy::AdvertiseKeysMsg& msg, Time now);
  absl::Status SecureShareKeys(int64_t site, const privacy::ShareKeysMsg& msg, Time now);
  absl::Status SecureUnmask(int64_t site, const privacy::UnmaskResponse& msg, Time now);
  // The masked input (privacy::SecureVectorLength(model) words) with the site's evaluation sums.
  absl::Status SubmitMasked(int64_t site, int64_t round, std::vector<uint32_t> masked, Time now,
                            const std::map<std::string, double>& metrics = {});
  bool secure() const { return options_.secure.enabled; }
  // Site-level DP's accountant and settings (null without it); its figures as of the last close.
  struct PrivacyStatus {
    privacy::PrivacySpent spent;
    int64_t rounds = 0;
    double clip = 0;
    bool budget_spent = false;
  };
  std::optional<PrivacyStatus> site_privacy() const;

  // Counts a refusal made outside the manager (by the transport: bad token, malformed stream).
  void CountRefusal(const std::string& reason);

  // The global model's tensors (names, dtypes, shapes), which every update must have.
  std::vector<std::pair<std::string, at::Tensor>> ModelLayoutTensors() const;

  // The name a site joined with; NotFound for an unknown id.
  absl::StatusOr<std::string> SiteName(int64_t site) const;

  // Long polls: a counter that moves whenever a round starts or closes, a site joins or the job
  // finishes; WaitForChange blocks until it differs from `seen` or `until` (real time) passes.
  uint64_t change_count() const;
  void WaitForChange(uint64_t seen, std::chrono::steady_clock::time_point until) const;

  // The rounds closed since the last call, oldest first, with a snapshot of each model.
  std::vector<ClosedRound> TakeClosedRounds();
  // The rounds abandoned since the last call (each record's `abandoned` says why).
  std::vector<RoundRecord> TakeAbandonedRounds();

  // The whole coordinator state for a checkpoint: the global model ("model/..."), the strategy's
  // state ("strategy/..."), counters, the site registry, the history and the refusal counts
  // ("coordinator/..."). LoadState restores it (sites count as seen at `now`); it checks
  // everything before changing anything. An open round is not part of the state: after a
  // restore, the next round has the same index, and so the same sample, as the one that was open.
  NamedTensors State() const;
  absl::Status LoadState(const NamedTensors& state, Time now);

  // Closes the current round if its deadline passed (call it periodically).
  void Tick(Time now);

  int64_t model_version() const;
  int64_t rounds_done() const;
  bool finished() const;
  std::vector<RoundRecord> history() const;
  // Refusals counted by reason ("wrong_round", "duplicate", "late", "not_participant",
  // "unknown_site", "bad_tensor", "non_finite", "bad_metrics", "bad_examples", "bad_name",
  // "bad_model", and from the transport "bad_token", "bad_pipeline", "bad_stream", "too_many_streams",
  // "stream_timeout").
  std::map<std::string, int64_t> refusals() const;
  // Every joined site, in name order.
  std::vector<SiteStatus> Sites(Time now) const;

 private:
  struct Site {
    std::string name;
    int64_t examples = 0;
    Time last_seen;
    int64_t refusals = 0;
  };
  struct Round {
    int64_t index = 0;
    std::vector<int64_t> participants;
    Time deadline;
    std::map<int64_t, aggregation::SiteUpdate> updates;  // by site id; aggregated in name order
    std::map<int64_t, std::map<std::string, double>> metrics;
    std::shared_ptr<SecureRound> secure;  // under secure aggregation
    double expected_sites = 0;            // q * alive (site-level DP's denominator)
    std::set<int64_t> attackers;          // the sampled sites that attack (attack.*)
  };

  bool Alive(const Site& s, Time now) const;
  void MaybeStartRound(Time now);
  void MaybeCloseRound(Time now);
  // Under secure aggregation: starts the round's SecAgg+ (false when it cannot start: the round is
  // then recorded as abandoned), advances its stages, and aggregates its decoded sum.
  bool StartSecure(Round& round, Time now);
  void MaybeCloseSecureRound(Time now);
  // The simulated attackers (attack.*) among a round's sampled sites.
  std::set<int64_t> AttackersAmong(const std::vector<int64_t>& sampled) const;
  // Whether `site` trains on flipped labels in the open round (attack.kind label_flip).
  bool FlipsLabels(int64_t site) const;
  // A plain round's updates (name order) before the strategy: the simulated attackers' replaced,
  // then each through the coordinator's pipeline. Fails naming the site whose step failed.
  absl::Status PrepareUpdates(std::vector<aggregation::SiteUpdate>& updates) const;
  // Site-level DP's close: the noised mean of the clipped updates, as one update to the strategy.
  absl::StatusOr<NamedTensors> AggregateSiteDp(RoundRecord& record, const std::vector<aggregation::SiteUpdate>& updates);
  // The checks every secure call shares: a known site, sampled for the open round `round`.
  absl::Status CheckSecureCall(int64_t site, int64_t round, uint32_t named, Time now);
  // Known site, last seen now, sampled for the open round `round` (else refused and counted).
  absl::Status CheckRoundCall(int64_t site, int64_t round, Time now, const char* what);
  // Records a closed round, and with a model, makes it the current one and queues it.
  void Commit(RoundRecord record, absl::StatusOr<NamedTensors> next);
  absl::Status AfterSecureCall(absl::Status s, int64_t site, Time now);
  absl::Status Refuse(const std::string& reason, absl::Status status);
  // A refusal of a known site's call: counted for the site too.
  absl::Status Refuse(const std::string& reason, absl::Status status, int64_t site);
  absl::Status CheckMetrics(const std::map<std::string, double>& metrics) const;
  void Changed();
  NamedTensors StateLocked() const;

  const RoundManagerOptions options_;
  std::unique_ptr<aggregation::Strategy> strategy_;
  privacy::UpdatePipeline pipeline_;  // options_.pipeline's steps, whose state is checkpointed here
  mutable std::mutex mu_;
  NamedTensors model_;
  int64_t version_ = 0;
  int64_t rounds_done_ = 0;
  int64_t next_round_index_ = 0;  // counts abandoned rounds too, so each sample is fresh
  std::map<int64_t, Site> sites_;
  std::map<std::string, int64_t> site_by_name_;  // also the sampling and aggregation order
  // The id the next new site gets. Ids are never reused: after a restore they continue
  // kSiteIdsPerIncarnation past the saved counter (joins since that checkpoint were lost).
  int64_t next_site_id_ = 1;
  static constexpr int64_t kSiteIdsPerIncarnation = 1 << 16;
  std::optional<Round> current_;
  Time no_round_before_{};  // after a secure round that could not start
  std::vector<RoundRecord> history_;
  std::map<std::string, int64_t> refusals_;
  std::deque<ClosedRound> closed_;
  std::vector<RoundRecord> abandoned_;
  uint64_t changes_ = 0;
  mutable std::condition_variable changed_cv_;
  std::unique_ptr<privacy::SiteDp> site_dp_;  // privacy.mode site
  bool budget_spent_ = false;                 // one more round would pass privacy.target_epsilon
};

}  // namespace allround::coordinator

#endif  // ALLROUND_COORDINATOR_ROUND_MANAGER_H_
