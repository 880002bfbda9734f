#ifndef ALLROUND_COORDINATOR_SERVICE_H_
#define ALLROUND_COORDINATOR_SERVICE_H_

// The gRPC face of the RoundManager (a thin adapter, after gRPC's route_guide): it checks each
// call's site token, converts messages and tensor streams, and maps refusals to gRPC statuses
// whose messages say why. All decisions are the RoundManager's. GetTask is a long poll.
// The transport's own limits (coordinator/limits.h) are enforced here: streams open at once, the
// deadline for an update stream's first message, silence on a stream, the bytes of an update
// stream, and every update checked chunk by chunk against the model's layout as it arrives.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <vector>
#include <string>

#include "comm/proto/federated.grpc.pb.h"
#include "comm/wire.h"
#include "coordinator/limits.h"
#include "coordinator/round_manager.h"
#include "coordinator/stream_watchdog.h"

namespace allround::coordinator {

struct ServiceOptions {
  std::map<std::string, std::string> tokens;  // site name -> token; empty: no authentication
  int64_t local_epochs = 1;
  double proximal_mu = 0.0;
  Limits limits;  // max_update_bytes is taken as given (MakeLimits derives it from the model)
  // GetTask holds a WAIT answer this long, returning early when the round state changes.
  std::chrono::milliseconds long_poll{10000};
  // The job's privacy.secure_aggregation; a site that joins with another is refused (bad_privacy).
  std::string secure_aggregation = "none";
  // The job's site pipeline as UpdatePipeline::Describe() gives it ("clip"); a site that joins with
  // another is refused (bad_pipeline): its updates would not be what the job promises.
  std::string site_pipeline;
};

class CoordinatorService final : public allround::v1::Coordinator::Service {
 public:
  CoordinatorService(RoundManager* manager, ServiceOptions options);

  grpc::Status Join(grpc::ServerContext*, const allround::v1::JoinRequest*, allround::v1::JoinReply*) override;
  grpc::Status GetTask(grpc::ServerContext*, const allround::v1::TaskRequest*, allround::v1::TaskReply*) override;
  grpc::Status FetchModel(grpc::ServerContext*, const allround::v1::FetchRequest*,
                          grpc::ServerWriter<allround::v1::TensorChunk>*) override;
  grpc::Status SubmitUpdate(grpc::ServerContext*, grpc::ServerReader<allround::v1::UpdateChunk>*,
                            allround::v1::SubmitReply*) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const allround::v1::HeartbeatRequest*,
                         allround::v1::HeartbeatReply*) override;
  grpc::Status SecAggSubmit(grpc::ServerContext*, const allround::v1::SecAggMessage*,
                            allround::v1::SubmitReply*) override;

  // Before the server shuts down for a restart: every poll, held or new, is answered UNAVAILABLE
  // within half a second (not cancelled by the shutdown), so the sites keep retrying until the
  // restarted coordinator answers.
  void StopServing() { stopping_ = true; }

  // Protocol bytes received from and sent to sites so far (serialized messages, every call, the
  // refused ones too), for the operator's metrics.
  uint64_t bytes_received() const { return bytes_received_.load(); }
  uint64_t bytes_sent() const { return bytes_sent_.load(); }

  // FetchModel and SubmitUpdate streams open now (at most limits.max_streams hold a slot).
  int64_t open_streams() const { return open_streams_.load(); }
  // Update streams waiting for their first message (a pool of their own).
  int64_t waiting_streams() {
    std::lock_guard<std::mutex> lock(unauthenticated_mu_);
    return unauthenticated_;
  }

 private:
  // Every call after Join names its site and carries the site's token, checked against the
  // tokens file by the site's registered name (so a restarted coordinator still knows it).
  grpc::Status CheckToken(int64_t site, const std::string& token);

  // A slot for one stream while it is open; false when max_streams are open already.
  class StreamSlot;
  // A slot for an update stream before its token is known; false when max_streams such streams
  // are open, or kMaxUnauthenticatedPerPeer from the same address.
  class UnauthenticatedSlot;
  grpc::Status Refused(const std::string& reason, grpc::StatusCode code, const std::string& message);

  // The current model's chunks, encoded once per version and shared by every site's fetch.
  absl::StatusOr<std::shared_ptr<const std::vector<allround::v1::TensorChunk>>> EncodedModel(int64_t version);

  RoundManager* manager_;
  const ServiceOptions options_;
  // What every update stream must carry: the model, or under secure aggregation one tensor
  // "secagg/masked" of the masked input's words (int32, the bits of the uint32 words).
  std::vector<comm::TensorLayout> layout_;
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> open_streams_{0};
  std::atomic<uint64_t> bytes_received_{0}, bytes_sent_{0};
  // Counts a unary call: its request now, its reply when the handler returns.
  class Traffic;
  std::mutex unauthenticated_mu_;
  int64_t unauthenticated_ = 0;
  std::map<std::string, int> unauthenticated_by_peer_;
  StreamWatchdog watchdog_;
  std::mutex cache_mu_;
  int64_t cached_version_ = -1;
  std::shared_ptr<const std::vector<allround::v1::TensorChunk>> cached_chunks_;
};

// absl::Status -> grpc::Status, keeping the message.
grpc::Status ToGrpc(const absl::Status& s);

}  // namespace allround::coordinator

#endif  // ALLROUND_COORDINATOR_SERVICE_H_
