#include "coordinator/service.h"

#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "comm/dtype.h"
#include "comm/wire.h"

namespace allround::coordinator {
namespace {

constexpr uint32_t kProtocolVersion = 1;

Time Now() { return std::chrono::steady_clock::now(); }

// Compares a presented token with the expected one in time that depends on their lengths only, so
// a caller cannot learn a token's prefix from how fast a wrong guess is refused.
bool SameToken(const std::string& expected, const std::string& presented) {
  if (expected.size() != presented.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    diff |= static_cast<unsigned char>(expected[i] ^ presented[i]);
  }
  return diff == 0;
}

}  // namespace

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

grpc::Status CoordinatorService::Join(grpc::ServerContext*, const allround::v1::JoinRequest* req,
                                      allround::v1::JoinReply* reply) {
  if (req->protocol_version() != kProtocolVersion) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("protocol version ", req->protocol_version(), " (coordinator speaks ",
                                     kProtocolVersion, ")"));
  }
  if (!options_.tokens.empty()) {
    auto it = options_.tokens.find(req->site_name());
    if (it == options_.tokens.end() || !SameToken(it->second, req->token())) {
      manager_->CountRefusal("bad_token");
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          absl::StrCat("site '", req->site_name(), "': unknown site or bad token"));
    }
  }
  std::vector<TensorLayout> model;
  for (const auto& spec : req->model()) {
    auto dtype = comm::DtypeFromName(spec.dtype());
    if (!dtype.ok()) {
      manager_->CountRefusal("bad_model");
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("join: tensor '", spec.name(), "': ", dtype.status().message()));
    }
    model.push_back({spec.name(), *dtype, {spec.shape().begin(), spec.shape().end()}});
  }
  auto id = manager_->Join(req->site_name(), req->examples(), Now(), model);
  if (!id.ok()) return ToGrpc(id.status());
  std::fprintf(stderr, "allround-coordinator: site '%s' joined as %lld (%lld examples)\n", req->site_name().c_str(),
               static_cast<long long>(*id), static_cast<long long>(req->examples()));
  reply->set_site_id(*id);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::GetTask(grpc::ServerContext* ctx, const allround::v1::TaskRequest* req,
                                         allround::v1::TaskReply* reply) {
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
    default: reply->set_kind(allround::v1::TaskReply::WAIT);
  }
  reply->set_round(task->round);
  reply->set_model_version(task->model_version);
  reply->set_reason(task->reason);
  reply->set_local_epochs(options_.local_epochs);
  reply->set_proximal_mu(options_.proximal_mu);
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::FetchModel(grpc::ServerContext*, const allround::v1::FetchRequest* req,
                                            grpc::ServerWriter<allround::v1::TensorChunk>* writer) {
  if (auto s = CheckToken(req->site_id(), req->token()); !s.ok()) return s;
  auto chunks = EncodedModel(req->model_version());
  if (!chunks.ok()) return ToGrpc(chunks.status());
  for (const auto& chunk : **chunks) {
    if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "site went away mid-stream");
  }
  return grpc::Status::OK;
}

absl::StatusOr<std::shared_ptr<const std::vector<allround::v1::TensorChunk>>> CoordinatorService::EncodedModel(
    int64_t version) {
  std::lock_guard<std::mutex> lock(cache_mu_);  // sites that fetch at once wait for one encoding
  if (version == cached_version_) return cached_chunks_;
  auto model = manager_->Model(version);
  if (!model.ok()) return model.status();
  cached_chunks_ = std::make_shared<const std::vector<allround::v1::TensorChunk>>(comm::EncodeTensors(*model));
  cached_version_ = version;
  return cached_chunks_;
}

grpc::Status CoordinatorService::SubmitUpdate(grpc::ServerContext*, grpc::ServerReader<allround::v1::UpdateChunk>* reader,
                                              allround::v1::SubmitReply* reply) {
  allround::v1::UpdateChunk msg;
  if (!reader->Read(&msg)) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty update stream");
  const int64_t site = msg.site_id(), round = msg.round(), examples = msg.examples();
  const std::map<std::string, double> metrics(msg.metrics().begin(), msg.metrics().end());
  if (auto s = CheckToken(site, msg.token()); !s.ok()) return s;
  comm::TensorAssembler assembler(options_.max_update_bytes);
  absl::Status bad;
  do {
    if (bad.ok() && msg.has_chunk()) bad = assembler.Add(msg.chunk());
  } while (reader->Read(&msg));  // drain the stream even after a bad chunk
  auto tensors = bad.ok() ? assembler.Finish() : absl::StatusOr<comm::NamedTensors>(bad);
  absl::Status s = tensors.status();
  if (!s.ok()) manager_->CountRefusal("bad_stream");
  if (s.ok()) s = manager_->SubmitUpdate(site, round, examples, *std::move(tensors), Now(), metrics);
  reply->set_accepted(s.ok());
  reply->set_reason(std::string(s.message()));
  return ToGrpc(s);
}

grpc::Status CoordinatorService::Heartbeat(grpc::ServerContext*, const allround::v1::HeartbeatRequest* req,
                                           allround::v1::HeartbeatReply*) {
  if (auto s = CheckToken(req->site_id(), req->token()); !s.ok()) return s;
  return ToGrpc(manager_->Heartbeat(req->site_id(), Now()));
}

}  // namespace allround::coordinator
