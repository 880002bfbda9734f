#ifndef ALLROUND_DATA_FASHION_MNIST_H_
#define ALLROUND_DATA_FASHION_MNIST_H_

// Fashion-MNIST from a directory of the four IDX files (as Debian's dataset-fashion-mnist
// installs them under /usr/share/datasets/fashion-mnist, gzip-compressed, or uncompressed).

#include <string>

#include "absl/status/statusor.h"
#include "data/idx_reader.h"

namespace allround::data {

constexpr int64_t kFashionMnistClasses = 10;
// Per-pixel mean and standard deviation of the training images (in [0, 1]).
constexpr double kFashionMnistMean = 0.2860;
constexpr double kFashionMnistStd = 0.3530;

struct TrainTest {
  LabeledImages train;
  LabeledImages test;
};

// Reads train-{images-idx3,labels-idx1}-ubyte[.gz] and t10k-... from `dir`. A missing directory
// or file is an error naming it.
absl::StatusOr<TrainTest> LoadFashionMnist(const std::string& dir);

// uint8 [N, H, W] -> float [N, 1, H, W], scaled to [0, 1] and standardized with mean and std.
at::Tensor NormalizeImages(const at::Tensor& images, double mean, double std);

}  // namespace allround::data

#endif  // ALLROUND_DATA_FASHION_MNIST_H_
