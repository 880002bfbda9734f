#include "runtime/site_runner.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "algorithms/aggregation/byzantine.h"
#include "algorithms/modes/registry.h"
#include "comm/communicator.h"
#include "common/log.h"
#include "common/timeline.h"
#include "tensor/dtype.h"
#include "comm/proto/federated.grpc.pb.h"
#include "comm/reducer.h"
#include "comm/wire.h"
#include "common/random.h"
#include "common/text_file.h"
#include "storage/run_directory.h"
#include "storage/safetensors.h"
#include "data/partition.h"
#include "data/datasets.h"
#include "privacy/secure_aggregation.h"
#include "privacy/site_dp.h"
#include "privacy/update_pipeline.h"
#include "runtime/secure_site.h"
#include "algorithms/optim/dp_sgd.h"
#include "runtime/trainer.h"

namespace allround::runtime {
namespace {

namespace v1 = allround::v1;
using Clock = std::chrono::steady_clock;

absl::Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), absl::StrCat(what, ": ", s.error_message()));
}

// Worth retrying: the coordinator is unreachable or restarting. A site never cancels its own
// calls, so CANCELLED is the server's doing (a coordinator shutting down cancels what is still
// running when its grace period ends).
bool Retryable(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded ||
         code == absl::StatusCode::kCancelled;
}
bool Retryable(const grpc::Status& s) { return Retryable(static_cast<absl::StatusCode>(s.error_code())); }

// A refusal or a stale task: the site asks for its next task instead of giving up.
bool Refused(const absl::Status& s) {
  return s.code() == absl::StatusCode::kNotFound || s.code() == absl::StatusCode::kFailedPrecondition ||
         s.code() == absl::StatusCode::kAlreadyExists || s.code() == absl::StatusCode::kPermissionDenied ||
         s.code() == absl::StatusCode::kInvalidArgument;
}

// One site's examples: its training data and its own test split.
struct SiteData {
  at::Tensor train_x, train_y, test_x, test_y;
  at::Tensor labeled_x, labeled_y;  // semi-supervised modes: the site's labelled images
};

// The learning modes that sites of this process train with, one per slot; a site borrows one
// for a round (the round starts from the global model with fresh optimizer state, so nothing
// of one site's round carries into another's).
class TrainingSlots {
 public:
  explicit TrainingSlots(std::vector<std::unique_ptr<modes::LearningMode>> modes) : modes_(std::move(modes)) {
    for (auto& m : modes_) free_.push_back(m.get());
  }
  modes::LearningMode* Acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !free_.empty(); });
    modes::LearningMode* m = free_.back();
    free_.pop_back();
    return m;
  }
  void Release(modes::LearningMode* m) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(m);
    }
    cv_.notify_one();
  }

 private:
  std::vector<std::unique_ptr<modes::LearningMode>> modes_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<modes::LearningMode*> free_;
};

// What every site of the process shares.
struct Shared {
  Job job;
  SiteOptions options;
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::unique_ptr<TrainingSlots> slots;
  modes::InputInfo info;
  comm::Communicator* group = nullptr;  // a worker group of several ranks training as one site
  std::unique_ptr<comm::Reducer> reducer;
  bool many = false;
  std::vector<v1::TensorSpec> model;  // the model's layout, sent with Join
  std::vector<tensor::TensorLayout> layout;  // the same, what a fetched model must be
};

// Control messages from a group's rank 0 to the others: [kind, round, epochs, mu, model version].
enum GroupKind { kGroupWait = 0, kGroupTrain = 1, kGroupStop = 2 };

// Through the group's device: the NCCL backend takes only CUDA tensors.
absl::Status BroadcastControl(comm::Communicator& group, at::Tensor& control) {
  at::Tensor staged = control.to(group.device());
  if (auto s = group.Broadcast(staged, 0)->Wait(group.timeout()); !s.ok()) return s;
  if (!staged.is_same(control)) control.copy_(staged);
  return absl::OkStatus();
}

// Example-level DP at a site: the accountant's state over every round the site has trained, kept
// in RUN_DIR/site-privacy/<site>.json, so a restarted site process (or a later job on the same
// data and run directory) goes on counting instead of starting again from 0.
std::string PrivacyLedgerPath(const Job& job, const std::string& site) {
  return (std::filesystem::path(ResolvedRunDir(job)) / "site-privacy" / (site + ".json")).string();
}

// The ledger's accountant state (undefined when there is none yet); a ledger that cannot be read
// is an error, never a silent restart from 0.
absl::StatusOr<at::Tensor> ReadPrivacyLedger(const std::string& path) {
  std::error_code ec;
  const bool exists = std::filesystem::exists(path, ec);
  if (ec) return absl::DataLossError(absl::StrCat("the site's privacy ledger ", path, ": ", ec.message()));
  if (!exists) return at::Tensor();
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  const auto j = nlohmann::json::parse(text.str(), nullptr, false);
  // The orders it was counted at must be the accountant's: values at other orders would be misread.
  const std::vector<double> orders = privacy::DefaultRdpOrders();
  if (!in || j.is_discarded() || !j.contains("rdp") || !j["rdp"].is_array() || !j.contains("orders") ||
      j["orders"] != nlohmann::json(orders) || j["rdp"].size() != orders.size()) {
    return absl::DataLossError(absl::StrCat("the site's privacy ledger ", path,
                                            " cannot be read (remove it only to forget the privacy spent so far)"));
  }
  std::vector<double> rdp;
  for (const auto& v : j["rdp"]) {
    // An order whose bound is infinite is written "inf" (JSON has no infinity).
    if (v.is_string() && v.get<std::string>() == "inf") {
      rdp.push_back(std::numeric_limits<double>::infinity());
    } else if (v.is_number() && v.get<double>() >= 0) {
      rdp.push_back(v.get<double>());
    } else {
      return absl::DataLossError(absl::StrCat("the site's privacy ledger ", path, " holds a value that is not a spend"));
    }
  }
  return at::tensor(rdp, at::kDouble);
}

absl::Status WritePrivacyLedger(const std::string& path, const at::Tensor& rdp, double epsilon, double delta) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot make the directory of ", path, ": ", ec.message()));
  const at::Tensor r = rdp.to(at::kDouble).contiguous().cpu();
  nlohmann::json values = nlohmann::json::array();
  for (int64_t k = 0; k < r.numel(); ++k) {
    const double v = r.data_ptr<double>()[k];
    values.push_back(std::isfinite(v) ? nlohmann::json(v) : nlohmann::json("inf"));
  }
  nlohmann::json j = {{"orders", privacy::DefaultRdpOrders()}, {"rdp", values}, {"epsilon", epsilon}, {"delta", delta}};
  return storage::WriteFileAtomically(path, j.dump() + "\n");
}

class Site {
 public:
  Site(Shared* shared, std::string name, std::string token, int64_t index, SiteData data,
       privacy::UpdatePipeline pipeline)
      : sh_(shared), name_(std::move(name)), token_(std::move(token)), index_(index), data_(std::move(data)),
        pipeline_(std::move(pipeline)) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // its own connection, even beside other sites
    args.SetMaxReceiveMessageSize(64 << 20);
    stub_ = v1::Coordinator::NewStub(
        grpc::CreateCustomChannel(sh_->options.coordinator, sh_->credentials, args));
  }

  const std::string& name() const { return name_; }

  absl::Status Run() {
    log::SiteScope scope(name_);
    if (auto s = WithRetry([&] { return Join(); }); !s.ok()) return s;
    for (;;) {
      v1::TaskReply task;
      if (auto s = WithRetry([&] { return GetTask(&task); }); !s.ok()) return s;
      if (task.kind() == v1::TaskReply::STOP) {
        if (auto s = TellGroup(kGroupStop, task); !s.ok()) return s;
        log::Info("coordinator says stop ({})", task.reason());
        log::Info("traffic: sent {} bytes, received {} bytes (protocol messages, without gRPC framing)",
                  sent_bytes_.load(), received_bytes_.load());
        return absl::OkStatus();
      }
      if (task.kind() == v1::TaskReply::WAIT) {
        if (auto s = TellGroup(kGroupWait, task); !s.ok()) return s;
        continue;  // the coordinator held the poll already
      }
      if (task.kind() == v1::TaskReply::SECAGG) {
        // A stage of secure aggregation: a refusal either way (a doctored request, a stale stage)
        // costs this site its part in the round, not its run; the next task comes as usual.
        if (auto s = SecureStage(task); !s.ok()) log::Warning("round {}: secure aggregation: {}", task.round(), s.message());
        continue;
      }
      coordinator_said_no_ = false;
      if (auto s = TrainRound(task); !s.ok()) {
        // The coordinator refused or was unreachable mid-round (it restarts), or had all its
        // stream slots taken (federated.max_streams): back to polling, which retries. A failure
        // here (a model that does not load, a diverging loss) ends the site with its error; the
        // coordinator's deadline takes care of the round.
        const bool busy = s.code() == absl::StatusCode::kResourceExhausted;
        if (!coordinator_said_no_ || (!Refused(s) && !Retryable(s.code()) && !busy)) return s;
        log::Warning("round {}: {}", task.round(), s.message());
        if (busy || Retryable(s.code())) {  // the next poll answers TRAIN at once: wait a little first
          std::this_thread::sleep_for(busy_backoff_);
          busy_backoff_ = std::min(busy_backoff_ * 2, std::chrono::milliseconds(5000));
        }
      } else {
        busy_backoff_ = std::chrono::milliseconds(100);
      }
    }
  }

  // Keeps the site alive at the coordinator while it trains (called from the heartbeat thread).
  void Heartbeat() {
    if (!joined_.load()) return;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::HeartbeatRequest req;
    req.set_site_id(site_id_.load());
    req.set_token(token_);
    v1::HeartbeatReply reply;
    stub_->Heartbeat(&ctx, req, &reply);  // best effort: a failure shows in the next real call
    Sent(req);
    Received(reply);
  }

 private:
  // Retries calls that failed because the coordinator is unreachable, with capped backoff.
  template <typename Call>
  absl::Status WithRetry(Call call) {
    const auto give_up = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(sh_->options.give_up_s * 1000));
    std::chrono::milliseconds backoff(100);
    for (;;) {
      grpc::Status s = call();
      if (s.ok()) return absl::OkStatus();
      if (s.error_code() == grpc::StatusCode::NOT_FOUND && joined_.load()) {
        joined_ = false;  // the coordinator forgot us (restarted afresh): join again
        if (grpc::Status j = Join(); j.ok()) continue;
      }
      if (!Retryable(s) || Clock::now() + backoff > give_up) {
        return FromGrpc(s, absl::StrCat("site ", name_, " at coordinator ", sh_->options.coordinator));
      }
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
    }
  }

  grpc::Status Join() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::JoinRequest req;
    req.set_site_name(name_);
    req.set_examples(data_.train_y.size(0));
    req.set_protocol_version(comm::kProtocolVersion);
    req.set_secure_aggregation(privacy::SecureAggregationName(sh_->job));
    req.set_token(token_);
    for (const auto& spec : sh_->model) *req.add_model() = spec;
    req.set_site_pipeline(pipeline_.Describe());
    v1::JoinReply reply;
    grpc::Status s = stub_->Join(&ctx, req, &reply);
    Sent(req);
    Received(reply);
    if (s.ok()) {
      site_id_ = reply.site_id();
      joined_ = true;
    }
    return s;
  }

  grpc::Status GetTask(v1::TaskReply* task) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));  // beyond the long poll
    v1::TaskRequest req;
    req.set_site_id(site_id_.load());
    req.set_token(token_);
    grpc::Status s = stub_->GetTask(&ctx, req, task);
    Sent(req);
    Received(*task);
    return s;
  }

  // Under mpirun, the other ranks of the group follow rank 0's tasks (FollowGroup).
  absl::Status TellGroup(GroupKind kind, const v1::TaskReply& task) {
    if (sh_->group == nullptr) return absl::OkStatus();
    at::Tensor control = at::tensor({static_cast<double>(kind), static_cast<double>(task.round()),
                                     static_cast<double>(task.local_epochs()), task.proximal_mu(),
                                     static_cast<double>(task.model_version()), task.flip_labels() ? 1.0 : 0.0},
                                    at::kDouble);
    return BroadcastControl(*sh_->group, control);
  }

  absl::StatusOr<comm::NamedTensors> FetchModel(const v1::TaskReply& task) {
    grpc::ClientContext ctx;
    v1::FetchRequest fetch;
    fetch.set_site_id(site_id_.load());
    fetch.set_token(token_);
    fetch.set_model_version(task.model_version());
    auto reader = stub_->FetchModel(&ctx, fetch);
    // Exactly this site's own model: a coordinator's stream cannot make the site hold more.
    comm::TensorAssembler assembler(&sh_->layout, 128);
    v1::TensorChunk chunk;
    absl::Status bad;
    Sent(fetch);
    while (reader->Read(&chunk)) {
      Received(chunk);
      if (bad.ok()) bad = assembler.Add(chunk);
    }
    if (auto s = FromGrpc(reader->Finish(), "fetching the model"); !s.ok()) {
      coordinator_said_no_ = true;
      return s;
    }
    if (!bad.ok()) return bad;
    return assembler.Finish();
  }

  // Sends one secure aggregation message, retrying while the coordinator is unreachable; an
  // answer that it has it already (a retried call) is success.
  absl::Status SendSecure(v1::SecAggMessage msg) {
    msg.set_site_id(site_id_.load());
    msg.set_token(token_);
    absl::Status s = WithRetry([&] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      v1::SubmitReply reply;
      grpc::Status s = stub_->SecAggSubmit(&ctx, msg, &reply);
      Sent(msg);
      Received(reply);
      return s;
    });
    return s.code() == absl::StatusCode::kAlreadyExists ? absl::OkStatus() : s;
  }

  absl::Status SecureStage(const v1::TaskReply& task) {
    const v1::SecAggTask& st = task.secagg();
    absl::StatusOr<v1::SecAggMessage> msg;
    if (st.stage() == v1::SecAggTask::ADVERTISE) {
      // Fresh keys for every round; a new ADVERTISE of the same round (this site restarted its
      // poll) starts over, which the coordinator refuses if it has this site's keys already.
      secure_.reset();
      masked_.clear();
      auto session = SecureSiteSession::Start(task.round(), st, site_id_.load());
      if (!session.ok()) return session.status();
      secure_ = *std::move(session);
      msg = secure_->Advertise();
    } else if (secure_ == nullptr || secure_->round() != task.round()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "asked for stage ", v1::SecAggTask::Stage_Name(st.stage()), " of round ", task.round(),
          " without this site's keys of that round (it restarted?): it sits this round out"));
    } else if (st.stage() == v1::SecAggTask::SHARE_KEYS) {
      msg = secure_->ShareKeys(st);
    } else if (st.stage() == v1::SecAggTask::UNMASK) {
      msg = secure_->Unmask(st);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unexpected stage ", static_cast<int>(st.stage())));
    }
    if (!msg.ok()) return msg.status();
    return SendSecure(*std::move(msg));
  }

  absl::Status TrainRound(const v1::TaskReply& task) {
    const bool secure = task.has_secagg() && task.secagg().stage() == v1::SecAggTask::MASK_INPUT;
    if (secure && !masked_.empty() && masked_round_ == task.round()) {
      // Masked already, the submission failed: the same words again (the state machine masks once).
      return SubmitMasked(task, masked_metrics_);
    }
    if (secure && (secure_ == nullptr || secure_->round() != task.round())) {
      return absl::FailedPreconditionError(
          absl::StrCat("round ", task.round(), ": no secure aggregation keys of this round (restarted?)"));
    }
    log::Info("round {}: training model version {}", task.round(), task.model_version());
    int64_t t = timeline::NowUs();
    auto model = FetchModel(task);
    if (!model.ok()) return model.status();
    Spanned("fetch", task.round(), t);
    std::map<std::string, double> metrics;
    storage::NamedTensors update;
    {
      modes::LearningMode* mode = sh_->slots->Acquire();
      auto s = TrainOnSlot(task, *model, mode, &metrics, &update);
      sh_->slots->Release(mode);
      if (!s.ok()) return s;
    }
    Spanned("train", task.round(), t);
    const int64_t examples = data_.train_y.size(0);
    if (!pipeline_.empty()) {
      // The pipeline works on the delta from the model this round started from (clip, ...).
      auto piped = pipeline_.ApplyToWeights({sh_->job.seed, task.round(), name_}, *model, update,
                                            static_cast<double>(examples));
      if (!piped.ok()) return piped.status();
      update = *std::move(piped);
    }
    if (task.clip_norm() > 0) {
      // Site-level DP: the update leaves the site clipped to the round's bound (the coordinator
      // clips again where it sees updates), with one bit saying whether it was within (for
      // adaptive clipping; the coordinator adds noise to their count and never reports a site's
      // own). Under secure aggregation the bit would travel unmasked: not sent.
      if (auto s = CheckSiteDp(task); !s.ok()) return s;
      auto clipped = ClipUpdate(*model, update, task.clip_norm());
      if (!clipped.ok()) return clipped.status();
      if (!secure) metrics["clip_within"] = *clipped ? 1.0 : 0.0;
    }
    if (!sh_->options.dump_updates.empty()) {
      const std::string path = absl::StrCat(sh_->options.dump_updates, "/round-", task.round(), "-site-", name_,
                                            ".safetensors");
      if (auto s = storage::WriteSafetensors(path, update, {{"examples", std::to_string(examples)}}); !s.ok()) return s;
    }
    if (!secure) {
      auto submitted = Submit(task, examples, metrics, update);
      Spanned("submit", task.round(), t);
      return submitted;
    }
    // Quantized and masked: what leaves the site is uniform-looking words whose sum over the
    // round's sites is the only thing the coordinator can learn.
    std::map<std::string, at::Tensor> base(model->begin(), model->end());
    storage::NamedTensors delta;
    for (const auto& [name, t] : update) {
      if (at::isFloatingType(t.scalar_type()) && base.count(name)) delta.emplace_back(name, t - base[name].to(t.device()));
    }
    int64_t weight = examples;
    if (task.clip_norm() > 0) {
      // Site-level DP under secure aggregation: this site's share of the noise, from its own
      // entropy, goes in before masking (the coordinator never holds an un-noised sum), and every
      // site weighs 1 (the largest declared count: r = 1).
      auto dp = privacy::SiteDpSpecFromJob(sh_->job);
      if (!dp.ok()) return dp.status();
      privacy::AddNoiseShare(delta, privacy::NoiseShareStd(dp->noise_multiplier, task.clip_norm(),
                                                           task.secagg().threshold()));
      weight = std::max<int64_t>(examples, task.secagg().max_weight());
    }
    auto masked = secure_->MaskInput(task.secagg(), *model, delta, weight,
                                     DeriveSeed(sh_->job.seed, "secagg-rounding", static_cast<uint64_t>(index_),
                                                static_cast<uint64_t>(task.round())));
    if (!masked.ok()) return masked.status();
    masked_ = *std::move(masked);
    masked_round_ = task.round();
    masked_metrics_ = metrics;
    auto submitted = SubmitMasked(task, metrics);
    Spanned("mask and submit", task.round(), t);
    return submitted;
  }

  // A round under site-level DP (the task carries a clip) needs this site's job to run it too, with
  // the same noise multiplier: under secure aggregation the site sizes its own share of the noise.
  absl::Status CheckSiteDp(const v1::TaskReply& task) const {
    auto dp = privacy::SiteDpSpecFromJob(sh_->job);
    if (!dp.ok()) return dp.status();
    if (!dp->on) {
      return absl::FailedPreconditionError(
          "the coordinator runs site-level DP (its task carries a clip) and this site's job has privacy.mode "
          "other than site: start the site with the coordinator's privacy keys");
    }
    if (std::abs(dp->noise_multiplier - task.noise_multiplier()) > 1e-9 * std::max(1.0, dp->noise_multiplier)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "site-level DP: the coordinator's noise multiplier is ", task.noise_multiplier(), ", this site's job gives ",
          dp->noise_multiplier, " (the privacy.* and federated.* keys must be the coordinator's)"));
    }
    return absl::OkStatus();
  }

  // `update` (new weights) becomes global + its delta clipped to L2 norm `bound` (floating-point
  // tensors together); returns whether the delta was within the bound.
  static absl::StatusOr<bool> ClipUpdate(const comm::NamedTensors& global, storage::NamedTensors& update, double bound) {
    if (global.size() != update.size()) {
      return absl::InternalError("site-level DP: the trained model and the global one differ in layout");
    }
    storage::NamedTensors delta;
    for (size_t k = 0; k < update.size(); ++k) {
      const at::Tensor& t = update[k].second;
      if (update[k].first != global[k].first || !tensor::SameLayout(t, global[k].second)) {
        return absl::InternalError(absl::StrCat("site-level DP: trained tensor '", update[k].first,
                                                "' is not the global model's tensor ", k));
      }
      if (at::isFloatingType(t.scalar_type())) delta.emplace_back(update[k].first, t - global[k].second.to(t.device()));
    }
    const double norm = privacy::ClipToNorm(delta, bound);
    if (!std::isfinite(norm)) return absl::InvalidArgumentError("site-level DP: the update's norm is not finite");
    size_t j = 0;
    for (size_t k = 0; k < update.size(); ++k) {
      at::Tensor& t = update[k].second;
      if (at::isFloatingType(t.scalar_type())) t = global[k].second.to(t.device()) + delta[j++].second;
    }
    return norm <= bound;
  }

  // The timeline's span "<what> (site S, round R)" from `since` to now; `since` moves to now.
  void Spanned(const char* what, int64_t round, int64_t& since) const {
    timeline::Recorder* recorder = timeline::Active();
    if (recorder == nullptr) return;
    const int64_t now = timeline::NowUs();
    recorder->Complete(absl::StrCat(what, " (site ", name_, ", round ", round, ")"), "federated", since, now);
    since = now;
  }

  absl::Status SubmitMasked(const v1::TaskReply& task, const std::map<std::string, double>& metrics) {
    at::Tensor words = at::empty({static_cast<int64_t>(masked_.size())}, at::kInt);
    std::memcpy(words.data_ptr<int32_t>(), masked_.data(), masked_.size() * sizeof(uint32_t));
    // The example count stays at the site: its weight travels inside the masked words.
    return Submit(task, 0, metrics, {{"secagg/masked", words}});
  }

  // Federated evaluation of the global model on the site's own test split, then local training:
  // the round's epochs, in an order of the site's own per round.
  absl::Status TrainOnSlot(const v1::TaskReply& task, const comm::NamedTensors& model, modes::LearningMode* mode,
                           std::map<std::string, double>* metrics, storage::NamedTensors* update) {
    if (auto s = mode->LoadState(model); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("the coordinator's model version ", task.model_version(),
                                                 " does not fit this site's job (its mode and model keys must be "
                                                 "the coordinator's): ", s.message()));
    }
    if (data_.test_y.defined() && data_.test_y.size(0) > 0) {
      mode->SetEvaluationBank(data_.train_x, data_.train_y);  // the site's own labelled share (DINO's k-NN)
      auto sums = mode->Evaluate(data_.test_x, data_.test_y, sh_->job.train.eval_batch_size);
      if (!sums.ok()) return sums.status();
      (*metrics)["eval_examples"] = static_cast<double>(sums->examples);
      if (sums->confusion.defined()) {
        (*metrics)["eval_correct"] = static_cast<double>(sums->confusion.diagonal().sum().item<int64_t>());
      }
      (*metrics)["eval_loss_sum"] = sums->loss_sum;
    }
    if (task.flip_labels() && aggregation::AttackSpecFromJob(sh_->job).kind != aggregation::AttackKind::kLabelFlip) {
      // Only a simulation that says so trains on wrong labels: a real site refuses the order.
      return absl::FailedPreconditionError(
          "the coordinator asks this site to train on flipped labels (a simulated attack), but this site's job "
          "does not set attack.kind: label_flip; refusing the round");
    }
    if (sh_->group != nullptr) {
      if (auto s = TellGroup(kGroupTrain, task); !s.ok()) return s;
      if (auto s = comm::BroadcastFromRoot(*sh_->group, mode->ModelState()); !s.ok()) return s;
    }
    double epsilon = -1;
    if (task.flip_labels()) log::Info("round {}: site {} attacks (simulation): training on flipped labels", task.round(), name_);
    if (auto s = TrainLocally(sh_, index_, data_, task.round(), task.model_version(), task.local_epochs(),
                              task.proximal_mu(), task.flip_labels(), mode, &privacy_rdp_, &epsilon);
        !s.ok()) {
      return s;
    }
    if (epsilon >= 0) {
      (*metrics)["epsilon"] = epsilon;  // this site's example-level spend so far
      if (auto s = WritePrivacyLedger(PrivacyLedgerPath(sh_->job, name_), privacy_rdp_, epsilon,
                                      optim::DpSpecFromJob(sh_->job).delta);
          !s.ok()) {
        return s;  // a spend that is not on record must not leave the site
      }
    }
    for (const auto& [name, t] : modes::ModelTensors(mode->State())) update->emplace_back(name, t.clone());
    return absl::OkStatus();
  }

 public:
  ~Site() {
    if (ledger_lock_ >= 0) ::close(ledger_lock_);
  }
  Site(const Site&) = delete;
  Site& operator=(const Site&) = delete;

  // Example-level DP: the spend recorded by an earlier process of this site. The ledger is locked
  // for this process's lifetime: two processes of one site would each write only their own count.
  absl::Status LoadPrivacyLedger() {
    if (!optim::DpSpecFromJob(sh_->job).example_level()) return absl::OkStatus();
    const std::string path = PrivacyLedgerPath(sh_->job, name_);
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
    ledger_lock_ = ::open((path + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (ledger_lock_ < 0 || ::flock(ledger_lock_, LOCK_EX | LOCK_NB) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the site's privacy ledger ", path, " is in use by another process of site '", name_, "' (",
          std::strerror(errno), "): one process per site and run directory"));
    }
    auto rdp = ReadPrivacyLedger(path);
    if (!rdp.ok()) return rdp.status();
    if (rdp->defined()) {
      privacy_rdp_ = *rdp;
      log::Info("site {}: privacy spent before, from its ledger, carried on", name_);
    }
    return absl::OkStatus();
  }

  // The round's local training, the same on every rank of a group. `version`: the global model's
  // (the rounds done), so schedules that follow the run's progress (DINO's teacher) see the whole
  // federated run rather than restart every round.
  // Example-level DP (privacy.mode example): `rdp` carries the site's accountant from round to
  // round (the site's own records are what it protects, over every round it trains), and
  // `epsilon` receives the spend after this round.
  static absl::Status TrainLocally(Shared* sh, int64_t index, const SiteData& data, int64_t round, int64_t version,
                                   int64_t epochs, double mu, bool flip_labels, modes::LearningMode* mode,
                                   at::Tensor* rdp, double* epsilon) {
    // FedProx: stay near the round's global model (what the mode holds now).
    storage::NamedTensors reference;
    if (mu > 0) {
      for (const auto& [name, t] : modes::ModelTensors(mode->State())) reference.emplace_back(name, t.clone());
    }
    if (auto s = mode->SetProximalTerm(mu, reference); !s.ok()) return s;
    Job local = sh->job;
    local.train.epochs = epochs;
    local.train.max_steps = 0;
    if (sh->many) local.train.progress_every_s = 0;
    local.seed = DeriveSeed(sh->job.seed, "site-round", static_cast<uint64_t>(index), static_cast<uint64_t>(round));
    data::TrainingData td;
    td.train_inputs = data.train_x;
    td.train_targets = data.train_y;
    td.test_inputs = data.test_x.defined() ? data.test_x : data.train_x.narrow(0, 0, 0);
    td.test_targets = data.test_y.defined() ? data.test_y : data.train_y.narrow(0, 0, 0);
    td.info = sh->info;
    td.labeled_inputs = data.labeled_x;
    td.labeled_targets = data.labeled_y;
    if (flip_labels) {  // a simulated attacker's data poisoning (attack.kind label_flip)
      td.train_targets = aggregation::FlipLabels(td.train_targets, sh->info.num_classes);
      td.labeled_targets = aggregation::FlipLabels(td.labeled_targets, sh->info.num_classes);
    }
    std::unique_ptr<comm::Communicator> local_comm;
    comm::Communicator* comm = sh->group;
    if (comm == nullptr) {
      local_comm = comm::MakeLocalCommunicator();
      comm = local_comm.get();
    }
    Trainer trainer(local, td, mode, comm, sh->reducer.get());
    const double rounds = static_cast<double>(std::max<int64_t>(1, sh->job.federated.rounds));
    trainer.SetProgressSpan(std::min(1.0, version / rounds), std::min(1.0, (version + 1) / rounds));
    if (rdp->defined()) {
      if (auto s = trainer.RestorePrivacy(*rdp); !s.ok()) return s;
    }
    for (int64_t e = 0; e < epochs; ++e) {
      auto r = trainer.Execute({e, e, 0});
      if (!r.ok()) return r.status();
    }
    if (const Trainer::Privacy* p = trainer.privacy()) {
      *rdp = trainer.PrivacyState();
      *epsilon = p->spent.epsilon;
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Submit(const v1::TaskReply& task, int64_t examples, const std::map<std::string, double>& metrics,
                      const storage::NamedTensors& update) {
    grpc::ClientContext ctx;
    v1::SubmitReply reply;
    auto writer = stub_->SubmitUpdate(&ctx, &reply);
    bool first = true;
    for (auto& c : comm::EncodeTensors(update)) {
      v1::UpdateChunk msg;
      if (first) {
        msg.set_site_id(site_id_.load());
        msg.set_token(token_);
        msg.set_round(task.round());
        msg.set_examples(examples);
        for (const auto& [k, v] : metrics) (*msg.mutable_metrics())[k] = v;
        first = false;
      }
      *msg.mutable_chunk() = std::move(c);
      Sent(msg);
      if (!writer->Write(msg)) break;
    }
    writer->WritesDone();
    grpc::Status finished = writer->Finish();
    Received(reply);
    if (auto s = FromGrpc(finished, "submitting the update"); !s.ok()) {
      coordinator_said_no_ = true;
      return s;
    }
    log::Info("round {} {} accepted ({} examples)", task.round(), examples > 0 ? "update" : "masked input", examples);
    return absl::OkStatus();
  }

  // Counts the protocol messages' bytes both ways (what bench/secagg compares between plain and
  // secure rounds; gRPC's framing and TLS add a little to both).
  void Sent(const google::protobuf::Message& msg) { sent_bytes_ += msg.ByteSizeLong(); }
  void Received(const google::protobuf::Message& msg) { received_bytes_ += msg.ByteSizeLong(); }

  Shared* sh_;
  const std::string name_, token_;
  const int64_t index_;
  const SiteData data_;
  const privacy::UpdatePipeline pipeline_;  // pipeline.site, this site's own
  at::Tensor privacy_rdp_;  // example-level DP: the site's accountant over the rounds it trained
  int ledger_lock_ = -1;     // held (flock) while this process trains the site under example-level DP
  std::unique_ptr<v1::Coordinator::Stub> stub_;
  std::atomic<int64_t> site_id_{0};
  std::chrono::milliseconds busy_backoff_{100};  // after a busy or unreachable coordinator mid-round
  std::unique_ptr<SecureSiteSession> secure_;   // this round's secure aggregation, in memory only
  std::vector<uint32_t> masked_;                // the masked input, kept until it is accepted
  int64_t masked_round_ = -1;
  std::map<std::string, double> masked_metrics_;
  std::atomic<bool> joined_{false};
  std::atomic<uint64_t> sent_bytes_{0}, received_bytes_{0};  // Heartbeat runs on its own thread
  bool coordinator_said_no_ = false;  // the last round's failure came from the coordinator
};

// Ranks 1.. of a group that is one site: follow rank 0's control messages, receive the global
// model, and train with it until told to stop.
absl::Status FollowGroup(Shared* sh, int64_t index, const SiteData& data) {
  modes::LearningMode* mode = sh->slots->Acquire();
  at::Tensor rdp;  // the same count as rank 0's: every rank takes the same DP steps
  double epsilon = -1;
  for (;;) {
    at::Tensor control = at::zeros({6}, at::kDouble);
    if (auto s = BroadcastControl(*sh->group, control); !s.ok()) return s;
    const auto kind = static_cast<GroupKind>(control[0].item<double>());
    if (kind == kGroupStop) return absl::OkStatus();
    if (kind != kGroupTrain) continue;
    if (auto s = comm::BroadcastFromRoot(*sh->group, mode->ModelState()); !s.ok()) return s;
    if (auto s = Site::TrainLocally(sh, index, data, static_cast<int64_t>(control[1].item<double>()),
                                    static_cast<int64_t>(control[4].item<double>()),
                                    static_cast<int64_t>(control[2].item<double>()), control[3].item<double>(),
                                    control[5].item<double>() != 0, mode, &rdp, &epsilon);
        !s.ok()) {
      return s;
    }
  }
}

// Splits `n` examples of site `index` into its training and test parts (seeded, so every rank
// and every rerun agrees).
std::pair<at::Tensor, at::Tensor> SplitForEvaluation(const std::vector<int64_t>& examples, double fraction,
                                                     uint64_t seed, int64_t index) {
  std::vector<int64_t> order = examples;
  const int64_t n_test = fraction > 0 && order.size() >= 2
                             ? std::max<int64_t>(1, static_cast<int64_t>(fraction * static_cast<double>(order.size())))
                             : 0;
  if (n_test > 0) {
    Rng rng(DeriveSeed(seed, "site-eval-split", static_cast<uint64_t>(index)));
    rng.Shuffle(order);
  }
  std::vector<int64_t> test(order.begin(), order.begin() + n_test), train(order.begin() + n_test, order.end());
  std::sort(test.begin(), test.end());
  std::sort(train.begin(), train.end());
  return {at::tensor(train, at::kLong), at::tensor(test, at::kLong)};
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> ParseSiteIndices(const std::string& spec) {
  const auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("--site-index '", spec, "': ", why));
  };
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(spec, ',')) {
    std::vector<absl::string_view> ends = absl::StrSplit(part, absl::MaxSplits('-', 1));
    int64_t a = 0, b = 0;
    if (!absl::SimpleAtoi(ends[0], &a) || (ends.size() == 2 && !absl::SimpleAtoi(ends[1], &b))) {
      return bad("give I, A-B or A,B,C with non-negative integers");
    }
    if (ends.size() == 1) b = a;
    if (a < 0 || b < a) return bad("a range must run upwards from 0 or more");
    if (b - a > 100000) return bad("too many sites");
    for (int64_t i = a; i <= b; ++i) out.push_back(i);
  }
  std::set<int64_t> unique(out.begin(), out.end());
  if (unique.size() != out.size()) return bad("an index appears twice");
  if (out.empty()) return bad("no sites");
  return out;
}

namespace {

// The channel credentials the flags ask for.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> SiteCredentials(const SiteOptions& options) {
  if (!options.tls_ca.empty()) {
    if (options.insecure) return absl::InvalidArgumentError("--insecure and --tls-ca exclude each other");
    auto ca = ReadPemFile(options.tls_ca, "--tls-ca", "CERTIFICATE");
    if (!ca.ok()) return ca.status();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = *ca;
    return grpc::SslCredentials(ssl);
  }
  if (options.insecure) return grpc::InsecureChannelCredentials();
  return absl::InvalidArgumentError(
      "give --tls-ca FILE (the CA that signed the coordinator's certificate), or --insecure for plain text");
}

// Each hosted site's token: from --tokens by name, else the one of --token-file or --token.
struct SiteTokens {
  std::string one;
  std::map<std::string, std::string> by_name;

  absl::StatusOr<std::string> For(const std::string& name) const {
    if (by_name.empty()) return one;
    auto it = by_name.find(name);
    if (it == by_name.end()) return absl::NotFoundError(absl::StrCat("--tokens has no token for site '", name, "'"));
    return it->second;
  }
};

absl::StatusOr<SiteTokens> ReadSiteTokens(const SiteOptions& options) {
  SiteTokens tokens;
  tokens.one = options.token;
  if (!options.token_file.empty()) {
    if (!options.token.empty()) return absl::InvalidArgumentError("give --token-file or --token, not both");
    auto read = ReadTokenFile(options.token_file, "--token-file");
    if (!read.ok()) return read.status();
    tokens.one = *std::move(read);
  } else if (!options.token.empty()) {
    log::Warning("--token is visible to every user of this machine (ps); put it in a file of mode 600 and give "
                 "--token-file");
  }
  if (!options.tokens_file.empty()) {
    auto read = ReadTokensFile(options.tokens_file, "--tokens");
    if (!read.ok()) return read.status();
    tokens.by_name = *std::move(read);
  }
  return tokens;
}

// The hosted sites' data: the job's, read once and partitioned, or the site's own directory.
// Semi-supervised: the job's labelled subset is chosen over the whole training set, and each
// site keeps the labels that fall in its share; the rest of its share is its unlabelled pool.
absl::StatusOr<std::vector<SiteData>> LoadSiteData(const Job& job, const SiteOptions& options,
                                                   const std::vector<int64_t>& indices, bool log_holdings,
                                                   modes::InputInfo* info) {
  const bool semi = modes::NeedsOf(job.mode).unlabeled;
  Job data_job = job;
  if (!options.data_dir.empty()) data_job.data.dir = options.data_dir;
  auto data = data::LoadTrainingData(data_job, semi ? data::LabelSplit::kWhole : data::LabelSplit::kByMode);
  if (!data.ok()) return data.status();
  at::Tensor is_labeled;
  if (semi) {
    if (job.data.labels_per_class <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("job key 'data.labels_per_class': mode '", job.mode,
                                                     "' needs a labelled subset (give N > 0 per class)"));
    }
    is_labeled = at::zeros({data->train_targets.size(0)}, at::kBool);
    is_labeled.index_fill_(0, data::LabeledSubset(data->train_targets, job.data.labels_per_class, data->info.num_classes,
                                            job.seed),
                           true);
  }
  const auto with_labels = [&](SiteData d, const at::Tensor& pool_index, int64_t i) -> absl::StatusOr<SiteData> {
    if (!semi) return d;
    const at::Tensor mine = pool_index.index_select(0, is_labeled.index_select(0, pool_index).nonzero().view(-1));
    if (mine.numel() == 0) {
      return absl::FailedPreconditionError(absl::StrCat("site ", i, " holds none of the job's labelled images: "
                                                        "raise data.labels_per_class"));
    }
    d.labeled_x = data->train_inputs.index_select(0, mine);
    d.labeled_y = data->train_targets.index_select(0, mine);
    return d;
  };
  std::vector<SiteData> site_data;
  if (!options.data_dir.empty()) {
    auto d = with_labels({data->train_inputs, data->train_targets, data->test_inputs, data->test_targets},
                         at::arange(data->train_targets.size(0), at::kLong), indices[0]);
    if (!d.ok()) return d.status();
    site_data.push_back(*std::move(d));
  } else {
    const at::Tensor labels = data->train_targets.contiguous();
    std::vector<int64_t> y(labels.data_ptr<int64_t>(), labels.data_ptr<int64_t>() + labels.numel());
    auto parts = data::MakePartition(y, data->info.num_classes, job.partition, job.seed);
    if (!parts.ok()) return parts.status();
    for (int64_t i : indices) {
      if (i >= static_cast<int64_t>(parts->size())) {
        return absl::InvalidArgumentError(absl::StrCat("--site-index ", i, " outside the job's ", parts->size(),
                                                       " sites (partition.sites)"));
      }
      auto [train, test] = SplitForEvaluation((*parts)[i], job.federated.site_eval_fraction, job.seed, i);
      auto d = with_labels({data->train_inputs.index_select(0, train), data->train_targets.index_select(0, train),
                            data->train_inputs.index_select(0, test), data->train_targets.index_select(0, test)},
                           train, i);
      if (!d.ok()) return d.status();
      site_data.push_back(*std::move(d));
    }
  }
  if (log_holdings && job.data.name != "text") {
    // What each hosted site holds, so a non-IID run's log says which labels went where.
    for (size_t k = 0; k < site_data.size(); ++k) {
      if (site_data[k].train_y.dim() != 1) continue;
      const at::Tensor counts = at::bincount(site_data[k].train_y, {}, data->info.num_classes);
      std::string held;
      for (int64_t c = 0; c < counts.size(0); ++c) {
        if (const int64_t n = counts[c].item<int64_t>(); n > 0) absl::StrAppend(&held, held.empty() ? "" : " ", c, ":", n);
      }
      log::Info("site index {}: {} training examples, by label {}", indices[k], site_data[k].train_y.size(0), held);
    }
  }
  *info = data->info;
  return site_data;
}

// Training slots (one per concurrently training site; one for a group), the group's reducer and
// the model's layout for Join, into `sh`.
absl::Status PrepareTraining(const Job& job, int64_t hosted, Shared* sh) {
  comm::Communicator* group = sh->group;
  const int slots = group != nullptr ? 1 : static_cast<int>(std::min<int64_t>(sh->options.site_threads, hosted));
  std::vector<std::unique_ptr<modes::LearningMode>> modes;
  for (int k = 0; k < slots; ++k) {
    auto mode = modes::MakeLearningMode(job, sh->info, group != nullptr ? group->device() : at::Device(at::kCPU));
    if (!mode.ok()) return mode.status();
    modes.push_back(*std::move(mode));
  }
  if (group != nullptr) {
    comm::ReducerOptions ro;
    ro.bucket_bytes = static_cast<int64_t>(job.comm.bucket_mb * (1 << 20));
    ro.first_bucket_bytes = static_cast<int64_t>(job.comm.first_bucket_mb * (1 << 20));
    sh->reducer = std::make_unique<comm::Reducer>(modes[0]->TrainableParameters(), group, ro);
  }
  for (const auto& [name, t] : modes::ModelTensors(modes[0]->State())) {
    v1::TensorSpec spec;
    spec.set_name(name);
    spec.set_dtype(tensor::DtypeName(t.scalar_type()));
    for (int64_t d : t.sizes()) spec.add_shape(d);
    sh->model.push_back(std::move(spec));
    sh->layout.push_back({name, t.scalar_type(), t.sizes().vec()});
  }
  sh->slots = std::make_unique<TrainingSlots>(std::move(modes));
  return absl::OkStatus();
}

// Runs the hosted sites to the end, each on its own thread (one: this one), with a heartbeat
// thread that keeps the training ones alive at the coordinator (polling ones are seen anyway).
absl::Status RunHostedSites(const Job& job, bool many, std::vector<std::unique_ptr<Site>>& sites) {
  std::atomic<bool> done{false};
  const auto beat = std::chrono::milliseconds(
      std::clamp<int64_t>(static_cast<int64_t>(job.federated.site_timeout_s * 1000 / 3), 200, 10000));
  std::thread heartbeat([&] {
    auto next = Clock::now() + beat;
    while (!done.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (Clock::now() < next) continue;
      for (auto& s : sites) s->Heartbeat();
      next = Clock::now() + beat;
    }
  });
  std::vector<absl::Status> results(sites.size());
  if (sites.size() == 1) {
    results[0] = sites[0]->Run();
  } else {
    std::vector<std::thread> threads;
    for (size_t k = 0; k < sites.size(); ++k) {
      threads.emplace_back([&, k] {
        try {
          results[k] = sites[k]->Run();
        } catch (const c10::Error& e) {
          results[k] = absl::InternalError(e.what_without_backtrace());
        }
      });
    }
    for (auto& t : threads) t.join();
  }
  done = true;
  heartbeat.join();
  for (size_t k = 0; k < sites.size(); ++k) {
    if (!results[k].ok()) {
      return absl::Status(results[k].code(), absl::StrCat(many ? absl::StrCat("site ", sites[k]->name(), ": ") : "",
                                                          results[k].message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunSites(const Job& job, const SiteOptions& options, comm::Communicator* group) {
  if (group != nullptr && group->size() <= 1) group = nullptr;
  // A site trains round by round as the coordinator asks: a budget would be sized for one round and
  // spent in it, and a site that stops training mid-run would still be sampled.
  if (const optim::DpSpec dp = optim::DpSpecFromJob(job); dp.example_level() && dp.target_epsilon > 0) {
    return absl::InvalidArgumentError(
        "job key 'privacy.target_epsilon': not supported at federated sites yet; give privacy.noise_multiplier "
        "(each site reports the epsilon it has spent with every update)");
  }
  auto indices = ParseSiteIndices(options.site_indices);
  if (!indices.ok()) return indices.status();
  if (group != nullptr && indices->size() != 1) {
    return absl::InvalidArgumentError("under mpirun the worker group is one site: give one --site-index");
  }
  if (!options.data_dir.empty() && indices->size() != 1) {
    return absl::InvalidArgumentError("--data DIR is one site's own data: give one --site-index (or none)");
  }
  if (options.site_threads < 1) return absl::InvalidArgumentError("--site-threads must be at least 1");
  if (!options.dump_updates.empty()) {
    if (auto s = MakeFlagDirectory(options.dump_updates, "--dump-updates"); !s.ok()) return s;
  }

  const bool many = indices->size() > 1;
  if (options.site_name.empty() && !many) return absl::InvalidArgumentError("--site NAME is required with --coordinator");
  // One site: its name; many: "<name>-<index>". Names go into file names (--dump-updates) and logs.
  const auto site_name = [&](int64_t i) {
    return many ? absl::StrCat(options.site_name.empty() ? "site" : options.site_name, "-", i) : options.site_name;
  };
  for (int64_t i : *indices) {
    if (!IsPlainName(site_name(i))) {
      return absl::InvalidArgumentError(absl::StrCat("--site '", options.site_name, "': the site name '", site_name(i),
                                                     "' is not ", kPlainNameRule));
    }
  }

  Shared sh;
  sh.job = job;
  sh.options = options;
  sh.group = group;
  sh.many = many;
  auto credentials = SiteCredentials(options);
  if (!credentials.ok()) return credentials.status();
  sh.credentials = *std::move(credentials);
  auto tokens = ReadSiteTokens(options);
  if (!tokens.ok()) return tokens.status();
  auto site_data = LoadSiteData(job, options, *indices, group == nullptr || group->rank() == 0, &sh.info);
  if (!site_data.ok()) return site_data.status();
  if (auto s = PrepareTraining(job, static_cast<int64_t>(indices->size()), &sh); !s.ok()) return s;
  if (group != nullptr && group->rank() != 0) return FollowGroup(&sh, (*indices)[0], (*site_data)[0]);

  std::vector<std::unique_ptr<Site>> sites;
  for (size_t k = 0; k < indices->size(); ++k) {
    const int64_t i = (*indices)[k];
    const std::string name = site_name(i);
    auto token = tokens->For(name);
    if (!token.ok()) return token.status();
    auto pipeline = privacy::UpdatePipeline::Make(job, privacy::Side::kSite);  // each site its own steps' state
    if (!pipeline.ok()) return pipeline.status();
    sites.push_back(std::make_unique<Site>(&sh, name, *token, i, std::move((*site_data)[k]), *std::move(pipeline)));
    if (auto s = sites.back()->LoadPrivacyLedger(); !s.ok()) return s;
  }
  site_data->clear();
  return RunHostedSites(job, many, sites);
}

}  // namespace allround::runtime
