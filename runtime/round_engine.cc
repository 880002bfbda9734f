#include "runtime/round_engine.h"

namespace allround::runtime {

absl::StatusOr<RunOutcome> RunRounds(const RoundPlan& plan, RoundExecutor& executor, RoundObserver& observer) {
  RunOutcome out;
  out.rounds = plan.first_round;
  for (int64_t r = plan.first_round; r < plan.rounds; ++r) {
    RoundAssignment round{r, r, 0};
    if (plan.max_steps > 0) {
      round.step_budget = plan.max_steps - plan.steps_done - out.steps;
      if (round.step_budget <= 0) break;
    }
    auto result = executor.Execute(round);
    if (!result.ok()) return result.status();
    out.rounds = r + 1;
    out.steps += result->steps;
    out.examples += result->examples;
    out.train_seconds += result->seconds;
    const bool last = r + 1 == plan.rounds || result->final ||
                      (plan.max_steps > 0 && plan.steps_done + out.steps >= plan.max_steps);
    Metrics eval;
    if (last || plan.eval_every <= 1 || (r + 1) % plan.eval_every == 0) {
      auto e = executor.Evaluate();
      if (!e.ok()) return e.status();
      eval = *std::move(e);
      out.final_eval = eval;
    }
    if (auto s = observer.OnRound(round, *result, eval); !s.ok()) return s;
    if (result->final) break;
  }
  if (out.final_eval.empty()) {  // nothing left to train (a resumed run that had finished)
    auto eval = executor.Evaluate();
    if (!eval.ok()) return eval.status();
    out.final_eval = *eval;
  }
  return out;
}

}  // namespace allround::runtime
