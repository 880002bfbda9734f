#include "algorithms/models/grad_sample.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <map>
#include <set>
#include <variant>

#include "absl/strings/str_cat.h"

// LibTorch's options hold c10::variant up to 2.2 and std::variant from 2.3.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
namespace variants = std;
#else
namespace variants = c10;
#endif

namespace allround::models {

struct PerExampleGradients::Recorded {
  enum class Kind { kLinear, kConv, kLayerNorm, kGroupNorm, kEmbedding, kExpand };
  Kind kind = Kind::kLinear;
  at::Tensor weight, bias;  // the layer's parameters (bias may be undefined); kExpand: the parameter
  at::Tensor input;         // detached: activations, or token ids
  at::Tensor output;        // the layer's output (until Backward)
  at::Tensor grad_out;      // d loss / d output, set by Backward
  std::vector<int64_t> kernel, stride, padding, dilation;  // convolution
  std::vector<int64_t> normalized_shape;                   // layer norm
  int64_t groups = 1;                                      // group norm
  double eps = 0;
  int64_t padding_idx = -1;                                // embedding (-1: none)
  std::string unsupported;  // why these options have no per-example rule here (empty: they do)
  // The per-example gradients {weight, bias} once SquaredNorms formed them, for WeightedSum.
  std::pair<at::Tensor, at::Tensor> per_example;
};

namespace {

using Recorded = PerExampleGradients::Recorded;
using Kind = Recorded::Kind;

thread_local PerExampleGradients* g_active = nullptr;

std::vector<int64_t> Shape(int64_t batch, at::IntArrayRef rest) {
  std::vector<int64_t> out{batch};
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

// The call's per-example gradients {weight, bias} ([B, <shape>]; bias undefined when it has none).
std::pair<at::Tensor, at::Tensor> PerExample(const Recorded& c, int64_t batch) {
  const at::Tensor& g = c.grad_out;
  switch (c.kind) {
    case Kind::kLinear: {
      const at::Tensor a = c.input.reshape({batch, -1, c.input.size(-1)});
      const at::Tensor gg = g.reshape({batch, -1, g.size(-1)});
      return {at::bmm(gg.transpose(1, 2), a), c.bias.defined() ? gg.sum(1) : at::Tensor()};
    }
    case Kind::kConv: {
      // The batch as B groups of one convolution: LibTorch's own weight-gradient kernel gives the
      // B per-example gradients at once, without the unfolded input (B x K x L) in memory.
      const int64_t in = c.input.size(1), out = g.size(1);
      const at::Tensor x = c.input.reshape({1, batch * in, c.input.size(2), c.input.size(3)});
      const at::Tensor gg = g.contiguous().reshape({1, batch * out, g.size(2), g.size(3)});
      const at::Tensor shape = at::empty({batch * out, in, c.weight.size(2), c.weight.size(3)}, x.options());
      const auto grads = at::convolution_backward(gg, x, shape, c10::nullopt, c.stride, c.padding, c.dilation,
                                                  /*transposed=*/false, {0, 0}, batch, {false, true, false});
      return {std::get<1>(grads).view(Shape(batch, c.weight.sizes())),
              c.bias.defined() ? g.sum(std::vector<int64_t>{2, 3}) : at::Tensor()};
    }
    case Kind::kLayerNorm: {
      const at::Tensor normalized = at::layer_norm(c.input, c.normalized_shape, {}, {}, c.eps);
      std::vector<int64_t> dims;  // between the batch and the normalized dimensions
      for (int64_t d = 1; d < c.input.dim() - static_cast<int64_t>(c.normalized_shape.size()); ++d) dims.push_back(d);
      at::Tensor gw = g * normalized, gb = g;
      if (!dims.empty()) {
        gw = gw.sum(dims);
        gb = gb.sum(dims);
      }
      return {gw, c.bias.defined() ? gb : at::Tensor()};
    }
    case Kind::kGroupNorm: {
      const at::Tensor normalized = at::group_norm(c.input, c.groups, {}, {}, c.eps);
      std::vector<int64_t> dims;
      for (int64_t d = 2; d < c.input.dim(); ++d) dims.push_back(d);
      at::Tensor gw = g * normalized, gb = g;
      if (!dims.empty()) {
        gw = gw.sum(dims);
        gb = gb.sum(dims);
      }
      return {gw, c.bias.defined() ? gb : at::Tensor()};
    }
    case Kind::kEmbedding: {
      const int64_t vocab = c.weight.size(0), dim = c.weight.size(1);
      const at::Tensor ids = c.input.reshape({batch, -1});
      at::Tensor gg = g.reshape({batch, -1, dim});
      if (c.padding_idx >= 0) gg = gg * (ids != c.padding_idx).unsqueeze(2).to(gg.scalar_type());
      const at::Tensor rows = ids + at::arange(batch, ids.options()).unsqueeze(1) * vocab;
      at::Tensor gw = at::zeros({batch * vocab, dim}, gg.options());
      gw.index_add_(0, rows.reshape({-1}), gg.reshape({-1, dim}));
      return {gw.view({batch, vocab, dim}), at::Tensor()};
    }
    case Kind::kExpand:
      return {g.reshape(Shape(batch, c.weight.sizes())), at::Tensor()};
  }
  return {};
}

// sum_b w_b * (the call's gradient for example b), {weight, bias}, without the per-example tensors
// where the layer's gradient is a product.
std::pair<at::Tensor, at::Tensor> Weighted(const Recorded& c, const at::Tensor& w) {
  const int64_t batch = w.size(0);
  const at::Tensor& g = c.grad_out;
  auto weigh = [&](const at::Tensor& t, at::IntArrayRef shape) {  // sum_b w_b t_b, one product
    return t.defined() ? w.view({1, batch}).mm(t.reshape({batch, -1})).view(shape) : t;
  };
  if (c.per_example.first.defined()) {
    return {weigh(c.per_example.first, c.weight.sizes()),
            c.bias.defined() ? weigh(c.per_example.second, c.bias.sizes()) : at::Tensor()};
  }
  switch (c.kind) {
    case Kind::kLinear: {
      const int64_t out = g.size(-1), in = c.input.size(-1);
      const at::Tensor gw = (g.reshape({batch, -1, out}) * w.view({batch, 1, 1})).reshape({-1, out});
      return {gw.t().mm(c.input.reshape({-1, in})), c.bias.defined() ? gw.sum(0) : at::Tensor()};
    }
    case Kind::kConv: {
      // The ordinary weight gradient of the output gradients scaled per example.
      const at::Tensor gw = g * w.view({batch, 1, 1, 1});
      const auto grads = at::convolution_backward(gw, c.input, c.weight, c10::nullopt, c.stride, c.padding,
                                                  c.dilation, /*transposed=*/false, {0, 0}, 1,
                                                  {false, true, c.bias.defined()});
      return {std::get<1>(grads), c.bias.defined() ? std::get<2>(grads) : at::Tensor()};
    }
    case Kind::kEmbedding: {
      const int64_t dim = c.weight.size(1);
      const at::Tensor ids = c.input.reshape({batch, -1});
      at::Tensor gg = g.reshape({batch, -1, dim}) * w.view({batch, 1, 1});
      if (c.padding_idx >= 0) gg = gg * (ids != c.padding_idx).unsqueeze(2).to(gg.scalar_type());
      at::Tensor gw = at::zeros(c.weight.sizes(), gg.options());
      gw.index_add_(0, ids.reshape({-1}), gg.reshape({-1, dim}));
      return {gw, at::Tensor()};
    }
    default: {  // norms and broadcast parameters: their per-example gradients are small
      auto [gw, gb] = PerExample(c, batch);
      return {weigh(gw, c.weight.sizes()), c.bias.defined() ? weigh(gb, c.bias.sizes()) : at::Tensor()};
    }
  }
}

// Each example's squared norm of the call's whole gradient (weight and bias), float64 [B]: from
// Gram matrices where that costs less than the per-example products.
at::Tensor CallSquaredNorms(Recorded& c, int64_t batch) {
  const at::Tensor& g = c.grad_out;
  auto squares = [batch](const at::Tensor& t) { return t.reshape({batch, -1}).to(at::kDouble).square().sum(1); };
  if (c.kind == Kind::kLinear || c.kind == Kind::kConv) {
    at::Tensor a, gg;  // [B, positions, in], [B, positions, out]
    if (c.kind == Kind::kLinear) {
      a = c.input.reshape({batch, -1, c.input.size(-1)});
      gg = g.reshape({batch, -1, g.size(-1)});
    } else {
      a = at::im2col(c.input, c.kernel, c.dilation, c.padding, c.stride).transpose(1, 2);
      gg = g.reshape({batch, g.size(1), -1}).transpose(1, 2);
    }
    const int64_t positions = a.size(1), in = a.size(2), out = gg.size(2);
    at::Tensor bias = c.bias.defined() ? squares(gg.sum(1)) : at::zeros({batch}, at::kDouble);
    if (positions == 1) {
      return squares(a) * squares(gg) + bias;
    }
    if (positions * (in + out) < in * out) {
      // ||sum_t g_t a_t^T||^2 = sum_{t,t'} (g_t . g_t') (a_t . a_t')
      const at::Tensor grams = at::bmm(gg, gg.transpose(1, 2)) * at::bmm(a, a.transpose(1, 2));
      return grams.reshape({batch, -1}).to(at::kDouble).sum(1) + bias;
    }
  }
  if (c.kind == Kind::kEmbedding) {
    const at::Tensor ids = c.input.reshape({batch, -1});
    at::Tensor gg = g.reshape({batch, -1, c.weight.size(1)});
    at::Tensor same = ids.unsqueeze(2) == ids.unsqueeze(1);  // tokens that share a row
    if (c.padding_idx >= 0) same = same & (ids != c.padding_idx).unsqueeze(2) & (ids != c.padding_idx).unsqueeze(1);
    return (at::bmm(gg, gg.transpose(1, 2)) * same.to(gg.scalar_type())).reshape({batch, -1}).to(at::kDouble).sum(1);
  }
  c.per_example = PerExample(c, batch);  // kept: WeightedSum reuses them
  const auto& [gw, gb] = c.per_example;
  return gb.defined() ? squares(gw) + squares(gb) : squares(gw);
}

struct Owner {
  std::shared_ptr<Recorded> call;
  bool bias = false;
};

}  // namespace

PerExampleGradients::PerExampleGradients() : outer_(g_active) {
  TORCH_CHECK(outer_ == nullptr, "PerExampleGradients: a scope is already recording on this thread");
  g_active = this;
}

PerExampleGradients::~PerExampleGradients() { g_active = outer_; }

PerExampleGradients* PerExampleGradients::Active() { return g_active; }

void PerExampleGradients::Record(std::shared_ptr<Recorded> call, const at::Tensor& output) {
  call->output = output;
  calls_.push_back(std::move(call));
}

void PerExampleGradients::Backward(const at::Tensor& loss) {
  std::vector<at::Tensor> outputs;
  for (const auto& c : calls_) outputs.push_back(c->output);
  if (outputs.empty()) return;
  // Only what leads to the recorded outputs runs: no parameter's own gradient is formed.
  const std::vector<at::Tensor> grads = torch::autograd::grad({loss}, outputs, {}, /*retain_graph=*/false,
                                                              /*create_graph=*/false, /*allow_unused=*/true);
  for (size_t i = 0; i < calls_.size(); ++i) {
    calls_[i]->grad_out = grads[i].defined() ? grads[i].detach() : at::Tensor();
    calls_[i]->output = at::Tensor();
  }
}

namespace {

// Which recorded calls use each parameter, by its storage; an error names a parameter without one.
absl::StatusOr<std::vector<std::vector<Owner>>> Owners(
    const std::vector<std::shared_ptr<Recorded>>& calls,
    const PerExampleGradients::NamedParams& params) {
  std::map<const void*, std::vector<Owner>> by_param;
  for (const auto& c : calls) {
    by_param[c->weight.unsafeGetTensorImpl()].push_back({c, false});
    if (c->bias.defined()) by_param[c->bias.unsafeGetTensorImpl()].push_back({c, true});
  }
  std::vector<std::vector<Owner>> out;
  for (const auto& [name, p] : params) {
    auto it = by_param.find(p.unsafeGetTensorImpl());
    if (it == by_param.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "parameter '", name, "' has no per-example gradient: only linear, conv2d, layer norm, group norm, "
          "embedding and broadcast parameters have one (batch norm mixes the examples of a batch)"));
    }
    for (const Owner& o : it->second) {
      if (!o.call->unsupported.empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat("parameter '", name, "' has no per-example gradient: ", o.call->unsupported));
      }
    }
    out.push_back(it->second);
  }
  return out;
}

at::Tensor Part(const std::pair<at::Tensor, at::Tensor>& both, bool bias) { return bias ? both.second : both.first; }

}  // namespace

absl::StatusOr<std::vector<at::Tensor>> PerExampleGradients::Gradients(const NamedParams& params,
                                                                       int64_t batch) const {
  auto owners = Owners(calls_, params);
  if (!owners.ok()) return owners.status();
  std::map<const Recorded*, std::pair<at::Tensor, at::Tensor>> cache;
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor sum = at::zeros(Shape(batch, params[i].second.sizes()), params[i].second.options());
    for (const Owner& o : (*owners)[i]) {
      if (!o.call->grad_out.defined()) continue;  // the loss did not reach this call
      auto it = cache.find(o.call.get());
      if (it == cache.end()) it = cache.emplace(o.call.get(), PerExample(*o.call, batch)).first;
      sum += Part(it->second, o.bias);
    }
    out.push_back(sum);
  }
  return out;
}

absl::StatusOr<at::Tensor> PerExampleGradients::SquaredNorms(const NamedParams& params, int64_t batch) const {
  auto owners = Owners(calls_, params);
  if (!owners.ok()) return owners.status();
  // A call whose parameters no other call shares gives its norm by itself (perhaps by Grams);
  // a parameter of several calls (a layer applied twice) sums its calls' gradients first.
  std::map<const void*, int> uses;
  for (const auto& list : *owners) {
    for (const Owner& o : list) ++uses[(o.bias ? o.call->bias : o.call->weight).unsafeGetTensorImpl()];
  }
  auto alone = [&](const Recorded& c) {
    return uses[c.weight.unsafeGetTensorImpl()] == 1 &&
           (!c.bias.defined() || uses[c.bias.unsafeGetTensorImpl()] <= 1);
  };
  std::set<const void*> requested;
  for (const auto& [name, p] : params) requested.insert(p.unsafeGetTensorImpl());
  // On the gradients' device: no wait for it per layer.
  at::Tensor total = at::zeros({batch}, at::TensorOptions(at::kDouble).device(
                                            calls_.empty() ? at::Device(at::kCPU) : calls_[0]->weight.device()));
  std::set<const Recorded*> done;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& list = (*owners)[i];
    if (list.size() == 1 && alone(*list[0].call) &&
        (!list[0].call->bias.defined() || requested.count(list[0].call->bias.unsafeGetTensorImpl()) > 0)) {
      Recorded& c = *list[0].call;
      if (done.insert(&c).second && c.grad_out.defined()) total += CallSquaredNorms(c, batch).to(total.device());
      continue;
    }
    at::Tensor sum;
    for (const Owner& o : list) {
      if (!o.call->grad_out.defined()) continue;
      at::Tensor part = Part(PerExample(*o.call, batch), o.bias);
      sum = sum.defined() ? sum + part : part;
    }
    if (sum.defined()) total += sum.reshape({batch, -1}).to(at::kDouble).square().sum(1).to(total.device());
  }
  return total;
}

absl::StatusOr<std::vector<at::Tensor>> PerExampleGradients::WeightedSum(const NamedParams& params,
                                                                         const at::Tensor& weights) const {
  auto owners = Owners(calls_, params);
  if (!owners.ok()) return owners.status();
  std::map<const Recorded*, std::pair<at::Tensor, at::Tensor>> cache;
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i].second;
    at::Tensor sum = at::zeros(p.sizes(), p.options());
    for (const Owner& o : (*owners)[i]) {
      if (!o.call->grad_out.defined()) continue;
      auto it = cache.find(o.call.get());
      if (it == cache.end()) {
        it = cache.emplace(o.call.get(), Weighted(*o.call, weights.to(o.call->grad_out.options()))).first;
      }
      sum += Part(it->second, o.bias);
    }
    out.push_back(sum);
  }
  return out;
}

namespace {

// Records the call when a scope is active and the output takes part in a backward.
template <typename Fill>
void MaybeRecord(const at::Tensor& output, Fill fill) {
  PerExampleGradients* active = PerExampleGradients::Active();
  if (active == nullptr || !output.requires_grad()) return;
  auto call = std::make_shared<Recorded>();
  fill(*call);
  active->Record(std::move(call), output);
}

std::vector<int64_t> Ints(at::IntArrayRef a) { return a.vec(); }

}  // namespace

at::Tensor Apply(torch::nn::LinearImpl& layer, const at::Tensor& x) {
  at::Tensor out = layer.forward(x);
  MaybeRecord(out, [&](Recorded& c) {
    c.kind = Kind::kLinear;
    c.weight = layer.weight;
    c.bias = layer.bias;
    c.input = x.detach();
  });
  return out;
}

at::Tensor Apply(torch::nn::Conv2dImpl& layer, const at::Tensor& x) {
  at::Tensor out = layer.forward(x);
  MaybeRecord(out, [&](Recorded& c) {
    const auto& o = layer.options;
    c.kind = Kind::kConv;
    c.weight = layer.weight;
    c.bias = layer.bias;
    c.input = x.detach();
    c.kernel = Ints(*o.kernel_size());
    c.stride = Ints(*o.stride());
    c.dilation = Ints(*o.dilation());
    if (const auto* pad = variants::get_if<torch::ExpandingArray<2>>(&o.padding())) {
      c.padding = Ints(**pad);
    } else if (variants::holds_alternative<torch::enumtype::kValid>(o.padding())) {
      c.padding = {0, 0};
    } else {
      c.unsupported = "a convolution with padding 'same' (give the padding as numbers)";
    }
    if (o.groups() != 1) c.unsupported = "a grouped convolution";
    if (!variants::holds_alternative<torch::enumtype::kZeros>(o.padding_mode())) {
      c.unsupported = "a convolution whose padding mode is not zeros";
    }
  });
  return out;
}

at::Tensor Apply(torch::nn::LayerNormImpl& layer, const at::Tensor& x) {
  at::Tensor out = layer.forward(x);
  if (!layer.options.elementwise_affine()) return out;
  MaybeRecord(out, [&](Recorded& c) {
    c.kind = Kind::kLayerNorm;
    c.weight = layer.weight;
    c.bias = layer.bias;
    c.input = x.detach();
    c.normalized_shape = layer.options.normalized_shape();
    c.eps = layer.options.eps();
  });
  return out;
}

at::Tensor Apply(torch::nn::GroupNormImpl& layer, const at::Tensor& x) {
  at::Tensor out = layer.forward(x);
  if (!layer.options.affine()) return out;
  MaybeRecord(out, [&](Recorded& c) {
    c.kind = Kind::kGroupNorm;
    c.weight = layer.weight;
    c.bias = layer.bias;
    c.input = x.detach();
    c.groups = layer.options.num_groups();
    c.eps = layer.options.eps();
  });
  return out;
}

at::Tensor Apply(torch::nn::EmbeddingImpl& layer, const at::Tensor& ids) {
  at::Tensor out = layer.forward(ids);
  MaybeRecord(out, [&](Recorded& c) {
    c.kind = Kind::kEmbedding;
    c.weight = layer.weight;
    c.input = ids.detach();
    if (layer.options.padding_idx().has_value()) {
      int64_t p = *layer.options.padding_idx();
      c.padding_idx = p < 0 ? p + layer.weight.size(0) : p;
    }
    if (layer.options.max_norm().has_value()) c.unsupported = "an embedding with max_norm (it renormalizes rows)";
  });
  return out;
}

at::Tensor ExpandToBatch(const at::Tensor& param, int64_t batch) {
  TORCH_CHECK(param.dim() >= 1 && param.size(0) == 1, "ExpandToBatch: the parameter's first dimension must be 1");
  std::vector<int64_t> sizes = param.sizes().vec();
  sizes[0] = batch;
  at::Tensor out = param.expand(sizes);
  MaybeRecord(out, [&](Recorded& c) {
    c.kind = Kind::kExpand;
    c.weight = param;
  });
  return out;
}

}  // namespace allround::models
