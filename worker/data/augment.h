#ifndef ALLROUND_WORKER_DATA_AUGMENT_H_
#define ALLROUND_WORKER_DATA_AUGMENT_H_

// Training-time augmentation of image batches, drawn from an Rng that the caller seeds from the
// job seed, so the same (seed, epoch, step) always gives the same augmented batch.

#include <ATen/core/Tensor.h>

#include <string>

#include "common/random.h"

namespace allround::data {

// batch: float [B, C, H, W]. kind: "none", "flip" (horizontal, p = 0.5), "crop" (pad by `pad`
// with `fill`, then a random H x W window), or "flip_crop". Returns a new tensor.
at::Tensor Augment(const at::Tensor& batch, const std::string& kind, Rng& rng, int64_t pad = 2,
                   double fill = 0.0);

}  // namespace allround::data

#endif  // ALLROUND_WORKER_DATA_AUGMENT_H_
