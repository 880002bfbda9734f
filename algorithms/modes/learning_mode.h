#ifndef ALLROUND_ALGORITHMS_MODES_LEARNING_MODE_H_
#define ALLROUND_ALGORITHMS_MODES_LEARNING_MODE_H_

// How a batch becomes a loss, and which modules and optimizers exist. The round engine, the
// Reducer and the strategies see only this interface and never ask which mode runs.
//
// A step: TrainStep runs forward, loss and backward, then calls sync->AfterBackward() (where a
// worker group averages gradients; nothing in a group of one) once per backward, then steps the
// optimizers. Not thread-safe: one thread drives a mode.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/gradient_sync.h"
#include "common/png.h"
#include "tensor/named_tensors.h"

namespace allround::optim {
struct DpStepContext;  // algorithms/optim/dp_sgd.h
}  // namespace allround::optim

namespace allround::modes {

struct Batch {
  at::Tensor inputs;     // float [B, ...]
  at::Tensor targets;    // int64 [B]
  at::Tensor unlabeled;  // semi-supervised modes: float [U, ...] without labels; else undefined
  uint64_t seed = 0;     // for the step's own random choices (augmented views): from the job seed,
                         // epoch, step and rank, so a resumed run draws the same
  double progress = 0;   // the fraction of the run's steps done before this one (schedules)
  at::Tensor noise;      // generative modes' latent draws [B, ...]; undefined: drawn from `seed`
  // DP-SGD (privacy.mode example): the step's group-wide figures (noise seed, expected batch);
  // null for an ordinary step. A Poisson-sampled batch may be empty.
  const optim::DpStepContext* dp = nullptr;
};

struct StepResult {
  double loss = 0.0;
  int64_t examples = 0;
};

// The summable result of evaluating on a shard: ranks add these, then compute metrics once.
struct EvalSums {
  at::Tensor confusion;  // int64 [C, C]
  double loss_sum = 0.0;
  int64_t examples = 0;
  // Mode-specific figures that are means over the shard (e.g. DINO's collapse monitors); ranks
  // average them.
  std::map<std::string, double> monitors;
  // Correct predictions on the shard of a mode's further evaluators (DINO's linear probe), by the
  // metric they report as: ranks sum them, and the metric is correct / examples.
  std::map<std::string, int64_t> extra_correct;
};

using comm::GradientSync;

class LearningMode {
 public:
  virtual ~LearningMode() = default;

  // One optimization step on `batch` at learning rate `lr`. Fails (and changes nothing) on a
  // batch of the wrong shape or a non-finite loss; `sync` may be null.
  virtual absl::StatusOr<StepResult> TrainStep(const Batch& batch, double lr, GradientSync* sync) = 0;

  // Evaluates on inputs/targets in batches of `batch_size`, without changing any state.
  virtual absl::StatusOr<EvalSums> Evaluate(const at::Tensor& inputs, const at::Tensor& targets,
                                            int64_t batch_size) = 0;

  // Parameters whose gradients a worker group averages, in registration order.
  virtual std::vector<at::Tensor> TrainableParameters() = 0;
  // Parameters and buffers (BatchNorm statistics): everything that defines the model.
  virtual std::vector<at::Tensor> ModelState() = 0;
  // The buffers each rank updates from its own batches (BatchNorm running statistics). A worker
  // group broadcasts them from rank 0 before every step and before evaluating, as PyTorch DDP's
  // broadcast_buffers does, so every rank evaluates and continues with the same ones.
  virtual std::vector<at::Tensor> Buffers() = 0;
  virtual int64_t ParameterCount() = 0;

  // Every tensor needed to continue exactly: model parameters and buffers ("model/<name>") and
  // optimizer state ("optim/<param name>/<slot>"), named so checkpoints can be inspected and
  // diffed. LoadState takes what State gave (same job) and fails, changing nothing it has not
  // checked, on a missing tensor or a shape mismatch, naming the tensor.
  using NamedTensors = tensor::NamedTensors;
  virtual NamedTensors State() = 0;
  virtual absl::Status LoadState(const NamedTensors& state) = 0;

  // FedProx (Li et al. 2020): until changed, every step's loss gains (mu / 2) ||w - w_ref||^2 over
  // the model parameters, w_ref taken from `reference` ("model/<name>" tensors, e.g. the round's
  // global model). mu = 0 turns it off. Fails, changing nothing, if a parameter is missing.
  virtual absl::Status SetProximalTerm(double mu, const NamedTensors& reference) = 0;

  // Labelled examples that an evaluation by neighbours or by a fitted probe (DINO's k-NN and
  // linear probe) votes with or fits on, e.g. a federated site's own training share. Modes that
  // evaluate by their own predictions ignore them.
  virtual void SetEvaluationBank(const at::Tensor& inputs, const at::Tensor& labels) {}

  // Generative modes' pictures of the last evaluation (reconstructions, samples); others have none.
  // Rank 0 (and the coordinator) takes them after each evaluation.
  virtual std::vector<GrayImage> Images() { return {}; }
  // Images() written into `dir` as <name>-epoch<N>.png.
  absl::Status WriteImages(const std::string& dir, int64_t epoch);
};

// FedProx's term for a mode's parameters: (mu / 2) sum ||w - w_ref||^2, w_ref taken by name from
// a reference ("model/<prefix><param name>" tensors).
class ProximalTerm {
 public:
  // mu <= 0 turns it off. Fails, changing nothing, if a parameter is missing or of another shape.
  absl::Status Set(double mu, const LearningMode::NamedTensors& reference,
                   const std::vector<std::pair<std::string, at::Tensor>>& named_params);
  bool active() const { return mu_ > 0; }
  // The term for the current parameters (in Set's order); zero when off.
  at::Tensor Penalty(const std::vector<at::Tensor>& params) const;

 private:
  double mu_ = 0;
  std::vector<at::Tensor> reference_;
};

// Fashion-MNIST's standardization (the inputs' mean and std, worker/data/fashion_mnist.h): the
// image modes undo it where they work on pixels (augmented views, likelihoods, generated images).
constexpr double kImageMean = 0.2860, kImageStd = 0.3530;

// Standard normal draws of `sizes` from `seed`, made on the CPU so every device draws the same,
// with like's dtype and on its device (generative modes' noise).
at::Tensor SeededNormal(at::IntArrayRef sizes, uint64_t seed, const at::TensorOptions& like);

// The "model/" tensors of a State(): what a federated site receives and returns. They share
// storage with the mode's model; clone them to keep a snapshot.
inline LearningMode::NamedTensors ModelTensors(const LearningMode::NamedTensors& state) {
  LearningMode::NamedTensors out;
  for (const auto& [name, t] : state) {
    if (name.rfind("model/", 0) == 0) out.emplace_back(name, t);
  }
  return out;
}

// LoadState's model half (tensor/named_tensors.h): nothing changes unless every target fits.
using tensor::CopyCheckedInto;

}  // namespace allround::modes

#endif  // ALLROUND_ALGORITHMS_MODES_LEARNING_MODE_H_
