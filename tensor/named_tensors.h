#ifndef ALLROUND_TENSOR_NAMED_TENSORS_H_
#define ALLROUND_TENSOR_NAMED_TENSORS_H_

// The one currency between layers: tensors in a fixed order, each with its name ("model/fc1.weight",
// "optim/...", "coordinator/..."). A model's state, an update, a checkpoint and a wire message are all
// NamedTensors; this is its only definition, below every other layer (LibTorch and abseil only).
//
// The checks here are the ones several layers need and used to write each for itself: does an update
// have the model's layout, does a state hold what a module needs, copied in place only when all of it
// fits. Pure functions; thread-compatible.

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace allround::tensor {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// One tensor a model or a stream must have (a site's model as it describes it at Join; what a
// tensor stream must carry).
struct TensorLayout {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
};

// "[3, 4] float32": a tensor's shape and dtype as errors show them.
std::string Describe(const at::Tensor& t);

// Whether `t` has `like`'s shape and dtype.
bool SameLayout(const at::Tensor& t, const at::Tensor& like);

// "" when `got` holds `want`'s tensors in order, each with the same name, shape and dtype; otherwise
// what differs first, for the caller to put in its own words ("update has 3 tensors, the model 4";
// "tensor a [2] float32 does not match the model's b [3] float32").
std::string LayoutMismatch(const NamedTensors& got, const NamedTensors& want);

// Copies, for every (name, target) of `targets`, the tensor of that name in `source` into the target
// (a parameter, a buffer, an optimizer's slot), under NoGradGuard. Nothing is copied unless every
// target finds a tensor of its shape: NotFound names a missing one, InvalidArgument one whose shape
// differs. Tensors of `source` that no target names are ignored. Dtypes and devices are converted.
absl::Status CopyCheckedInto(const NamedTensors& targets, const std::map<std::string, at::Tensor>& source);

// Whether every element of a floating-point tensor is finite (always true for integer tensors).
bool AllFinite(const at::Tensor& t);

}  // namespace allround::tensor

#endif  // ALLROUND_TENSOR_NAMED_TENSORS_H_
