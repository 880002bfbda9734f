#include "algorithms/modes/mlm.h"

#include <torch/torch.h>

#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "algorithms/models/network.h"
#include "algorithms/models/transformer.h"
#include "algorithms/modes/classifier.h"
#include "algorithms/modes/registry.h"
#include "algorithms/optim/optimizer.h"
#include "common/random.h"

namespace allround::modes {
namespace {

namespace nn = torch::nn;

class BertMlm : public nn::Module {
 public:
  BertMlm(int64_t vocab, int64_t seq_len, const MlmSpec& s)
      : tokens_(register_module("tokens", nn::Embedding(vocab, s.hidden))),
        positions_(register_parameter("positions", torch::randn({seq_len, s.hidden}) * 0.02)),
        encoder_(register_module("encoder", std::make_shared<models::TransformerEncoder>(s.hidden, s.layers, s.heads,
                                                                                          4 * s.hidden))),
        dense_(register_module("head_dense", nn::Linear(s.hidden, s.hidden))),
        norm_(register_module("head_norm", nn::LayerNorm(nn::LayerNormOptions({s.hidden})))),
        out_(register_module("head_out", nn::Linear(s.hidden, vocab))) {
    torch::NoGradGuard no_grad;
    tokens_->weight.normal_(0, 0.02);
  }
  // ids [B, T] -> logits [B, T, vocab].
  torch::Tensor forward(const torch::Tensor& ids) {
    const torch::Tensor h = encoder_->forward(tokens_->forward(ids) + positions_, ids.eq(kTokenPad));
    return out_->forward(norm_->forward(torch::gelu(dense_->forward(h))));
  }

 private:
  nn::Embedding tokens_;
  torch::Tensor positions_;
  std::shared_ptr<models::TransformerEncoder> encoder_;
  nn::Linear dense_;
  nn::LayerNorm norm_;
  nn::Linear out_;
};

class MlmMode final : public SingleNetworkMode {
 public:
  MlmMode(const Job& job, const InputInfo& input, std::shared_ptr<BertMlm> net,
          std::unique_ptr<torch::optim::Optimizer> opt)
      : SingleNetworkMode(net, std::move(opt)), spec_(MlmSpecFromJob(job)), seed_(job.seed), input_(input), net_(std::move(net)) {}

  absl::StatusOr<StepResult> TrainStep(const Batch& batch, double lr, GradientSync* sync) override {
    if (auto s = CheckRows(batch.inputs); !s.ok()) return s;
    net_->train();
    ZeroGrad();
    const MaskedTokens m = MaskTokens(batch.inputs, input_.num_classes, spec_.mask_prob, batch.seed);
    auto value = Step(Loss(net_->forward(m.inputs), m.labels, at::Reduction::Mean), sync, lr);
    if (!value.ok()) return value.status();
    return StepResult{*value, batch.inputs.size(0)};
  }

  absl::StatusOr<EvalSums> Evaluate(const at::Tensor& inputs, const at::Tensor& targets, int64_t batch_size) override {
    if (auto s = CheckRows(inputs); !s.ok()) return s;
    torch::NoGradGuard no_grad;
    net_->eval();
    EvalSums sums;
    double ce = 0, unigram = 0;
    int64_t selected = 0, correct = 0;
    for (int64_t s = 0; s < inputs.size(0); s += batch_size) {
      const at::Tensor rows = inputs.narrow(0, s, std::min(batch_size, inputs.size(0) - s));
      const MaskedTokens m = MaskTokens(rows, input_.num_classes, spec_.mask_prob,
                                        DeriveSeed(seed_, "mlm-eval", static_cast<uint64_t>(s)));
      const at::Tensor logits = net_->forward(m.inputs);
      const at::Tensor picked = m.labels.ne(-100);
      const at::Tensor truth = m.labels.masked_select(picked);
      ce += Loss(logits, m.labels, at::Reduction::Sum).item<double>();
      correct += logits.argmax(2).masked_select(picked).eq(truth).sum().item<int64_t>();
      selected += truth.numel();
      if (unigram_log_p_.defined()) unigram -= unigram_log_p_.index_select(0, truth).sum().item<double>();
    }
    sums.examples = selected;  // the evaluation's examples are the selected tokens
    sums.loss_sum = ce;
    sums.extra_correct["mlm_accuracy"] = correct;
    const double n = static_cast<double>(std::max<int64_t>(1, selected));
    sums.monitors["mlm_ppl"] = std::exp(ce / n);
    if (unigram_log_p_.defined()) {
      sums.monitors["unigram_loss"] = unigram / n;
      sums.monitors["unigram_ppl"] = std::exp(unigram / n);
    }
    return sums;
  }

  // The training rows: the unigram baseline's counts (add-one smoothing over the real tokens).
  void SetEvaluationBank(const at::Tensor& inputs, const at::Tensor&) override {
    const at::Tensor ids = inputs.flatten().cpu();
    at::Tensor counts = ids.masked_select(ids.ge(kFirstRealToken)).bincount({}, input_.num_classes).to(at::kDouble);
    counts.narrow(0, kFirstRealToken, input_.num_classes - kFirstRealToken).add_(1.0);
    counts.narrow(0, 0, kFirstRealToken).zero_();
    unigram_log_p_ = (counts / counts.sum()).log().to(inputs.device());
  }

 private:
  static torch::Tensor Loss(const torch::Tensor& logits, const torch::Tensor& labels, at::Reduction::Reduction r) {
    return at::cross_entropy_loss(logits.reshape({-1, logits.size(2)}), labels.reshape({-1}), {}, r, -100);
  }

  absl::Status CheckRows(const at::Tensor& x) const {
    if (x.dim() != 2 || x.size(1) != input_.height || x.scalar_type() != at::kLong) {
      return absl::InvalidArgumentError(absl::StrCat("batch of ", c10::str(x.sizes()), " ", c10::toString(x.scalar_type()),
                                                     ", expected int64 token ids [B, ", input_.height, "]"));
    }
    if (x.numel() > 0 && (x.min().item<int64_t>() < 0 || x.max().item<int64_t>() >= input_.num_classes)) {
      return absl::InvalidArgumentError(absl::StrCat("token ids outside the vocabulary of ", input_.num_classes));
    }
    return absl::OkStatus();
  }

  MlmSpec spec_;
  uint64_t seed_;
  InputInfo input_;
  std::shared_ptr<BertMlm> net_;
  at::Tensor unigram_log_p_;
};

}  // namespace

MaskedTokens MaskTokens(const at::Tensor& ids, int64_t vocab, double prob, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const auto cpu = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor u = at::rand(ids.sizes(), gen, cpu).to(ids.device());
  const at::Tensor kind = at::rand(ids.sizes(), gen, cpu).to(ids.device());
  const at::Tensor random = at::randint(kFirstRealToken, vocab, ids.sizes(), gen, at::TensorOptions().dtype(at::kLong))
                                .to(ids.device());
  const at::Tensor real = ids.ge(kFirstRealToken);
  at::Tensor selected = real & u.lt(prob);
  if (!selected.any().item<bool>() && real.any().item<bool>()) {
    // At least one token to predict: the real one with the smallest draw.
    const at::Tensor flat = at::where(real, u, at::full_like(u, 2.0)).flatten();
    selected = at::zeros_like(real).flatten().index_fill_(0, flat.argmin(), true).view_as(real);
  }
  MaskedTokens m;
  m.labels = at::where(selected, ids, at::full_like(ids, -100));
  m.inputs = at::where(selected & kind.lt(0.8), at::full_like(ids, kTokenMask), ids);
  m.inputs = at::where(selected & kind.ge(0.8) & kind.lt(0.9), random, m.inputs);
  return m;
}

MlmSpec MlmSpecFromJob(const Job& job) {
  MlmSpec s;
  s.layers = JobInteger(job, "mlm.layers");
  s.hidden = JobInteger(job, "mlm.hidden");
  s.heads = JobInteger(job, "mlm.heads");
  s.mask_prob = JobNumber(job, "mlm.mask_prob");
  return s;
}

absl::StatusOr<std::unique_ptr<LearningMode>> MakeMlmMode(const Job& job, const InputInfo& input, at::Device device,
                                                          const at::Tensor& train_rows) {
  if (input.width != 1 || input.num_classes <= kFirstRealToken) {
    return absl::InvalidArgumentError("mlm: needs rows of token ids (data.name text)");
  }
  const MlmSpec spec = MlmSpecFromJob(job);
  if (spec.hidden % spec.heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("mlm: hidden ", spec.hidden, " is not a multiple of heads ",
                                                   spec.heads));
  }
  torch::manual_seed(DeriveSeed(job.seed, "model-init"));
  auto net = std::make_shared<BertMlm>(input.num_classes, input.height, spec);
  net->to(device);
  auto opt = optim::MakeOptimizer(job.optimizer, net->parameters());
  if (!opt.ok()) return absl::InvalidArgumentError(absl::StrCat("job key 'optimizer.name': ", opt.status().message()));
  auto mode = std::make_unique<MlmMode>(job, input, net, *std::move(opt));
  if (train_rows.defined() && train_rows.numel() > 0) mode->SetEvaluationBank(train_rows, at::Tensor());
  return std::unique_ptr<LearningMode>(std::move(mode));
}

namespace {
[[maybe_unused]] const bool kRegistered = [] {
  ModeNeeds needs;
  needs.own_networks = true;
  needs.eval_bank = true;
  needs.text = true;
  const MlmSpec d;
  std::vector<ComponentKey> keys = {
      IntegerKey("mlm.layers", d.layers, "mlm: transformer layers", 1, 64),
      IntegerKey("mlm.hidden", d.hidden, "mlm: hidden size (a multiple of mlm.heads)", 2, 8192),
      IntegerKey("mlm.heads", d.heads, "mlm: attention heads", 1, 128),
      NumberKey("mlm.mask_prob", d.mask_prob, "mlm: share of tokens selected for prediction", 0.01, 0.9),
  };
  // Refused when the job is read, before any data is loaded or any site joins.
  RegisterJobCheck([](const Job& job) -> absl::Status {
    if (job.mode != "mlm") return absl::OkStatus();
    const int64_t hidden = JobInteger(job, "mlm.hidden"), heads = JobInteger(job, "mlm.heads");
    if (hidden % heads == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("job key 'mlm.hidden': ", hidden, " is not a multiple of mlm.heads (", heads, ")"));
  });
  return RegisterMode({"mode", "mlm", "BERT masked language modelling on text (Devlin et al. 2019)", std::move(keys)},
                      needs,
                      [](const ModeInputs& in) { return MakeMlmMode(in.job, in.input, in.device, in.bank_inputs); });
}();
}  // namespace

}  // namespace allround::modes
