#ifndef ALLROUND_ALGORITHMS_MODES_SUPERVISED_H_
#define ALLROUND_ALGORITHMS_MODES_SUPERVISED_H_

// Supervised classification: the job's model, optimizer and loss.

#include <memory>

#include "absl/status/statusor.h"
#include "algorithms/modes/learning_mode.h"
#include "common/job.h"

namespace allround::modes {

struct InputInfo {
  int64_t channels = 1, height = 28, width = 28, num_classes = 10;
};

// Builds the model (initial weights from LibTorch's global generator, seeded here from
// job.seed), the optimizer and the loss. Errors name the job key at fault.
// The model lives on `device` (its batches must too).
absl::StatusOr<std::unique_ptr<LearningMode>> MakeSupervisedMode(const Job& job, const InputInfo& input,
                                                                 at::Device device = at::Device(at::kCPU));

}  // namespace allround::modes

#endif  // ALLROUND_ALGORITHMS_MODES_SUPERVISED_H_
