#include "algorithms/modes/vae.h"

#include <torch/torch.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "algorithms/augment/image_ops.h"
#include "algorithms/modes/classifier.h"
#include "algorithms/modes/registry.h"
#include "algorithms/optim/optimizer.h"
#include "common/random.h"

namespace allround::modes {
namespace {

namespace nn = torch::nn;

class VaeNet : public nn::Module {
 public:
  VaeNet(int64_t pixels, int64_t hidden, int64_t latent)
      : enc_(register_module("encoder", nn::Linear(pixels, hidden))),
        mu_(register_module("encoder_mu", nn::Linear(hidden, latent))),
        logvar_(register_module("encoder_logvar", nn::Linear(hidden, latent))),
        dec1_(register_module("decoder1", nn::Linear(latent, hidden))),
        dec2_(register_module("decoder2", nn::Linear(hidden, pixels))) {}

  std::pair<torch::Tensor, torch::Tensor> Encode(const torch::Tensor& pixels) {
    const torch::Tensor h = torch::relu(enc_->forward(pixels.flatten(1)));
    return {mu_->forward(h), logvar_->forward(h)};
  }
  torch::Tensor Decode(const torch::Tensor& z) { return dec2_->forward(torch::relu(dec1_->forward(z))); }

 private:
  nn::Linear enc_, mu_, logvar_, dec1_, dec2_;
};

class VaeMode final : public SingleNetworkMode {
 public:
  VaeMode(const Job& job, const InputInfo& input, std::shared_ptr<VaeNet> net,
          std::unique_ptr<torch::optim::Optimizer> opt)
      : SingleNetworkMode(net, std::move(opt)), spec_(VaeSpecFromJob(job)), seed_(job.seed), input_(input), net_(std::move(net)) {}

  absl::StatusOr<StepResult> TrainStep(const Batch& batch, double lr, GradientSync* sync) override {
    if (auto s = CheckInputs(batch.inputs); !s.ok()) return s;
    net_->train();
    ZeroGrad();
    const torch::Tensor x = Pixels(batch.inputs);
    const Pass pass = Forward(x, batch.seed, /*sample=*/true);
    auto value = Step((pass.terms.recon + pass.terms.kl).mean(), sync, lr);
    if (!value.ok()) return value.status();
    return StepResult{*value, batch.inputs.size(0)};
  }

  absl::StatusOr<EvalSums> Evaluate(const at::Tensor& inputs, const at::Tensor& targets, int64_t batch_size) override {
    if (auto s = CheckInputs(inputs); !s.ok()) return s;
    torch::NoGradGuard no_grad;
    net_->eval();
    EvalSums sums;  // no confusion: this mode does not classify
    double recon = 0, kl = 0, mse = 0;
    const int64_t n = inputs.size(0);
    for (int64_t start = 0; start < n; start += batch_size) {
      const int64_t len = std::min(batch_size, n - start);
      const torch::Tensor x = Pixels(inputs.narrow(0, start, len));
      // One posterior sample per image from a seed of the evaluation's own (the same every time).
      const Pass pass = Forward(x, DeriveSeed(seed_, "vae-eval", static_cast<uint64_t>(start)), /*sample=*/true);
      recon += pass.terms.recon.sum().item<double>();
      kl += pass.terms.kl.sum().item<double>();
      const torch::Tensor mean_recon = torch::sigmoid(net_->Decode(pass.mu));
      mse += (mean_recon - x.flatten(1)).pow(2).mean(1).sum().item<double>();
      if (start == 0) {
        preview_ = x.narrow(0, 0, std::min<int64_t>(len, 16)).cpu();
        preview_recon_ = mean_recon.narrow(0, 0, preview_.size(0)).view_as(preview_).cpu();
      }
    }
    sums.examples = n;
    sums.loss_sum = recon + kl;
    const double d = static_cast<double>(std::max<int64_t>(1, n));
    sums.monitors["elbo"] = -(recon + kl) / d;
    sums.monitors["recon_bce"] = recon / d;
    sums.monitors["kl"] = kl / d;
    sums.monitors["recon_mse"] = mse / d;
    return sums;
  }

  std::vector<GrayImage> Images() override {
    if (!preview_.defined()) return {};
    // Originals in the top row, their reconstructions under them.
    const torch::Tensor pairs = torch::cat({preview_, preview_recon_}, 0);
    std::vector<GrayImage> out = {augment::ImageGridPicture("reconstructions", pairs, preview_.size(0))};
    if (spec_.denoise_std > 0) return out;
    torch::NoGradGuard no_grad;
    const auto options = net_->parameters()[0].options();
    const torch::Tensor z = SeededNormal({64, spec_.latent}, DeriveSeed(seed_, "vae-samples"), options);
    const torch::Tensor samples =
        torch::sigmoid(net_->Decode(z)).view({64, input_.channels, input_.height, input_.width}).cpu();
    out.push_back(augment::ImageGridPicture("samples", samples, 8));
    return out;
  }

 private:
  struct Pass {
    VaeTerms terms;
    torch::Tensor mu;
  };

  // The forward pass on pixels x in [0, 1]. The VAE samples z from the posterior; the denoising
  // autoencoder corrupts its input instead and decodes the posterior mean.
  Pass Forward(const torch::Tensor& x, uint64_t seed, bool sample) {
    const torch::Tensor target = x.flatten(1);
    if (spec_.denoise_std > 0) {
      const torch::Tensor noisy = (x + spec_.denoise_std * SeededNormal(x.sizes(), seed, x.options())).clamp(0, 1);
      auto [mu, logvar] = net_->Encode(noisy);
      const torch::Tensor logits = net_->Decode(mu);
      return {{torch::binary_cross_entropy_with_logits(logits, target, {}, {}, at::Reduction::None).sum(1),
               torch::zeros({x.size(0)}, x.options())},
              mu};
    }
    auto [mu, logvar] = net_->Encode(x);
    const torch::Tensor z =
        sample ? mu + torch::exp(0.5 * logvar) * SeededNormal(mu.sizes(), seed, mu.options()) : mu;
    return {NegativeElboTerms(net_->Decode(z), target, mu, logvar), mu};
  }

  static torch::Tensor Pixels(const torch::Tensor& inputs) {
    return augment::Denormalize(inputs, kImageMean, kImageStd).clamp(0, 1);
  }

  absl::Status CheckInputs(const at::Tensor& x) const {
    if (x.dim() != 4 || x.size(1) != input_.channels || x.size(2) != input_.height || x.size(3) != input_.width) {
      return absl::InvalidArgumentError(absl::StrCat("batch inputs of shape ", c10::str(x.sizes()), ", expected [B, ",
                                                     input_.channels, ", ", input_.height, ", ", input_.width, "]"));
    }
    return absl::OkStatus();
  }

  VaeSpec spec_;
  uint64_t seed_;
  InputInfo input_;
  std::shared_ptr<VaeNet> net_;
  torch::Tensor preview_, preview_recon_;  // the last evaluation's first images and reconstructions
};

}  // namespace

VaeTerms NegativeElboTerms(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& mu,
                           const at::Tensor& logvar) {
  VaeTerms t;
  t.recon = at::binary_cross_entropy_with_logits(logits, target, {}, {}, at::Reduction::None).sum(1);
  t.kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1);
  return t;
}

VaeSpec VaeSpecFromJob(const Job& job) {
  VaeSpec s;
  s.latent = JobInteger(job, "vae.latent");
  s.hidden = JobInteger(job, "vae.hidden");
  s.denoise_std = JobNumber(job, "vae.denoise_std");
  return s;
}

absl::StatusOr<std::unique_ptr<LearningMode>> MakeVaeMode(const Job& job, const InputInfo& input, at::Device device) {
  const VaeSpec spec = VaeSpecFromJob(job);
  torch::manual_seed(DeriveSeed(job.seed, "model-init"));
  auto net = std::make_shared<VaeNet>(input.channels * input.height * input.width, spec.hidden, spec.latent);
  net->to(device);
  auto opt = optim::MakeOptimizer(job.optimizer, net->parameters());
  if (!opt.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'optimizer.name': ", opt.status().message()));
  return std::unique_ptr<LearningMode>(std::make_unique<VaeMode>(job, input, net, *std::move(opt)));
}

namespace {
[[maybe_unused]] const bool kRegistered = [] {
  ModeNeeds needs;
  needs.own_networks = true;
  const VaeSpec d;
  std::vector<ComponentKey> keys = {
      IntegerKey("vae.latent", d.latent, "vae: latent dimensions", 1, 4096),
      IntegerKey("vae.hidden", d.hidden, "vae: hidden width of encoder and decoder", 1, 65536),
      NumberKey("vae.denoise_std", d.denoise_std, "vae: > 0 trains a denoising autoencoder with this input noise", 0, 10),
  };
  return RegisterMode({"mode", "vae", "variational autoencoder (Kingma and Welling 2014)", std::move(keys)}, needs,
                      [](const ModeInputs& in) { return MakeVaeMode(in.job, in.input, in.device); });
}();
}  // namespace

}  // namespace allround::modes
