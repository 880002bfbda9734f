#include <gtest/gtest.h>
#include <torch/torch.h>

#include <dlfcn.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "algorithms/compute_threads.h"
#include "algorithms/losses.h"
#include "algorithms/metrics.h"
#include "algorithms/models/kernels/relu_max_pool.h"
#include "algorithms/models/network.h"
#include "algorithms/models/transformer.h"
#include "algorithms/modes/supervised.h"
#include "algorithms/optim/schedule.h"

namespace allround {
namespace {

TEST(ComputeThreads, SizesLibTorchsPoolAndOpenBlassAlike) {
  const int before = at::get_num_threads();
  EXPECT_FALSE(SetComputeThreads(0));  // the job's 0: LibTorch's defaults, untouched
  EXPECT_EQ(at::get_num_threads(), before);
  // Debian's LibTorch calls OpenBLAS; a CUDA LibTorch built with MKL has none, and then only
  // LibTorch's pool is set.
  using GetThreads = int (*)();
  auto openblas_threads = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  for (int n : {2, 1}) {
    EXPECT_EQ(SetComputeThreads(n), openblas_threads != nullptr);
    EXPECT_EQ(at::get_num_threads(), n);
    if (openblas_threads != nullptr) {
      EXPECT_EQ(openblas_threads(), n);
    }
  }
  SetComputeThreads(before);
}

// The settings themselves; that they make two GPU runs equal is checked on a GPU by
// deploy/device-check.sh, which runs the smoke job twice and compares.
TEST(ComputeThreads, DeterministicKernelsSwitchCuDnnCuBlasAndOpsTogether) {
  at::Context& ctx = at::globalContext();
  const char* had = std::getenv("CUBLAS_WORKSPACE_CONFIG");
  const std::string before = had == nullptr ? "" : had;
  unsetenv("CUBLAS_WORKSPACE_CONFIG");
  UseDeterministicKernels(true);
  EXPECT_TRUE(ctx.deterministicCuDNN());
  EXPECT_FALSE(ctx.benchmarkCuDNN());
  EXPECT_TRUE(ctx.deterministicAlgorithms());
  EXPECT_TRUE(ctx.deterministicAlgorithmsWarnOnly());  // an op without a deterministic kernel warns
  ASSERT_NE(std::getenv("CUBLAS_WORKSPACE_CONFIG"), nullptr);
  EXPECT_STREQ(std::getenv("CUBLAS_WORKSPACE_CONFIG"), ":4096:8");
  setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8", 1);  // the user's own value wins
  UseDeterministicKernels(true);
  EXPECT_STREQ(std::getenv("CUBLAS_WORKSPACE_CONFIG"), ":16:8");
  UseDeterministicKernels(false);
  EXPECT_FALSE(ctx.deterministicCuDNN());
  EXPECT_FALSE(ctx.deterministicAlgorithms());
  if (had == nullptr) {
    unsetenv("CUBLAS_WORKSPACE_CONFIG");
  } else {
    setenv("CUBLAS_WORKSPACE_CONFIG", before.c_str(), 1);
  }
}

TEST(Metrics, ReportMatchesHandComputation) {
  const metrics::Confusion m = {{5, 1, 0}, {2, 3, 1}, {0, 2, 4}};
  const auto r = metrics::Report(m);
  EXPECT_EQ(r.examples, 18);
  EXPECT_NEAR(r.accuracy, 12.0 / 18, 1e-12);
  EXPECT_NEAR(r.precision[0], 5.0 / 7, 1e-12);
  EXPECT_NEAR(r.precision[1], 3.0 / 6, 1e-12);
  EXPECT_NEAR(r.precision[2], 4.0 / 5, 1e-12);
  EXPECT_NEAR(r.recall[0], 5.0 / 6, 1e-12);
  EXPECT_NEAR(r.recall[2], 4.0 / 6, 1e-12);
  EXPECT_NEAR(r.f1[0], 10.0 / 13, 1e-12);  // 2PR/(P+R) with P=5/7, R=5/6
  EXPECT_NEAR(r.f1[2], 8.0 / 11, 1e-12);   // P=4/5, R=2/3
  EXPECT_NEAR(r.macro_precision, (5.0 / 7 + 0.5 + 0.8) / 3, 1e-12);
  EXPECT_NEAR(r.macro_recall, (5.0 / 6 + 0.5 + 2.0 / 3) / 3, 1e-12);
  EXPECT_NEAR(r.macro_f1, (10.0 / 13 + 0.5 + 8.0 / 11) / 3, 1e-12);
}

TEST(Metrics, AbsentAndNeverPredictedClassesScoreZero) {
  // Class 2 never occurs and is never predicted; class 1 occurs but is never predicted.
  const auto r = metrics::Report({{3, 0, 0}, {1, 0, 0}, {0, 0, 0}});
  EXPECT_NEAR(r.accuracy, 0.75, 1e-12);
  EXPECT_EQ(r.precision[1], 0.0);
  EXPECT_EQ(r.recall[1], 0.0);
  EXPECT_EQ(r.f1[2], 0.0);
  EXPECT_NEAR(r.precision[0], 0.75, 1e-12);
  EXPECT_NEAR(r.macro_f1, (2 * 0.75 / 1.75) / 3, 1e-12);
}

TEST(Metrics, AccumulateBuildsTheConfusionMatrix) {
  // Predictions and targets listed one by one from {{5,1,0},{2,3,1},{0,2,4}}.
  std::vector<int64_t> t, p;
  const metrics::Confusion want = {{5, 1, 0}, {2, 3, 1}, {0, 2, 4}};
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      for (int64_t k = 0; k < want[i][j]; ++k) {
        t.push_back(i);
        p.push_back(j);
      }
    }
  }
  at::Tensor conf = torch::zeros({3, 3}, torch::kLong);
  metrics::AccumulateConfusion(conf, torch::tensor(p), torch::tensor(t));
  metrics::AccumulateConfusion(conf, torch::tensor({2}), torch::tensor({0}));
  auto got = metrics::ToConfusion(conf);
  EXPECT_EQ(got[0][2], 1);
  got[0][2] = 0;
  EXPECT_EQ(got, want);
}

TEST(Losses, MatchHandComputation) {
  const at::Tensor logits = torch::tensor({{1.0, 2.0, 3.0}}, torch::kDouble);
  const at::Tensor y2 = torch::tensor({2}), y0 = torch::tensor({0});
  const double e1 = std::exp(1.0), e2 = std::exp(2.0), e3 = std::exp(3.0), z = e1 + e2 + e3;
  const double p0 = e1 / z, p1 = e2 / z, p2 = e3 / z;
  auto ce = *losses::FindLoss("cross_entropy");
  auto mse = *losses::FindLoss("mse");
  auto l1 = *losses::FindLoss("l1");
  auto hinge = *losses::FindLoss("hinge");
  EXPECT_NEAR(ce(logits, y2).item<double>(), -std::log(p2), 1e-12);
  EXPECT_NEAR(mse(logits, y2).item<double>(), (p0 * p0 + p1 * p1 + (1 - p2) * (1 - p2)) / 3, 1e-12);
  EXPECT_NEAR(l1(logits, y2).item<double>(), (p0 + p1 + (1 - p2)) / 3, 1e-12);
  EXPECT_NEAR(hinge(logits, y2).item<double>(), 0.0, 1e-12);         // margins already >= 1
  EXPECT_NEAR(hinge(logits, y0).item<double>(), (2.0 + 3.0) / 3, 1e-12);  // (1-1+2) + (1-1+3), / C
  EXPECT_FALSE(losses::FindLoss("focal").ok());
}

int64_t Count(const std::string& name) {
  models::ModelSpec spec;
  spec.name = name;
  auto m = models::MakeModel(spec, {});
  EXPECT_TRUE(m.ok()) << m.status();
  return models::CountParameters(**m);
}

TEST(Models, ParameterCounts) {
  EXPECT_EQ(Count("simple_cnn"), 44426);     // NIID-Bench SimpleCNN
  EXPECT_EQ(Count("fedavg_cnn"), 1663370);   // McMahan et al. 2017, Table/Sec. 3
  {
    models::ModelSpec narrow;  // the GAN's evaluation classifier: a 128-unit hidden layer
    narrow.name = "fedavg_cnn";
    narrow.fc = 128;
    auto m = models::MakeModel(narrow, {});
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(models::CountParameters(**m), 832 + 51264 + 3136 * 128 + 128 + 128 * 10 + 10);
    EXPECT_EQ((*m)->features(torch::zeros({2, 1, 28, 28})).sizes(), at::IntArrayRef({2, 128}));
  }
  EXPECT_EQ(Count("mlp"), 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10);
  // ResNet width 16: stem 144+32; block1 2*2304+2*32; block2 4608+9216+2*64+512+64;
  // block3 18432+36864+2*128+2048+128; fc 640+10.
  EXPECT_EQ(Count("resnet"), 176 + 4672 + 14528 + 57728 + 650);
  // ViT patch 7, dim 64, 4 blocks of 4 heads, MLP 128: embedding 49*64+64; [CLS] 64; positions
  // 17*64; per block 2 layer norms 2*128, qkv 64*192+192, proj 64*64+64, MLP 64*128+128 and
  // 128*64+64; final norm 128; fc 64*10+10.
  EXPECT_EQ(Count("vit"), 3200 + 64 + 1088 + 4 * (256 + 12480 + 4160 + 8320 + 8256) + 128 + 650);
}

TEST(Models, VitPatchesAndErrors) {
  models::ModelSpec spec;
  spec.name = "vit";
  spec.patch = 4;
  auto m = models::MakeModel(spec, {});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->forward(torch::randn({2, 1, 28, 28})).sizes().vec(), (std::vector<int64_t>{2, 10}));
  spec.patch = 5;
  auto bad = models::MakeModel(spec, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("patch 5 does not divide 28x28"), std::string::npos);
  spec.patch = 7;
  spec.heads = 3;
  EXPECT_FALSE(models::MakeModel(spec, {}).ok());
}

TEST(Transformer, AttentionAveragesAndIgnoresPadding) {
  // Equal scores: each query gets the mean of the values it may see.
  const at::Tensor q = torch::zeros({1, 1, 3, 2}, torch::kDouble), k = q;
  const at::Tensor v = torch::tensor({1.0, 10.0, 2.0, 20.0, 6.0, 60.0}, torch::kDouble).view({1, 1, 3, 2});
  const at::Tensor all = models::Attention(q, k, v, {});
  EXPECT_NEAR(all[0][0][1][0].item<double>(), 3.0, 1e-12);
  EXPECT_NEAR(all[0][0][1][1].item<double>(), 30.0, 1e-12);
  const at::Tensor pad = torch::tensor({false, false, true}).view({1, 3});
  const at::Tensor masked = models::Attention(q, k, v, pad);
  EXPECT_NEAR(masked[0][0][2][0].item<double>(), 1.5, 1e-12);
  EXPECT_NEAR(masked[0][0][2][1].item<double>(), 15.0, 1e-12);
  // Through a whole encoder: what sits at padded positions changes nothing at the others.
  torch::manual_seed(3);
  models::TransformerEncoder encoder(8, 2, 2, 16);
  at::Tensor x = torch::randn({2, 5, 8});
  const at::Tensor padding = torch::tensor({false, false, false, true, true, false, false, false, false, false})
                                 .view({2, 5});
  const at::Tensor before = encoder.forward(x, padding);
  at::Tensor changed = x.clone();
  changed[0][3] = changed[0][3] * 100 + 7;
  changed[0][4] = -changed[0][4];
  const at::Tensor after = encoder.forward(changed, padding);
  EXPECT_TRUE(torch::allclose(before[0].narrow(0, 0, 3), after[0].narrow(0, 0, 3), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(before[1], after[1]));
}

TEST(Models, ForwardShapesAndUnknownName) {
  for (const auto& name : models::ModelNames()) {
    models::ModelSpec spec;
    spec.name = name;
    auto m = models::MakeModel(spec, {});
    ASSERT_TRUE(m.ok());
    EXPECT_EQ((*m)->forward(torch::randn({3, 1, 28, 28})).sizes().vec(), (std::vector<int64_t>{3, 10})) << name;
  }
  models::ModelSpec bad;
  bad.name = "vgg";
  auto m = models::MakeModel(bad, {});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(std::string(m.status().message()).find("unknown model 'vgg'"), std::string::npos);
}

TEST(Schedule, WarmupStepAndCosineValues) {
  ScheduleSpec s;
  s.warmup_steps = 10;
  s.name = "cosine";
  optim::LrSchedule cos(s, 0.1, 100, 110);
  EXPECT_NEAR(cos.At(0), 0.01, 1e-12);
  EXPECT_NEAR(cos.At(4), 0.05, 1e-12);
  EXPECT_NEAR(cos.At(9), 0.1, 1e-12);
  EXPECT_NEAR(cos.At(10), 0.1, 1e-12);
  EXPECT_NEAR(cos.At(60), 0.05, 1e-12);
  EXPECT_NEAR(cos.At(110), 0.0, 1e-12);
  ScheduleSpec st;
  st.name = "step";
  st.step_epochs = 2;
  st.gamma = 0.5;
  optim::LrSchedule step(st, 0.2, 100, 1000);
  EXPECT_NEAR(step.At(199), 0.2, 1e-12);
  EXPECT_NEAR(step.At(200), 0.1, 1e-12);
  EXPECT_NEAR(step.At(450), 0.05, 1e-12);
  ScheduleSpec warm;
  warm.warmup_epochs = 0.5;
  EXPECT_EQ(optim::LrSchedule(warm, 1.0, 100, 1000).warmup_steps(), 50);
}

// Two blobs in 28x28 images: class 0 bright on the left half, class 1 on the right.
modes::Batch Blobs(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  at::Tensor y = torch::randint(0, 2, {n});
  at::Tensor x = torch::randn({n, 1, 28, 28}) * 0.5;
  for (int64_t i = 0; i < n; ++i) {
    x[i].narrow(2, y[i].item<int64_t>() == 0 ? 0 : 14, 14).add_(1.0);
  }
  return {x, y};
}

TEST(SupervisedMode, LearnsAndIsDeterministic) {
  Job job;
  job.model.name = "mlp";
  EXPECT_TRUE(SetJobKey(job, "model.hidden", "32").ok());
  job.optimizer.name = "sgd";
  job.optimizer.momentum = 0.9;
  modes::InputInfo info{1, 28, 28, 2};
  auto a = modes::MakeSupervisedMode(job, info);
  auto b = modes::MakeSupervisedMode(job, info);
  ASSERT_TRUE(a.ok() && b.ok());
  const modes::Batch train = Blobs(256, 1), test = Blobs(200, 2);
  for (int step = 0; step < 20; ++step) {
    modes::Batch mb{train.inputs.narrow(0, (step % 8) * 32, 32), train.targets.narrow(0, (step % 8) * 32, 32)};
    ASSERT_TRUE((*a)->TrainStep(mb, 0.05, nullptr).ok());
    ASSERT_TRUE((*b)->TrainStep(mb, 0.05, nullptr).ok());
  }
  auto pa = (*a)->ModelState(), pb = (*b)->ModelState();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(pa[i].equal(pb[i]));
  auto eval = (*a)->Evaluate(test.inputs, test.targets, 64);
  ASSERT_TRUE(eval.ok());
  EXPECT_GT(metrics::Report(metrics::ToConfusion(eval->confusion)).accuracy, 0.95);
  EXPECT_EQ(eval->examples, 200);
}

TEST(SupervisedMode, RefusesBadBatchesAndChangesNothing) {
  Job job;
  job.model.name = "simple_cnn";
  auto m = modes::MakeSupervisedMode(job, {});
  ASSERT_TRUE(m.ok());
  std::vector<at::Tensor> before;
  for (const auto& p : (*m)->ModelState()) before.push_back(p.clone());
  auto wrong_shape = (*m)->TrainStep({torch::randn({4, 1, 32, 32}), torch::zeros({4}, torch::kLong)}, 0.1, nullptr);
  EXPECT_EQ(wrong_shape.status().code(), absl::StatusCode::kInvalidArgument);
  auto wrong_targets = (*m)->TrainStep({torch::randn({4, 1, 28, 28}), torch::zeros({3}, torch::kLong)}, 0.1, nullptr);
  EXPECT_EQ(wrong_targets.status().code(), absl::StatusCode::kInvalidArgument);
  auto nan_input = (*m)->TrainStep({torch::full({4, 1, 28, 28}, NAN), torch::zeros({4}, torch::kLong)}, 0.1, nullptr);
  EXPECT_EQ(nan_input.status().code(), absl::StatusCode::kFailedPrecondition);
  const auto after = (*m)->ModelState();
  for (size_t i = 0; i < after.size(); ++i) EXPECT_TRUE(after[i].equal(before[i]));
}

// A state saved by one optimizer resumes under that optimizer; under another (SGD's momentum into
// Adam, Adam's moments into SGD) it is refused by name, not dropped, and a slot of the wrong shape
// is refused too.
TEST(SupervisedMode, OptimizerStateLoadsOnlyIntoItsOwnKind) {
  Job job;
  job.model.name = "mlp";
  EXPECT_TRUE(SetJobKey(job, "model.hidden", "8").ok());
  modes::InputInfo info{1, 28, 28, 2};
  const modes::Batch batch = Blobs(32, 1);
  auto trained = [&](const std::string& optimizer) {
    Job j = job;
    j.optimizer.name = optimizer;
    auto m = modes::MakeSupervisedMode(j, info);
    EXPECT_TRUE(m.ok() && (*m)->TrainStep(batch, 0.05, nullptr).ok());
    return (*m)->State();
  };
  const auto sgd_state = trained("sgd"), adam_state = trained("adam");
  auto fresh = [&](const std::string& optimizer) {
    Job j = job;
    j.optimizer.name = optimizer;
    return *modes::MakeSupervisedMode(j, info);
  };
  EXPECT_TRUE(fresh("sgd")->LoadState(sgd_state).ok());
  EXPECT_TRUE(fresh("adam")->LoadState(adam_state).ok());
  EXPECT_TRUE(fresh("adamw")->LoadState(adam_state).ok());  // the same moments
  const auto into_adam = fresh("adam")->LoadState(sgd_state);
  EXPECT_EQ(into_adam.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(into_adam.message()).find("is SGD's momentum but this job's optimizer is adam"), std::string::npos)
      << into_adam;
  const auto into_sgd = fresh("sgd")->LoadState(adam_state);
  EXPECT_NE(std::string(into_sgd.message()).find("is Adam's moments but this job's optimizer is sgd"), std::string::npos)
      << into_sgd;
  auto bad = sgd_state;
  for (auto& [name, t] : bad) {
    if (name.find("/momentum_buffer") != std::string::npos) t = torch::zeros({3});
  }
  const auto bad_shape = fresh("sgd")->LoadState(bad);
  EXPECT_NE(std::string(bad_shape.message()).find("momentum_buffer' has shape [3]"), std::string::npos) << bad_shape;
  // With the weights alone (no optim/ tensors) any optimizer starts fresh.
  auto weights = sgd_state;
  weights.clear();
  for (const auto& e : sgd_state) {
    if (e.first.rfind("model/", 0) == 0) weights.push_back(e);
  }
  EXPECT_TRUE(fresh("adam")->LoadState(weights).ok());
}

}  // namespace
}  // namespace allround

namespace allround {
namespace {

// The fused kernel against LibTorch's max_pool2d(relu(x), 2): values and gradients, including
// ties (values quantized to a few levels), all-negative windows, odd sizes and doubles.
TEST(ReluMaxPool, MatchesLibTorchValuesAndGradients) {
  torch::manual_seed(3);
  for (auto dtype : {torch::kFloat, torch::kDouble}) {
    for (auto shape : std::vector<std::vector<int64_t>>{{4, 3, 24, 24}, {2, 5, 7, 9}, {1, 2, 10, 14}, {1, 1, 2, 2}}) {
      at::Tensor base = torch::randint(-3, 4, shape).to(dtype) * 0.5;  // many ties and zeros
      at::Tensor a = base.clone().requires_grad_(), b = base.clone().requires_grad_();
      at::Tensor ya = models::ReluMaxPool2x2(a);
      at::Tensor yb = torch::max_pool2d(torch::relu(b), 2);
      ASSERT_TRUE(ya.equal(yb));
      at::Tensor g = torch::randn(ya.sizes(), ya.options());
      ya.backward(g);
      yb.backward(g);
      EXPECT_TRUE(a.grad().equal(b.grad())) << "dtype " << dtype << " shape " << c10::IntArrayRef(shape);
    }
  }
}

TEST(ReluMaxPool, PropagatesNaNAndFallsBackForOtherLayouts) {
  at::Tensor x = torch::zeros({1, 1, 4, 4});
  x[0][0][1][1] = NAN;
  at::Tensor y = models::ReluMaxPool2x2(x);
  EXPECT_TRUE(std::isnan(y[0][0][0][0].item<float>()));
  EXPECT_EQ(y[0][0][1][1].item<float>(), 0.0f);
  // NaN in the vectorized part of a row (16 output columns) lands where LibTorch puts it.
  at::Tensor wide = torch::randn({2, 3, 6, 32});
  wide[1][2][3][17] = NAN;
  wide[0][0][0][0] = NAN;
  at::Tensor got = models::ReluMaxPool2x2(wide), want = torch::max_pool2d(torch::relu(wide), 2);
  EXPECT_TRUE(got.isnan().equal(want.isnan()));
  EXPECT_EQ(got.isnan().sum().item<int64_t>(), 2);
  EXPECT_TRUE(got.nan_to_num(0).equal(want.nan_to_num(0)));
  at::Tensor t = torch::randn({2, 3, 8, 8}).transpose(2, 3);  // not contiguous: LibTorch path
  EXPECT_TRUE(models::ReluMaxPool2x2(t).equal(torch::max_pool2d(torch::relu(t), 2)));
}

}  // namespace
}  // namespace allround

namespace allround {
namespace {

// FedProx's term adds mu (w - w_ref) to every gradient: with plain SGD and w_ref = w + 1, one step
// moves each parameter lr * mu further than the same step without the term.
TEST(SupervisedMode, ProximalTermPullsTowardsTheReference) {
  Job job;
  job.model.name = "mlp";
  EXPECT_TRUE(SetJobKey(job, "model.hidden", "8").ok());
  job.optimizer.momentum = 0;
  job.optimizer.weight_decay = 0;
  modes::InputInfo info{1, 28, 28, 10};
  auto plain = modes::MakeSupervisedMode(job, info), prox = modes::MakeSupervisedMode(job, info);
  ASSERT_TRUE(plain.ok() && prox.ok());
  modes::LearningMode::NamedTensors reference;
  for (auto& [name, t] : (*prox)->State()) reference.emplace_back(name, t + 1.0);
  const double lr = 0.1, mu = 0.5;
  ASSERT_TRUE((*prox)->SetProximalTerm(mu, reference).ok());
  torch::manual_seed(9);
  const modes::Batch b{torch::randn({4, 1, 28, 28}), torch::randint(0, 10, {4})};
  ASSERT_TRUE((*plain)->TrainStep(b, lr, nullptr).ok());
  ASSERT_TRUE((*prox)->TrainStep(b, lr, nullptr).ok());
  const auto a = (*plain)->TrainableParameters(), p = (*prox)->TrainableParameters();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE((p[i] - a[i]).allclose(torch::full_like(a[i], lr * mu), 1e-5, 1e-6)) << i;
  }
  EXPECT_FALSE((*prox)->SetProximalTerm(mu, {{"model/nope", torch::ones({1})}}).ok());
  ASSERT_TRUE((*prox)->SetProximalTerm(0, {}).ok());  // off again
}

}  // namespace
}  // namespace allround
