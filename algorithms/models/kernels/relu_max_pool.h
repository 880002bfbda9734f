#ifndef ALLROUND_ALGORITHMS_MODELS_KERNELS_RELU_MAX_POOL_H_
#define ALLROUND_ALGORITHMS_MODELS_KERNELS_RELU_MAX_POOL_H_

// relu(max_pool2d(x, 2)) in one pass, with autograd. Equal, value for value and gradient for
// gradient, to max_pool2d(relu(x), 2), the usual conv -> ReLU -> 2x2 pool: both functions are
// monotone, so the window's maximum is the same element either way, and ReLU's gradient is zero
// exactly where the pooled maximum is <= 0. NaN propagates as in PyTorch's max_pool2d; ties go to
// the first element in row-major window order, as in PyTorch.
//
// Why: LibTorch's CPU max_pool2d_with_indices spends ~1 ms on a [64, 6, 24, 24] batch (a quarter
// of a SimpleCNN step) in its generic reduction loop; this kernel reads each input once, writes a
// one-byte window index, and takes ~5% of that. Contiguous float/double CPU tensors take the fused
// kernel; anything else (CUDA, other dtypes or layouts) falls back to the LibTorch ops.

#include <ATen/core/Tensor.h>

namespace allround::models {

// x: [N, C, H, W]; returns [N, C, H / 2, W / 2] (floor, like max_pool2d's default).
at::Tensor ReluMaxPool2x2(const at::Tensor& x);

}  // namespace allround::models

#endif  // ALLROUND_ALGORITHMS_MODELS_KERNELS_RELU_MAX_POOL_H_
