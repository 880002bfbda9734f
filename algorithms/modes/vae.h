#ifndef ALLROUND_ALGORITHMS_MODES_VAE_H_
#define ALLROUND_ALGORITHMS_MODES_VAE_H_

// The VAE mode (Kingma & Welling 2014), the unsupervised family: an MLP encoder to the mean and
// log-variance of a diagonal Gaussian posterior over vae.latent dimensions, the
// reparameterisation z = mu + sigma * eps, an MLP decoder to Bernoulli logits per pixel. The loss
// is the negative ELBO per image: the binary cross-entropy of the pixels (in [0, 1]) summed over
// the image, plus KL(q(z|x) || N(0, I)). With vae.denoise_std > 0 it is a denoising autoencoder
// instead: Gaussian noise on the input pixels, the clean image as target, the posterior mean as
// code and no KL.
//
// Evaluation: test_loss is the negative ELBO (nats per image; for the denoising variant the
// reconstruction loss) with one posterior sample per image drawn from a fixed seed; monitors
// "elbo", "recon_bce" (nats per image), "kl" and "recon_mse" (per pixel, of the posterior mean's
// reconstruction). WriteImages writes reconstructions-epoch<N>.png (rows of originals over their
// reconstructions) and, for the VAE, samples-epoch<N>.png (decoded draws from the prior).
// Checkpoints hold the network ("model/encoder...", "model/decoder...") and the optimizer.

#include <ATen/core/Tensor.h>

#include <memory>

#include "absl/status/statusor.h"
#include "algorithms/modes/learning_mode.h"
#include "algorithms/modes/supervised.h"

namespace allround::modes {

// Per-image terms of the negative ELBO: recon = sum over pixels of BCE(logits, target), kl =
// KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions. Both [B].
struct VaeTerms {
  at::Tensor recon, kl;
};
VaeTerms NegativeElboTerms(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& mu,
                           const at::Tensor& logvar);

// The mode's keys (vae.*), registered in vae.cc with these defaults: MLP encoder and decoder,
// Bernoulli likelihood on pixels.
struct VaeSpec {
  int64_t latent = 16;
  int64_t hidden = 400;
  double denoise_std = 0.0;          // > 0: a denoising autoencoder instead (Gaussian noise of this std
                                     // on the input pixels, clean target, no KL)
};

// The job's vae.* keys.
VaeSpec VaeSpecFromJob(const Job& job);

absl::StatusOr<std::unique_ptr<LearningMode>> MakeVaeMode(const Job& job, const InputInfo& input, at::Device device);

}  // namespace allround::modes

#endif  // ALLROUND_ALGORITHMS_MODES_VAE_H_
