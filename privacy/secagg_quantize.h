#ifndef ALLROUND_PRIVACY_SECAGG_QUANTIZE_H_
#define ALLROUND_PRIVACY_SECAGG_QUANTIZE_H_

// What turns a site's update into the vector of Z_{2^32} words that secure aggregation sums, and
// the sum back into the example-weighted mean update (the coordinator's decoding), as Flower's
// SecAgg+ does it: clip to a range, scale by the site's weight, quantize with stochastic rounding.
//
// Encoding at a site with example count n, the round's largest declared count W (so r = n / W is
// in (0, 1]), clip range c and L levels:
//   word_j = SR((clamp(r * delta_j, -c, c) + c) / (2c) * L)   for every floating-point coordinate
//   last word = SR(r * L)                                        the weight, masked like the rest
// with SR stochastic rounding (floor(x + u), u uniform in [0, 1) from a seeded stream: unbiased).
// Every word is at most L, and L = floor((2^32 - 1) / sampled sites), so the sum over the sampled
// sites never wraps. The coordinator learns sum r_i only, not any one site's count.
//
// Decoding the sum over m sites: sum_j * 2c / L - m c = sum_i r_i clamp(...) (to m quantization
// steps 2c / L), divided by the summed weights: the example-weighted mean delta, the FedAvg of the
// updates to within (m + 1) steps over sum r_i per coordinate. Integer tensors (BatchNorm's batch
// counter) take no part: the coordinator keeps its own.
//
// Pure functions on LibTorch tensors; thread-safe.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "tensor/named_tensors.h"

namespace allround::privacy {

using tensor::NamedTensors;

struct QuantizeParams {
  double clip_range = 1.0;  // c: each weighted coordinate is clamped to [-c, c]
  uint32_t levels = 0;      // L, > 0
};

// The levels for `sampled` sites: floor((2^32 - 1) / sampled).
uint32_t LevelsFor(int64_t sampled);

// The words one update needs: the floating-point coordinates of `model` plus the weight.
size_t SecureVectorLength(const NamedTensors& model);

// Encodes `delta` (one tensor per floating-point tensor of `model`, same names, order and shapes;
// integer tensors of `model` are skipped) with weight `r` in (0, 1]. `seed` drives the rounding.
// InvalidArgument for a missing or misshapen tensor, a non-finite value or a weight out of range.
absl::StatusOr<std::vector<uint32_t>> QuantizeUpdate(const NamedTensors& model, const NamedTensors& delta, double r,
                                                     const QuantizeParams& params, uint64_t seed);

struct DecodedSum {
  NamedTensors mean_delta;  // the weighted mean delta, one tensor per floating-point tensor of model
  double weight_sum = 0.0;  // sum of r_i over the counted sites
};

// Decodes the sum over `counted` sites. InvalidArgument when the length is not the model's, or the
// summed weight is not positive (no counted site had any weight: nothing to average).
absl::StatusOr<DecodedSum> DequantizeSum(const NamedTensors& model, const std::vector<uint32_t>& sum, int64_t counted,
                                         const QuantizeParams& params);

}  // namespace allround::privacy

#endif  // ALLROUND_PRIVACY_SECAGG_QUANTIZE_H_
