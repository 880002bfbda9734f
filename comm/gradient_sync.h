#ifndef ALLROUND_COMM_GRADIENT_SYNC_H_
#define ALLROUND_COMM_GRADIENT_SYNC_H_

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"

namespace allround::comm {

// What a learning mode calls around each backward pass whose gradients the worker group must
// average: BeforeBackward() right before it, AfterBackward() between it and the optimizer step;
// afterwards the gradients of the parameters it covers are the group's average. The Reducer
// implements it; a worker group of one passes none.
class GradientSync {
 public:
  virtual ~GradientSync() = default;
  virtual void BeforeBackward() = 0;
  virtual absl::Status AfterBackward() = 0;
  // Replaces `t` by its mean over the group (e.g. DINO's batch center), so state derived from it
  // stays identical on every rank.
  virtual absl::Status AverageAcrossGroup(at::Tensor& t) = 0;
};

}  // namespace allround::comm

#endif  // ALLROUND_COMM_GRADIENT_SYNC_H_
