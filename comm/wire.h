#ifndef ALLROUND_COMM_WIRE_H_
#define ALLROUND_COMM_WIRE_H_

// Tensors <-> the protocol's TensorChunk messages. Encoding cuts each tensor into chunks of at
// most `chunk_bytes`; decoding takes chunks one at a time and refuses, with the reason, anything
// that is not a well-formed sequence: a continuation of no tensor, a gap or overlap in offsets, a
// size that does not match dtype and shape, an unknown dtype, a tensor left incomplete, or more
// bytes in all than the receiver allows. Given the layout it expects (a coordinator knows its
// model), it also refuses the first chunk of any tensor that is not the next one of the layout
// (name, dtype, shape, in order), so a stream never makes it hold more than that model.
// Errors quote at most `max_echo_chars` of a name or dtype the peer sent. Thread-compatible.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/proto/federated.pb.h"
#include "tensor/named_tensors.h"

namespace allround::comm {

using tensor::NamedTensors;

std::vector<allround::v1::TensorChunk> EncodeTensors(const NamedTensors& tensors, uint64_t chunk_bytes = 1 << 20);

using tensor::TensorLayout;

// The federated protocol's version (JoinRequest.protocol_version); the coordinator refuses any
// other at Join. 2: secure aggregation (TaskReply.secagg, SecAggSubmit); a version-1 site would
// ignore a secure round's stages.
inline constexpr uint32_t kProtocolVersion = 2;

// A site id read from a secure-aggregation message, where ids are uint32 and 0 means no site:
// anything outside [1, 2^32-1] is InvalidArgument.
absl::StatusOr<uint32_t> SecAggSiteId(int64_t id);

class TensorAssembler {
 public:
  explicit TensorAssembler(uint64_t max_total_bytes, size_t max_echo_chars = 128)
      : max_total_bytes_(max_total_bytes), max_echo_chars_(max_echo_chars) {}
  // Exactly these tensors, in this order.
  TensorAssembler(const std::vector<TensorLayout>* expected, size_t max_echo_chars);
  absl::Status Add(const allround::v1::TensorChunk& chunk);
  // The tensors, in the order they arrived; fails if the last one is incomplete.
  absl::StatusOr<NamedTensors> Finish();

 private:
  absl::Status CheckExpected(const allround::v1::TensorChunk& chunk, at::ScalarType dtype) const;

  uint64_t max_total_bytes_;
  size_t max_echo_chars_;
  const std::vector<TensorLayout>* layout_ = nullptr;  // not owned; null: any tensors
  uint64_t total_ = 0;
  NamedTensors done_;
  std::string name_;
  at::Tensor current_;
  uint64_t filled_ = 0;
  uint64_t expected_ = 0;
};

}  // namespace allround::comm

#endif  // ALLROUND_COMM_WIRE_H_
