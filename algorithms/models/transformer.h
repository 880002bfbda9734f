#ifndef ALLROUND_ALGORITHMS_MODELS_TRANSFORMER_H_
#define ALLROUND_ALGORITHMS_MODELS_TRANSFORMER_H_

// A pre-norm transformer encoder (Vaswani et al. 2017, with layer norm before each sublayer as in
// ViT and GPT-2): `depth` blocks of x + Attention(LN(x)) then x + MLP(LN(x)), the MLP
// Linear-GELU-Linear, then a final layer norm. Shared by the ViT backbone and the masked-LM
// encoder. Its blocks are registered as "block<i>/..." so checkpoints name them.

#include <torch/nn/module.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace allround::models {

class TransformerEncoder : public torch::nn::Module {
 public:
  // dim must be a multiple of heads.
  TransformerEncoder(int64_t dim, int64_t depth, int64_t heads, int64_t mlp_dim);

  // x: float [B, T, dim]. padding: optional bool [B, T], true at positions no token may attend
  // to (the padding of short sequences); their own outputs are computed but mean nothing.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& padding = {});

 private:
  std::vector<std::shared_ptr<torch::nn::Module>> blocks_;
  std::shared_ptr<torch::nn::Module> norm_;
};

// Scaled dot-product attention of q, k, v [B, H, T, d]; `padding` as above (may be undefined).
torch::Tensor Attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& padding);

}  // namespace allround::models

#endif  // ALLROUND_ALGORITHMS_MODELS_TRANSFORMER_H_
