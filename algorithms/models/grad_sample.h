#ifndef ALLROUND_ALGORITHMS_MODELS_GRAD_SAMPLE_H_
#define ALLROUND_ALGORITHMS_MODELS_GRAD_SAMPLE_H_

// Per-example gradients in one backward pass, as Opacus's grad samplers compute them: each layer
// with parameters keeps its input (the activations) and its output, whose gradient the backward
// returns; after Backward, each parameter's gradient for
// example b is a small product of row b of both (linear: G_b^T A_b; convolution: the same on the
// unfolded input; layer and group norm: G_b times the normalized input; embedding: G_b added at
// example b's token rows). No loop over examples.
//
// The models call their layers through Apply(...) below. Outside a PerExampleGradients scope that
// is the layer's own forward and costs nothing more; inside one, the call is recorded. A loss that
// is the SUM of per-example losses then gives each example's gradient exactly (the layers mix no
// examples; batch norm does, and has no per-example gradient: Gradients() refuses it by name).
//
// Heavy (LibTorch nn): include it only from model sources and the DP step.

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace allround::models {

class PerExampleGradients {
 public:
  struct Recorded;  // one layer call: its kind, parameters, input and output gradient

  // Records the layer calls of this thread from now until destruction (one scope at a time per
  // thread; a nested one is an error of the caller, checked).
  PerExampleGradients();
  ~PerExampleGradients();
  PerExampleGradients(const PerExampleGradients&) = delete;
  PerExampleGradients& operator=(const PerExampleGradients&) = delete;

  // The backward the per-example rules need: the gradients of `loss` (the SUM of per-example
  // losses) with respect to every recorded layer output. The parameters' own gradients are not
  // formed (DP-SGD replaces them), which saves the backward's weight-gradient products.
  void Backward(const at::Tensor& loss);

  // After Backward: for each of `params` (name, tensor), its
  // per-example gradients [B, <param shape>], summed over the calls of its layer (a layer used
  // twice, or on every token of a sequence). Fails naming the first parameter that no recorded
  // layer call owns (a parameter used outside Apply, a batch norm) or whose output got no
  // gradient. `batch` is B (a parameter the loss did not reach gets zeros).
  using NamedParams = std::vector<std::pair<std::string, at::Tensor>>;
  absl::StatusOr<std::vector<at::Tensor>> Gradients(const NamedParams& params, int64_t batch) const;

  // What DP-SGD needs, without building the [B, <param shape>] tensors where a layer allows:
  // each example's squared L2 norm of its whole gradient (over all `params`) as float64 [B]; a
  // linear layer's comes from the Gram matrices of its inputs and output gradients (Goodfellow
  // 2015; Li et al. 2022's ghost clipping) when that is cheaper than the per-example products.
  absl::StatusOr<at::Tensor> SquaredNorms(const NamedParams& params, int64_t batch) const;
  // sum_b weights[b] * (example b's gradient), per parameter, as one contraction per layer call
  // (the output gradients scaled by the weights, then the layer's own weight-gradient product).
  absl::StatusOr<std::vector<at::Tensor>> WeightedSum(const NamedParams& params, const at::Tensor& weights) const;

  // The scope recording on this thread, or null.
  static PerExampleGradients* Active();
  void Record(std::shared_ptr<Recorded> call, const at::Tensor& output);

 private:
  std::vector<std::shared_ptr<Recorded>> calls_;
  PerExampleGradients* outer_ = nullptr;
};

// The project's layers, recording when a PerExampleGradients scope is active on this thread.
at::Tensor Apply(torch::nn::LinearImpl& layer, const at::Tensor& x);        // x [B, ..., in]
at::Tensor Apply(torch::nn::Conv2dImpl& layer, const at::Tensor& x);        // x [B, C, H, W], groups 1
at::Tensor Apply(torch::nn::LayerNormImpl& layer, const at::Tensor& x);     // x [B, ..., normalized]
at::Tensor Apply(torch::nn::GroupNormImpl& layer, const at::Tensor& x);     // x [B, C, ...]
at::Tensor Apply(torch::nn::EmbeddingImpl& layer, const at::Tensor& ids);   // ids int64 [B, ...]
// A parameter of shape [1, ...] broadcast over a batch of `batch` (ViT's class token and position
// embeddings): its per-example gradient is the output gradient's row b.
at::Tensor ExpandToBatch(const at::Tensor& param, int64_t batch);

}  // namespace allround::models

#endif  // ALLROUND_ALGORITHMS_MODELS_GRAD_SAMPLE_H_
