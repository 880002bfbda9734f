// The generative modes' parts: PNG encoding (checked by decoding its stored blocks and checksums),
// the image grid, the VAE's negative-ELBO terms against hand-computed values, and the VAE mode's
// training, deterministic evaluation, denoising variant and sample grids.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "algorithms/augment/image_ops.h"
#include "algorithms/metrics.h"
#include "algorithms/modes/gan.h"
#include "algorithms/modes/mlm.h"
#include "algorithms/modes/vae.h"
#include "common/png.h"

namespace allround {
namespace {

uint32_t BigEndian(const std::string& s, size_t at) {
  return (uint32_t{static_cast<unsigned char>(s[at])} << 24) | (uint32_t{static_cast<unsigned char>(s[at + 1])} << 16) |
         (uint32_t{static_cast<unsigned char>(s[at + 2])} << 8) | uint32_t{static_cast<unsigned char>(s[at + 3])};
}

TEST(Png, ChecksumsMatchKnownValues) {
  EXPECT_EQ(Crc32("IEND"), 0xAE426082u);        // every PNG's last four bytes
  EXPECT_EQ(Crc32("123456789"), 0xCBF43926u);   // the CRC-32 check value
  EXPECT_EQ(Adler32("Wikipedia"), 0x11E60398u);  // RFC 1950's example
}

TEST(Png, EncodesRowsInStoredBlocksWithValidChunks) {
  // 300 x 250 = 75,250 bytes of scanlines: more than one stored block.
  const int64_t w = 300, h = 250;
  std::vector<uint8_t> pixels(w * h);
  for (int64_t i = 0; i < w * h; ++i) pixels[i] = static_cast<uint8_t>((i * 7) % 251);
  auto png = EncodeGrayPng(w, h, pixels);
  ASSERT_TRUE(png.ok());
  ASSERT_EQ(png->substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  std::string idat;
  size_t at = 8;
  std::vector<std::string> types;
  while (at < png->size()) {
    const uint32_t len = BigEndian(*png, at);
    const std::string typed = png->substr(at + 4, 4 + len);
    EXPECT_EQ(BigEndian(*png, at + 8 + len), Crc32(typed)) << typed.substr(0, 4);
    types.push_back(typed.substr(0, 4));
    if (types.back() == "IHDR") {
      EXPECT_EQ(BigEndian(typed, 4), w);
      EXPECT_EQ(BigEndian(typed, 8), h);
    }
    if (types.back() == "IDAT") idat += typed.substr(4);
    at += 12 + len;
  }
  EXPECT_THAT(types, testing::ElementsAre("IHDR", "IDAT", "IEND"));
  // Inflate the stored blocks by hand: header, then (final bit, LEN, NLEN, bytes)*, Adler-32.
  ASSERT_EQ((static_cast<unsigned char>(idat[0]) * 256 + static_cast<unsigned char>(idat[1])) % 31, 0);
  std::string raw;
  size_t p = 2;
  int blocks = 0;
  for (bool last = false; !last; ++blocks) {
    last = idat[p] & 1;
    const uint32_t len = static_cast<unsigned char>(idat[p + 1]) | (static_cast<unsigned char>(idat[p + 2]) << 8);
    const uint32_t nlen = static_cast<unsigned char>(idat[p + 3]) | (static_cast<unsigned char>(idat[p + 4]) << 8);
    ASSERT_EQ(len ^ 0xFFFF, nlen);
    raw += idat.substr(p + 5, len);
    p += 5 + len;
  }
  EXPECT_EQ(blocks, 2);
  EXPECT_EQ(BigEndian(idat, p), Adler32(raw));
  ASSERT_EQ(raw.size(), static_cast<size_t>((w + 1) * h));
  for (int64_t y = 0; y < h; ++y) {
    ASSERT_EQ(raw[y * (w + 1)], '\0');  // filter type 0
    for (int64_t x = 0; x < w; x += 37) {
      ASSERT_EQ(static_cast<uint8_t>(raw[y * (w + 1) + 1 + x]), pixels[y * w + x]);
    }
  }
  EXPECT_FALSE(EncodeGrayPng(3, 3, std::vector<uint8_t>(8)).ok());
}

TEST(ImageGrid, TilesWithBorders) {
  const at::Tensor images = torch::stack({torch::full({1, 2, 3}, 0.25), torch::full({1, 2, 3}, 0.5),
                                          torch::full({1, 2, 3}, 1.0)});
  const at::Tensor grid = augment::ImageGrid(images, 2);
  // 2 rows of (2 + 2) plus 2; 2 columns of (3 + 2) plus 2.
  EXPECT_EQ(grid.sizes().vec(), (std::vector<int64_t>{10, 12}));
  EXPECT_EQ(grid[2][2].item<float>(), 0.25f);
  EXPECT_EQ(grid[3][9].item<float>(), 0.5f);
  EXPECT_EQ(grid[6][4].item<float>(), 1.0f);
  EXPECT_EQ(grid[6][7].item<float>(), 0.0f);  // no fourth image
  EXPECT_EQ(grid[4][2].item<float>(), 0.0f);  // border
}

TEST(FrechetDistance, ZeroForASetWithItselfAndGrowsWithAShift) {
  torch::manual_seed(8);
  const at::Tensor a = torch::randn({500, 6}, torch::kDouble).matmul(torch::randn({6, 6}, torch::kDouble));
  EXPECT_NEAR(metrics::FrechetDistance(a, a), 0.0, 1e-8);
  // A shift moves only the means: FD = ||shift||^2, exactly.
  const at::Tensor shift = torch::full({6}, 0.5, torch::kDouble);
  EXPECT_NEAR(metrics::FrechetDistance(a, a + shift), 6 * 0.25, 1e-8);
  EXPECT_LT(metrics::FrechetDistance(a, a + shift), metrics::FrechetDistance(a, a + 2 * shift));
  // Scaling by k makes S_b = k^2 S_a (commuting): FD = (1 - k)^2 (||mu_a||^2 + tr S_a).
  const at::Tensor c = torch::randn({400, 3}, torch::kDouble) + 1;
  const double tr = (c - c.mean(0)).pow(2).sum().item<double>() / 399, mu2 = c.mean(0).pow(2).sum().item<double>();
  EXPECT_NEAR(metrics::FrechetDistance(c, 3 * c), 4 * (mu2 + tr), 1e-8 * (mu2 + tr));
  // A singular covariance (a constant dimension) is fine.
  const at::Tensor flat = torch::cat({c.narrow(1, 0, 2), torch::zeros({400, 1}, torch::kDouble)}, 1);
  EXPECT_NEAR(metrics::FrechetDistance(flat, flat + torch::tensor({0.0, 0.0, 2.0}, torch::kDouble)), 4.0, 1e-8);
}

TEST(Vae, NegativeElboTermsMatchHandValues) {
  // Logits 0: every pixel costs ln 2 whatever its target. mu 0, logvar 0 (the prior): KL 0; mu 1,
  // logvar 0: KL 1/2 per dimension; mu 0, logvar ln 2: (2 - 1 - ln 2) / 2 per dimension.
  const at::Tensor logits = torch::zeros({3, 4}, torch::kDouble);
  const at::Tensor target = torch::tensor({0.0, 1.0, 0.5, 0.2}, torch::kDouble).repeat({3, 1});
  const at::Tensor mu = torch::tensor({{0.0, 0.0}, {1.0, 1.0}, {0.0, 0.0}}, torch::kDouble);
  const at::Tensor logvar = torch::tensor({{0.0, 0.0}, {0.0, 0.0}, {std::log(2.0), std::log(2.0)}}, torch::kDouble);
  const auto t = modes::NegativeElboTerms(logits, target, mu, logvar);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(t.recon[i].item<double>(), 4 * std::log(2.0), 1e-12);
  EXPECT_NEAR(t.kl[0].item<double>(), 0.0, 1e-12);
  EXPECT_NEAR(t.kl[1].item<double>(), 1.0, 1e-12);
  EXPECT_NEAR(t.kl[2].item<double>(), 2 * (2 - 1 - std::log(2.0)) / 2, 1e-12);
  // A confident right logit costs almost nothing: BCE(logit 20, target 1) = ln(1 + e^-20).
  const auto sure = modes::NegativeElboTerms(torch::full({1, 1}, 20.0, torch::kDouble),
                                             torch::ones({1, 1}, torch::kDouble), torch::zeros({1, 1}, torch::kDouble),
                                             torch::zeros({1, 1}, torch::kDouble));
  EXPECT_NEAR(sure.recon[0].item<double>(), std::log1p(std::exp(-20.0)), 1e-15);
}

Job VaeJob() {
  Job job;
  job.mode = "vae";
  job.optimizer.name = "adam";
  job.optimizer.lr = 1e-3;
  EXPECT_TRUE(SetJobKey(job, "vae.latent", "4").ok());
  EXPECT_TRUE(SetJobKey(job, "vae.hidden", "32").ok());
  return job;
}

TEST(Vae, TrainsEvaluatesDeterministicallyAndWritesGrids) {
  auto mode = modes::MakeVaeMode(VaeJob(), modes::InputInfo{}, at::Device(at::kCPU));
  ASSERT_TRUE(mode.ok()) << mode.status();
  torch::manual_seed(4);
  const at::Tensor x = (torch::rand({32, 1, 28, 28}) - 0.286) / 0.353;
  const at::Tensor y = torch::zeros({32}, torch::kLong);
  auto before = (*mode)->Evaluate(x, y, 16);
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_FALSE(before->confusion.defined());  // it does not classify
  auto again = (*mode)->Evaluate(x, y, 16);
  EXPECT_EQ(before->loss_sum, again->loss_sum);
  EXPECT_NEAR(before->monitors.at("elbo"), -before->loss_sum / 32, 1e-9);
  // At initialisation the reconstruction is near ln 2 per pixel.
  EXPECT_NEAR(before->monitors.at("recon_bce") / 784, std::log(2.0), 0.1);
  for (int s = 0; s < 30; ++s) {
    modes::Batch b{x, y};
    b.seed = 100 + s;
    ASSERT_TRUE((*mode)->TrainStep(b, 1e-3, nullptr).ok());
  }
  auto after = (*mode)->Evaluate(x, y, 16);
  EXPECT_LT(after->loss_sum, before->loss_sum);
  const std::string dir = testing::TempDir() + "/vae_grids";
  std::filesystem::create_directories(dir);
  ASSERT_TRUE((*mode)->WriteImages(dir, 3).ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/reconstructions-epoch3.png"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/samples-epoch3.png"));
  // A wrong shape is refused, the model untouched.
  modes::Batch bad{torch::zeros({2, 1, 14, 14}), torch::zeros({2}, torch::kLong)};
  EXPECT_FALSE((*mode)->TrainStep(bad, 1e-3, nullptr).ok());
  EXPECT_EQ((*mode)->Evaluate(x, y, 16)->loss_sum, after->loss_sum);
}

TEST(Vae, DenoisingVariantHasNoKlAndNoSamples) {
  Job job = VaeJob();
  EXPECT_TRUE(SetJobKey(job, "vae.denoise_std", "0.3").ok());
  auto mode = modes::MakeVaeMode(job, modes::InputInfo{}, at::Device(at::kCPU));
  ASSERT_TRUE(mode.ok());
  const at::Tensor x = torch::zeros({8, 1, 28, 28});
  auto sums = (*mode)->Evaluate(x, torch::zeros({8}, torch::kLong), 8);
  ASSERT_TRUE(sums.ok());
  EXPECT_EQ(sums->monitors.at("kl"), 0.0);
  EXPECT_NEAR(sums->loss_sum / 8, sums->monitors.at("recon_bce"), 1e-9);
  const std::string dir = testing::TempDir() + "/dae_grids";
  std::filesystem::create_directories(dir);
  ASSERT_TRUE((*mode)->WriteImages(dir, 1).ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/reconstructions-epoch1.png"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/samples-epoch1.png"));
}

// A batch-norm buffer (running mean, variance, batch count), not a trained parameter.
bool IsBatchNormStatistic(const std::string& name) {
  return name.find("running") != std::string::npos || name.find("num_batches") != std::string::npos;
}

TEST(Gan, StepsBothNetworksEvaluatesByFrechetDistanceAndWritesSamples) {
  Job job;
  job.mode = "gan";
  EXPECT_TRUE(SetJobKey(job, "gan.width", "8").ok());
  EXPECT_TRUE(SetJobKey(job, "gan.noise_dim", "16").ok());
  EXPECT_TRUE(SetJobKey(job, "gan.eval_samples", "64").ok());
  EXPECT_TRUE(SetJobKey(job, "gan.classifier_epochs", "1").ok());
  EXPECT_TRUE(SetJobKey(job, "gan.ema", "0.999").ok());
  job.optimizer.name = "adam";
  job.optimizer.lr = 2e-4;
  job.optimizer.beta1 = 0.5;
  auto mode = modes::MakeGanMode(job, modes::InputInfo{}, at::Device(at::kCPU), at::Tensor(), at::Tensor());
  ASSERT_TRUE(mode.ok()) << mode.status();
  torch::manual_seed(6);
  const at::Tensor x = torch::randn({256, 1, 28, 28}), y = torch::arange(256, torch::kLong).remainder(10);
  auto none = (*mode)->Evaluate(x.narrow(0, 0, 32), y.narrow(0, 0, 32), 32);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  (*mode)->SetEvaluationBank(x, y);
  auto first = (*mode)->Evaluate(x.narrow(0, 0, 64), y.narrow(0, 0, 64), 32);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->confusion.defined());
  EXPECT_GT(first->monitors.at("fd"), 0.0);
  EXPECT_NEAR(first->loss_sum, first->monitors.at("fd") * 64, 1e-9);
  EXPECT_GE(first->monitors.at("min_class_frac"), 0.0);
  EXPECT_LE(first->monitors.at("min_class_frac"), 0.1);  // the smallest of 10 shares
  EXPECT_EQ(first->extra_correct.count("classifier_accuracy"), 1u);
  EXPECT_GT(first->monitors.at("fd_raw"), 0.0);  // the trained generator's own distance, beside the average's
  EXPECT_EQ((*mode)->Evaluate(x.narrow(0, 0, 64), y.narrow(0, 0, 64), 32)->monitors.at("fd"),
            first->monitors.at("fd"));  // fixed evaluation noise
  std::map<std::string, at::Tensor> before;
  for (const auto& [name, t] : (*mode)->State()) before[name] = t.clone();
  modes::Batch batch{x.narrow(0, 0, 16), y.narrow(0, 0, 16)};
  batch.seed = 9;
  ASSERT_TRUE((*mode)->TrainStep(batch, 2e-4, nullptr).ok());
  std::map<std::string, at::Tensor> after;
  for (const auto& [name, t] : (*mode)->State()) after[name] = t;
  EXPECT_FALSE(torch::equal(after.at("model/generator.fc.weight"), before.at("model/generator.fc.weight")));
  EXPECT_FALSE(torch::equal(after.at("model/discriminator.fc.weight"), before.at("model/discriminator.fc.weight")));
  // The evaluated generator is the weights' moving average: decay * old + (1 - decay) * new, for
  // every parameter; it is in the checkpoint, but not trained (no optimizer state, not counted).
  const double ema = modes::GanSpecFromJob(job).ema;
  for (const auto& [name, t] : after) {
    if (name.rfind("model/generator_ema.", 0) != 0 || IsBatchNormStatistic(name)) continue;
    const std::string trained = "model/generator." + name.substr(std::string("model/generator_ema.").size());
    EXPECT_TRUE(torch::equal(before.at(name), before.at(trained))) << name;  // starts as a copy
    EXPECT_TRUE(torch::allclose(t, ema * before.at(name) + (1 - ema) * after.at(trained), 1e-6, 1e-7))
        << name;
  }
  EXPECT_EQ(after.count("model/generator_ema.fc.weight"), 1u);
  EXPECT_EQ(after.count("optim/generator_ema.fc.weight/exp_avg"), 0u);
  EXPECT_EQ((*mode)->TrainableParameters().size(), 18u);  // G: fc, bn0, up1, bn1, up2; D: conv1, conv2, bn2, fc
  EXPECT_GT(after.at("model/generator_ema.fc.weight").ne(after.at("model/generator.fc.weight")).sum().item<int64_t>(), 0);
  // Both optimizers' state is in the checkpoint.
  EXPECT_EQ(after.count("optim/generator.fc.weight/exp_avg"), 1u);
  EXPECT_EQ(after.count("optim/discriminator.fc.weight/exp_avg"), 1u);
  // Bad input is refused.
  modes::Batch wrong{torch::zeros({2, 1, 14, 14}), torch::zeros({2}, torch::kLong)};
  EXPECT_FALSE((*mode)->TrainStep(wrong, 2e-4, nullptr).ok());
  modes::Batch bad_noise{x.narrow(0, 0, 4), y.narrow(0, 0, 4)};
  bad_noise.noise = torch::zeros({4, 3});
  EXPECT_FALSE((*mode)->TrainStep(bad_noise, 2e-4, nullptr).ok());
  const std::string dir = testing::TempDir() + "/gan_grids";
  std::filesystem::create_directories(dir);
  ASSERT_TRUE((*mode)->WriteImages(dir, 2).ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/samples-epoch2.png"));
}

TEST(Gan, StartsFromDcganInitializationUnlessAskedForLibTorchs) {
  Job job;
  job.mode = "gan";
  job.optimizer.name = "adam";
  auto dcgan = modes::MakeGanMode(job, modes::InputInfo{}, at::Device(at::kCPU), at::Tensor(), at::Tensor());
  ASSERT_TRUE(dcgan.ok()) << dcgan.status();
  int64_t weights = 0, scales = 0, biases = 0;
  for (const auto& [name, t] : (*dcgan)->State()) {
    if (name.rfind("model/", 0) != 0 || IsBatchNormStatistic(name)) continue;
    const bool norm = name.find(".bn") != std::string::npos;
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
      EXPECT_EQ(t.abs().max().item<float>(), 0.0f) << name;
      ++biases;
    } else if (norm) {  // batch-norm scales: N(1, 0.02)
      EXPECT_NEAR(t.mean().item<double>(), 1.0, 0.01) << name;
      EXPECT_NEAR(t.std().item<double>(), 0.02, 0.005) << name;
      ++scales;
    } else {  // convolution, transposed convolution and linear weights: N(0, 0.02)
      EXPECT_NEAR(t.mean().item<double>(), 0.0, 0.002) << name;
      EXPECT_NEAR(t.std().item<double>(), 0.02, 0.002) << name;
      ++weights;
    }
  }
  EXPECT_EQ(weights, 6);  // G: fc, up1, up2; D: conv1, conv2, fc
  EXPECT_EQ(scales, 3);   // G: bn0, bn1; D: bn2
  EXPECT_EQ(biases, 9);
  // gan.init torch keeps LibTorch's defaults (uniform, biases not 0); a third value is refused.
  EXPECT_TRUE(SetJobKey(job, "gan.init", "torch").ok());
  auto torch_init = modes::MakeGanMode(job, modes::InputInfo{}, at::Device(at::kCPU), at::Tensor(), at::Tensor());
  ASSERT_TRUE(torch_init.ok()) << torch_init.status();
  const auto state = (*torch_init)->State();
  const std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  EXPECT_GT(by_name.at("model/generator.up1.bias").abs().max().item<float>(), 0.0f);
  EXPECT_GT(by_name.at("model/discriminator.conv1.weight").std().item<double>(), 0.1);  // U(+-1/4): std 0.144
  Job bad;
  EXPECT_FALSE(SetJobKey(bad, "gan.init", "xavier").ok());
  EXPECT_TRUE(SetJobKey(bad, "gan.init", "torch").ok());
}

TEST(Mlm, MaskingSelectsFifteenPercentSplitEightyTenTen) {
  // 200 rows of 64 ids, the last 8 of each padding and the first [CLS]: never selected.
  const int64_t vocab = 1000;
  at::Tensor ids = torch::randint(modes::kFirstRealToken, vocab, {200, 64}, torch::kLong);
  ids.narrow(1, 56, 8).fill_(modes::kTokenPad);
  ids.select(1, 0).fill_(modes::kTokenCls);
  const auto m = modes::MaskTokens(ids, vocab, 0.15, 42);
  const at::Tensor picked = m.labels.ne(-100);
  EXPECT_FALSE(picked.narrow(1, 56, 8).any().item<bool>());
  EXPECT_FALSE(picked.select(1, 0).any().item<bool>());
  EXPECT_TRUE(torch::equal(m.labels.masked_select(picked), ids.masked_select(picked)));
  const double real = 200.0 * 55, n = picked.sum().item<double>();
  EXPECT_NEAR(n / real, 0.15, 0.01);  // 11,000 real tokens: sd ~0.0034
  const at::Tensor masked = m.inputs.eq(modes::kTokenMask) & picked;
  const at::Tensor same = m.inputs.eq(ids) & picked;
  EXPECT_NEAR(masked.sum().item<double>() / n, 0.8, 0.03);
  // Unchanged: the 10% kept plus the random draws that hit the same id (1 in 996).
  EXPECT_NEAR(same.sum().item<double>() / n, 0.1, 0.02);
  EXPECT_NEAR((n - masked.sum().item<double>() - same.sum().item<double>()) / n, 0.1, 0.02);
  EXPECT_TRUE(torch::equal(m.inputs.masked_select(~picked), ids.masked_select(~picked)));  // the rest untouched
  EXPECT_TRUE(torch::equal(modes::MaskTokens(ids, vocab, 0.15, 42).inputs, m.inputs));     // seeded
  // A batch too small to draw any still gets one token to predict.
  const auto one = modes::MaskTokens(torch::tensor({{2, 7, 9}}, torch::kLong), vocab, 0.01, 1);
  EXPECT_EQ(one.labels.ne(-100).sum().item<int64_t>(), 1);
}

TEST(Mlm, LossAtInitialisationIsNearLogVocabularyAndFalls) {
  Job job;
  job.mode = "mlm";
  job.data.name = "text";
  EXPECT_TRUE(SetJobKey(job, "mlm.hidden", "32").ok());
  job.optimizer.name = "adamw";
  job.optimizer.lr = 3e-3;
  const int64_t vocab = 500, t = 16;
  torch::manual_seed(3);
  // A corpus with structure: each row counts up from a random start.
  const at::Tensor rows = (torch::randint(0, 400, {64, 1}, torch::kLong) + torch::arange(t)).remainder(490) + 4;
  auto mode = modes::MakeMlmMode(job, modes::InputInfo{1, t, 1, vocab}, at::Device(at::kCPU), rows);
  ASSERT_TRUE(mode.ok()) << mode.status();
  const at::Tensor none = torch::zeros({64}, torch::kLong);
  auto first = (*mode)->Evaluate(rows, none, 32);
  ASSERT_TRUE(first.ok()) << first.status();
  const double loss0 = first->loss_sum / first->examples;
  EXPECT_NEAR(loss0, std::log(static_cast<double>(vocab)), 0.3);
  EXPECT_GT(first->monitors.count("unigram_loss"), 0u);
  EXPECT_GE(first->extra_correct.at("mlm_accuracy"), 0);
  for (int s = 0; s < 40; ++s) {
    modes::Batch b{rows, none};
    b.seed = 500 + s;
    ASSERT_TRUE((*mode)->TrainStep(b, 3e-3, nullptr).ok());
  }
  auto later = (*mode)->Evaluate(rows, none, 32);
  EXPECT_LT(later->loss_sum / later->examples, loss0 - 0.5);
  // Rows of the wrong length, dtype or ids are refused.
  modes::Batch bad{torch::zeros({2, t + 1}, torch::kLong), torch::zeros({2}, torch::kLong)};
  EXPECT_FALSE((*mode)->TrainStep(bad, 1e-3, nullptr).ok());
  bad.inputs = torch::full({2, t}, vocab, torch::kLong);
  EXPECT_FALSE((*mode)->TrainStep(bad, 1e-3, nullptr).ok());
  bad.inputs = torch::zeros({2, t});
  EXPECT_FALSE((*mode)->TrainStep(bad, 1e-3, nullptr).ok());
}

}  // namespace
}  // namespace allround
