#ifndef ALLROUND_RUNTIME_ROUND_ENGINE_H_
#define ALLROUND_RUNTIME_ROUND_ENGINE_H_

// The round engine of cluster mode: the coordinator runs inside rank 0 (no network hop) and hands
// every round to the one worker group; between rounds it evaluates and reports. A round is one
// epoch, cut short when the job's step budget runs out. The federated coordinator drives rounds
// through the same RoundExecutor contract over gRPC.
//
// Blocking; single-threaded.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace allround::runtime {

using Metrics = std::vector<std::pair<std::string, double>>;

struct RoundAssignment {
  int64_t round = 0;        // 0-based
  int64_t epoch = 0;        // 0-based epoch this round trains
  int64_t step_budget = 0;  // steps this round may take at most (0: a whole epoch)
};

struct RoundResult {
  int64_t steps = 0;
  int64_t examples = 0;     // over the whole worker group
  double mean_loss = 0.0;
  double seconds = 0.0;
  bool final = false;       // the executor can train no further (a privacy budget is spent)
};

class RoundExecutor {
 public:
  virtual ~RoundExecutor() = default;
  virtual absl::StatusOr<RoundResult> Execute(const RoundAssignment& round) = 0;
  // Evaluates the current model on the held-out data.
  virtual absl::StatusOr<Metrics> Evaluate() = 0;
};

class RoundObserver {
 public:
  virtual ~RoundObserver() = default;
  // Called after each round's evaluation; an error stops the run.
  virtual absl::Status OnRound(const RoundAssignment& round, const RoundResult& result,
                               const Metrics& eval) = 0;
};

struct RoundPlan {
  int64_t rounds = 1;
  int64_t max_steps = 0;    // over all rounds (0: no limit)
  int64_t first_round = 0;  // a resumed run starts here
  int64_t steps_done = 0;   // steps taken before first_round (count against max_steps)
  int64_t eval_every = 1;   // evaluate after every K-th round and the last (observers get empty
                            // metrics for the others)
};

struct RunOutcome {
  int64_t rounds = 0;
  int64_t steps = 0;
  int64_t examples = 0;
  double train_seconds = 0.0;  // inside Execute, excluding evaluation
  Metrics final_eval;
};

// Runs the plan's rounds in order; stops early when the step budget is spent. The first error of
// the executor or observer ends the run and is returned.
absl::StatusOr<RunOutcome> RunRounds(const RoundPlan& plan, RoundExecutor& executor, RoundObserver& observer);

}  // namespace allround::runtime

#endif  // ALLROUND_RUNTIME_ROUND_ENGINE_H_
