// The model zoo: MLP, NIID-Bench's SimpleCNN, the CNN of the FedAvg paper, a small ResNet and a
// small vision transformer.

#include <torch/torch.h>

#include <map>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "algorithms/models/grad_sample.h"
#include "algorithms/models/kernels/relu_max_pool.h"
#include "algorithms/models/network.h"
#include "algorithms/models/transformer.h"

namespace allround::models {
namespace {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

class Mlp final : public Network {
 public:
  Mlp(const InputShape& in, const std::vector<int64_t>& hidden) {
    int64_t width = in.channels * in.height * in.width;
    for (size_t i = 0; i < hidden.size(); ++i) {
      layers_->push_back(register_module(absl::StrCat("fc", i + 1), nn::Linear(width, hidden[i])));
      width = hidden[i];
    }
    out_ = register_module("out", nn::Linear(width, in.num_classes));
  }
  torch::Tensor forward(torch::Tensor x) override { return Apply(*out_, features(x)); }
  torch::Tensor features(torch::Tensor x) override {
    x = x.flatten(1);
    for (const auto& layer : *layers_) x = torch::relu(Apply(*layer->as<nn::Linear>(), x));
    return x;
  }

 private:
  nn::ModuleList layers_;
  nn::Linear out_{nullptr};
};

// NIID-Bench SimpleCNN: Conv(C,6,5)-ReLU-MaxPool2-Conv(6,16,5)-ReLU-MaxPool2-FC120-ReLU-FC84-ReLU-FC.
class SimpleCnn final : public Network {
 public:
  explicit SimpleCnn(const InputShape& in) {
    conv1_ = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(in.channels, 6, 5)));
    conv2_ = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(6, 16, 5)));
    const int64_t h = ((in.height - 4) / 2 - 4) / 2, w = ((in.width - 4) / 2 - 4) / 2;
    fc1_ = register_module("fc1", nn::Linear(16 * h * w, 120));
    fc2_ = register_module("fc2", nn::Linear(120, 84));
    fc3_ = register_module("fc3", nn::Linear(84, in.num_classes));
  }
  torch::Tensor forward(torch::Tensor x) override { return Apply(*fc3_, features(x)); }
  torch::Tensor features(torch::Tensor x) override {
    x = ReluMaxPool2x2(Apply(*conv1_, x));
    x = ReluMaxPool2x2(Apply(*conv2_, x));
    x = torch::relu(Apply(*fc1_, x.flatten(1)));
    return torch::relu(Apply(*fc2_, x));
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  nn::Linear fc1_{nullptr}, fc2_{nullptr}, fc3_{nullptr};
};

// McMahan et al. 2017 CNN: two 5x5 convolutions (32, 64 channels, same padding) each followed by
// 2x2 max-pooling, a fully connected layer (512 units in the paper), and the output layer.
class FedAvgCnn final : public Network {
 public:
  FedAvgCnn(const InputShape& in, int64_t fc) {
    conv1_ = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(in.channels, 32, 5).padding(2)));
    conv2_ = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(32, 64, 5).padding(2)));
    fc1_ = register_module("fc1", nn::Linear(64 * (in.height / 4) * (in.width / 4), fc));
    fc2_ = register_module("fc2", nn::Linear(fc, in.num_classes));
  }
  torch::Tensor forward(torch::Tensor x) override { return Apply(*fc2_, features(x)); }
  torch::Tensor features(torch::Tensor x) override {
    x = ReluMaxPool2x2(Apply(*conv1_, x));
    x = ReluMaxPool2x2(Apply(*conv2_, x));
    return torch::relu(Apply(*fc1_, x.flatten(1)));
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  nn::Linear fc1_{nullptr}, fc2_{nullptr};
};

// Papernot et al. 2021's CNN for (Fashion-)MNIST under DP-SGD ("Tempered Sigmoid Activations for
// Deep Learning with Differential Privacy"): Conv(16, 8x8, stride 2, padding 3)-tanh-MaxPool(2,
// stride 1)-Conv(32, 4x4, stride 2)-tanh-MaxPool(2, stride 1)-FC32-tanh-FC. Bounded activations
// keep clipped gradients informative (86.1% on Fashion-MNIST at epsilon 2.93 in the paper).
class TanhCnn final : public Network {
 public:
  explicit TanhCnn(const InputShape& in) {
    conv1_ = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(in.channels, 16, 8).stride(2).padding(3)));
    conv2_ = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(16, 32, 4).stride(2)));
    fc1_ = register_module("fc1", nn::Linear(32 * Side(in.height) * Side(in.width), 32));
    fc2_ = register_module("fc2", nn::Linear(32, in.num_classes));
  }
  // The side of the second pooling's output for an input side n.
  static int64_t Side(int64_t n) { return ((n + 6 - 8) / 2 + 1 - 1 - 4) / 2 + 1 - 1; }
  torch::Tensor forward(torch::Tensor x) override { return Apply(*fc2_, features(x)); }
  torch::Tensor features(torch::Tensor x) override {
    x = torch::max_pool2d(torch::tanh(Apply(*conv1_, x)), {2, 2}, {1, 1});
    x = torch::max_pool2d(torch::tanh(Apply(*conv2_, x)), {2, 2}, {1, 1});
    return torch::tanh(Apply(*fc1_, x.flatten(1)));
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  nn::Linear fc1_{nullptr}, fc2_{nullptr};
};

// Batch norm, or group norm (model.norm: group, which mixes no examples: what DP-SGD needs),
// registered under one name so checkpoints name both alike.
struct Norm2d {
  nn::BatchNorm2d batch{nullptr};
  nn::GroupNorm group{nullptr};
  Norm2d() = default;
  Norm2d(nn::Module& owner, const std::string& name, int64_t channels, const std::string& kind) {
    if (kind == "group") {
      group = owner.register_module(name, nn::GroupNorm(nn::GroupNormOptions(std::gcd<int64_t>(channels, 8), channels)));
    } else {
      batch = owner.register_module(name, nn::BatchNorm2d(channels));
    }
  }
  explicit operator bool() const { return !batch.is_empty() || !group.is_empty(); }
  torch::Tensor operator()(const torch::Tensor& x) { return group ? Apply(*group, x) : batch->forward(x); }
};

// He et al. basic block: two 3x3 conv-BN layers and an identity (or 1x1 conv-BN) shortcut.
class BasicBlockImpl : public nn::Module {
 public:
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride, const std::string& norm) {
    conv1_ = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)));
    bn1_ = Norm2d(*this, "bn1", out, norm);
    conv2_ = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(out, out, 3).padding(1).bias(false)));
    bn2_ = Norm2d(*this, "bn2", out, norm);
    if (stride != 1 || in != out) {
      down_conv_ = register_module("down_conv", nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)));
      down_bn_ = Norm2d(*this, "down_bn", out, norm);
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    torch::Tensor y = torch::relu(bn1_(Apply(*conv1_, x)));
    y = bn2_(Apply(*conv2_, y));
    torch::Tensor shortcut = down_conv_ ? down_bn_(Apply(*down_conv_, x)) : x;
    return torch::relu(y + shortcut);
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, down_conv_{nullptr};
  Norm2d bn1_, bn2_, down_bn_;
};
TORCH_MODULE(BasicBlock);

// A small ResNet for 28x28 images: a 3x3 stem, three stages of one basic block (width w, 2w, 4w;
// the last two halve the resolution), global average pooling and a linear classifier.
class ResNet final : public Network {
 public:
  ResNet(const InputShape& in, int64_t w, const std::string& norm) {
    stem_ = register_module("stem", nn::Conv2d(nn::Conv2dOptions(in.channels, w, 3).padding(1).bias(false)));
    stem_bn_ = Norm2d(*this, "stem_bn", w, norm);
    block1_ = register_module("block1", BasicBlock(w, w, 1, norm));
    block2_ = register_module("block2", BasicBlock(w, 2 * w, 2, norm));
    block3_ = register_module("block3", BasicBlock(2 * w, 4 * w, 2, norm));
    fc_ = register_module("fc", nn::Linear(4 * w, in.num_classes));
  }
  torch::Tensor forward(torch::Tensor x) override { return Apply(*fc_, features(x)); }
  torch::Tensor features(torch::Tensor x) override {
    x = torch::relu(stem_bn_(Apply(*stem_, x)));
    x = block3_->forward(block2_->forward(block1_->forward(x)));
    return x.mean({2, 3});
  }

 private:
  nn::Conv2d stem_{nullptr};
  Norm2d stem_bn_;
  BasicBlock block1_{nullptr}, block2_{nullptr}, block3_{nullptr};
  nn::Linear fc_{nullptr};
};

// A small ViT (Dosovitskiy et al. 2021): the image cut into patch x patch squares, each linearly
// embedded (a strided convolution), a learned [CLS] token and learned position embeddings, a
// pre-norm transformer encoder, and a linear layer on the [CLS] token's output.
class Vit final : public Network {
 public:
  Vit(const InputShape& in, const ModelSpec& s) : side_h_(in.height / s.patch), side_w_(in.width / s.patch) {
    embed_ = register_module("embed",
                             nn::Conv2d(nn::Conv2dOptions(in.channels, s.dim, s.patch).stride(s.patch)));
    cls_ = register_parameter("cls", torch::randn({1, 1, s.dim}) * 0.02);
    pos_ = register_parameter("pos", torch::randn({1, 1 + side_h_ * side_w_, s.dim}) * 0.02);
    encoder_ = register_module("encoder", std::make_shared<TransformerEncoder>(s.dim, s.depth, s.heads, s.mlp_dim));
    fc_ = register_module("fc", nn::Linear(s.dim, in.num_classes));
  }
  torch::Tensor forward(torch::Tensor x) override { return Apply(*fc_, features(x)); }
  torch::Tensor features(torch::Tensor x) override {
    TORCH_CHECK(x.size(2) / embed_->options.kernel_size()->at(0) == side_h_ &&
                    x.size(3) / embed_->options.kernel_size()->at(1) == side_w_,
                "vit: images of ", x.size(2), "x", x.size(3), " do not match the model's patch grid");
    const int64_t batch = x.size(0);
    torch::Tensor tokens = Apply(*embed_, x).flatten(2).transpose(1, 2);  // [B, N, D]
    tokens = torch::cat({ExpandToBatch(cls_, batch), tokens}, 1) + ExpandToBatch(pos_, batch);
    return encoder_->forward(tokens).select(1, 0);
  }

 private:
  int64_t side_h_, side_w_;
  nn::Conv2d embed_{nullptr};
  torch::Tensor cls_, pos_;
  std::shared_ptr<TransformerEncoder> encoder_;
  nn::Linear fc_{nullptr};
};


TypedRegistry<ModelFactory>& Models() {
  static auto* registry = new TypedRegistry<ModelFactory>("model", "model");
  return *registry;
}

// Each factory checks what its network needs of the input and the keys; each model registers the
// keys it reads, with ModelSpec's defaults.
[[maybe_unused]] const bool kRegistered = [] {
  using Made = absl::StatusOr<std::shared_ptr<Network>>;
  const ModelSpec d;
  RegisterModel({"model", "mlp", "fully connected, ReLU between (model.hidden)",
                 {IntegerListKey("model.hidden", d.hidden, "mlp: hidden layer widths, e.g. 200,200", 1, 1 << 20)}},
                [](const ModelSpec& spec, const InputShape& input) -> Made {
                  if (spec.hidden.empty()) return absl::InvalidArgumentError("mlp: model.hidden names no layer");
                  return std::make_shared<Mlp>(input, spec.hidden);
                });
  RegisterModel({"model", "simple_cnn", "two conv-pool stages and three linear layers (LeNet-like)", {}},
                [](const ModelSpec&, const InputShape& input) -> Made {
                  if (input.height < 16 || input.width < 16) {
                    return absl::InvalidArgumentError("simple_cnn needs images of at least 16x16");
                  }
                  return std::make_shared<SimpleCnn>(input);
                });
  RegisterModel({"model", "tanh_cnn", "Papernot et al. 2021's small CNN with tanh activations, for DP-SGD", {}},
                [](const ModelSpec&, const InputShape& input) -> Made {
                  if (TanhCnn::Side(input.height) < 1 || TanhCnn::Side(input.width) < 1) {
                    return absl::InvalidArgumentError("tanh_cnn needs images of at least 14x14");
                  }
                  return std::make_shared<TanhCnn>(input);
                });
  RegisterModel({"model", "fedavg_cnn", "McMahan et al.'s CNN: two 5x5 conv-pool stages and model.fc units",
                 {IntegerKey("model.fc", d.fc, "fedavg_cnn: units of the fully connected hidden layer", 1, 1 << 16)}},
                [](const ModelSpec& spec, const InputShape& input) -> Made {
                  return std::make_shared<FedAvgCnn>(input, spec.fc);
                });
  RegisterModel({"model", "resnet", "a small ResNet of model.width channels",
                 {IntegerKey("model.width", d.width, "resnet: channels of the first stage", 1, 1024),
                  ChoiceKey("model.norm", d.norm,
                            "resnet: batch or group normalization (group mixes no examples, as privacy.mode "
                            "example needs)",
                            {"batch", "group"})}},
                [](const ModelSpec& spec, const InputShape& input) -> Made {
                  return std::make_shared<ResNet>(input, spec.width, spec.norm);
                });
  RegisterModel({"model", "vit", "a vision transformer (model.patch, model.dim, model.depth, model.heads)",
                 {IntegerKey("model.patch", d.patch, "vit: side of the square patches", 1, 1024),
                  IntegerKey("model.dim", d.dim, "vit: token width (a multiple of model.heads)", 1, 65536),
                  IntegerKey("model.depth", d.depth, "vit: transformer blocks", 1, 256),
                  IntegerKey("model.heads", d.heads, "vit: attention heads", 1, 1024),
                  IntegerKey("model.mlp_dim", d.mlp_dim, "vit: hidden width of each block's MLP", 1, 1 << 20)}},
                [](const ModelSpec& spec, const InputShape& input) -> Made {
                  if (spec.patch <= 0 || input.height % spec.patch != 0 || input.width % spec.patch != 0) {
                    return absl::InvalidArgumentError(absl::StrCat("vit: patch ", spec.patch, " does not divide ",
                                                                   input.height, "x", input.width,
                                                                   " images (28x28 takes 4, 7 or 14)"));
                  }
                  if (spec.dim % spec.heads != 0) {
                    return absl::InvalidArgumentError(
                        absl::StrCat("vit: dim ", spec.dim, " is not a multiple of heads ", spec.heads));
                  }
                  return std::make_shared<Vit>(input, spec);
                });
  // Refused when the job is read, before anything is built or any site joins.
  RegisterJobCheck([](const Job& job) -> absl::Status {
    if (job.model.name != "vit") return absl::OkStatus();
    const int64_t dim = JobInteger(job, "model.dim"), heads = JobInteger(job, "model.heads");
    if (dim % heads == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("job key 'model.dim': ", dim, " is not a multiple of model.heads (", heads, ")"));
  });
  return true;
}();

}  // namespace

bool RegisterModel(ComponentInfo info, ModelFactory factory) {
  return Models().Register(std::move(info), std::move(factory));
}

std::vector<std::string> ModelNames() { return ComponentNames("model"); }

ModelSpec ModelSpecFromJob(const Job& job) {
  ModelSpec spec;
  spec.name = job.model.name;
  spec.hidden = JobIntegers(job, "model.hidden");
  spec.width = JobInteger(job, "model.width");
  spec.norm = JobParam(job, "model.norm");
  spec.fc = JobInteger(job, "model.fc");
  spec.patch = JobInteger(job, "model.patch");
  spec.dim = JobInteger(job, "model.dim");
  spec.depth = JobInteger(job, "model.depth");
  spec.heads = JobInteger(job, "model.heads");
  spec.mlp_dim = JobInteger(job, "model.mlp_dim");
  return spec;
}

absl::StatusOr<std::shared_ptr<Network>> MakeModel(const ModelSpec& spec, const InputShape& input) {
  auto factory = Models().Get(spec.name);
  if (!factory.ok()) return factory.status();
  return (**factory)(spec, input);
}

int64_t CountParameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) {
    if (p.requires_grad()) n += p.numel();
  }
  return n;
}

}  // namespace allround::models
