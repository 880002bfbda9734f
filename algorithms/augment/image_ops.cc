#include "algorithms/augment/image_ops.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/png.h"

namespace allround::augment {
namespace {

constexpr double kPi = 3.14159265358979323846;

double Uniform(Rng& rng, double lo, double hi) { return lo + (hi - lo) * rng.UniformDouble(); }

// One value per sample, shaped [B, 1, 1, 1] to broadcast over an image.
at::Tensor PerSample(const std::vector<double>& v, const at::Tensor& like) {
  return at::tensor(v, like.options().dtype(at::kDouble))
      .to(like.scalar_type())
      .view({static_cast<int64_t>(v.size()), 1, 1, 1});
}

// Draws a Bernoulli(p) per sample.
std::vector<double> Coins(Rng& rng, int64_t n, double p) {
  std::vector<double> out(n);
  for (auto& c : out) c = rng.UniformDouble() < p ? 1.0 : 0.0;
  return out;
}

// Bilinear resampling of each sample through its own 2 x 3 affine map (output coordinates in
// [-1, 1] to input coordinates), to out_h x out_w.
at::Tensor Warp(const at::Tensor& x, const std::vector<double>& theta, int64_t out_h, int64_t out_w) {
  const int64_t b = x.size(0);
  at::Tensor t = at::tensor(theta, x.options().dtype(at::kDouble)).to(x.scalar_type()).view({b, 2, 3});
  at::Tensor grid = at::affine_grid_generator(t, {b, x.size(1), out_h, out_w}, /*align_corners=*/false);
  return at::grid_sampler(x, grid, /*interpolation_mode=bilinear*/ 0, /*padding_mode=zeros*/ 0,
                          /*align_corners=*/false);
}

}  // namespace

at::Tensor ImageGrid(const at::Tensor& images, int64_t cols) {
  const int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  const int64_t rows = (n + cols - 1) / cols;
  at::Tensor grid = at::zeros({rows * (h + 2) + 2, cols * (w + 2) + 2}, images.options().dtype(at::kFloat));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t top = 2 + (i / cols) * (h + 2), left = 2 + (i % cols) * (w + 2);
    grid.narrow(0, top, h).narrow(1, left, w).copy_(images[i][0]);
  }
  return grid;
}

GrayImage ImageGridPicture(const std::string& name, const at::Tensor& images, int64_t cols) {
  const at::Tensor grid = ImageGrid(images.detach().cpu(), cols);
  const at::Tensor bytes = grid.mul(255).round().clamp(0, 255).to(at::kByte).contiguous();
  return GrayImage{name, grid.size(1), grid.size(0),
                   std::vector<uint8_t>(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel())};
}

at::Tensor Denormalize(const at::Tensor& x, double mean, double std) { return x * std + mean; }
at::Tensor Normalize(const at::Tensor& x, double mean, double std) { return (x - mean) / std; }

at::Tensor HorizontalFlip(const at::Tensor& x, Rng& rng, double p) {
  const at::Tensor flip = PerSample(Coins(rng, x.size(0), p), x).to(at::kBool);
  return at::where(flip, x.flip({3}), x);
}

namespace {

// Per sample, in sample order: a crop offset (dy, dx) when `crop`, then a coin for the mirror when
// `flip`. The job's data.augment and PadAndCrop both draw in this order, so a (seed, step) gives
// the same batch through either.
at::Tensor CropThenFlip(const at::Tensor& x, Rng& rng, bool crop, bool flip, int64_t pad, double fill) {
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  const at::Tensor padded = crop ? at::constant_pad_nd(x, {pad, pad, pad, pad}, fill) : x;
  at::Tensor out = at::empty_like(x);
  for (int64_t i = 0; i < b; ++i) {
    at::Tensor img = padded[i];
    if (crop) {
      const int64_t dy = static_cast<int64_t>(rng.UniformInt(2 * pad + 1));
      const int64_t dx = static_cast<int64_t>(rng.UniformInt(2 * pad + 1));
      img = img.narrow(1, dy, h).narrow(2, dx, w);
    }
    if (flip && rng.UniformInt(2) == 1) img = img.flip({2});
    out[i].copy_(img);
  }
  return out;
}

}  // namespace

at::Tensor PadAndCrop(const at::Tensor& x, Rng& rng, int64_t pad, double fill) {
  return CropThenFlip(x, rng, /*crop=*/true, /*flip=*/false, pad, fill);
}

at::Tensor AugmentBatch(const at::Tensor& batch, const std::string& kind, Rng& rng, int64_t pad, double fill) {
  if (kind == "none") return batch;
  return CropThenFlip(batch, rng, kind == "crop" || kind == "flip_crop", kind == "flip" || kind == "flip_crop", pad,
                      fill);
}

at::Tensor RandomResizedCrop(const at::Tensor& x, Rng& rng, int64_t out, double scale_lo, double scale_hi,
                             double ratio_lo, double ratio_hi) {
  const int64_t b = x.size(0);
  const double h = static_cast<double>(x.size(2)), w = static_cast<double>(x.size(3));
  std::vector<double> theta;
  theta.reserve(6 * b);
  for (int64_t i = 0; i < b; ++i) {
    // Crop size and place in pixels (torchvision's rule: 10 tries, then the whole image).
    double cw = w, ch = h, x0 = 0, y0 = 0;
    for (int attempt = 0; attempt < 10; ++attempt) {
      const double area = h * w * Uniform(rng, scale_lo, scale_hi);
      const double ratio = std::exp(Uniform(rng, std::log(ratio_lo), std::log(ratio_hi)));
      const double tw = std::sqrt(area * ratio), th = std::sqrt(area / ratio);
      if (tw <= w && th <= h) {
        cw = tw;
        ch = th;
        x0 = Uniform(rng, 0, w - cw);
        y0 = Uniform(rng, 0, h - ch);
        break;
      }
    }
    // Output [-1, 1] maps onto the crop's span in the input's [-1, 1] coordinates.
    const double sx = cw / w, sy = ch / h;
    const double cx = (x0 + cw / 2) / w * 2 - 1, cy = (y0 + ch / 2) / h * 2 - 1;
    theta.insert(theta.end(), {sx, 0, cx, 0, sy, cy});
  }
  return Warp(x, theta, out, out);
}

at::Tensor BrightnessContrast(const at::Tensor& x, Rng& rng, double brightness, double contrast, double p) {
  const int64_t b = x.size(0);
  std::vector<double> add(b), mul(b), apply(b);
  for (int64_t i = 0; i < b; ++i) {
    apply[i] = rng.UniformDouble() < p ? 1.0 : 0.0;
    add[i] = Uniform(rng, -brightness, brightness);
    mul[i] = Uniform(rng, 1 - contrast, 1 + contrast);
  }
  const at::Tensor m = x.mean({1, 2, 3}, /*keepdim=*/true);
  const at::Tensor jittered = ((x - m) * PerSample(mul, x) + m + PerSample(add, x)).clamp(0, 1);
  return at::where(PerSample(apply, x).to(at::kBool), jittered, x);
}

at::Tensor GaussianBlur(const at::Tensor& x, Rng& rng, double p, double sigma_lo, double sigma_hi) {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  constexpr int64_t k = 5;
  std::vector<double> kernels(b * k, 0.0);
  for (int64_t i = 0; i < b; ++i) {
    const bool blur = rng.UniformDouble() < p;
    const double sigma = Uniform(rng, sigma_lo, sigma_hi);
    double* row = &kernels[i * k];
    if (!blur) {
      row[k / 2] = 1.0;
      continue;
    }
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) {
      const double d = static_cast<double>(j - k / 2);
      row[j] = std::exp(-d * d / (2 * sigma * sigma));
      sum += row[j];
    }
    for (int64_t j = 0; j < k; ++j) row[j] /= sum;
  }
  // Separable: one 1 x 5 and one 5 x 1 depthwise convolution over the B*C planes.
  at::Tensor kern = at::tensor(kernels, x.options().dtype(at::kDouble)).to(x.scalar_type()).view({b, 1, k});
  kern = kern.expand({b, c, k}).reshape({b * c, 1, 1, k});
  at::Tensor planes = x.reshape({1, b * c, h, w});
  planes = at::replication_pad2d(planes, {k / 2, k / 2, k / 2, k / 2});
  const c10::optional<at::Tensor> no_bias;
  planes = at::conv2d(planes, kern, no_bias, at::IntArrayRef{1}, at::IntArrayRef{0}, at::IntArrayRef{1}, b * c);
  planes = at::conv2d(planes, kern.view({b * c, 1, k, 1}), no_bias, at::IntArrayRef{1}, at::IntArrayRef{0},
                      at::IntArrayRef{1}, b * c);
  return planes.view({b, c, h, w});
}

at::Tensor Solarize(const at::Tensor& x, Rng& rng, double p, double threshold) {
  const at::Tensor apply = PerSample(Coins(rng, x.size(0), p), x).to(at::kBool);
  return at::where(apply.logical_and(x >= threshold), 1 - x, x);
}

at::Tensor Cutout(const at::Tensor& x, Rng& rng, int64_t size, double fill) {
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  std::vector<int64_t> y0(b), y1(b), x0(b), x1(b);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t cy = static_cast<int64_t>(rng.UniformInt(h)), cx = static_cast<int64_t>(rng.UniformInt(w));
    y0[i] = std::max<int64_t>(0, cy - size / 2);
    y1[i] = std::min<int64_t>(h, cy - size / 2 + size);
    x0[i] = std::max<int64_t>(0, cx - size / 2);
    x1[i] = std::min<int64_t>(w, cx - size / 2 + size);
  }
  const auto col = [&](const std::vector<int64_t>& v) { return at::tensor(v, at::kLong).view({b, 1, 1, 1}); };
  const at::Tensor rows = at::arange(h, at::kLong).view({1, 1, h, 1});
  const at::Tensor cols = at::arange(w, at::kLong).view({1, 1, 1, w});
  const at::Tensor mask = (rows >= col(y0)) & (rows < col(y1)) & (cols >= col(x0)) & (cols < col(x1));
  return x.masked_fill(mask.to(x.device()), fill);
}

at::Tensor Affine(const at::Tensor& x, Rng& rng, double degrees, double shear) {
  const int64_t b = x.size(0);
  std::vector<double> theta;
  theta.reserve(6 * b);
  for (int64_t i = 0; i < b; ++i) {
    const double a = Uniform(rng, -degrees, degrees) * kPi / 180.0, s = Uniform(rng, -shear, shear);
    // Rotation times shear [[1, s], [0, 1]], about the centre (no translation).
    const double ca = std::cos(a), sa = std::sin(a);
    theta.insert(theta.end(), {ca, ca * s - sa, 0, sa, sa * s + ca, 0});
  }
  return Warp(x, theta, x.size(2), x.size(3));
}

at::Tensor Posterize(const at::Tensor& x, Rng& rng, int bits_lo, int bits_hi) {
  const int64_t b = x.size(0);
  std::vector<double> levels(b);
  for (auto& l : levels) l = std::ldexp(1.0, bits_lo + static_cast<int>(rng.UniformInt(bits_hi - bits_lo + 1)));
  const at::Tensor n = PerSample(levels, x);
  return (x * n).floor().clamp_max(n - 1) / (n - 1);
}

at::Tensor WeakView(const at::Tensor& x, Rng& rng, double mean, double std) {
  at::Tensor img = Denormalize(x, mean, std);
  img = PadAndCrop(HorizontalFlip(img, rng), rng, 3);
  return Normalize(img, mean, std);
}

at::Tensor StrongView(const at::Tensor& x, Rng& rng, double mean, double std) {
  at::Tensor img = Denormalize(x, mean, std);
  img = PadAndCrop(HorizontalFlip(img, rng), rng, 3);
  const int64_t b = img.size(0);
  constexpr int kOps = 5;
  for (int slot = 0; slot < 2; ++slot) {
    std::vector<std::vector<int64_t>> by_op(kOps);
    for (int64_t i = 0; i < b; ++i) by_op[rng.UniformInt(kOps)].push_back(i);
    for (int op = 0; op < kOps; ++op) {
      if (by_op[op].empty()) continue;
      const at::Tensor idx = at::tensor(by_op[op], at::kLong).to(img.device());
      const at::Tensor part = img.index_select(0, idx);
      at::Tensor done;
      switch (op) {
        case 0: done = BrightnessContrast(part, rng, 0.4, 0.6); break;
        case 1: done = GaussianBlur(part, rng, 1.0, 0.3, 1.5); break;
        case 2: done = Solarize(part, rng, 1.0, Uniform(rng, 0.4, 0.9)); break;
        case 3: done = Affine(part, rng, 30.0, 0.3); break;
        default: done = Posterize(part, rng, 2, 5); break;
      }
      img = img.index_copy(0, idx, done);
    }
  }
  return Normalize(Cutout(img, rng, 10, 0.5), mean, std);
}

at::Tensor GlobalView(const at::Tensor& x, Rng& rng, int which, double mean, double std) {
  at::Tensor img = RandomResizedCrop(Denormalize(x, mean, std), rng, x.size(2), 0.4, 1.0);
  img = BrightnessContrast(HorizontalFlip(img, rng), rng, 0.4, 0.4, 0.8);
  img = GaussianBlur(img, rng, which == 0 ? 1.0 : 0.1, 0.1, 1.0);
  img = Solarize(img, rng, which == 0 ? 0.0 : 0.2);
  return Normalize(img, mean, std);
}

at::Tensor LocalView(const at::Tensor& x, Rng& rng, double mean, double std, int64_t size) {
  at::Tensor img = RandomResizedCrop(Denormalize(x, mean, std), rng, size, 0.05, 0.4);
  img = BrightnessContrast(HorizontalFlip(img, rng), rng, 0.4, 0.4, 0.8);
  img = GaussianBlur(img, rng, 0.5, 0.1, 1.0);
  return Normalize(img, mean, std);
}

}  // namespace allround::augment
