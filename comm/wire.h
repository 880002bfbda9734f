#ifndef ALLROUND_COMM_WIRE_H_
#define ALLROUND_COMM_WIRE_H_

// Tensors <-> the protocol's TensorChunk messages. Encoding cuts each tensor into chunks of at
// most `chunk_bytes`; decoding takes chunks one at a time and refuses, with the reason, anything
// that is not a well-formed sequence: a continuation of no tensor, a gap or overlap in offsets, a
// size that does not match dtype and shape, an unknown dtype, a tensor left incomplete, or more
// bytes in all than the receiver allows. Thread-compatible.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/proto/federated.pb.h"

namespace allround::comm {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

std::vector<allround::v1::TensorChunk> EncodeTensors(const NamedTensors& tensors, uint64_t chunk_bytes = 1 << 20);

class TensorAssembler {
 public:
  explicit TensorAssembler(uint64_t max_total_bytes) : max_total_bytes_(max_total_bytes) {}
  absl::Status Add(const allround::v1::TensorChunk& chunk);
  // The tensors, in the order they arrived; fails if the last one is incomplete.
  absl::StatusOr<NamedTensors> Finish();

 private:
  uint64_t max_total_bytes_;
  uint64_t total_ = 0;
  NamedTensors done_;
  std::string name_;
  at::Tensor current_;
  uint64_t filled_ = 0;
  uint64_t expected_ = 0;
};

}  // namespace allround::comm

#endif  // ALLROUND_COMM_WIRE_H_
