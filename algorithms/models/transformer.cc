#include "algorithms/models/transformer.h"

#include <torch/torch.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "algorithms/models/grad_sample.h"

namespace allround::models {
namespace {

namespace nn = torch::nn;

class BlockImpl : public nn::Module {
 public:
  BlockImpl(int64_t dim, int64_t heads, int64_t mlp_dim)
      : heads_(heads),
        ln1_(register_module("ln1", nn::LayerNorm(nn::LayerNormOptions({dim})))),
        qkv_(register_module("qkv", nn::Linear(dim, 3 * dim))),
        proj_(register_module("proj", nn::Linear(dim, dim))),
        ln2_(register_module("ln2", nn::LayerNorm(nn::LayerNormOptions({dim})))),
        fc1_(register_module("fc1", nn::Linear(dim, mlp_dim))),
        fc2_(register_module("fc2", nn::Linear(mlp_dim, dim))) {}

  torch::Tensor forward(torch::Tensor x, const torch::Tensor& padding) {
    const int64_t b = x.size(0), t = x.size(1), d = x.size(2);
    // [B, T, 3, H, d/H] -> three [B, H, T, d/H].
    const auto qkv = Apply(*qkv_, Apply(*ln1_, x)).view({b, t, 3, heads_, d / heads_}).permute({2, 0, 3, 1, 4});
    const torch::Tensor a = Attention(qkv[0], qkv[1], qkv[2], padding);
    x = x + Apply(*proj_, a.transpose(1, 2).reshape({b, t, d}));
    return x + Apply(*fc2_, torch::gelu(Apply(*fc1_, Apply(*ln2_, x))));
  }

 private:
  int64_t heads_;
  nn::LayerNorm ln1_;
  nn::Linear qkv_, proj_;
  nn::LayerNorm ln2_;
  nn::Linear fc1_, fc2_;
};

}  // namespace

torch::Tensor Attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& padding) {
  torch::Tensor scores = q.matmul(k.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(-1)));
  if (padding.defined()) {
    scores = scores.masked_fill(padding.view({padding.size(0), 1, 1, padding.size(1)}),
                                -std::numeric_limits<float>::infinity());
  }
  return torch::softmax(scores, -1).matmul(v);
}

TransformerEncoder::TransformerEncoder(int64_t dim, int64_t depth, int64_t heads, int64_t mlp_dim) {
  TORCH_CHECK(heads > 0 && dim % heads == 0, "transformer: dim ", dim, " is not a multiple of heads ", heads);
  for (int64_t i = 0; i < depth; ++i) {
    blocks_.push_back(register_module(absl::StrCat("block", i), std::make_shared<BlockImpl>(dim, heads, mlp_dim)));
  }
  norm_ = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({dim})).ptr());
}

torch::Tensor TransformerEncoder::forward(const torch::Tensor& x, const torch::Tensor& padding) {
  torch::Tensor h = x;
  for (const auto& block : blocks_) h = static_cast<BlockImpl&>(*block).forward(h, padding);
  return Apply(dynamic_cast<nn::LayerNormImpl&>(*norm_), h);
}

}  // namespace allround::models
