#ifndef ALLROUND_DATA_IDX_READER_H_
#define ALLROUND_DATA_IDX_READER_H_

// Reader for the IDX format of MNIST and Fashion-MNIST (big-endian header: two zero bytes, a type
// byte, a dimension count, then one uint32 per dimension), gzip-compressed or plain. Every defect
// (missing file, bad gzip stream, wrong magic, truncated or over-long data, a count that does not
// match its partner file) is one error that names the file and what is wrong.

#include <ATen/core/Tensor.h>

#include <string>

#include "absl/status/statusor.h"

namespace allround::data {

// An IDX file of unsigned bytes as a uint8 tensor with the file's dimensions. `expected_dims`,
// when > 0, is the number of dimensions the caller needs (1 for labels, 3 for images).
absl::StatusOr<at::Tensor> ReadIdxUint8(const std::string& path, int expected_dims);

// Images (uint8, [N, H, W]) and their labels (int64, [N]).
struct LabeledImages {
  at::Tensor images;
  at::Tensor labels;
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

// Reads an images file and a labels file and checks they describe the same N examples, and that
// every label is below `num_classes`.
absl::StatusOr<LabeledImages> ReadIdxPair(const std::string& images_path,
                                          const std::string& labels_path, int64_t num_classes);

}  // namespace allround::data

#endif  // ALLROUND_DATA_IDX_READER_H_
