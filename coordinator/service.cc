#include "coordinator/service.h"

#include <chrono>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/text_file.h"
#include "tensor/dtype.h"
#include "comm/wire.h"
#include "common/echo.h"

namespace allround::coordinator {
namespace {

using comm::kProtocolVersion;
constexpr char kMaskedTensor[] = "secagg/masked";

Time Now() { return std::chrono::steady_clock::now(); }

void FillSecAgg(const Task::Secure& secure, allround::v1::SecAggTask* out) {
  using allround::v1::SecAggTask;
  const SecureRoundConfig& c = secure.config;
  switch (secure.step.kind) {
    case SecureStep::Kind::kAdvertise: out->set_stage(SecAggTask::ADVERTISE); break;
    case SecureStep::Kind::kShareKeys: out->set_stage(SecAggTask::SHARE_KEYS); break;
    case SecureStep::Kind::kMaskInput: out->set_stage(SecAggTask::MASK_INPUT); break;
    case SecureStep::Kind::kUnmask: out->set_stage(SecAggTask::UNMASK); break;
    default: out->set_stage(SecAggTask::NONE);
  }
  for (uint32_t id : c.secagg.sampled_ids) out->add_sampled(id);
  out->set_degree(c.secagg.degree);
  out->set_threshold(c.secagg.threshold);
  out->set_graph_seed(c.secagg.graph_seed);
  out->set_vector_length(c.secagg.vector_length);
  out->set_clip_range(c.quantize.clip_range);
  out->set_levels(c.quantize.levels);
  out->set_max_weight(c.max_weight);
  for (const auto& peer : secure.step.keys.neighbours) {
    auto* p = out->add_neighbours();
    p->set_site_id(peer.site_id);
    p->set_c_public_key(peer.c_public_key);
    p->set_s_public_key(peer.s_public_key);
  }
  for (const auto& share : secure.step.relayed.shares) {
    auto* p = out->add_shares();
    p->set_sender(share.sender);
    p->set_receiver(share.receiver);
    p->set_ciphertext(share.ciphertext);
  }
  for (uint32_t id : secure.step.unmask.survivors) out->add_survivors(id);
  for (uint32_t id : secure.step.unmask.dropouts) out->add_dropouts(id);
}

}  // namespace

CoordinatorService::CoordinatorService(RoundManager* manager, ServiceOptions options)
    : manager_(manager), options_(std::move(options)) {
  const auto model = manager_->ModelLayoutTensors();
  if (manager_->secure()) {
    layout_.push_back({kMaskedTensor, at::kInt, {static_cast<int64_t>(privacy::SecureVectorLength(model))}});
  } else {
    for (const auto& [name, t] : model) layout_.push_back({name, t.scalar_type(), t.sizes().vec()});
  }
}

class CoordinatorService::StreamSlot {
 public:
  explicit StreamSlot(CoordinatorService* service) : service_(service) {
    ok_ = ++service_->open_streams_ <= service_->options_.limits.max_streams;
  }
  ~StreamSlot() { --service_->open_streams_; }
  bool ok() const { return ok_; }

 private:
  CoordinatorService* service_;
  bool ok_;
};

// The address part of a gRPC peer ("ipv4:127.0.0.1:5555" -> "ipv4:127.0.0.1").
std::string PeerHost(const std::string& peer) {
  const size_t colon = peer.rfind(':');
  return colon == std::string::npos || colon < 5 ? peer : peer.substr(0, colon);
}

class CoordinatorService::UnauthenticatedSlot {
 public:
  UnauthenticatedSlot(CoordinatorService* service, std::string peer) : service_(service), peer_(std::move(peer)) {
    std::lock_guard<std::mutex> lock(service_->unauthenticated_mu_);
    int& from_peer = service_->unauthenticated_by_peer_[peer_];
    ok_ = service_->unauthenticated_ < service_->options_.limits.max_streams &&
          from_peer < Limits::kMaxUnauthenticatedPerPeer;
    if (ok_) {
      ++service_->unauthenticated_;
      ++from_peer;
    } else if (from_peer == 0) {
      service_->unauthenticated_by_peer_.erase(peer_);
    }
  }
  ~UnauthenticatedSlot() { Release(); }
  void Release() {
    if (!ok_) return;
    ok_ = false;
    std::lock_guard<std::mutex> lock(service_->unauthenticated_mu_);
    --service_->unauthenticated_;
    if (--service_->unauthenticated_by_peer_[peer_] == 0) service_->unauthenticated_by_peer_.erase(peer_);
  }
  bool ok() const { return ok_; }

 private:
  CoordinatorService* service_;
  std::string peer_;
  bool ok_ = false;
};

grpc::Status CoordinatorService::Refused(const std::string& reason, grpc::StatusCode code, const std::string& message) {
  manager_->CountRefusal(reason);
  return grpc::Status(code, message);
}

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(s.code())), std::string(s.message()));
}

grpc::Status CoordinatorService::CheckToken(int64_t site, const std::string& token) {
  if (options_.tokens.empty()) return grpc::Status::OK;
  auto name = manager_->SiteName(site);
  if (!name.ok()) {
    manager_->CountRefusal("unknown_site");
    return ToGrpc(name.status());
  }
  auto it = options_.tokens.find(*name);
  if (it == options_.tokens.end() || !SameToken(it->second, token)) {
    manager_->CountRefusal("bad_token");
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, absl::StrCat("bad token for site ", site));
  }
  return grpc::Status::OK;
}

class CoordinatorService::Traffic {
 public:
  // `request` null: a stream, whose messages are counted as they are read.
  Traffic(CoordinatorService* service, const google::protobuf::Message* request, const google::protobuf::Message* reply)
      : service_(service), reply_(reply) {
    if (request != nullptr) service_->bytes_received_ += request->ByteSizeLong();
  }
  ~Traffic() {
    if (reply_ != nullptr) service_->bytes_sent_ += reply_->ByteSizeLong();
  }
  Traffic(const Traffic&) = delete;
  Traffic& operator=(const Traffic&) = delete;

 private:
  CoordinatorService* service_;
  const google::protobuf::Message* reply_;
};

grpc::Status CoordinatorService::Join(grpc::ServerContext*, const allround::v1::JoinRequest* req,
                                      allround::v1::JoinReply* reply) {
  Traffic traffic(this, req, reply);
  if (req->protocol_version() != kProtocolVersion) {
    manager_->CountRefusal("bad_protocol");
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("join: the site speaks protocol version ", req->protocol_version(),
                                     ", this coordinator version ", kProtocolVersion,
                                     " (version 2 added secure aggregation): upgrade the site's allround"));
  }
  if (!options_.tokens.empty()) {
    auto it = options_.tokens.find(req->site_name());
    if (it == options_.tokens.end() || !SameToken(it->second, req->token())) {
      manager_->CountRefusal("bad_token");
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          absl::StrCat("site '", Echo(req->site_name(), options_.limits.max_echo_chars),
                                       "': unknown site or bad token"));
    }
  }
  std::vector<TensorLayout> model;
  for (const auto& spec : req->model()) {
    auto dtype = tensor::DtypeFromName(spec.dtype());
    if (!dtype.ok()) {
      manager_->CountRefusal("bad_model");
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("join: tensor '", Echo(spec.name(), options_.limits.max_echo_chars),
                                       "': unknown dtype '", Echo(spec.dtype(), options_.limits.max_echo_chars), "'"));
    }
    model.push_back({spec.name(), *dtype, {spec.shape().begin(), spec.shape().end()}});
  }
  if (req->site_pipeline() != options_.site_pipeline) {
    manager_->CountRefusal("bad_pipeline");
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("join: site '", Echo(req->site_name(), options_.limits.max_echo_chars),
                                     "' applies the update pipeline [",
                                     Echo(req->site_pipeline(), options_.limits.max_echo_chars), "], the job's is [",
                                     options_.site_pipeline, "] (job key pipeline.site must be the coordinator's)"));
  }
  // Unset is none: a client that does not name it asks for nothing secure.
  const std::string& secure = req->secure_aggregation().empty() ? std::string("none") : req->secure_aggregation();
  if (secure != options_.secure_aggregation) {
    manager_->CountRefusal("bad_privacy");
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("join: site '", Echo(req->site_name(), options_.limits.max_echo_chars),
                                     "' has privacy.secure_aggregation ",
                                     Echo(secure, options_.limits.max_echo_chars), ", the job's is ",
                                     options_.secure_aggregation, " (the keys must be the coordinator's)"));
  }
  auto id = manager_->Join(req->site_name(), req->examples(), Now(), model);
  if (!id.ok()) return ToGrpc(id.status());
  log::Info("site '{}' joined as {} ({} examples)", req->site_name(), *id, req->examples());
  reply->set_site_id(*id);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::GetTask(grpc::ServerContext* ctx, const allround::v1::TaskRequest* req,
                                         allround::v1::TaskReply* reply) {
  Traffic traffic(this, req, reply);
  if (auto s = CheckToken(req->site_id(), req->token()); !s.ok()) return s;
  // Long poll: hold a WAIT until the round state changes, the poll time is up, or the site leaves.
  const Time until = Now() + options_.long_poll;
  absl::StatusOr<Task> task;
  for (;;) {
    if (stopping_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is stopping; retry");
    const uint64_t seen = manager_->change_count();
    task = manager_->GetTask(req->site_id(), Now());
    if (!task.ok() || task->kind != Task::Kind::kWait || Now() >= until || ctx->IsCancelled()) break;
    manager_->WaitForChange(seen, std::min(until, Now() + std::chrono::milliseconds(500)));
  }
  if (!task.ok()) return ToGrpc(task.status());
  switch (task->kind) {
    case Task::Kind::kTrain: reply->set_kind(allround::v1::TaskReply::TRAIN); break;
    case Task::Kind::kStop: reply->set_kind(allround::v1::TaskReply::STOP); break;
    case Task::Kind::kSecure: reply->set_kind(allround::v1::TaskReply::SECAGG); break;
    default: reply->set_kind(allround::v1::TaskReply::WAIT);
  }
  if (task->secure != nullptr) FillSecAgg(*task->secure, reply->mutable_secagg());
  reply->set_round(task->round);
  reply->set_model_version(task->model_version);
  reply->set_reason(task->reason);
  reply->set_local_epochs(options_.local_epochs);
  reply->set_proximal_mu(options_.proximal_mu);
  reply->set_clip_norm(task->clip_norm);
  reply->set_noise_multiplier(task->noise_multiplier);
  reply->set_flip_labels(task->flip_labels);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::FetchModel(grpc::ServerContext* ctx, const allround::v1::FetchRequest* req,
                                            grpc::ServerWriter<allround::v1::TensorChunk>* writer) {
  Traffic traffic(this, req, nullptr);
  if (auto s = CheckToken(req->site_id(), req->token()); !s.ok()) return s;
  StreamSlot slot(this);
  if (!slot.ok()) {
    return Refused("too_many_streams", grpc::StatusCode::RESOURCE_EXHAUSTED,
                   absl::StrCat(options_.limits.max_streams, " streams are open (federated.max_streams); retry"));
  }
  auto chunks = EncodedModel(req->model_version());
  if (!chunks.ok()) return ToGrpc(chunks.status());
  // A site that stops reading blocks Write (flow control): it gets stream_idle per chunk.
  auto watch = watchdog_.Watch(ctx, options_.limits.stream_idle, options_.limits.stream_max);
  for (const auto& chunk : **chunks) {
    bytes_sent_ += chunk.ByteSizeLong();
    if (!writer->Write(chunk)) {
      if (watch->expired()) {
        return Refused("stream_timeout", grpc::StatusCode::DEADLINE_EXCEEDED,
                       "the site read nothing of the model for federated.stream_idle_s");
      }
      return grpc::Status(grpc::StatusCode::CANCELLED, "site went away mid-stream");
    }
    watch->Touch(options_.limits.stream_idle);
  }
  return grpc::Status::OK;
}

absl::StatusOr<std::shared_ptr<const std::vector<allround::v1::TensorChunk>>> CoordinatorService::EncodedModel(
    int64_t version) {
  std::lock_guard<std::mutex> lock(cache_mu_);  // sites that fetch at once wait for one encoding
  // Only a cache that holds an encoding answers: a fresh coordinator's empty cache must not match
  // a request for version -1 (it did, and the null encoding crashed the server).
  if (cached_chunks_ != nullptr && version == cached_version_) return cached_chunks_;
  auto model = manager_->Model(version);
  if (!model.ok()) return model.status();
  cached_chunks_ = std::make_shared<const std::vector<allround::v1::TensorChunk>>(comm::EncodeTensors(*model));
  cached_version_ = version;
  return cached_chunks_;
}

grpc::Status CoordinatorService::SubmitUpdate(grpc::ServerContext* ctx,
                                              grpc::ServerReader<allround::v1::UpdateChunk>* reader,
                                              allround::v1::SubmitReply* reply) {
  const Limits& limits = options_.limits;
  Traffic traffic(this, nullptr, reply);  // the chunks are counted as they are read
  // Until the first message names the site and its token, the stream may be anyone's: it waits
  // in a pool of its own, so streams that never authenticate cannot take the sites' slots.
  UnauthenticatedSlot pending(this, PeerHost(ctx->peer()));
  if (!pending.ok()) {
    return Refused("too_many_streams", grpc::StatusCode::RESOURCE_EXHAUSTED,
                   absl::StrCat("too many update streams wait for their first message (at most ", limits.max_streams,
                                ", federated.max_streams, and ", Limits::kMaxUnauthenticatedPerPeer,
                                " from one address); retry"));
  }
  auto watch = watchdog_.Watch(ctx, limits.first_message, limits.stream_max);
  allround::v1::UpdateChunk msg;
  if (!reader->Read(&msg)) {
    if (watch->expired()) {
      return Refused("stream_timeout", grpc::StatusCode::DEADLINE_EXCEEDED,
                     "no first message within federated.first_message_s");
    }
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty update stream");
  }
  watch->Touch(limits.stream_idle);
  const int64_t site = msg.site_id(), round = msg.round(), examples = msg.examples();
  if (auto s = CheckToken(site, msg.token()); !s.ok()) return s;
  pending.Release();
  StreamSlot slot(this);
  if (!slot.ok()) {
    return Refused("too_many_streams", grpc::StatusCode::RESOURCE_EXHAUSTED,
                   absl::StrCat(limits.max_streams, " streams are open (federated.max_streams); retry"));
  }
  const std::map<std::string, double> metrics(msg.metrics().begin(), msg.metrics().end());
  // Every message counts against the bytes an update of this model can take (names included);
  // every tensor is checked against the model's layout as its first chunk arrives.
  uint64_t bytes = 0;
  comm::TensorAssembler assembler(&layout_, limits.max_echo_chars);
  do {
    bytes_received_ += msg.ByteSizeLong();
    // An empty message still counts: a stream cannot go on forever on messages of no bytes.
    bytes += std::max<uint64_t>(msg.ByteSizeLong(), Limits::kMinMessageBytes);
    if (bytes > limits.max_update_bytes) {
      // Not read further: what is past the limit is not read.
      return Refused("bad_stream", grpc::StatusCode::RESOURCE_EXHAUSTED,
                     absl::StrCat("the update stream exceeds the ", limits.max_update_bytes,
                                  " bytes an update of this job's model takes"));
    }
    absl::Status bad = msg.has_chunk() ? assembler.Add(msg.chunk())
                                       : absl::InvalidArgumentError("a message of the stream carries no chunk");
    if (!bad.ok()) {  // the first bad chunk ends the stream: nothing after it is read
      manager_->CountRefusal("bad_stream");
      return ToGrpc(bad);
    }
    watch->Touch(limits.stream_idle);
  } while (reader->Read(&msg));
  if (watch->expired()) {
    return Refused("stream_timeout", grpc::StatusCode::DEADLINE_EXCEEDED,
                   "the update stream was silent for federated.stream_idle_s, or lasted past federated.round_timeout_s");
  }
  // The stream is read: aggregation, which may wait for the manager, is not the stream's time.
  watch.reset();
  auto tensors = assembler.Finish();
  absl::Status s = tensors.status();
  if (!s.ok()) manager_->CountRefusal("bad_stream");
  if (s.ok() && manager_->secure()) {
    // The words' bits, as the layout checked: one int32 tensor of the masked input's length.
    const at::Tensor& words = (*tensors)[0].second;
    std::vector<uint32_t> masked(static_cast<size_t>(words.numel()));
    std::memcpy(masked.data(), words.data_ptr<int32_t>(), masked.size() * sizeof(uint32_t));
    s = manager_->SubmitMasked(site, round, std::move(masked), Now(), metrics);
  } else if (s.ok()) {
    s = manager_->SubmitUpdate(site, round, examples, *std::move(tensors), Now(), metrics);
  }
  reply->set_accepted(s.ok());
  reply->set_reason(std::string(s.message()));
  return ToGrpc(s);
}

grpc::Status CoordinatorService::SecAggSubmit(grpc::ServerContext*, const allround::v1::SecAggMessage* req,
                                              allround::v1::SubmitReply* reply) {
  using allround::v1::SecAggTask;
  Traffic traffic(this, req, reply);
  if (auto s = CheckToken(req->site_id(), req->token()); !s.ok()) return s;
  const auto refuse = [&](const absl::Status& s) {
    manager_->CountRefusal("bad_secagg");
    return ToGrpc(s);
  };
  auto site = comm::SecAggSiteId(req->site_id());
  if (!site.ok()) return refuse(site.status());
  const uint64_t round = req->round() < 0 ? UINT64_MAX : static_cast<uint64_t>(req->round());
  absl::Status s;
  switch (req->stage()) {
    case SecAggTask::ADVERTISE:
      s = manager_->SecureAdvertise(req->site_id(), {round, *site, req->c_public_key(), req->s_public_key()}, Now());
      break;
    case SecAggTask::SHARE_KEYS: {
      privacy::ShareKeysMsg msg{round, *site, {}};
      for (const auto& share : req->shares()) {
        auto sender = comm::SecAggSiteId(share.sender()), receiver = comm::SecAggSiteId(share.receiver());
        if (!sender.ok() || !receiver.ok()) return refuse(sender.ok() ? receiver.status() : sender.status());
        msg.shares.push_back({*sender, *receiver, share.ciphertext()});
      }
      s = manager_->SecureShareKeys(req->site_id(), msg, Now());
      break;
    }
    case SecAggTask::UNMASK: {
      privacy::UnmaskResponse msg{round, *site, {}};
      for (const auto& share : req->revealed()) {
        auto owner = comm::SecAggSiteId(share.owner());
        if (!owner.ok()) return refuse(owner.status());
        if (share.kind() != static_cast<uint32_t>(privacy::ShareKind::kSelfMaskSeed) &&
            share.kind() != static_cast<uint32_t>(privacy::ShareKind::kMaskingKey)) {
          return refuse(absl::InvalidArgumentError(absl::StrCat("unmasking share of kind ", share.kind())));
        }
        msg.shares.push_back({*owner, static_cast<privacy::ShareKind>(share.kind()), share.share()});
      }
      s = manager_->SecureUnmask(req->site_id(), msg, Now());
      break;
    }
    default:
      return refuse(absl::InvalidArgumentError(
          absl::StrCat("secure aggregation message of stage ", static_cast<int>(req->stage()),
                       " (a site sends ADVERTISE, SHARE_KEYS or UNMASK; its masked input goes through SubmitUpdate)")));
  }
  reply->set_accepted(s.ok());
  reply->set_reason(std::string(s.message()));
  return ToGrpc(s);
}

grpc::Status CoordinatorService::Heartbeat(grpc::ServerContext*, const allround::v1::HeartbeatRequest* req,
                                           allround::v1::HeartbeatReply* reply) {
  Traffic traffic(this, req, reply);
  if (auto s = CheckToken(req->site_id(), req->token()); !s.ok()) return s;
  return ToGrpc(manager_->Heartbeat(req->site_id(), Now()));
}

}  // namespace allround::coordinator
