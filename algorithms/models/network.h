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

// What a model is built from: its name and the keys its architecture reads. The job's model keys
// (model.hidden, model.width, ...) are registered beside each model in networks.cc, with these
// defaults; ModelSpecFromJob reads them. Code that builds a model of its own (the GAN's evaluation
// classifier) fills one directly.
struct ModelSpec {
  std::string name = "simple_cnn";
  std::vector<int64_t> hidden = {200, 200};  // mlp: hidden layer widths
  int64_t width = 16;                // resnet: channels of the first stage
  std::string norm = "batch";        // resnet: "batch" or "group" normalization
  int64_t fc = 512;                  // fedavg_cnn: units of the fully connected hidden layer
  int64_t patch = 7;                 // vit: side of the square patches (must divide the image)
  int64_t dim = 64;                  // vit: token width
  int64_t depth = 4;                 // vit: transformer blocks
  int64_t heads = 4;                 // vit: attention heads (dim a multiple of them)
  int64_t mlp_dim = 128;             // vit: hidden width of each block's MLP
};

// model.name and the registered model keys of `job`.
ModelSpec ModelSpecFromJob(const Job& job);

// Builds a model from its spec, or fails naming the key at fault.
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
