#ifndef ALLROUND_ALGORITHMS_MODELS_NETWORK_H_
#define ALLROUND_ALGORITHMS_MODELS_NETWORK_H_

// The models a job can name, behind one type: a torch Module with forward(images) -> logits.
// Construction draws initial weights from LibTorch's global generator: seed it first (the worker
// does, from the job seed), so every rank and every resumed run starts from the same weights.

#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job.h"
#include "common/registry.h"

namespace allround::models {

class Network : public torch::nn::Module {
 public:
  // x: float [B, C, H, W]; returns logits [B, num_classes].
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  // The penultimate representation the last linear layer reads (e.g. SimpleCNN's 84 activations):
  // what a Frechet distance or a probe compares.
  virtual torch::Tensor features(torch::Tensor x) = 0;
};

struct InputShape {
  int64_t channels = 1;
  int64_t height = 28;
  int64_t width = 28;
  int64_t num_classes = 10;
};

// Builds a model from the job's model keys (model.hidden, model.width, ...), or fails naming the
// key at fault.
using ModelFactory = std::function<absl::StatusOr<std::shared_ptr<Network>>(const ModelSpec& spec,
                                                                           const InputShape& input)>;

// Registers a model beside its code (common/registry.h, kind "model"): model.name accepts its name.
// Returns true, to initialize a static.
bool RegisterModel(ComponentInfo info, ModelFactory factory);

// Builds the model that `spec` names; an unknown name is an error listing the known ones.
absl::StatusOr<std::shared_ptr<Network>> MakeModel(const ModelSpec& spec, const InputShape& input);

// Names MakeModel knows (the registered models), sorted.
std::vector<std::string> ModelNames();

// Number of trainable parameter elements.
int64_t CountParameters(const torch::nn::Module& module);

}  // namespace allround::models

#endif  // ALLROUND_ALGORITHMS_MODELS_NETWORK_H_
