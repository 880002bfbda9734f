#include "worker/federated_client.h"

#include <ATen/ATen.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "algorithms/modes/supervised.h"
#include "comm/communicator.h"
#include "comm/proto/federated.grpc.pb.h"
#include "comm/wire.h"
#include "common/random.h"
#include "storage/safetensors.h"
#include "worker/data/partition.h"
#include "worker/trainer.h"

namespace allround::worker {
namespace {

namespace v1 = allround::v1;
using Clock = std::chrono::steady_clock;

absl::Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), absl::StrCat(what, ": ", s.error_message()));
}

bool Retryable(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

class Site {
 public:
  Site(const Job& job, const SiteOptions& o) : job_(job), o_(o) {
    stub_ = v1::Coordinator::NewStub(grpc::CreateChannel(o.coordinator, grpc::InsecureChannelCredentials()));
  }

  absl::Status Run() {
    auto data = LoadTrainingData(job_);
    if (!data.ok()) return data.status();
    if (auto s = TakePartition(*data); !s.ok()) return s;
    data_ = *std::move(data);
    auto mode = modes::MakeSupervisedMode(job_, data_.info);
    if (!mode.ok()) return mode.status();
    mode_ = *std::move(mode);
    if (auto s = WithRetry([&] { return Join(); }); !s.ok()) return s;
    for (;;) {
      v1::TaskReply task;
      if (auto s = WithRetry([&] { return GetTask(&task); }); !s.ok()) return s;
      if (task.kind() == v1::TaskReply::STOP) {
        std::fprintf(stderr, "site %s: coordinator says stop (%s)\n", o_.site_name.c_str(), task.reason().c_str());
        return absl::OkStatus();
      }
      if (task.kind() == v1::TaskReply::WAIT) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      if (auto s = TrainRound(task); !s.ok()) {
        if (s.code() == absl::StatusCode::kNotFound || s.code() == absl::StatusCode::kFailedPrecondition ||
            s.code() == absl::StatusCode::kAlreadyExists || s.code() == absl::StatusCode::kPermissionDenied) {
          std::fprintf(stderr, "site %s: round %lld: %s\n", o_.site_name.c_str(),
                       static_cast<long long>(task.round()), std::string(s.message()).c_str());
          continue;  // refused or stale: ask again
        }
        return s;
      }
    }
  }

 private:
  absl::Status TakePartition(TrainingData& d) {
    const at::Tensor labels = d.train_targets.contiguous();
    std::vector<int64_t> y(labels.data_ptr<int64_t>(), labels.data_ptr<int64_t>() + labels.numel());
    auto p = data::MakePartition(y, d.info.num_classes, job_.partition, job_.seed);
    if (!p.ok()) return p.status();
    if (o_.site_index < 0 || o_.site_index >= static_cast<int64_t>(p->size())) {
      return absl::InvalidArgumentError(absl::StrCat("--site-index ", o_.site_index, " outside the job's ",
                                                     p->size(), " sites (partition.sites)"));
    }
    const auto& mine = (*p)[o_.site_index];
    const at::Tensor idx = at::tensor(mine, at::kLong);
    d.train_inputs = d.train_inputs.index_select(0, idx);
    d.train_targets = d.train_targets.index_select(0, idx);
    return absl::OkStatus();
  }

  // Retries calls that failed because the coordinator is unreachable, with capped backoff.
  template <typename Call>
  absl::Status WithRetry(Call call) {
    const auto give_up = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o_.give_up_s * 1000));
    std::chrono::milliseconds backoff(100);
    for (;;) {
      grpc::Status s = call();
      if (s.ok()) return absl::OkStatus();
      if (s.error_code() == grpc::StatusCode::NOT_FOUND && joined_) {
        joined_ = false;  // the coordinator forgot us (restarted): join again
        if (grpc::Status j = Join(); j.ok()) continue;
      }
      if (!Retryable(s) || Clock::now() + backoff > give_up) {
        return FromGrpc(s, absl::StrCat("site ", o_.site_name, " at coordinator ", o_.coordinator));
      }
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
    }
  }

  grpc::Status Join() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::JoinRequest req;
    req.set_site_name(o_.site_name);
    req.set_examples(data_.train_targets.size(0));
    req.set_protocol_version(1);
    req.set_token(o_.token);
    v1::JoinReply reply;
    grpc::Status s = stub_->Join(&ctx, req, &reply);
    if (s.ok()) {
      site_id_ = reply.site_id();
      joined_ = true;
    }
    return s;
  }

  grpc::Status GetTask(v1::TaskReply* task) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::TaskRequest req;
    req.set_site_id(site_id_);
    req.set_token(o_.token);
    return stub_->GetTask(&ctx, req, task);
  }

  absl::Status TrainRound(const v1::TaskReply& task) {
    // The global model.
    grpc::ClientContext fetch_ctx;
    v1::FetchRequest fetch;
    fetch.set_site_id(site_id_);
    fetch.set_token(o_.token);
    fetch.set_model_version(task.model_version());
    auto reader = stub_->FetchModel(&fetch_ctx, fetch);
    comm::TensorAssembler assembler(uint64_t{1} << 34);
    v1::TensorChunk chunk;
    absl::Status bad;
    while (reader->Read(&chunk)) {
      if (bad.ok()) bad = assembler.Add(chunk);
    }
    if (auto s = FromGrpc(reader->Finish(), "fetching the model"); !s.ok()) return s;
    if (!bad.ok()) return bad;
    auto model = assembler.Finish();
    if (!model.ok()) return model.status();
    if (auto s = mode_->LoadState(*model); !s.ok()) return s;
    // FedProx: stay near the round's global model.
    if (auto s = mode_->SetProximalTerm(task.proximal_mu(), *model); !s.ok()) return s;

    // Local training: the round's epochs on this site's data, in an order of its own per round.
    Job local = job_;
    local.train.epochs = task.local_epochs();
    local.train.max_steps = 0;
    local.seed = DeriveSeed(job_.seed, "site-round", static_cast<uint64_t>(o_.site_index),
                            static_cast<uint64_t>(task.round()));
    auto comm = comm::MakeLocalCommunicator();
    Trainer trainer(local, data_, mode_.get(), comm.get());
    for (int64_t e = 0; e < local.train.epochs; ++e) {
      auto r = trainer.Execute({e, e, 0});
      if (!r.ok()) return r.status();
    }
    const int64_t examples = data_.train_targets.size(0);
    storage::NamedTensors update = modes::ModelTensors(mode_->State());
    if (!o_.dump_updates.empty()) {
      const std::string path = absl::StrCat(o_.dump_updates, "/round-", task.round(), "-site-", o_.site_name,
                                            ".safetensors");
      if (auto s = storage::WriteSafetensors(path, update, {{"examples", std::to_string(examples)}}); !s.ok()) return s;
    }

    // The update, as a stream of chunks.
    grpc::ClientContext submit_ctx;
    v1::SubmitReply reply;
    auto writer = stub_->SubmitUpdate(&submit_ctx, &reply);
    bool first = true;
    for (auto& c : comm::EncodeTensors(update)) {
      v1::UpdateChunk msg;
      if (first) {
        msg.set_site_id(site_id_);
        msg.set_token(o_.token);
        msg.set_round(task.round());
        msg.set_examples(examples);
        first = false;
      }
      *msg.mutable_chunk() = std::move(c);
      if (!writer->Write(msg)) break;
    }
    writer->WritesDone();
    if (auto s = FromGrpc(writer->Finish(), "submitting the update"); !s.ok()) return s;
    std::fprintf(stderr, "site %s: round %lld update accepted (%lld examples)\n", o_.site_name.c_str(),
                 static_cast<long long>(task.round()), static_cast<long long>(examples));
    return absl::OkStatus();
  }

  Job job_;
  SiteOptions o_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
  TrainingData data_;
  std::unique_ptr<modes::LearningMode> mode_;
  int64_t site_id_ = 0;
  bool joined_ = false;
};

}  // namespace

absl::Status RunSite(const Job& job, const SiteOptions& options) {
  if (options.site_name.empty()) return absl::InvalidArgumentError("--site NAME is required with --coordinator");
  Site site(job, options);
  return site.Run();
}

}  // namespace allround::worker
