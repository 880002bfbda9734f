#include "coordinator/limits.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "common/job.h"

namespace allround::coordinator {

Limits MakeLimits(const FederatedSpec& spec, const aggregation::NamedTensors& model) {
  Limits l;
  l.max_streams = spec.max_streams;
  l.first_message = Millis(spec.first_message_s);
  l.stream_idle = Millis(spec.stream_idle_s);
  l.stream_max = Millis(spec.round_timeout_s);
  l.max_site_examples = spec.max_site_examples;
  l.max_echo_chars = static_cast<size_t>(spec.max_echo_chars);
  // Per message: protobuf tags and lengths (a few bytes a field); per tensor's first chunk: its
  // name, dtype name and shape (at most 10 bytes a dimension). Generous by a constant, never by a
  // factor: a stream may not be twice the model.
  constexpr uint64_t kPerMessage = 2 * Limits::kMinMessageBytes;
  constexpr uint64_t kHeader = Limits::kMaxMetrics * (Limits::kMaxMetricName + 16) + 4096;
  uint64_t total = kHeader;
  uint64_t longest_meta = 0, all_meta = 0;
  for (const auto& [name, t] : model) {
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    const uint64_t chunks = std::max<uint64_t>(1, (bytes + Limits::kChunkBytes - 1) / Limits::kChunkBytes);
    const uint64_t meta = name.size() + 16 + 10 * static_cast<uint64_t>(t.dim()) + 16;
    longest_meta = std::max(longest_meta, meta);
    all_meta += meta;
    total += bytes + meta + chunks * kPerMessage;
  }
  l.max_update_bytes = total;
  // One message: a chunk, a tensor's metadata and the header, or a Join's whole layout; never
  // under gRPC's own default.
  const uint64_t message = std::max(Limits::kChunkBytes + longest_meta, all_meta + kHeader) + kHeader + kPerMessage;
  l.max_message_bytes = static_cast<int>(std::max<uint64_t>(message, 4u << 20));
  return l;
}

}  // namespace allround::coordinator
