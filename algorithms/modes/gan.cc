#include "algorithms/modes/gan.h"

#include <torch/torch.h>

#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "algorithms/augment/image_ops.h"
#include "algorithms/metrics.h"
#include "algorithms/models/network.h"
#include "algorithms/modes/classifier.h"
#include "algorithms/modes/registry.h"
#include "algorithms/optim/optimizer.h"
#include "common/random.h"

namespace allround::modes {
namespace {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

class Generator : public nn::Module {
 public:
  Generator(int64_t noise, int64_t w, bool bn)
      : w_(w),
        fc_(register_module("fc", nn::Linear(noise, 2 * w * 7 * 7))),
        up1_(register_module("up1", nn::ConvTranspose2d(nn::ConvTranspose2dOptions(2 * w, w, 4).stride(2).padding(1)))),
        up2_(register_module("up2", nn::ConvTranspose2d(nn::ConvTranspose2dOptions(w, 1, 4).stride(2).padding(1)))) {
    if (bn) {
      bn0_ = register_module("bn0", nn::BatchNorm1d(2 * w * 7 * 7));
      bn1_ = register_module("bn1", nn::BatchNorm2d(w));
    }
  }
  // z [B, noise] -> images [B, 1, 28, 28] in [-1, 1].
  torch::Tensor forward(const torch::Tensor& z) {
    torch::Tensor x = fc_->forward(z);
    if (bn0_) x = bn0_->forward(x);
    x = up1_->forward(torch::relu(x).view({z.size(0), 2 * w_, 7, 7}));
    if (bn1_) x = bn1_->forward(x);
    return torch::tanh(up2_->forward(torch::relu(x)));
  }

 private:
  int64_t w_;
  nn::Linear fc_;
  nn::ConvTranspose2d up1_, up2_;
  nn::BatchNorm1d bn0_{nullptr};
  nn::BatchNorm2d bn1_{nullptr};
};

class Discriminator : public nn::Module {
 public:
  Discriminator(int64_t w, bool bn)
      : conv1_(register_module("conv1", nn::Conv2d(nn::Conv2dOptions(1, w, 4).stride(2).padding(1)))),
        conv2_(register_module("conv2", nn::Conv2d(nn::Conv2dOptions(w, 2 * w, 4).stride(2).padding(1)))),
        fc_(register_module("fc", nn::Linear(2 * w * 7 * 7, 1))) {
    if (bn) bn2_ = register_module("bn2", nn::BatchNorm2d(2 * w));
  }
  // images [B, 1, 28, 28] in [-1, 1] -> logits [B].
  torch::Tensor forward(const torch::Tensor& x) {
    const auto leaky = F::LeakyReLUFuncOptions().negative_slope(0.2);
    torch::Tensor h = F::leaky_relu(conv1_->forward(x), leaky);
    h = conv2_->forward(h);
    if (bn2_) h = bn2_->forward(h);
    h = F::leaky_relu(h, leaky);
    return fc_->forward(h.flatten(1)).view(-1);
  }

 private:
  nn::Conv2d conv1_, conv2_;
  nn::Linear fc_;
  nn::BatchNorm2d bn2_{nullptr};
};

// DCGAN's initialization (Radford et al. 2016, section 4): every convolution, transposed
// convolution and linear weight from N(0, 0.02), batch-norm scales from N(1, 0.02), all biases 0.
// Drawn from the global generator, which the caller seeds. On the shipped job the generator's
// Frechet distance fell faster from it than from LibTorch's defaults: 24.07 vs 30.99 after one
// epoch, 4.77 vs 7.54 after ten.
void InitializeAsDcgan(nn::Module& nets) {
  for (const auto& m : nets.modules(false)) {
    const bool weight_layer = m->as<nn::Conv2dImpl>() || m->as<nn::ConvTranspose2dImpl>() || m->as<nn::LinearImpl>();
    const bool norm_layer = m->as<nn::BatchNorm1dImpl>() || m->as<nn::BatchNorm2dImpl>();
    if (!weight_layer && !norm_layer) continue;
    for (auto& p : m->named_parameters(false)) {
      if (p.key() == "bias") {
        p.value().zero_();
      } else {
        p.value().normal_(norm_layer ? 1.0 : 0.0, 0.02);
      }
    }
  }
}

// Both networks under one module, so named tensors read "generator...", "discriminator..." and,
// with gan.ema, "generator_ema..." (a copy of the generator that follows its weights as an
// exponential moving average; it is never trained, so its parameters need no gradient).
class GanNets : public nn::Module {
 public:
  GanNets(int64_t noise, int64_t w, bool bn, bool dcgan_init, bool ema)
      : g(register_module("generator", std::make_shared<Generator>(noise, w, bn))),
        d(register_module("discriminator", std::make_shared<Discriminator>(w, bn))) {
    torch::NoGradGuard no_grad;
    if (dcgan_init) InitializeAsDcgan(*this);
    if (!ema) return;
    g_ema = register_module("generator_ema", std::make_shared<Generator>(noise, w, bn));
    const auto from = g->parameters();
    const auto to = g_ema->parameters();
    for (size_t i = 0; i < to.size(); ++i) to[i].copy_(from[i]).requires_grad_(false);
  }
  // The trained parameters (both networks, not the average), by name and in the same order.
  std::vector<std::pair<std::string, at::Tensor>> Trained() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& p : named_parameters()) {
      if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
    }
    return out;
  }
  std::vector<at::Tensor> TrainedTensors() const { return TensorsOf(Trained()); }
  std::shared_ptr<Generator> g;
  std::shared_ptr<Discriminator> d;
  std::shared_ptr<Generator> g_ema;
};

// fn(layer) for each batch-norm layer of a module.
template <typename Fn>
void ForEachBatchNorm(nn::Module& module, Fn fn) {
  for (const auto& m : module.modules(false)) {
    if (auto* bn = m->as<nn::BatchNorm1dImpl>()) fn(*bn);
    if (auto* bn = m->as<nn::BatchNorm2dImpl>()) fn(*bn);
  }
}

// Standardized inputs <-> the generator's [-1, 1].
torch::Tensor ToTanhRange(const torch::Tensor& x) {
  return augment::Denormalize(x, kImageMean, kImageStd).clamp(0, 1) * 2 - 1;
}
torch::Tensor FromTanhRange(const torch::Tensor& g) { return augment::Normalize((g + 1) / 2, kImageMean, kImageStd); }

class GanMode final : public LearningMode {
 public:
  GanMode(const Job& job, const InputInfo& input, std::shared_ptr<GanNets> nets,
          std::unique_ptr<torch::optim::Optimizer> opt_g, std::unique_ptr<torch::optim::Optimizer> opt_d)
      : spec_(GanSpecFromJob(job)),
        seed_(job.seed),
        input_(input),
        nets_(std::move(nets)),
        opt_g_(std::move(opt_g)),
        opt_d_(std::move(opt_d)) {}

  absl::StatusOr<StepResult> TrainStep(const Batch& batch, double lr, GradientSync* sync) override {
    if (auto s = CheckInputs(batch.inputs); !s.ok()) return s;
    nets_->train();
    const int64_t b = batch.inputs.size(0);
    const torch::Tensor real = ToTanhRange(batch.inputs);
    if (batch.noise.defined() && batch.noise.sizes() != at::IntArrayRef({b, spec_.noise_dim})) {
      return absl::InvalidArgumentError(absl::StrCat("batch noise of shape ", c10::str(batch.noise.sizes()), ", expected [",
                                                     b, ", ", spec_.noise_dim, "]"));
    }
    const torch::Tensor z = batch.noise.defined() ? batch.noise.to(real.options())
                                                  : SeededNormal({b, spec_.noise_dim}, batch.seed, real.options());
    const torch::Tensor ones = torch::ones({b}, real.options()), zeros = torch::zeros({b}, real.options());
    // D: real images are 1, generated ones 0 (no gradient reaches G).
    opt_d_->zero_grad();
    opt_g_->zero_grad();
    const torch::Tensor fake = nets_->g->forward(z);
    torch::Tensor d_loss = F::binary_cross_entropy_with_logits(nets_->d->forward(real), ones) +
                           F::binary_cross_entropy_with_logits(nets_->d->forward(fake.detach()), zeros);
    if (proximal_.active()) d_loss = d_loss + proximal_.Penalty(nets_->TrainedTensors());
    auto d_value = optim::BackwardAndStep(d_loss, sync, *opt_d_, lr);
    if (!d_value.ok()) return d_value.status();
    // G: the non-saturating loss, -log D(G(z)), through the updated D.
    opt_d_->zero_grad();
    opt_g_->zero_grad();
    torch::Tensor g_loss = F::binary_cross_entropy_with_logits(nets_->d->forward(fake), ones);
    if (proximal_.active()) g_loss = g_loss + proximal_.Penalty(nets_->TrainedTensors());
    auto g_value = optim::BackwardAndStep(g_loss, sync, *opt_g_, lr);
    if (!g_value.ok()) return g_value.status();
    if (nets_->g_ema) {
      // After the reduced steps every rank holds the same generator, so the averages agree too.
      torch::NoGradGuard no_grad;
      const auto from = nets_->g->parameters();
      const auto to = nets_->g_ema->parameters();
      for (size_t i = 0; i < to.size(); ++i) to[i].mul_(spec_.ema).add_(from[i], 1 - spec_.ema);
    }
    return StepResult{*d_value + *g_value, b};
  }

  absl::StatusOr<EvalSums> Evaluate(const at::Tensor& inputs, const at::Tensor& targets, int64_t batch_size) override {
    if (auto s = CheckInputs(inputs); !s.ok()) return s;
    if (!classifier_) return absl::FailedPreconditionError("gan: evaluation needs labelled images to train its classifier");
    torch::NoGradGuard no_grad;
    nets_->eval();
    classifier_->eval();
    EvalSums sums;
    if (inputs.size(0) < 2) return sums;
    std::vector<torch::Tensor> real, fake_classes;
    int64_t correct = 0;
    for (int64_t s = 0; s < inputs.size(0); s += batch_size) {
      const torch::Tensor x = inputs.narrow(0, s, std::min(batch_size, inputs.size(0) - s));
      const torch::Tensor f = classifier_->features(x);
      real.push_back(f);
      correct += classifier_->forward(x).argmax(1).eq(targets.narrow(0, s, x.size(0))).sum().item<int64_t>();
    }
    const torch::Tensor real_features = torch::cat(real);
    // The distance of one generator's gan.eval_samples images (fixed noise) from the test images.
    const auto distance = [&](Generator& generator, bool keep_classes) {
      std::vector<torch::Tensor> fake;
      for (int64_t s = 0; s < spec_.eval_samples; s += batch_size) {
        const int64_t n = std::min(batch_size, spec_.eval_samples - s);
        const torch::Tensor z = SeededNormal({n, spec_.noise_dim},
                                             DeriveSeed(seed_, "gan-eval", static_cast<uint64_t>(s)), inputs.options());
        const torch::Tensor images = FromTanhRange(generator.forward(z));
        const torch::Tensor f = classifier_->features(images);
        fake.push_back(f);
        if (keep_classes) fake_classes.push_back(classifier_->forward(images).argmax(1));
      }
      return metrics::FrechetDistance(real_features, torch::cat(fake));
    };
    const double fd = distance(EvaluationGenerator(), true);
    if (nets_->g_ema) sums.monitors["fd_raw"] = distance(*nets_->g, false);
    const torch::Tensor histogram = torch::cat(fake_classes).bincount({}, input_.num_classes).to(torch::kDouble);
    sums.examples = inputs.size(0);
    sums.loss_sum = fd * static_cast<double>(sums.examples);
    sums.monitors["fd"] = fd;
    sums.monitors["min_class_frac"] = (histogram.min() / histogram.sum()).item<double>();
    sums.extra_correct["classifier_accuracy"] = correct;
    return sums;
  }

  std::vector<GrayImage> Images() override {
    torch::NoGradGuard no_grad;
    nets_->eval();
    const auto options = nets_->parameters()[0].options();
    const torch::Tensor z = SeededNormal({100, spec_.noise_dim}, DeriveSeed(seed_, "gan-grid"), options);
    const torch::Tensor images = ((EvaluationGenerator().forward(z) + 1) / 2).clamp(0, 1);
    return {augment::ImageGridPicture("samples", images, 10)};
  }

  // The evaluation classifier: a CNN trained on these labelled images (seeded, so every rank
  // and every resumed run trains the same one). Retrained only when the images change.
  void SetEvaluationBank(const at::Tensor& inputs, const at::Tensor& labels) override {
    if (classifier_ && inputs.data_ptr() == bank_ptr_ && inputs.size(0) == bank_rows_) return;
    bank_ptr_ = inputs.data_ptr();
    bank_rows_ = inputs.size(0);
    classifier_ = TrainClassifier(inputs, labels);
  }

  std::vector<at::Tensor> TrainableParameters() override { return nets_->TrainedTensors(); }
  std::vector<at::Tensor> ModelState() override { return TensorsOf(ModuleTensors(*nets_, "model/")); }
  std::vector<at::Tensor> Buffers() override { return nets_->buffers(); }
  int64_t ParameterCount() override { return models::CountParameters(*nets_); }

  NamedTensors State() override {
    NamedTensors out = ModuleTensors(*nets_, "model/");
    for (auto& e : optim::OptimizerState(*opt_g_, NamedParameters(*nets_->g, "generator."))) out.push_back(std::move(e));
    for (auto& e : optim::OptimizerState(*opt_d_, NamedParameters(*nets_->d, "discriminator."))) {
      out.push_back(std::move(e));
    }
    return out;
  }
  absl::Status LoadState(const NamedTensors& state) override {
    std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
    if (auto s = CopyCheckedInto(ModuleTensors(*nets_, "model/"), by_name); !s.ok()) return s;
    if (auto s = optim::LoadOptimizerState(*opt_g_, NamedParameters(*nets_->g, "generator."), by_name); !s.ok()) {
      return s;
    }
    return optim::LoadOptimizerState(*opt_d_, NamedParameters(*nets_->d, "discriminator."), by_name);
  }
  absl::Status SetProximalTerm(double mu, const NamedTensors& reference) override {
    return proximal_.Set(mu, reference, nets_->Trained());
  }

 private:
  // The generator that evaluations and sample grids use, in eval mode: the average when there is
  // one. Its batch-norm statistics are recomputed for its own weights first (the training batches'
  // were the trained generator's), as a cumulative average over fixed noise, as SWA does.
  Generator& EvaluationGenerator() {
    if (!nets_->g_ema) {
      nets_->g->eval();
      return *nets_->g;
    }
    torch::NoGradGuard no_grad;
    Generator& g = *nets_->g_ema;
    ForEachBatchNorm(g, [](auto& bn) {
      bn.reset_running_stats();
      bn.options.momentum(c10::nullopt);  // a cumulative average over the batches below
    });
    g.train();
    const auto options = nets_->g->parameters()[0].options();
    for (int64_t i = 0; spec_.batch_norm && i < kRecalibrationBatches; ++i) {
      g.forward(SeededNormal({kRecalibrationBatch, spec_.noise_dim},
                             DeriveSeed(seed_, "gan-ema-batch-norm", static_cast<uint64_t>(i)), options));
    }
    ForEachBatchNorm(g, [](auto& bn) { bn.options.momentum(0.1); });
    g.eval();
    return g;
  }
  static constexpr int64_t kRecalibrationBatches = 20, kRecalibrationBatch = 500;

  std::shared_ptr<models::Network> TrainClassifier(const at::Tensor& inputs, const at::Tensor& labels) const {
    models::ModelSpec spec;
    spec.name = "fedavg_cnn";
    spec.fc = spec_.classifier_features;
    std::shared_ptr<models::Network> net;
    {
      // Initial weights come from the global generator: one seeding thread at a time (sites hosted
      // on a thread pool train their classifiers concurrently).
      static std::mutex init;
      std::lock_guard<std::mutex> lock(init);
      torch::manual_seed(DeriveSeed(seed_, "gan-classifier"));
      net = *models::MakeModel(spec, {input_.channels, input_.height, input_.width, input_.num_classes});
    }
    net->to(inputs.device());
    torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.02).momentum(0.9));
    auto gen = at::detail::createCPUGenerator(DeriveSeed(seed_, "gan-classifier-order"));
    net->train();
    const int64_t n = inputs.size(0), batch = 64;
    for (int64_t e = 0; e < spec_.classifier_epochs; ++e) {
      const torch::Tensor order = at::randperm(n, gen, torch::TensorOptions().dtype(torch::kLong)).to(inputs.device());
      for (int64_t s = 0; s + batch <= n; s += batch) {
        const torch::Tensor idx = order.narrow(0, s, batch);
        sgd.zero_grad();
        torch::nn::functional::cross_entropy(net->forward(inputs.index_select(0, idx)), labels.index_select(0, idx))
            .backward();
        sgd.step();
      }
    }
    net->eval();
    return net;
  }

  absl::Status CheckInputs(const at::Tensor& x) const {
    if (x.dim() != 4 || x.size(1) != 1 || x.size(2) != 28 || x.size(3) != 28) {
      return absl::InvalidArgumentError(
          absl::StrCat("batch inputs of shape ", c10::str(x.sizes()), ", expected [B, 1, 28, 28] (DCGAN for 28x28)"));
    }
    return absl::OkStatus();
  }

  GanSpec spec_;
  uint64_t seed_;
  InputInfo input_;
  std::shared_ptr<GanNets> nets_;
  std::unique_ptr<torch::optim::Optimizer> opt_g_, opt_d_;
  ProximalTerm proximal_;
  std::shared_ptr<models::Network> classifier_;
  const void* bank_ptr_ = nullptr;
  int64_t bank_rows_ = 0;
};

}  // namespace

GanSpec GanSpecFromJob(const Job& job) {
  GanSpec s;
  s.noise_dim = JobInteger(job, "gan.noise_dim");
  s.width = JobInteger(job, "gan.width");
  s.eval_samples = JobInteger(job, "gan.eval_samples");
  s.classifier_epochs = JobInteger(job, "gan.classifier_epochs");
  s.classifier_features = JobInteger(job, "gan.classifier_features");
  s.ema = JobNumber(job, "gan.ema");
  s.batch_norm = JobBool(job, "gan.batch_norm");
  s.init = JobParam(job, "gan.init");
  return s;
}

absl::StatusOr<std::unique_ptr<LearningMode>> MakeGanMode(const Job& job, const InputInfo& input, at::Device device,
                                                          const at::Tensor& bank_inputs, const at::Tensor& bank_labels) {
  if (input.channels != 1 || input.height != 28 || input.width != 28) {
    return absl::InvalidArgumentError("gan: the DCGAN here is for 1 x 28 x 28 images");
  }
  const GanSpec spec = GanSpecFromJob(job);
  torch::manual_seed(DeriveSeed(job.seed, "model-init"));
  auto nets = std::make_shared<GanNets>(spec.noise_dim, spec.width, spec.batch_norm, spec.init == "dcgan", spec.ema > 0);
  nets->to(device);
  auto opt_g = optim::MakeOptimizer(job.optimizer, nets->g->parameters());
  if (!opt_g.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'optimizer.name': ", opt_g.status().message()));
  auto opt_d = optim::MakeOptimizer(job.optimizer, nets->d->parameters());
  if (!opt_d.ok()) return opt_d.status();
  auto mode = std::make_unique<GanMode>(job, input, nets, *std::move(opt_g), *std::move(opt_d));
  if (bank_inputs.defined() && bank_inputs.size(0) > 0) mode->SetEvaluationBank(bank_inputs.to(device), bank_labels.to(device));
  return std::unique_ptr<LearningMode>(std::move(mode));
}

namespace {
[[maybe_unused]] const bool kRegistered = [] {
  ModeNeeds needs;
  needs.own_networks = true;
  needs.eval_bank = true;
  const GanSpec d;
  std::vector<ComponentKey> keys = {
      IntegerKey("gan.noise_dim", d.noise_dim, "gan: generator input size", 1, 65536),
      IntegerKey("gan.width", d.width, "gan: channels of the first discriminator layer", 1, 4096),
      IntegerKey("gan.eval_samples", d.eval_samples, "gan: generated images the Frechet distance compares", 2,
                 int64_t{1} << 40),
      BooleanKey("gan.batch_norm", d.batch_norm, "gan: batch norm in generator and discriminator"),
      ChoiceKey("gan.init", d.init, "gan: initial weights, DCGAN's N(0, 0.02) or LibTorch's defaults",
                {"dcgan", "torch"}),
      IntegerKey("gan.classifier_epochs", d.classifier_epochs, "gan: epochs of the evaluation classifier", 1, 1000),
      NumberKey("gan.ema", d.ema, "gan: decay of the generator's weight average that is evaluated (0: none)", 0,
                0.999999),
      IntegerKey("gan.classifier_features", d.classifier_features,
                 "gan: penultimate width of the evaluation classifier (the features the Frechet distance compares)", 1,
                 1 << 16),
  };
  return RegisterMode({"mode", "gan", "DCGAN (Radford et al. 2016), scored by a classifier trained on the bank",
                       std::move(keys)},
                      needs, [](const ModeInputs& in) {
                        return MakeGanMode(in.job, in.input, in.device, in.bank_inputs, in.bank_labels);
                      });
}();
}  // namespace

}  // namespace allround::modes
