#ifndef ALLROUND_COORDINATOR_LIMITS_H_
#define ALLROUND_COORDINATOR_LIMITS_H_

// Everything one site, honest or not, can make the coordinator hold or do, in one place. The job
// sets the first group (federated.* keys, README "Limits"); the rest follow from the job's model,
// so an update stream can never bring more than the model it claims to be.
//
//   streams         at most `max_streams` FetchModel and SubmitUpdate calls open at once; more are
//                   refused (RESOURCE_EXHAUSTED, counted as too_many_streams)
//   first message   an update stream whose first message (site, token, round) has not come within
//                   `first_message` is ended (DEADLINE_EXCEEDED, stream_timeout): its token is not
//                   known yet, so it may be anyone's
//   idle            a stream that sends nothing, or reads nothing, for `stream_idle` is ended
//   whole stream    no stream lasts longer than `stream_max` (the job's round deadline: an update
//                   or model that takes longer is of no use to the round)
//   unauthenticated an update stream holds no slot of the sites' until its first message's token
//                   is good; at most `max_streams` such streams at once, and at most
//                   kMaxUnauthenticatedPerPeer from one address
//   examples        a site declares at most `max_site_examples` at Join, and an update claims at
//                   most what its site declared: FedAvg weights by these counts
//   metrics         at most kMaxMetrics keys per update, names as a site's (at most kMaxMetricName
//                   chars), values finite in [0, kMaxMetricValue]: sums over any number of
//                   sites stay finite and exact for counts
//   echo            at most `max_echo_chars` of any string from a request go back in an error
//   update bytes    an update stream's messages hold at most the model's tensors (names, dtypes,
//                   shapes and data, as chunked by EncodeTensors) plus the header: derived
//   message bytes   one gRPC message at most one chunk plus its metadata: derived

#include <chrono>
#include <cstdint>

#include "algorithms/aggregation/strategy.h"
#include "common/job.h"

namespace allround::coordinator {

// A job key in seconds as the limits hold it.
constexpr std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

// The job's defaults, which the defaults below are (one place for each value: common/job.h).
inline constexpr FederatedSpec kDefaultJob{};

struct Limits {
  int64_t max_streams = kDefaultJob.max_streams;
  std::chrono::milliseconds first_message = Millis(kDefaultJob.first_message_s);
  std::chrono::milliseconds stream_idle = Millis(kDefaultJob.stream_idle_s);
  std::chrono::milliseconds stream_max = Millis(kDefaultJob.round_timeout_s);
  int64_t max_site_examples = kDefaultJob.max_site_examples;
  size_t max_echo_chars = static_cast<size_t>(kDefaultJob.max_echo_chars);
  uint64_t max_update_bytes = uint64_t{1} << 32;  // replaced by the model's figure in MakeLimits
  int max_message_bytes = 4 << 20;

  // Honest streams wait here for milliseconds; 16 leaves room for many sites behind one address
  // (a NAT, or every test site on loopback) and keeps one attacking address to a quarter of 64.
  static constexpr int kMaxUnauthenticatedPerPeer = 16;
  // Each message of an update stream counts at least this much: empty messages are not free.
  static constexpr uint64_t kMinMessageBytes = 64;
  static constexpr size_t kMaxMetrics = 32;
  static constexpr size_t kMaxMetricName = 64;
  static constexpr double kMaxMetricValue = 9007199254740992.0;  // 2^53: counts stay exact
  // The chunk size sites and the coordinator cut tensors into (comm::EncodeTensors' default).
  static constexpr uint64_t kChunkBytes = uint64_t{1} << 20;
};

// The job's limits, with the stream and message sizes derived from `model` (the global model).
Limits MakeLimits(const FederatedSpec& spec, const aggregation::NamedTensors& model);

}  // namespace allround::coordinator

#endif  // ALLROUND_COORDINATOR_LIMITS_H_
