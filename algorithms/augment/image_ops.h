#ifndef ALLROUND_ALGORITHMS_AUGMENT_IMAGE_OPS_H_
#define ALLROUND_ALGORITHMS_AUGMENT_IMAGE_OPS_H_

// Image augmentation as tensor operations on batches (float [B, C, H, W], pixel values in [0, 1];
// Denormalize/Normalize convert from and to the standardized inputs the models see). No image
// library. Every random choice is drawn per sample, in sample order, from the caller's Rng, so a
// (seed, step) fixes the augmented batch: seed the Rng from the job seed (DeriveSeed) and the same
// run augments the same way, resumed or not, on any number of ranks.
//
// The views the learning modes compose from these ops (FixMatch's weak and strong views, DINO's
// global and local crops) are at the bottom.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "common/png.h"
#include "common/random.h"

namespace allround::augment {

// x * std + mean, and back.
// Tiles images [N, 1, H, W] (values in [0, 1]) `cols` to a row, 2 black pixels between and around
// them: float [R*(H+2)+2, cols*(W+2)+2] for R = ceil(N / cols) rows.
at::Tensor ImageGrid(const at::Tensor& images, int64_t cols);
// ImageGrid as an 8-bit grayscale picture named `name`.
GrayImage ImageGridPicture(const std::string& name, const at::Tensor& images, int64_t cols);

at::Tensor Denormalize(const at::Tensor& x, double mean, double std);
at::Tensor Normalize(const at::Tensor& x, double mean, double std);

// Mirror left-right with probability p.
at::Tensor HorizontalFlip(const at::Tensor& x, Rng& rng, double p = 0.5);
// Pad by `pad` pixels of `fill` on every side and cut a random H x W window (a shift of up to
// `pad` pixels each way).
at::Tensor PadAndCrop(const at::Tensor& x, Rng& rng, int64_t pad, double fill = 0.0);
// The job's training-time augmentation (data.augment) of a batch float [B, C, H, W] in the inputs'
// scale: "none" (the batch itself), "flip" (mirror with p = 0.5), "crop" (pad by `pad` with `fill`,
// then a random H x W window) or "flip_crop" (crop, then mirror). Returns a new tensor.
at::Tensor AugmentBatch(const at::Tensor& batch, const std::string& kind, Rng& rng, int64_t pad = 2,
                        double fill = 0.0);
// A random crop covering a fraction in [scale_lo, scale_hi] of the image area, with aspect
// ratio (w/h) log-uniform in [ratio_lo, ratio_hi], resized bilinearly to out x out (Inception
// style, as DINO's multi-crop uses).
at::Tensor RandomResizedCrop(const at::Tensor& x, Rng& rng, int64_t out, double scale_lo, double scale_hi,
                             double ratio_lo = 3.0 / 4.0, double ratio_hi = 4.0 / 3.0);
// With probability p: x' = clamp((x - m) * c + m + b, 0, 1) with b uniform in [-brightness,
// brightness], c uniform in [1 - contrast, 1 + contrast], m the sample's mean.
at::Tensor BrightnessContrast(const at::Tensor& x, Rng& rng, double brightness, double contrast, double p = 1.0);
// With probability p, a 5 x 5 Gaussian blur of sigma uniform in [sigma_lo, sigma_hi], edges
// replicated.
at::Tensor GaussianBlur(const at::Tensor& x, Rng& rng, double p, double sigma_lo, double sigma_hi);
// With probability p, pixels >= threshold become 1 - pixel.
at::Tensor Solarize(const at::Tensor& x, Rng& rng, double p, double threshold = 0.5);
// A size x size square (centred anywhere, clipped at the edges) set to `fill`.
at::Tensor Cutout(const at::Tensor& x, Rng& rng, int64_t size, double fill = 0.0);
// A rotation by an angle uniform in [-degrees, degrees] and a horizontal shear uniform in
// [-shear, shear] about the centre (bilinear; outside the image is 0).
at::Tensor Affine(const at::Tensor& x, Rng& rng, double degrees, double shear);
// Each pixel rounded down to one of 2^bits levels, bits uniform in {bits_lo..bits_hi}.
at::Tensor Posterize(const at::Tensor& x, Rng& rng, int bits_lo, int bits_hi);

// FixMatch (Sohn et al. 2020) for 28 x 28. Weak: flip (p 0.5) and a shift of up to 3 pixels.
// Strong: weak, then RandAugment-style two ops per sample drawn from {brightness/contrast,
// blur, solarize, affine, posterize} at random magnitudes, then a 10 x 10 cutout. Inputs and
// outputs standardized with (mean, std).
at::Tensor WeakView(const at::Tensor& x, Rng& rng, double mean, double std);
at::Tensor StrongView(const at::Tensor& x, Rng& rng, double mean, double std);

// DINO (Caron et al. 2021) multi-crop adapted to 28 x 28: a global view is a random resized
// crop of scale [0.4, 1] to 28 x 28, flipped, brightness/contrast jittered, blurred (p 1.0 for the
// first global view, 0.1 for the second) and solarized (p 0 / 0.2); a local view is a crop of
// scale [0.05, 0.4] to 12 x 12 with flip, jitter and blur (p 0.5). Standardized in and out.
at::Tensor GlobalView(const at::Tensor& x, Rng& rng, int which, double mean, double std);
at::Tensor LocalView(const at::Tensor& x, Rng& rng, double mean, double std, int64_t size = 12);

}  // namespace allround::augment

#endif  // ALLROUND_ALGORITHMS_AUGMENT_IMAGE_OPS_H_
