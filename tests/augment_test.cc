// Image augmentation ops: each against hand-computed results on tiny images, and every op and
// view deterministic per seed.

#include "algorithms/augment/image_ops.h"
#include "algorithms/modes/dino.h"
#include "algorithms/modes/semi_supervised.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>

namespace allround::augment {
namespace {

at::Tensor Ramp(int64_t b = 2, int64_t h = 4, int64_t w = 4) {
  return torch::arange(b * h * w, torch::kFloat).div(b * h * w).view({b, 1, h, w});
}

TEST(Augment, FlipWithProbabilityOneMirrorsAndZeroLeavesAlone) {
  Rng rng(1);
  const at::Tensor x = Ramp();
  EXPECT_TRUE(at::equal(HorizontalFlip(x, rng, 1.0), x.flip({3})));
  EXPECT_TRUE(at::equal(HorizontalFlip(x, rng, 0.0), x));
}

TEST(Augment, PadAndCropShiftsWithinThePadAndFills) {
  const at::Tensor x = torch::ones({64, 1, 5, 5});
  Rng rng(3);
  const at::Tensor y = PadAndCrop(x, rng, 1, 0.0);
  for (int64_t i = 0; i < 64; ++i) {
    // A shift by (dy, dx) in {-1, 0, 1}^2 leaves a 5 x 5, 4 x 5, 5 x 4 or 4 x 4 block of ones.
    const int64_t ones = y[i].sum().item<float>();
    EXPECT_TRUE(ones == 25 || ones == 20 || ones == 16) << ones;
  }
  EXPECT_GT(y.sum().item<float>(), 16 * 64);  // not all shifted: some are 0-shifts
}

TEST(Augment, RandomResizedCropOfTheWholeImageIsTheImage) {
  const at::Tensor x = Ramp(3, 8, 8);
  Rng rng(1);
  const at::Tensor y = RandomResizedCrop(x, rng, 8, 1.0, 1.0, 1.0, 1.0);
  EXPECT_TRUE(at::allclose(y, x, 1e-5, 1e-6));
  const at::Tensor small = RandomResizedCrop(x, rng, 4, 0.05, 0.4);
  EXPECT_EQ(small.sizes(), (at::IntArrayRef{3, 1, 4, 4}));
  EXPECT_GE(small.min().item<float>(), x.min().item<float>() - 1e-6);  // a crop interpolates inside
  EXPECT_LE(small.max().item<float>(), x.max().item<float>() + 1e-6);
}

TEST(Augment, BrightnessContrastFollowsItsFormula) {
  const at::Tensor x = torch::tensor({0.2f, 0.4f, 0.6f, 0.8f}).view({1, 1, 2, 2});
  // Contrast range 0 and brightness range 0: the identity.
  Rng rng(5);
  EXPECT_TRUE(at::allclose(BrightnessContrast(x, rng, 0.0, 0.0), x));
  // Reproduce the draws: p coin, then b, then c.
  Rng a(9), b(9);
  const at::Tensor y = BrightnessContrast(x, a, 0.3, 0.5);
  b.UniformDouble();
  const double add = -0.3 + 0.6 * b.UniformDouble(), mul = 0.5 + 1.0 * b.UniformDouble();
  const at::Tensor want = ((x - 0.5) * mul + 0.5 + add).clamp(0, 1);
  EXPECT_TRUE(at::allclose(y, want, 1e-5, 1e-6)) << y << want;
}

TEST(Augment, BlurKeepsConstantsAndSmoothsAnImpulse) {
  Rng rng(2);
  const at::Tensor flat = torch::full({2, 1, 6, 6}, 0.7f);
  EXPECT_TRUE(at::allclose(GaussianBlur(flat, rng, 1.0, 0.5, 1.5), flat, 1e-5, 1e-6));
  at::Tensor impulse = torch::zeros({1, 1, 9, 9});
  impulse[0][0][4][4] = 1;
  const at::Tensor blurred = GaussianBlur(impulse, rng, 1.0, 1.0, 1.0);
  EXPECT_NEAR(blurred.sum().item<float>(), 1.0, 1e-5);  // mass kept (away from the edges)
  EXPECT_LT(blurred[0][0][4][4].item<float>(), 0.5);
  EXPECT_TRUE(at::allclose(blurred, blurred.flip({2}).flip({3})));  // symmetric
  EXPECT_TRUE(at::equal(GaussianBlur(impulse, rng, 0.0, 1.0, 1.0), impulse));  // p 0: untouched
}

TEST(Augment, SolarizeInvertsAboveTheThreshold) {
  Rng rng(1);
  const at::Tensor x = torch::tensor({0.1f, 0.5f, 0.7f, 1.0f}).view({1, 1, 2, 2});
  EXPECT_TRUE(at::allclose(Solarize(x, rng, 1.0, 0.5), torch::tensor({0.1f, 0.5f, 0.3f, 0.0f}).view({1, 1, 2, 2})));
  EXPECT_TRUE(at::equal(Solarize(x, rng, 0.0, 0.5), x));
}

TEST(Augment, CutoutBlanksAClippedSquare) {
  Rng rng(4);
  const at::Tensor x = torch::ones({200, 1, 10, 10});
  const at::Tensor y = Cutout(x, rng, 4, 0.0);
  for (int64_t i = 0; i < 200; ++i) {
    const int64_t blank = 100 - static_cast<int64_t>(y[i].sum().item<float>());
    EXPECT_GE(blank, 4);  // a corner leaves at least 2 x 2
    EXPECT_LE(blank, 16);
  }
}

TEST(Augment, PosterizeKeepsLevelsAndAffineWithNoAngleIsTheIdentity) {
  Rng rng(1);
  const at::Tensor x = Ramp(1, 8, 8);
  const at::Tensor p = Posterize(x, rng, 1, 1);  // 2 levels: 0 or 1
  EXPECT_TRUE(at::equal(p, (x >= 0.5).to(at::kFloat)));
  EXPECT_TRUE(at::allclose(Affine(x, rng, 0.0, 0.0), x, 1e-5, 1e-6));
}

TEST(Augment, EveryOpAndViewIsDeterministicPerSeedAndDiffersAcrossSeeds) {
  torch::manual_seed(0);
  const at::Tensor x = torch::randn({16, 1, 28, 28});
  const std::vector<std::pair<const char*, std::function<at::Tensor(Rng&)>>> ops = {
      {"weak", [&](Rng& r) { return WeakView(x, r, 0.286, 0.353); }},
      {"strong", [&](Rng& r) { return StrongView(x, r, 0.286, 0.353); }},
      {"global0", [&](Rng& r) { return GlobalView(x, r, 0, 0.286, 0.353); }},
      {"global1", [&](Rng& r) { return GlobalView(x, r, 1, 0.286, 0.353); }},
      {"local", [&](Rng& r) { return LocalView(x, r, 0.286, 0.353); }},
  };
  for (const auto& [name, op] : ops) {
    Rng a(DeriveSeed(7, "augment", 3)), b(DeriveSeed(7, "augment", 3)), c(DeriveSeed(8, "augment", 3));
    const at::Tensor ya = op(a), yb = op(b), yc = op(c);
    EXPECT_TRUE(at::equal(ya, yb)) << name;
    EXPECT_FALSE(at::equal(ya, yc)) << name;
    EXPECT_TRUE(at::isfinite(ya).all().item<bool>()) << name;
  }
  Rng r(1);
  EXPECT_EQ(LocalView(x, r, 0.286, 0.353).sizes(), (at::IntArrayRef{16, 1, 12, 12}));
}

}  // namespace
}  // namespace allround::augment

namespace allround::modes {
namespace {

TEST(FixMatch, MaskAndLossOnAHandMadeBatch) {
  // Labelled: one image of class 0 with logits [0, 0]: CE = ln 2.
  const at::Tensor labeled = torch::zeros({1, 2}), targets = torch::tensor({0}, torch::kLong);
  // Unlabelled weak logits: image 0 confident in class 1 (p = 0.982 >= 0.95), image 1 not
  // (p = 0.731 < 0.95), image 2 confident in class 0.
  const at::Tensor weak = torch::tensor({{0.0f, 4.0f}, {0.0f, 1.0f}, {5.0f, 0.0f}});
  // Strong logits: image 0 uniform (CE = ln 2 against class 1), image 1 anything (masked),
  // image 2 [0, 2] (CE against class 0 = ln(1 + e^2)).
  const at::Tensor strong = torch::tensor({{1.0f, 1.0f}, {9.0f, -9.0f}, {0.0f, 2.0f}}).requires_grad_();
  const FixMatchLoss l = ComputeFixMatchLoss(labeled, targets, weak, strong, 0.95, 0.5);
  const double ln2 = std::log(2.0), ce2 = std::log(1 + std::exp(2.0));
  EXPECT_NEAR(l.mask_rate, 2.0 / 3.0, 1e-6);
  EXPECT_NEAR(l.supervised, ln2, 1e-6);
  EXPECT_NEAR(l.unsupervised, (ln2 + ce2) / 3.0, 1e-6);  // averaged over all 3 unlabelled
  EXPECT_NEAR(l.total.item<double>(), ln2 + 0.5 * (ln2 + ce2) / 3.0, 1e-6);
  // The masked image gets no gradient; the weak logits were only read.
  l.total.backward();
  EXPECT_TRUE(at::equal(strong.grad()[1], torch::zeros({2})));
  EXPECT_GT(strong.grad()[0].abs().sum().item<float>(), 0);
  // With tau 1 nothing passes and only the labelled loss is left.
  EXPECT_NEAR(ComputeFixMatchLoss(labeled, targets, weak, strong, 1.0, 1.0).total.item<double>(), ln2, 1e-6);
}

}  // namespace
}  // namespace allround::modes

#include "algorithms/modes/dino.h"

namespace allround::modes {
namespace {

TEST(Dino, LossMatchesAHandComputedValue) {
  // B = 1, K = 2, views: 2 global + 1 local. Center 0, temperatures 1 (plain softmaxes).
  const at::Tensor teacher = torch::tensor({{0.0f, 0.0f}, {std::log(3.0f), 0.0f}});  // p0 = [.5,.5], p1 = [.75,.25]
  const at::Tensor student = torch::tensor({{0.0f, 0.0f}, {0.0f, 0.0f}, {0.0f, std::log(3.0f)}}).requires_grad_();
  // log_softmax: s0 = s1 = [ln .5, ln .5], s2 = [ln .25, ln .75].
  const double h_half = -std::log(0.5);
  const double t0_s1 = h_half, t0_s2 = -(0.5 * std::log(0.25) + 0.5 * std::log(0.75));
  const double t1_s0 = h_half, t1_s2 = -(0.75 * std::log(0.25) + 0.25 * std::log(0.75));
  const at::Tensor loss = DinoLoss(student, teacher, torch::zeros({2}), 3, 1.0, 1.0);
  EXPECT_NEAR(loss.item<double>(), (t0_s1 + t0_s2 + t1_s0 + t1_s2) / 4, 1e-6);
  loss.backward();  // the student gets gradients; the teacher was only read
  EXPECT_GT(student.grad().abs().sum().item<float>(), 0);
  // Centering shifts the teacher before its softmax: with center [ln 3, 0], p0 = [.25, .75] and
  // p1 = [.5, .5].
  const double c0_s1 = h_half, c0_s2 = -(0.25 * std::log(0.25) + 0.75 * std::log(0.75));
  const double c1_s0 = h_half, c1_s2 = -(0.5 * std::log(0.25) + 0.5 * std::log(0.75));
  const at::Tensor centred = DinoLoss(student.detach(), teacher, teacher[1], 3, 1.0, 1.0);
  EXPECT_NEAR(centred.item<double>(), (c0_s1 + c0_s2 + c1_s0 + c1_s2) / 4, 1e-6);
  // Sharpening: a low teacher temperature turns p1 into nearly one-hot on class 0.
  const double sharp = DinoLoss(student.detach(), teacher, torch::zeros({2}), 3, 1.0, 0.01).item<double>();
  EXPECT_NEAR(sharp, (t0_s1 + t0_s2 + h_half + -std::log(0.25)) / 4, 1e-4);
}

TEST(Dino, EmaMomentumScheduleAndCenter) {
  std::vector<at::Tensor> teacher = {torch::tensor({1.0f, 2.0f})}, student = {torch::tensor({3.0f, 6.0f})};
  EmaUpdate(teacher, student, 0.75);  // 0.75 t + 0.25 s
  EXPECT_TRUE(at::allclose(teacher[0], torch::tensor({1.5f, 3.0f})));
  EXPECT_DOUBLE_EQ(TeacherMomentum(0.996, 0.0), 0.996);
  EXPECT_NEAR(TeacherMomentum(0.996, 0.5), 0.998, 1e-12);
  EXPECT_DOUBLE_EQ(TeacherMomentum(0.996, 1.0), 1.0);
  at::Tensor center = torch::tensor({1.0f, 0.0f});
  UpdateCenter(center, torch::tensor({0.0f, 1.0f}), 0.9);
  EXPECT_TRUE(at::allclose(center, torch::tensor({0.9f, 0.1f})));
}

TEST(Dino, WeightedKnnVotesByTemperedSimilarity) {
  // Bank: two of class 0 near (1, 0), one of class 1 at (0, 1); k = 3.
  const at::Tensor bank = torch::tensor({{1.0f, 0.0f}, {0.8f, 0.6f}, {0.0f, 1.0f}});
  const at::Tensor labels = torch::tensor({0, 0, 1}, torch::kLong);
  const at::Tensor q = torch::tensor({{0.6f, 0.8f}, {1.0f, 0.0f}});
  // Query 0: class 0 gets e^{0.6/T} + e^{0.96/T}, class 1 e^{0.8/T}: class 0 wins at T = 1 ...
  EXPECT_EQ(WeightedKnn(bank, labels, q, 3, 1.0, 2)[0].item<int64_t>(), 0);
  // ... and with k = 1 the nearest (0.8, 0.6), class 0, decides; query 1 is class 0 either way.
  const at::Tensor p = WeightedKnn(bank, labels, q, 1, 0.07, 2);
  EXPECT_EQ(p[0].item<int64_t>(), 0);
  EXPECT_EQ(p[1].item<int64_t>(), 0);
  // A query on class 1's point with k = 1 is class 1.
  EXPECT_EQ(WeightedKnn(bank, labels, torch::tensor({{0.0f, 1.0f}}), 1, 0.07, 2)[0].item<int64_t>(), 1);
}

TEST(Dino, LinearProbeSeparatesWhatALineSeparatesAndIsDeterministic) {
  // Three classes along one axis at -3, 0, 3 (k-NN's nearest neighbours would do as well); a second
  // feature of pure noise on a scale 1000 times larger, and a constant one (std 0): the probe's
  // standardization must keep both from drowning or breaking the fit.
  torch::manual_seed(5);
  const int64_t n = 300;
  const at::Tensor y = torch::arange(n, torch::kLong).remainder(3);
  const auto features = [&](const at::Tensor& labels) {
    const int64_t m = labels.size(0);
    return torch::stack({(labels.to(torch::kFloat) - 1) * 3 + 0.3 * torch::randn({m}), 1000 * torch::randn({m}),
                         torch::full({m}, 7.0f)},
                        1);
  };
  const at::Tensor x = features(y);
  const LinearProbe a = FitLinearProbe(x, y, 3, 200, 0.05);
  const LinearProbe b = FitLinearProbe(x, y, 3, 200, 0.05);
  EXPECT_TRUE(torch::equal(a.weight, b.weight));
  EXPECT_TRUE(torch::equal(a.bias, b.bias));
  const at::Tensor yt = torch::tensor({0, 1, 2, 2, 1, 0}, torch::kLong);
  EXPECT_TRUE(torch::equal(a.Predict(features(yt)), yt));
  EXPECT_GE(a.Predict(x).eq(y).to(torch::kFloat).mean().item<float>(), 0.99f);
}

TEST(Dino, EvaluationNeedsABankAndReportsKnnAndLinearProbe) {
  Job job;
  job.mode = "dino";
  job.model.name = "mlp";
  EXPECT_TRUE(SetJobKey(job, "model.hidden", "16").ok());
  EXPECT_TRUE(SetJobKey(job, "dino.embed_dim", "8").ok());
  EXPECT_TRUE(SetJobKey(job, "dino.hidden_dim", "16").ok());
  EXPECT_TRUE(SetJobKey(job, "dino.bottleneck_dim", "8").ok());
  EXPECT_TRUE(SetJobKey(job, "dino.out_dim", "16").ok());
  EXPECT_TRUE(SetJobKey(job, "dino.knn_bank", "40").ok());
  EXPECT_TRUE(SetJobKey(job, "dino.probe_steps", "20").ok());
  const InputInfo info{1, 28, 28, 10};
  auto mode = MakeDinoMode(job, info, at::Device(at::kCPU), at::Tensor(), at::Tensor());
  ASSERT_TRUE(mode.ok()) << mode.status();
  torch::manual_seed(2);
  const at::Tensor x = torch::rand({60, 1, 28, 28});
  const at::Tensor y = torch::arange(60, torch::kLong).remainder(10);
  auto none = (*mode)->Evaluate(x.narrow(0, 0, 10), y.narrow(0, 0, 10), 16);
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(std::string(none.status().message()), testing::HasSubstr("needs a bank of labelled images"));
  (*mode)->SetEvaluationBank(x, y);
  // The bank's own first images as queries: k-NN finds each one itself among its neighbours.
  auto sums = (*mode)->Evaluate(x.narrow(0, 0, 10), y.narrow(0, 0, 10), 16);
  ASSERT_TRUE(sums.ok()) << sums.status();
  EXPECT_EQ(sums->examples, 10);
  EXPECT_EQ(sums->confusion.sum().item<int64_t>(), 10);
  ASSERT_EQ(sums->extra_correct.count("linear_accuracy"), 1u);
  EXPECT_GE(sums->extra_correct.at("linear_accuracy"), 0);
  EXPECT_LE(sums->extra_correct.at("linear_accuracy"), 10);
  EXPECT_EQ(sums->monitors.count("teacher_entropy"), 1u);
}

}  // namespace
}  // namespace allround::modes
