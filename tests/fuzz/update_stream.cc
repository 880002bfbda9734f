// Fuzz target: the update stream's chunk reassembly and validation (comm/wire.h TensorAssembler),
// as the coordinator's SubmitUpdate reads a site's stream and as a site reads the model it
// fetches. The input is a sequence of records, each a 2-byte little-endian length and that many
// bytes of one UpdateChunk message (protobuf's own parser decodes it; what is fuzzed is what we do
// with the messages). Invariants:
//  - with the model's layout (the coordinator's case), a stream that is accepted holds exactly the
//    layout's tensors, names, dtypes and shapes in order, and never more bytes than the model;
//  - without one (a bound on total bytes only), nothing accepted holds more than that bound;
//  - every message without a chunk, and every bad chunk, ends the stream with an error.

#include <ATen/ATen.h>

#include <cstdlib>
#include <vector>

#include "comm/proto/federated.pb.h"
#include "comm/wire.h"

namespace {

using allround::tensor::TensorLayout;

const std::vector<TensorLayout>& Layout() {
  static const auto* layout = new std::vector<TensorLayout>{
      {"conv.weight", at::kFloat, {4, 1, 3, 3}}, {"conv.bias", at::kFloat, {4}},
      {"bn.num_batches_tracked", at::kLong, {}}, {"fc.weight", at::kDouble, {2, 5}}, {"empty", at::kFloat, {0, 3}}};
  return *layout;
}

constexpr uint64_t kUnboundedLimit = 1 << 20;  // the assembler without a layout: 1 MiB

uint64_t Bytes(const at::Tensor& t) { return static_cast<uint64_t>(t.numel()) * t.element_size(); }

// Feeds the messages to `assembler` as the coordinator's loop does; the tensors, or null.
bool Assemble(const std::vector<allround::v1::UpdateChunk>& messages, allround::comm::TensorAssembler& assembler,
              allround::tensor::NamedTensors* out) {
  for (const auto& msg : messages) {
    if (!msg.has_chunk()) return false;
    if (!assembler.Add(msg.chunk()).ok()) return false;
  }
  auto done = assembler.Finish();
  if (!done.ok()) return false;
  *out = *std::move(done);
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<allround::v1::UpdateChunk> messages;
  size_t at = 0;
  while (at + 2 <= size && messages.size() < 64) {
    const size_t n = data[at] | (static_cast<size_t>(data[at + 1]) << 8);
    at += 2;
    if (n > size - at) break;
    allround::v1::UpdateChunk msg;
    if (!msg.ParseFromArray(data + at, static_cast<int>(n))) return 0;  // protobuf refused: so would gRPC
    messages.push_back(std::move(msg));
    at += n;
  }
  if (messages.empty()) return 0;

  allround::comm::TensorAssembler expected(&Layout(), 128);
  allround::tensor::NamedTensors got;
  if (Assemble(messages, expected, &got)) {
    if (got.size() != Layout().size()) std::abort();
    for (size_t i = 0; i < got.size(); ++i) {
      const auto& [name, t] = got[i];
      if (name != Layout()[i].name || t.scalar_type() != Layout()[i].dtype || t.sizes().vec() != Layout()[i].shape) {
        std::abort();
      }
    }
  }

  allround::comm::TensorAssembler bounded(kUnboundedLimit);
  allround::tensor::NamedTensors any;
  if (Assemble(messages, bounded, &any)) {
    uint64_t total = 0;
    for (const auto& [name, t] : any) {
      if (name.empty()) std::abort();
      total += Bytes(t);
      if (t.numel() > 0) {
        volatile double last = t.flatten()[t.numel() - 1].item<double>();  // the bytes are there to read
        (void)last;
      }
    }
    if (total > kUnboundedLimit) std::abort();
  }
  return 0;
}
