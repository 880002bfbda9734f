#include "worker/data/augment.h"

#include <ATen/ATen.h>

namespace allround::data {

at::Tensor Augment(const at::Tensor& batch, const std::string& kind, Rng& rng, int64_t pad, double fill) {
  if (kind == "none") return batch;
  const bool flip = kind == "flip" || kind == "flip_crop";
  const bool crop = kind == "crop" || kind == "flip_crop";
  const int64_t b = batch.size(0), h = batch.size(2), w = batch.size(3);
  at::Tensor padded = crop ? at::constant_pad_nd(batch, {pad, pad, pad, pad}, fill) : batch;
  at::Tensor out = at::empty_like(batch);
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

}  // namespace allround::data
