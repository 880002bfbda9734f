// Example-level differential privacy: per-example gradients from one recorded backward against a
// loop of one-example backward passes, for every layer with a per-example rule and every model
// that DP-SGD can train; the norms and weighted sums DP-SGD takes without forming them; clipping;
// one DP-SGD step against the same step computed by hand; batch norm refused by name.

#include <gtest/gtest.h>
#include <torch/optim.h>
#include <torch/torch.h>

#include <functional>

#include "algorithms/models/grad_sample.h"
#include "algorithms/models/network.h"
#include "algorithms/modes/supervised.h"
#include "algorithms/optim/dp_sgd.h"
#include "common/job.h"

namespace allround {
namespace {

namespace nn = torch::nn;
using models::Apply;
using models::PerExampleGradients;
using Params = optim::NamedParams;

Params Trainable(nn::Module& m) {
  Params out;
  for (const auto& p : m.named_parameters()) {
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  }
  return out;
}

// Each example's loss: a fixed nonlinear function of its own output (the sum over the batch is
// what the recorded backward takes).
at::Tensor ExampleLosses(const at::Tensor& out, const at::Tensor& weights) {
  return (out.pow(2) * weights + out * 0.5).reshape({out.size(0), -1}).sum(1);
}

// Checks per-example gradients, squared norms and a weighted sum of `module` with `forward` on
// `x` against one backward per example, to 1e-6 (in float64).
void ExpectMatchesLoop(nn::Module& module, const std::function<at::Tensor(const at::Tensor&)>& forward,
                       const at::Tensor& x) {
  const int64_t batch = x.size(0);
  const Params params = Trainable(module);
  at::Tensor out_shape = forward(x);
  torch::manual_seed(7);
  const at::Tensor weights = torch::rand(out_shape.sizes(), out_shape.options());
  std::vector<at::Tensor> per_example, loop;
  at::Tensor norms, weighted_check;
  const at::Tensor w = torch::rand({batch}, torch::kDouble);
  std::vector<at::Tensor> weighted;
  {
    PerExampleGradients recorded;
    const at::Tensor loss = ExampleLosses(forward(x), weights).sum();
    recorded.Backward(loss);
    auto g = recorded.Gradients(params, batch);
    ASSERT_TRUE(g.ok()) << g.status();
    per_example = *g;
    auto n = recorded.SquaredNorms(params, batch);
    ASSERT_TRUE(n.ok()) << n.status();
    norms = *n;
    auto s = recorded.WeightedSum(params, w);
    ASSERT_TRUE(s.ok()) << s.status();
    weighted = *s;
  }
  // The recorded backward formed no parameter gradient of its own.
  for (const auto& [name, p] : params) EXPECT_FALSE(p.grad().defined() && p.grad().abs().sum().item<double>() > 0) << name;
  at::Tensor expected_norms = torch::zeros({batch}, torch::kDouble);
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor expected_sum = torch::zeros_like(params[i].second);
    for (int64_t b = 0; b < batch; ++b) {
      for (const auto& [name, p] : params) {
        if (p.grad().defined()) p.mutable_grad().zero_();
      }
      ExampleLosses(forward(x.narrow(0, b, 1)), weights.narrow(0, b, 1)).sum().backward();
      const at::Tensor& p = params[i].second;
      const at::Tensor expected = p.grad().defined() ? p.grad().clone() : torch::zeros_like(p);
      EXPECT_LT((per_example[i][b] - expected).abs().max().item<double>(), 1e-6)
          << params[i].first << " example " << b;
      expected_norms[b] += expected.pow(2).sum().item<double>();
      expected_sum += expected * w[b].item<double>();
    }
    EXPECT_LT((weighted[i] - expected_sum).abs().max().item<double>(), 1e-6) << params[i].first << " weighted sum";
  }
  EXPECT_LT((norms - expected_norms).abs().max().item<double>(), 1e-6 * (1 + expected_norms.max().item<double>()));
}

TEST(PrivacyPerExample, LinearOnVectorsAndSequencesMatchesLoop) {
  torch::manual_seed(1);
  nn::Linear a(nn::LinearOptions(6, 5)), wide(nn::LinearOptions(8, 8)), narrow(nn::LinearOptions(3, 2).bias(false));
  a->to(torch::kDouble);
  wide->to(torch::kDouble);
  narrow->to(torch::kDouble);
  ExpectMatchesLoop(*a, [&](const at::Tensor& x) { return Apply(*a, x); }, torch::randn({5, 6}, torch::kDouble));
  // 3 positions of 8 -> 8: the norms come from Gram matrices (3 * 16 < 64).
  ExpectMatchesLoop(*wide, [&](const at::Tensor& x) { return Apply(*wide, x); }, torch::randn({4, 3, 8}, torch::kDouble));
  // 7 positions of 3 -> 2: the per-example products are cheaper.
  ExpectMatchesLoop(*narrow, [&](const at::Tensor& x) { return Apply(*narrow, x); },
                    torch::randn({4, 7, 3}, torch::kDouble));
}

TEST(PrivacyPerExample, ConvolutionMatchesLoop) {
  torch::manual_seed(2);
  nn::Conv2d strided(nn::Conv2dOptions(2, 3, 3).stride(2).padding(1).dilation(1));
  nn::Conv2d dilated(nn::Conv2dOptions(3, 4, 2).dilation(2).bias(false));
  nn::Conv2d few_positions(nn::Conv2dOptions(4, 8, 3));  // 2x2 outputs: Gram matrices
  for (auto* c : {&strided, &dilated, &few_positions}) (*c)->to(torch::kDouble);
  ExpectMatchesLoop(*strided, [&](const at::Tensor& x) { return Apply(*strided, x); },
                    torch::randn({3, 2, 7, 6}, torch::kDouble));
  ExpectMatchesLoop(*dilated, [&](const at::Tensor& x) { return Apply(*dilated, x); },
                    torch::randn({3, 3, 6, 6}, torch::kDouble));
  ExpectMatchesLoop(*few_positions, [&](const at::Tensor& x) { return Apply(*few_positions, x); },
                    torch::randn({3, 4, 4, 4}, torch::kDouble));
}

TEST(PrivacyPerExample, LayerNormGroupNormMatchLoop) {
  torch::manual_seed(3);
  nn::LayerNorm ln(nn::LayerNormOptions({6}));
  nn::LayerNorm ln2(nn::LayerNormOptions({3, 4}));
  nn::GroupNorm gn(nn::GroupNormOptions(2, 4));
  ln->to(torch::kDouble);
  ln2->to(torch::kDouble);
  gn->to(torch::kDouble);
  // Non-trivial affine parameters, so the gradients depend on them.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : ln->parameters()) p.uniform_(0.5, 1.5);
    for (auto& p : gn->parameters()) p.uniform_(0.5, 1.5);
  }
  ExpectMatchesLoop(*ln, [&](const at::Tensor& x) { return Apply(*ln, x); }, torch::randn({4, 5, 6}, torch::kDouble));
  ExpectMatchesLoop(*ln2, [&](const at::Tensor& x) { return Apply(*ln2, x); }, torch::randn({4, 3, 4}, torch::kDouble));
  ExpectMatchesLoop(*gn, [&](const at::Tensor& x) { return Apply(*gn, x); }, torch::randn({3, 4, 3, 3}, torch::kDouble));
}

TEST(PrivacyPerExample, EmbeddingWithRepeatsAndPaddingMatchesLoop) {
  torch::manual_seed(4);
  nn::Embedding emb(nn::EmbeddingOptions(7, 3).padding_idx(0));
  emb->to(torch::kDouble);
  // Token ids with repeats inside an example (rows shared within it) and the padding id.
  const at::Tensor ids = torch::tensor({{1, 2, 2, 0}, {3, 3, 3, 6}, {0, 0, 5, 1}}, torch::kLong);
  const Params params = Trainable(*emb);
  const at::Tensor weights = torch::rand({3, 4, 3}, torch::kDouble);
  PerExampleGradients recorded;
  recorded.Backward(ExampleLosses(Apply(*emb, ids), weights).sum());
  auto g = recorded.Gradients(params, 3);
  auto n = recorded.SquaredNorms(params, 3);
  ASSERT_TRUE(g.ok() && n.ok());
  for (int64_t b = 0; b < 3; ++b) {
    if (emb->weight.grad().defined()) emb->weight.mutable_grad().zero_();
    ExampleLosses(emb->forward(ids.narrow(0, b, 1)), weights.narrow(0, b, 1)).sum().backward();
    EXPECT_LT(((*g)[0][b] - emb->weight.grad()).abs().max().item<double>(), 1e-6) << "example " << b;
    EXPECT_NEAR((*n)[b].item<double>(), emb->weight.grad().pow(2).sum().item<double>(), 1e-6) << "example " << b;
  }
}

TEST(PrivacyPerExample, BroadcastParameterAndSharedLayerMatchLoop) {
  torch::manual_seed(5);
  struct Net : nn::Module {
    Net() {
      token = register_parameter("token", torch::randn({1, 2, 4}, torch::kDouble));
      fc = register_module("fc", nn::Linear(4, 4));
      fc->to(torch::kDouble);
    }
    at::Tensor forward(const at::Tensor& x) {
      // The same layer twice: its per-example gradient is the sum over both calls.
      const at::Tensor h = torch::tanh(Apply(*fc, x + models::ExpandToBatch(token, x.size(0))));
      return Apply(*fc, h);
    }
    at::Tensor token;
    nn::Linear fc{nullptr};
  } net;
  ExpectMatchesLoop(net, [&](const at::Tensor& x) { return net.forward(x); }, torch::randn({3, 2, 4}, torch::kDouble));
}

// Every model DP-SGD can train, with the supervised mode's loss (cross-entropy).
TEST(PrivacyPerExample, ModelsMatchLoop) {
  for (const std::string name : {"mlp", "simple_cnn", "tanh_cnn", "fedavg_cnn", "resnet", "vit"}) {
    SCOPED_TRACE(name);
    models::ModelSpec spec;
    spec.name = name;
    spec.hidden = {16};
    spec.fc = 16;
    spec.width = 4;
    spec.norm = "group";
    spec.dim = 8;
    spec.depth = 1;
    spec.heads = 2;
    spec.mlp_dim = 8;
    torch::manual_seed(6);
    auto model = models::MakeModel(spec, {1, 28, 28, 10});
    ASSERT_TRUE(model.ok()) << model.status();
    (*model)->to(torch::kDouble);
    const at::Tensor x = torch::randn({3, 1, 28, 28}, torch::kDouble);
    const at::Tensor y = torch::tensor({1, 7, 3}, torch::kLong);
    const Params params = Trainable(**model);
    PerExampleGradients recorded;
    recorded.Backward(torch::nn::functional::cross_entropy(
        (*model)->forward(x), y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)));
    auto g = recorded.Gradients(params, 3);
    ASSERT_TRUE(g.ok()) << g.status();
    auto n = recorded.SquaredNorms(params, 3);
    ASSERT_TRUE(n.ok()) << n.status();
    for (int64_t b = 0; b < 3; ++b) {
      (*model)->zero_grad();
      torch::nn::functional::cross_entropy((*model)->forward(x.narrow(0, b, 1)), y.narrow(0, b, 1)).backward();
      double norm = 0;
      for (size_t i = 0; i < params.size(); ++i) {
        const at::Tensor expected = params[i].second.grad();
        EXPECT_LT(((*g)[i][b] - expected).abs().max().item<double>(), 1e-6) << params[i].first << " example " << b;
        norm += expected.pow(2).sum().item<double>();
      }
      EXPECT_NEAR((*n)[b].item<double>(), norm, 1e-6 * (1 + norm)) << "example " << b;
    }
  }
}

TEST(PrivacyDpSgd, ClippingBoundsEveryExamplesNorm) {
  const at::Tensor squared = torch::tensor({0.0, 0.25, 1.0, 4.0, 1e6}, torch::kDouble);
  const at::Tensor f = optim::ClipFactors(squared, 1.0);
  const at::Tensor clipped = squared.sqrt() * f;
  EXPECT_TRUE((clipped <= 1.0 + 1e-9).all().item<bool>());
  EXPECT_DOUBLE_EQ(f[0].item<double>(), 1.0);   // small gradients stay as they are
  EXPECT_DOUBLE_EQ(f[1].item<double>(), 1.0);
  EXPECT_NEAR(clipped[3].item<double>(), 1.0, 1e-6);  // large ones end at the bound
  EXPECT_NEAR(clipped[4].item<double>(), 1.0, 1e-6);
}

// One DP-SGD step of a small MLP against the same step by hand: a loop of one-example backward
// passes, each gradient clipped to C, summed, the noise drawn from the step's seed, divided by the
// expected batch, then plain SGD.
TEST(PrivacyDpSgd, StepIsTheClippedNoisyMeanOfTheLoop) {
  torch::manual_seed(8);
  models::ModelSpec spec;
  spec.name = "mlp";
  spec.hidden = {8};
  auto model = models::MakeModel(spec, {1, 4, 4, 3});
  ASSERT_TRUE(model.ok());
  (*model)->to(torch::kDouble);
  const Params params = Trainable(**model);
  const at::Tensor x = torch::randn({6, 1, 4, 4}, torch::kDouble) * 3;
  const at::Tensor y = torch::tensor({0, 1, 2, 2, 1, 0}, torch::kLong);
  const double clip = 0.5, lr = 0.1;
  optim::DpStepContext ctx;
  ctx.noise_seed = 1234;
  ctx.expected_batch = 5.0;
  ctx.noise_multiplier = 1.3;
  ctx.clip = clip;
  // By hand.
  std::vector<at::Tensor> before, sum;
  for (const auto& [name, p] : params) {
    before.push_back(p.detach().clone());
    sum.push_back(torch::zeros_like(p));
  }
  int clipped = 0;
  for (int64_t b = 0; b < 6; ++b) {
    (*model)->zero_grad();
    torch::nn::functional::cross_entropy((*model)->forward(x.narrow(0, b, 1)), y.narrow(0, b, 1)).backward();
    double norm = 0;
    for (const auto& [name, p] : params) norm += p.grad().pow(2).sum().item<double>();
    norm = std::sqrt(norm);
    const double f = std::min(1.0, clip / (norm + 1e-6));
    if (f < 1) ++clipped;
    for (size_t i = 0; i < params.size(); ++i) sum[i] += params[i].second.grad() * f;
  }
  ASSERT_GT(clipped, 0) << "the check needs some examples above the bound";
  int64_t total = 0;
  for (const auto& [name, p] : params) total += p.numel();
  auto gen = at::detail::createCPUGenerator(ctx.noise_seed);
  const at::Tensor noise = at::randn({total}, gen, torch::kDouble) * (ctx.noise_multiplier * clip);
  // The step itself.
  torch::optim::SGD sgd((*model)->parameters(), torch::optim::SGDOptions(lr));
  sgd.zero_grad();
  PerExampleGradients recorded;
  const at::Tensor loss = torch::nn::functional::cross_entropy(
      (*model)->forward(x), y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  auto r = optim::DpSgdStep(loss, 6, recorded, params, {}, nullptr, sgd, lr, ctx);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->clipped_share, clipped / 6.0, 1e-12);
  int64_t offset = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor g = (sum[i] + noise.narrow(0, offset, sum[i].numel()).view(sum[i].sizes())) / ctx.expected_batch;
    offset += sum[i].numel();
    EXPECT_LT((params[i].second - (before[i] - lr * g)).abs().max().item<double>(), 1e-10) << params[i].first;
  }
}

TEST(PrivacyDpSgd, EmptyPoissonBatchStepsWithTheNoiseAlone) {
  nn::Linear fc(2, 2);
  const Params params = Trainable(*fc);
  const at::Tensor w = fc->weight.detach().clone();
  torch::optim::SGD sgd(fc->parameters(), torch::optim::SGDOptions(1.0));
  optim::DpStepContext ctx;
  ctx.noise_seed = 9;
  ctx.expected_batch = 4;
  ctx.noise_multiplier = 1.0;
  PerExampleGradients recorded;
  auto r = optim::DpSgdStep({}, 0, recorded, params, {}, nullptr, sgd, 1.0, ctx);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->loss, 0);
  EXPECT_GT((fc->weight - w).abs().sum().item<double>(), 0) << "noise moved the weights";
}

absl::StatusOr<std::unique_ptr<modes::LearningMode>> PrivateMode(const std::string& model, const std::string& norm) {
  Job job;
  for (const auto& [k, v] : std::vector<std::pair<std::string, std::string>>{
           {"privacy.mode", "example"}, {"privacy.noise_multiplier", "1"}, {"model.name", model},
           {"model.norm", norm}, {"model.width", "4"}}) {
    if (auto s = SetJobKey(job, k, v); !s.ok()) return s;
  }
  if (auto s = ValidateJob(job); !s.ok()) return s;
  return modes::MakeSupervisedMode(job, {1, 28, 28, 10});
}

TEST(PrivacyPerExample, BatchNormIsRefusedByNameAndGroupNormTrains) {
  auto refused = PrivateMode("resnet", "batch");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("'stem_bn' is a batch norm"), std::string::npos) << refused.status();
  EXPECT_NE(refused.status().message().find("model.norm: group"), std::string::npos) << refused.status();
  auto group = PrivateMode("resnet", "group");
  EXPECT_TRUE(group.ok()) << group.status();
  auto cnn = PrivateMode("tanh_cnn", "batch");
  EXPECT_TRUE(cnn.ok()) << cnn.status();
}

TEST(PrivacyJob, RefusesWhatItCannotGuarantee) {
  Job job;
  ASSERT_TRUE(SetJobKey(job, "privacy.mode", "example").ok());
  auto s = ValidateJob(job);
  EXPECT_NE(s.message().find("privacy.noise_multiplier > 0 or privacy.target_epsilon > 0"), std::string::npos) << s;
  ASSERT_TRUE(SetJobKey(job, "privacy.target_epsilon", "3").ok());
  EXPECT_TRUE(ValidateJob(job).ok()) << ValidateJob(job);
  ASSERT_TRUE(SetJobKey(job, "mode", "dino").ok());
  s = ValidateJob(job);
  EXPECT_NE(s.message().find("example-level DP-SGD runs the supervised mode"), std::string::npos) << s;
}

}  // namespace
}  // namespace allround
