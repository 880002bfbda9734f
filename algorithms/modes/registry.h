#ifndef ALLROUND_ALGORITHMS_MODES_REGISTRY_H_
#define ALLROUND_ALGORITHMS_MODES_REGISTRY_H_

// The learning modes, each registered beside its own code (common/registry.h, kind "mode") with
// what it needs from the run: callers ask NeedsOf(job.mode) and never test a mode's name.
//
//   const bool kRegistered = modes::RegisterMode({"mode", "vae", "variational autoencoder", {}},
//                                                {.own_networks = true}, &MakeVae);
//
// Registration runs during static initialization; reads are thread-safe afterwards.

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "algorithms/modes/learning_mode.h"
#include "algorithms/modes/supervised.h"
#include "common/job.h"
#include "common/registry.h"

namespace allround::modes {

// What a mode needs from the run that makes it.
struct ModeNeeds {
  // Its batches carry unlabelled images: the training set is split into a labelled subset
  // (data.labels_per_class per class, which must be > 0) and an unlabelled pool.
  bool unlabeled = false;
  // It builds its own networks; model.name does not apply (the run names the mode instead).
  bool own_networks = false;
  // It evaluates with labelled training images (k-NN voting, a linear probe): the run gives it
  // its training set as the bank (or SetEvaluationBank later, a site its own share).
  bool eval_bank = false;
  // It trains on rows of token ids (data.name text), and text data needs such a mode.
  bool text = false;
};

// What a mode is made from.
struct ModeInputs {
  const Job& job;
  InputInfo input;
  at::Device device;
  at::Tensor bank_inputs, bank_labels;  // defined when the mode needs an evaluation bank
};

using ModeFactory = std::function<absl::StatusOr<std::unique_ptr<LearningMode>>(const ModeInputs& in)>;

// Registers a learning mode; `info.kind` is set to "mode". Returns true, to initialize a static.
bool RegisterMode(ComponentInfo info, ModeNeeds needs, ModeFactory factory);

// The needs of a registered mode; a mode no one registered needs nothing (MakeLearningMode
// refuses it, naming the known ones).
ModeNeeds NeedsOf(const std::string& mode);

// The job's mode (job.mode), on `device`. A mode that needs an evaluation bank gets `bank_*`
// (labelled training images, may be empty); the others do not.
absl::StatusOr<std::unique_ptr<LearningMode>> MakeLearningMode(const Job& job, const InputInfo& input,
                                                               at::Device device = at::Device(at::kCPU),
                                                               const at::Tensor& bank_inputs = at::Tensor(),
                                                               const at::Tensor& bank_labels = at::Tensor());

}  // namespace allround::modes

#endif  // ALLROUND_ALGORITHMS_MODES_REGISTRY_H_
