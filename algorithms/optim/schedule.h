#ifndef ALLROUND_ALGORITHMS_OPTIM_SCHEDULE_H_
#define ALLROUND_ALGORITHMS_OPTIM_SCHEDULE_H_

// Learning rate as a pure function of the global step, so that resuming at step s gives exactly
// the rate an uninterrupted run had. Linear warmup from lr/warmup to lr over the first warmup
// steps (PyTorch's LinearLR start_factor = 1/warmup), then:
//  - constant: lr;
//  - step: lr * gamma^floor(epoch / step_epochs), epoch = step / steps_per_epoch;
//  - cosine: min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2 over the steps after warmup.

#include <cstdint>

#include "common/job.h"

namespace allround::optim {

class LrSchedule {
 public:
  LrSchedule(const ScheduleSpec& spec, double base_lr, int64_t steps_per_epoch, int64_t total_steps);
  double At(int64_t step) const;
  int64_t warmup_steps() const { return warmup_; }

 private:
  ScheduleSpec spec_;
  double base_lr_;
  int64_t steps_per_epoch_;
  int64_t total_steps_;
  int64_t warmup_;
};

}  // namespace allround::optim

#endif  // ALLROUND_ALGORITHMS_OPTIM_SCHEDULE_H_
