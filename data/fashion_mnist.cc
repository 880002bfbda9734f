#include "data/fashion_mnist.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include "absl/strings/str_cat.h"

namespace allround::data {
namespace {

bool IsFile(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// base + ".gz" if present, else base (uncompressed), else base + ".gz" so the error names it.
std::string Pick(const std::string& dir, const std::string& base) {
  const std::string plain = absl::StrCat(dir, "/", base);
  if (IsFile(plain + ".gz")) return plain + ".gz";
  if (IsFile(plain)) return plain;
  return plain + ".gz";
}

}  // namespace

absl::StatusOr<TrainTest> LoadFashionMnist(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("data directory '", dir,
                                            "' does not exist (install dataset-fashion-mnist, or set data.dir)"));
  }
  auto train = ReadIdxPair(Pick(dir, "train-images-idx3-ubyte"), Pick(dir, "train-labels-idx1-ubyte"),
                           kFashionMnistClasses);
  if (!train.ok()) return train.status();
  auto test = ReadIdxPair(Pick(dir, "t10k-images-idx3-ubyte"), Pick(dir, "t10k-labels-idx1-ubyte"),
                          kFashionMnistClasses);
  if (!test.ok()) return test.status();
  // The model is built for the training images' size; test images of another would fail the first
  // evaluation, after a whole epoch of training.
  if (train->images.sizes().slice(1) != test->images.sizes().slice(1)) {
    return absl::InvalidArgumentError(absl::StrCat("data directory '", dir, "': training images are ",
                                                   c10::str(train->images.sizes().slice(1)), ", test images ",
                                                   c10::str(test->images.sizes().slice(1)), ": they must be alike"));
  }
  return TrainTest{*std::move(train), *std::move(test)};
}

at::Tensor NormalizeImages(const at::Tensor& images, double mean, double std) {
  return images.to(at::kFloat).div_(255.0).sub_(mean).div_(std).unsqueeze(1).contiguous();
}

}  // namespace allround::data
