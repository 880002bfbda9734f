#include "algorithms/modes/dino.h"

#include <torch/torch.h>

#include <cmath>
#include <map>

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

constexpr double kPi = 3.14159265358979323846;

// The DINO head: Linear-GELU-Linear-GELU-Linear to the bottleneck, L2 normalization, then a
// weight-normalized linear layer without bias whose row norms are fixed at 1 (DINO's
// norm_last_layer).
class DinoHead : public torch::nn::Module {
 public:
  DinoHead(int64_t in, int64_t hidden, int64_t bottleneck, int64_t out, bool bn)
      : l1_(register_module("l1", torch::nn::Linear(in, hidden))),
        l2_(register_module("l2", torch::nn::Linear(hidden, hidden))),
        l3_(register_module("l3", torch::nn::Linear(hidden, bottleneck))),
        last_(register_parameter("last_v", torch::randn({out, bottleneck}) * 0.02)) {
    if (bn) {
      bn1_ = register_module("bn1", torch::nn::BatchNorm1d(hidden));
      bn2_ = register_module("bn2", torch::nn::BatchNorm1d(hidden));
    }
  }

  torch::Tensor forward(torch::Tensor x) {
    x = l1_->forward(x);
    if (bn1_) x = bn1_->forward(x);
    x = l2_->forward(torch::gelu(x));
    if (bn2_) x = bn2_->forward(x);
    x = torch::gelu(x);
    x = torch::nn::functional::normalize(l3_->forward(x), torch::nn::functional::NormalizeFuncOptions().dim(1));
    return x.matmul((last_ / last_.norm(2, 1, /*keepdim=*/true)).t());
  }

 private:
  torch::nn::Linear l1_, l2_, l3_;
  torch::nn::BatchNorm1d bn1_{nullptr}, bn2_{nullptr};
  torch::Tensor last_;
};

// Backbone and head: one of the student or the teacher.
class DinoNet : public torch::nn::Module {
 public:
  DinoNet(std::shared_ptr<models::Network> backbone, const DinoSpec& s)
      : backbone_(register_module("backbone", std::move(backbone))),
        head_(register_module("head", std::make_shared<DinoHead>(s.embed_dim, s.hidden_dim, s.bottleneck_dim,
                                                                 s.out_dim, s.head_bn))) {}
  torch::Tensor features(const torch::Tensor& x) { return backbone_->forward(x); }
  torch::Tensor forward(const torch::Tensor& x) { return head_->forward(features(x)); }

 private:
  std::shared_ptr<models::Network> backbone_;
  std::shared_ptr<DinoHead> head_;
};

torch::Tensor L2Normalize(const torch::Tensor& x) {
  return torch::nn::functional::normalize(x, torch::nn::functional::NormalizeFuncOptions().dim(1));
}

class DinoMode final : public LearningMode {
 public:
  DinoMode(const Job& job, const InputInfo& input, std::shared_ptr<DinoNet> student, std::shared_ptr<DinoNet> teacher,
           std::unique_ptr<torch::optim::Optimizer> opt)
      : spec_(DinoSpecFromJob(job)),
        input_(input),
        student_(std::move(student)),
        teacher_(std::move(teacher)),
        optimizer_(std::move(opt)),
        center_(torch::zeros({spec_.out_dim}, teacher_->parameters()[0].options())) {}

  absl::StatusOr<StepResult> TrainStep(const Batch& batch, double lr, GradientSync* sync) override {
    if (batch.inputs.dim() != 4 || batch.inputs.size(1) != input_.channels || batch.inputs.size(2) != input_.height ||
        batch.inputs.size(3) != input_.width) {
      return absl::InvalidArgumentError(absl::StrCat("batch inputs of shape ", c10::str(batch.inputs.sizes()),
                                                     ", expected [B, ", input_.channels, ", ", input_.height, ", ",
                                                     input_.width, "]"));
    }
    const int64_t b = batch.inputs.size(0);
    Rng rng(batch.seed);
    std::vector<at::Tensor> globals = {augment::GlobalView(batch.inputs, rng, 0, kImageMean, kImageStd),
                                       augment::GlobalView(batch.inputs, rng, 1, kImageMean, kImageStd)};
    std::vector<at::Tensor> views = globals;
    for (int64_t l = 0; l < spec_.local_crops; ++l) {
      views.push_back(augment::LocalView(batch.inputs, rng, kImageMean, kImageStd, spec_.local_size));
    }
    student_->train();
    teacher_->train();
    optimizer_->zero_grad();
    torch::Tensor teacher_out;
    {
      torch::NoGradGuard no_grad;
      teacher_out = teacher_->forward(torch::cat(globals, 0));
    }
    // Globals and locals differ in size unless local_size is the image size: one forward each.
    torch::Tensor student_out = student_->forward(torch::cat({globals[0], globals[1]}, 0));
    if (spec_.local_crops > 0) {
      student_out = torch::cat(
          {student_out, student_->forward(torch::cat(std::vector<at::Tensor>(views.begin() + 2, views.end()), 0))}, 0);
    }
    const double tt = TeacherTemp(batch.progress);
    torch::Tensor loss = DinoLoss(student_out, teacher_out, center_, static_cast<int64_t>(views.size()),
                                  spec_.student_temp, tt);
    auto value = optim::BackwardAndStep(loss, sync, *optimizer_, lr);
    if (!value.ok()) return value.status();
    // The teacher follows the student; the center follows the teacher (the group's mean).
    torch::NoGradGuard no_grad;
    EmaUpdate(teacher_->parameters(), student_->parameters(), TeacherMomentum(spec_.momentum, batch.progress));
    const auto tb = teacher_->buffers(), sb = student_->buffers();
    for (size_t i = 0; i < tb.size(); ++i) tb[i].copy_(sb[i]);
    at::Tensor batch_center = teacher_out.mean(0);
    if (sync != nullptr) {
      if (auto s = sync->AverageAcrossGroup(batch_center); !s.ok()) return s;
    }
    UpdateCenter(center_, batch_center, spec_.center_momentum);
    return StepResult{*value, b};
  }

  absl::StatusOr<EvalSums> Evaluate(const at::Tensor& inputs, const at::Tensor& targets, int64_t batch_size) override {
    torch::NoGradGuard no_grad;
    teacher_->eval();
    const auto features = [&](const at::Tensor& x) {
      std::vector<at::Tensor> parts;
      for (int64_t s = 0; s < x.size(0); s += batch_size) {
        const at::Tensor chunk = x.narrow(0, s, std::min(batch_size, x.size(0) - s));
        parts.push_back(spec_.knn_features == "pixels" ? chunk.flatten(1) : teacher_->features(chunk));
      }
      return L2Normalize(torch::cat(parts, 0));
    };
    EvalSums sums;
    sums.confusion = torch::zeros({input_.num_classes, input_.num_classes}, targets.options().dtype(torch::kLong));
    if (inputs.size(0) == 0) return sums;
    if (!bank_x_.defined() || bank_x_.size(0) == 0) {
      return absl::FailedPreconditionError("dino: evaluation needs a bank of labelled images (none was given)");
    }
    const at::Tensor bank = features(bank_x_.to(inputs.device()));
    const at::Tensor bank_y = bank_y_.to(inputs.device());
    const at::Tensor queries = features(inputs);
    const at::Tensor predicted = WeightedKnn(bank, bank_y, queries, spec_.knn_k, spec_.knn_temp, input_.num_classes);
    if (spec_.probe_steps > 0) {
      const LinearProbe probe = FitLinearProbe(bank, bank_y, input_.num_classes, spec_.probe_steps, spec_.probe_lr);
      sums.extra_correct["linear_accuracy"] = probe.Predict(queries).eq(targets).sum().item<int64_t>();
    }
    metrics::AccumulateConfusion(sums.confusion, predicted, targets);
    sums.examples = inputs.size(0);
    // Collapse monitors on this shard: the teacher's centred output entropy, the features' spread.
    at::Tensor logits;
    {
      std::vector<at::Tensor> parts;
      for (int64_t s = 0; s < inputs.size(0); s += batch_size) {
        parts.push_back(teacher_->forward(inputs.narrow(0, s, std::min(batch_size, inputs.size(0) - s))));
      }
      logits = torch::cat(parts, 0);
    }
    const at::Tensor p = torch::softmax((logits - center_) / spec_.teacher_temp, 1);
    sums.monitors["teacher_entropy"] = (-(p * torch::log(p.clamp_min(1e-12))).sum(1)).mean().item<double>();
    sums.monitors["feature_std"] = queries.std(0).mean().item<double>();
    return sums;
  }

  std::vector<at::Tensor> TrainableParameters() override { return student_->parameters(); }
  std::vector<at::Tensor> ModelState() override { return TensorsOf(ModelTensors()); }
  std::vector<at::Tensor> Buffers() override {
    std::vector<at::Tensor> out = student_->buffers();
    for (const auto& b : teacher_->buffers()) out.push_back(b);
    return out;
  }
  int64_t ParameterCount() override { return models::CountParameters(*student_); }

  NamedTensors State() override {
    NamedTensors out = ModelTensors();
    for (auto& entry : optim::OptimizerState(*optimizer_, StudentParameters())) out.push_back(std::move(entry));
    return out;
  }

  absl::Status LoadState(const NamedTensors& state) override {
    std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
    if (auto s = CopyCheckedInto(ModelTensors(), by_name); !s.ok()) return s;
    return optim::LoadOptimizerState(*optimizer_, StudentParameters(), by_name);
  }

  absl::Status SetProximalTerm(double mu, const NamedTensors&) override {
    if (mu > 0) return absl::UnimplementedError("dino: a proximal term (fedprox) is not supported");
    return absl::OkStatus();
  }

  void SetEvaluationBank(const at::Tensor& inputs, const at::Tensor& labels) override {
    const int64_t n = std::min<int64_t>(spec_.knn_bank, inputs.size(0));
    const at::Device device = center_.device();
    bank_x_ = inputs.narrow(0, 0, n).to(device);
    bank_y_ = labels.narrow(0, 0, n).to(device);
  }

 private:
  double TeacherTemp(double progress) const {
    if (spec_.warmup_fraction <= 0 || progress >= spec_.warmup_fraction) return spec_.teacher_temp;
    return spec_.warmup_teacher_temp +
           (spec_.teacher_temp - spec_.warmup_teacher_temp) * progress / spec_.warmup_fraction;
  }

  std::vector<std::pair<std::string, at::Tensor>> StudentParameters() const {
    return NamedParameters(*student_, "student/");
  }

  // Everything that defines the model: "model/student/...", "model/teacher/...", "model/center".
  NamedTensors ModelTensors() const {
    NamedTensors out = ModuleTensors(*student_, "model/student/");
    for (auto& entry : ModuleTensors(*teacher_, "model/teacher/")) out.push_back(std::move(entry));
    out.emplace_back("model/center", center_);
    return out;
  }

  DinoSpec spec_;
  InputInfo input_;
  std::shared_ptr<DinoNet> student_, teacher_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  at::Tensor center_;
  at::Tensor bank_x_, bank_y_;
};

}  // namespace

at::Tensor DinoLoss(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& center, int64_t views,
                    double student_temp, double teacher_temp) {
  const std::vector<at::Tensor> s = (student / student_temp).chunk(views, 0);
  const std::vector<at::Tensor> t = at::softmax((teacher.detach() - center) / teacher_temp, 1).chunk(2, 0);
  at::Tensor total = at::zeros({}, student.options());
  int64_t pairs = 0;
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t v = 0; v < views; ++v) {
      if (v == i) continue;
      total = total + (-t[i] * at::log_softmax(s[v], 1)).sum(1).mean();
      ++pairs;
    }
  }
  return total / static_cast<double>(pairs);
}

void EmaUpdate(const std::vector<at::Tensor>& teacher, const std::vector<at::Tensor>& student, double m) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < teacher.size(); ++i) teacher[i].mul_(m).add_(student[i].detach(), 1 - m);
}

double TeacherMomentum(double m0, double progress) { return 1 - (1 - m0) * (std::cos(kPi * progress) + 1) / 2; }

void UpdateCenter(at::Tensor& center, const at::Tensor& batch_mean, double m) {
  at::NoGradGuard no_grad;
  center.mul_(m).add_(batch_mean.detach(), 1 - m);
}

at::Tensor WeightedKnn(const at::Tensor& bank, const at::Tensor& bank_labels, const at::Tensor& queries, int64_t k,
                       double temp, int64_t classes) {
  k = std::min<int64_t>(k, bank.size(0));
  auto [sim, idx] = queries.matmul(bank.t()).topk(k, 1);
  const at::Tensor weights = (sim / temp).exp();
  at::Tensor votes = at::zeros({queries.size(0), classes}, weights.options());
  votes.scatter_add_(1, bank_labels.index_select(0, idx.flatten()).view_as(idx), weights);
  return votes.argmax(1);
}

at::Tensor LinearProbe::Predict(const at::Tensor& x) const {
  return ((x - mean) / std).matmul(weight).add(bias).argmax(1);
}

LinearProbe FitLinearProbe(const at::Tensor& x, const at::Tensor& labels, int64_t classes, int64_t steps, double lr) {
  torch::AutoGradMode grad(true);
  LinearProbe probe;
  probe.mean = x.mean(0);
  probe.std = x.std(0).clamp_min(1e-6);
  const at::Tensor z = ((x - probe.mean) / probe.std).detach();
  at::Tensor w = torch::zeros({x.size(1), classes}, x.options()).requires_grad_(true);
  at::Tensor b = torch::zeros({classes}, x.options()).requires_grad_(true);
  torch::optim::Adam adam({w, b}, torch::optim::AdamOptions(lr));
  for (int64_t s = 0; s < steps; ++s) {
    adam.zero_grad();
    // A little L2 on the weights keeps separable banks from driving them to infinity.
    const at::Tensor loss = torch::cross_entropy_loss(z.matmul(w) + b, labels) + 1e-4 * w.pow(2).sum();
    loss.backward();
    adam.step();
  }
  probe.weight = w.detach();
  probe.bias = b.detach();
  return probe;
}

DinoSpec DinoSpecFromJob(const Job& job) {
  DinoSpec s;
  s.embed_dim = JobInteger(job, "dino.embed_dim");
  s.hidden_dim = JobInteger(job, "dino.hidden_dim");
  s.bottleneck_dim = JobInteger(job, "dino.bottleneck_dim");
  s.out_dim = JobInteger(job, "dino.out_dim");
  s.head_bn = JobBool(job, "dino.head_bn");
  s.local_crops = JobInteger(job, "dino.local_crops");
  s.local_size = JobInteger(job, "dino.local_size");
  s.student_temp = JobNumber(job, "dino.student_temp");
  s.teacher_temp = JobNumber(job, "dino.teacher_temp");
  s.warmup_teacher_temp = JobNumber(job, "dino.warmup_teacher_temp");
  s.warmup_fraction = JobNumber(job, "dino.warmup_fraction");
  s.momentum = JobNumber(job, "dino.momentum");
  s.center_momentum = JobNumber(job, "dino.center_momentum");
  s.knn_k = JobInteger(job, "dino.knn_k");
  s.knn_temp = JobNumber(job, "dino.knn_temp");
  s.knn_bank = JobInteger(job, "dino.knn_bank");
  s.knn_features = JobParam(job, "dino.knn_features");
  s.probe_steps = JobInteger(job, "dino.probe_steps");
  s.probe_lr = JobNumber(job, "dino.probe_lr");
  return s;
}

absl::StatusOr<std::unique_ptr<LearningMode>> MakeDinoMode(const Job& job, const InputInfo& input, at::Device device,
                                                           const at::Tensor& bank_inputs,
                                                           const at::Tensor& bank_labels) {
  const DinoSpec spec = DinoSpecFromJob(job);
  const models::ModelSpec model = models::ModelSpecFromJob(job);
  const models::InputShape shape{input.channels, input.height, input.width, spec.embed_dim};
  torch::manual_seed(DeriveSeed(job.seed, "model-init"));
  auto backbone = models::MakeModel(model, shape);
  if (!backbone.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'model.name': ", backbone.status().message()));
  auto student = std::make_shared<DinoNet>(*std::move(backbone), spec);
  auto teacher_backbone = models::MakeModel(model, shape);
  if (!teacher_backbone.ok()) return teacher_backbone.status();
  auto teacher = std::make_shared<DinoNet>(*std::move(teacher_backbone), spec);
  student->to(device);
  teacher->to(device);
  {
    // The teacher starts as the student, and never gets gradients.
    torch::NoGradGuard no_grad;
    const auto sp = student->parameters(), tp = teacher->parameters();
    for (size_t i = 0; i < tp.size(); ++i) tp[i].copy_(sp[i]);
    for (auto& p : tp) p.set_requires_grad(false);
  }
  auto opt = optim::MakeOptimizer(job.optimizer, student->parameters());
  if (!opt.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'optimizer.name': ", opt.status().message()));
  auto mode = std::make_unique<DinoMode>(job, input, student, teacher, *std::move(opt));
  if (bank_inputs.defined() && bank_inputs.size(0) > 0) mode->SetEvaluationBank(bank_inputs, bank_labels);
  return std::unique_ptr<LearningMode>(std::move(mode));
}

namespace {
[[maybe_unused]] const bool kRegistered = [] {
  ModeNeeds needs;
  needs.eval_bank = true;
  const DinoSpec d;
  constexpr int64_t kBig = int64_t{1} << 40;
  std::vector<ComponentKey> keys = {
      IntegerKey("dino.embed_dim", d.embed_dim, "backbone feature size", 1, 65536),
      IntegerKey("dino.hidden_dim", d.hidden_dim, "head hidden size", 1, 65536),
      IntegerKey("dino.bottleneck_dim", d.bottleneck_dim, "head bottleneck", 1, 65536),
      IntegerKey("dino.out_dim", d.out_dim, "head output (prototypes)", 2, 1 << 20),
      BooleanKey("dino.head_bn", d.head_bn, "batch norm in the head's hidden layers"),
      IntegerKey("dino.local_crops", d.local_crops, "local views per image", 0, 64),
      IntegerKey("dino.local_size", d.local_size, "local views' side in pixels", 4, 1024),
      NumberKey("dino.student_temp", d.student_temp, "student temperature", 1e-4, 100),
      NumberKey("dino.teacher_temp", d.teacher_temp, "teacher temperature", 1e-4, 100),
      NumberKey("dino.warmup_teacher_temp", d.warmup_teacher_temp, "teacher temperature at the start", 1e-4, 100),
      NumberKey("dino.warmup_fraction", d.warmup_fraction, "fraction of the run the teacher temperature warms up over",
                0, 1),
      NumberKey("dino.momentum", d.momentum, "teacher EMA momentum at the start (cosine to 1)", 0, 1),
      NumberKey("dino.center_momentum", d.center_momentum, "momentum of the teacher-output center", 0, 1),
      IntegerKey("dino.knn_k", d.knn_k, "k-NN evaluation: neighbours", 1, 100000),
      NumberKey("dino.knn_temp", d.knn_temp, "k-NN evaluation: vote temperature", 1e-4, 100),
      IntegerKey("dino.knn_bank", d.knn_bank, "k-NN evaluation: labelled training images voting", 1, kBig),
      ChoiceKey("dino.knn_features", d.knn_features, "k-NN evaluation features", {"backbone", "pixels"}),
      IntegerKey("dino.probe_steps", d.probe_steps, "linear probe: full-batch Adam steps on the k-NN bank (0: no probe)",
                 0, 1000000),
      NumberKey("dino.probe_lr", d.probe_lr, "linear probe: Adam learning rate", 1e-6, 10),
  };
  return RegisterMode({"mode", "dino", "self-distillation without labels (Caron et al. 2021); k-NN evaluation",
                       std::move(keys)},
                      needs, [](const ModeInputs& in) {
                        return MakeDinoMode(in.job, in.input, in.device, in.bank_inputs, in.bank_labels);
                      });
}();
}  // namespace

}  // namespace allround::modes
