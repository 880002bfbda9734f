#include "algorithms/optim/schedule.h"

#include <algorithm>
#include <cmath>

namespace allround::optim {

LrSchedule::LrSchedule(const ScheduleSpec& spec, double base_lr, int64_t steps_per_epoch,
                       int64_t total_steps)
    : spec_(spec),
      base_lr_(base_lr),
      steps_per_epoch_(std::max<int64_t>(1, steps_per_epoch)),
      total_steps_(std::max<int64_t>(1, total_steps)) {
  warmup_ = spec.warmup_steps > 0
                ? spec.warmup_steps
                : static_cast<int64_t>(std::llround(spec.warmup_epochs * static_cast<double>(steps_per_epoch_)));
}

double LrSchedule::At(int64_t step) const {
  if (step < warmup_) return base_lr_ * static_cast<double>(step + 1) / static_cast<double>(warmup_);
  if (spec_.name == "step") {
    const int64_t epoch = step / steps_per_epoch_;
    return base_lr_ * std::pow(spec_.gamma, static_cast<double>(epoch / spec_.step_epochs));
  }
  if (spec_.name == "cosine") {
    const double span = static_cast<double>(std::max<int64_t>(1, total_steps_ - warmup_));
    const double t = std::min(1.0, static_cast<double>(step - warmup_) / span);
    return spec_.min_lr + (base_lr_ - spec_.min_lr) * 0.5 * (1.0 + std::cos(M_PI * t));
  }
  return base_lr_;
}

}  // namespace allround::optim
