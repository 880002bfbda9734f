// Issue 29's defects, one test each (named DefectN_...): each sends the input that was found to
// break main, or damages the file it damaged, and asserts what must survive. They run as
// `hardening.<suite>.<test>` in ctest, so `ctest -R hardening` runs them with the suites beside.

#include <grpcpp/grpcpp.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <thread>

#include "comm/proto/federated.grpc.pb.h"
#include "comm/wire.h"
#include "common/job.h"
#include "common/text_file.h"
#include "coordinator/limits.h"
#include "coordinator/round_manager.h"
#include "coordinator/service.h"
#include "storage/checkpoint_store.h"
#include "tests/test_util.h"
#include "runtime/checkpointer.h"

namespace allround {
namespace {

namespace v1 = allround::v1;
using coordinator::Limits;
using coordinator::RoundManager;
using coordinator::RoundManagerOptions;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;
using NamedTensors = comm::NamedTensors;

constexpr int64_t kMaxInt64 = std::numeric_limits<int64_t>::max();

// A coordinator service on a loopback port with two sites' tokens, and a stub to call it.
class Server {
 public:
  explicit Server(Limits limits = {}, int64_t min_sites = 2) {
    RoundManagerOptions o;
    o.rounds = 3;
    o.min_sites = min_sites;
    o.min_available = min_sites;
    o.limits = limits;
    NamedTensors model{{"model/w", torch::zeros({2, 3})}, {"model/b", torch::zeros({3})}};
    limits_ = coordinator::MakeLimits(FederatedSpec{}, model);
    // The test's own stream and echo bounds on top of the model's sizes.
    limits_.max_streams = limits.max_streams;
    limits_.first_message = limits.first_message;
    limits_.stream_idle = limits.stream_idle;
    limits_.max_echo_chars = limits.max_echo_chars;
    o.limits = limits_;
    manager_ = std::make_unique<RoundManager>(o, model, *aggregation::MakeStrategy({"fedavg"}));
    coordinator::ServiceOptions so;
    so.tokens = {{"a", "tokA"}, {"b", "tokB"}};
    so.limits = limits_;
    so.long_poll = std::chrono::milliseconds(200);
    service_ = std::make_unique<coordinator::CoordinatorService>(manager_.get(), so);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxReceiveMessageSize(limits_.max_message_bytes);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(64 << 20);
    stub_ = v1::Coordinator::NewStub(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                                               grpc::InsecureChannelCredentials(), args));
  }
  ~Server() { server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1)); }

  grpc::Status Join(const std::string& name, const std::string& token, int64_t examples, int64_t* id = nullptr) {
    grpc::ClientContext ctx;
    v1::JoinRequest req;
    req.set_site_name(name);
    req.set_token(token);
    req.set_examples(examples);
    req.set_protocol_version(allround::comm::kProtocolVersion);
    v1::JoinReply reply;
    grpc::Status s = stub_->Join(&ctx, req, &reply);
    if (id != nullptr) *id = reply.site_id();
    return s;
  }
  v1::TaskReply Task(int64_t site, const std::string& token) {
    grpc::ClientContext ctx;
    v1::TaskRequest req;
    req.set_site_id(site);
    req.set_token(token);
    v1::TaskReply reply;
    stub_->GetTask(&ctx, req, &reply);
    return reply;
  }
  grpc::Status Submit(int64_t site, const std::string& token, int64_t round, int64_t examples, const NamedTensors& w,
                      const std::map<std::string, double>& metrics = {}) {
    grpc::ClientContext ctx;
    v1::SubmitReply reply;
    auto writer = stub_->SubmitUpdate(&ctx, &reply);
    bool first = true;
    for (auto& c : comm::EncodeTensors(w)) {
      v1::UpdateChunk msg;
      if (first) {
        msg.set_site_id(site);
        msg.set_token(token);
        msg.set_round(round);
        msg.set_examples(examples);
        for (const auto& [k, v] : metrics) (*msg.mutable_metrics())[k] = v;
        first = false;
      }
      *msg.mutable_chunk() = c;
      if (!writer->Write(msg)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }
  // An update stream's first message: the header and the first chunk of an update.
  v1::UpdateChunk FirstMessage(int64_t site, const std::string& token) {
    v1::UpdateChunk msg;
    msg.set_site_id(site);
    msg.set_token(token);
    *msg.mutable_chunk() = comm::EncodeTensors(Weights(1))[0];
    return msg;
  }
  NamedTensors Weights(float v) {
    return {{"model/w", torch::full({2, 3}, v)}, {"model/b", torch::full({3}, v)}};
  }

  std::unique_ptr<RoundManager> manager_;
  Limits limits_;
  std::unique_ptr<coordinator::CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
};

// The count of `reason` refusals once it reaches `want`, or after 10 s: a call the watchdog
// cancelled returns to its client before the server's handler has counted it.
int64_t RefusalsOnceAt(const RoundManager& m, const std::string& reason, int64_t want) {
  const auto until = Clock::now() + std::chrono::seconds(10);
  for (;;) {
    const auto r = m.refusals();
    const int64_t n = r.count(reason) ? r.at(reason) : 0;
    if (n >= want || Clock::now() > until) return n;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// 1. FetchModel for version -1 on a fresh coordinator matched its empty cache and crashed it.
TEST(Defect1, FetchModelOfVersionMinusOneBeforeAnyFetchIsRefusedAndTheServerServesOn) {
  Server s;
  int64_t a = 0;
  ASSERT_TRUE(s.Join("a", "tokA", 10, &a).ok());
  for (int64_t version : {int64_t{-1}, int64_t{-2}, kMaxInt64, std::numeric_limits<int64_t>::min(), int64_t{1}}) {
    grpc::ClientContext ctx;
    v1::FetchRequest req;
    req.set_site_id(a);
    req.set_token("tokA");
    req.set_model_version(version);
    auto reader = s.stub_->FetchModel(&ctx, req);
    v1::TensorChunk chunk;
    EXPECT_FALSE(reader->Read(&chunk)) << version;
    grpc::Status st = reader->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << version << ": " << st.error_message();
  }
  // The current version still streams, whole.
  grpc::ClientContext ctx;
  v1::FetchRequest req;
  req.set_site_id(a);
  req.set_token("tokA");
  req.set_model_version(0);
  auto reader = s.stub_->FetchModel(&ctx, req);
  comm::TensorAssembler assembler(1 << 20);
  v1::TensorChunk chunk;
  while (reader->Read(&chunk)) ASSERT_TRUE(assembler.Add(chunk).ok());
  ASSERT_TRUE(reader->Finish().ok());
  auto model = assembler.Finish();
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(model->size(), 2u);
}

// 2. Names did not count, and the cap was a fixed 4 GiB whatever the model.
TEST(Defect2, AnUpdateStreamCannotCarryMoreThanTheModelItClaimsToBe) {
  const NamedTensors model{{"model/w", torch::zeros({2, 3})}, {"model/b", torch::zeros({3})}};
  const Limits l = coordinator::MakeLimits(FederatedSpec{}, model);
  EXPECT_LT(l.max_update_bytes, 64u * 1024);  // a 36-byte model's stream: kilobytes, not 4 GiB
  EXPECT_LE(l.max_message_bytes, 8 << 20);
  // The layout check refuses a tensor of another name, shape or size at its first chunk,
  // before anything is allocated for it.
  std::vector<comm::TensorLayout> layout = {{"model/w", at::kFloat, {2, 3}}, {"model/b", at::kFloat, {3}}};
  {
    comm::TensorAssembler a(&layout, 128);
    v1::TensorChunk huge;
    huge.set_name("model/w");
    huge.set_dtype("float32");
    huge.add_shape(128 << 20);  // 512 MB claimed for a 24-byte tensor
    huge.set_total_bytes(uint64_t{512} << 20);
    auto st = a.Add(huge);
    EXPECT_FALSE(st.ok());
    EXPECT_THAT(std::string(st.message()), HasSubstr("the model's is 'model/w'"));
  }
  {
    comm::TensorAssembler a(&layout, 128);
    v1::TensorChunk named;
    named.set_name(std::string(25 << 20, 'x'));  // a 25 MB name
    named.set_dtype("float32");
    named.set_total_bytes(0);
    auto st = a.Add(named);
    EXPECT_FALSE(st.ok());
    EXPECT_LT(st.message().size(), 400u);  // the name is not echoed whole
  }
  {
    // Tensors beyond the model's, and a stream that ends early.
    comm::TensorAssembler a(&layout, 128);
    for (const auto& c : comm::EncodeTensors({{"model/w", torch::zeros({2, 3})}})) ASSERT_TRUE(a.Add(c).ok());
    EXPECT_THAT(std::string(a.Finish().status().message()), HasSubstr("ended after 1 of the model's 2 tensors"));
  }
  // Over the wire: 20 empty tensors with 1 MB names never reach the round and the server serves on.
  Server s;
  int64_t a = 0, b = 0;
  ASSERT_TRUE(s.Join("a", "tokA", 10, &a).ok());
  ASSERT_TRUE(s.Join("b", "tokB", 10, &b).ok());
  ASSERT_EQ(s.Task(a, "tokA").kind(), v1::TaskReply::TRAIN);
  NamedTensors junk;
  for (int i = 0; i < 20; ++i) junk.emplace_back(std::string(1 << 20, 'n') + std::to_string(i), torch::zeros({0}));
  grpc::Status st = s.Submit(a, "tokA", 0, 10, junk);
  EXPECT_FALSE(st.ok());
  EXPECT_LT(st.error_message().size(), 400u);
  EXPECT_TRUE(s.Submit(a, "tokA", 0, 10, s.Weights(1)).ok());
}

// 3. A stream that never sent its first message held a server thread forever; streams were not capped.
TEST(Defect3, SilentStreamsAreEndedAndStreamsBeyondTheCapAreRefused) {
  Limits limits;
  // Long enough that both silent streams are open before either ends, even on a loaded machine.
  limits.first_message = std::chrono::milliseconds(2000);
  limits.stream_idle = std::chrono::milliseconds(1000);
  limits.max_streams = 2;
  Server s(limits);
  int64_t a = 0, b = 0;
  ASSERT_TRUE(s.Join("a", "tokA", 10, &a).ok());
  ASSERT_TRUE(s.Join("b", "tokB", 10, &b).ok());
  // Two silent streams fill the pool of streams that have not said whose they are; the watchdog
  // ends each. The client's own deadline is far later, so an ended call is the server's doing.
  std::vector<std::thread> silent;
  std::vector<grpc::Status> ended(2);
  for (int i = 0; i < 2; ++i) {
    silent.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      v1::SubmitReply reply;
      auto writer = s.stub_->SubmitUpdate(&ctx, &reply);
      ended[i] = writer->Finish();  // sends nothing
    });
  }
  // A third while both are open is refused at once, not queued. (Both hold their slots before it
  // is sent; each has first_message to live, so the wait is bounded by the watchdog.)
  while (s.service_->waiting_streams() < 2 && s.manager_->refusals().count("stream_timeout") == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(s.manager_->refusals().count("stream_timeout"), 0u) << "a silent stream ended before both were open";
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::SubmitReply reply;
    auto writer = s.stub_->SubmitUpdate(&ctx, &reply);
    grpc::Status st = writer->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr("federated.max_streams"));
  }
  {
    // They hold none of the sites' slots: an authenticated site still fetches the model.
    grpc::ClientContext ctx;
    v1::FetchRequest req;
    req.set_site_id(a);
    req.set_token("tokA");
    req.set_model_version(0);
    auto reader = s.stub_->FetchModel(&ctx, req);
    v1::TensorChunk chunk;
    int chunks = 0;
    while (reader->Read(&chunk)) ++chunks;
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_EQ(chunks, 2);
  }
  for (auto& t : silent) t.join();
  for (const auto& st : ended) EXPECT_FALSE(st.ok());
  EXPECT_EQ(RefusalsOnceAt(*s.manager_, "too_many_streams", 1), 1);
  EXPECT_EQ(RefusalsOnceAt(*s.manager_, "stream_timeout", 2), 2);
  // A stream that sends its header and then stalls is ended too.
  ASSERT_EQ(s.Task(a, "tokA").kind(), v1::TaskReply::TRAIN);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::SubmitReply reply;
    auto writer = s.stub_->SubmitUpdate(&ctx, &reply);
    const v1::UpdateChunk msg = s.FirstMessage(a, "tokA");
    ASSERT_TRUE(writer->Write(msg));
    EXPECT_FALSE(writer->Finish().ok());  // no WritesDone: only the server can end it
  }
  EXPECT_EQ(RefusalsOnceAt(*s.manager_, "stream_timeout", 3), 3);
  {
    // Messages without a chunk (which cost nothing to send) end the stream at the first one.
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::SubmitReply reply;
    auto writer = s.stub_->SubmitUpdate(&ctx, &reply);
    const v1::UpdateChunk msg = s.FirstMessage(a, "tokA");
    writer->Write(msg);
    for (int k = 0; k < 100 && writer->Write(v1::UpdateChunk()); ++k) {
    }
    grpc::Status st = writer->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr("carries no chunk"));
  }
  // And the site's honest update still goes in.
  EXPECT_TRUE(s.Submit(a, "tokA", 0, 10, s.Weights(1)).ok());
}

// 4. An update claiming 2^63-1 examples overflowed the round's total and silenced the other sites.
TEST(Defect4, ExampleCountsAreBoundedByWhatTheSiteDeclaredAndTheTotalNeverOverflows) {
  Server s;
  int64_t a = 0, b = 0;
  grpc::Status huge = s.Join("a", "tokA", kMaxInt64);
  EXPECT_EQ(huge.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(huge.error_message(), HasSubstr("federated.max_site_examples"));
  ASSERT_TRUE(s.Join("a", "tokA", 450, &a).ok());
  ASSERT_TRUE(s.Join("b", "tokB", 150, &b).ok());
  ASSERT_EQ(s.Task(a, "tokA").kind(), v1::TaskReply::TRAIN);
  for (int64_t claim : {kMaxInt64, int64_t{451}, int64_t{0}, int64_t{-1}}) {
    grpc::Status st = s.Submit(a, "tokA", 0, claim, s.Weights(100));
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << claim;
    EXPECT_THAT(st.error_message(), HasSubstr("it declared 450 at Join")) << claim;
  }
  ASSERT_TRUE(s.Submit(a, "tokA", 0, 450, s.Weights(1)).ok());
  ASSERT_TRUE(s.Submit(b, "tokB", 0, 150, s.Weights(5)).ok());
  const auto history = s.manager_->history();
  ASSERT_EQ(history.size(), 1u);
  EXPECT_EQ(history[0].examples, 600);
  // (450 x 1 + 150 x 5) / 600 = 2: both sites weigh in by their true counts.
  EXPECT_NEAR((*s.manager_->Model(1))[0].second[0][0].item<float>(), 2.0f, 1e-6);
  EXPECT_EQ(s.manager_->refusals().at("bad_examples"), 5);
}

// 5. Two sites' finite metrics summed to +Inf, which the registry JSON wrote as null: unresumable.
TEST(Defect5, MetricsThatWouldSumToInfinityAreRefusedAndTheStateAlwaysReloads) {
  Server s;
  int64_t a = 0, b = 0;
  ASSERT_TRUE(s.Join("a", "tokA", 10, &a).ok());
  ASSERT_TRUE(s.Join("b", "tokB", 10, &b).ok());
  ASSERT_EQ(s.Task(a, "tokA").kind(), v1::TaskReply::TRAIN);
  std::map<std::string, double> too_many;
  for (int i = 0; i < 40; ++i) too_many["m" + std::to_string(i)] = 1;
  const std::vector<std::map<std::string, double>> hostile = {
      {{"eval_loss_sum", 1.5e308}},
      {{"eval_examples", std::numeric_limits<double>::infinity()}},
      {{"eval_correct", std::nan("")}},
      {{"eval_correct", -1}},
      {{std::string(1 << 20, 'k'), 1}},
      {{"a/b", 1}},
      too_many,
  };
  for (const auto& m : hostile) {
    grpc::Status st = s.Submit(a, "tokA", 0, 10, s.Weights(1), m);
    // A 1 MB key is past the bytes an update of this model may take: refused as a stream.
    EXPECT_THAT(st.error_code(), ::testing::AnyOf(grpc::StatusCode::INVALID_ARGUMENT,
                                                  grpc::StatusCode::RESOURCE_EXHAUSTED))
        << m.begin()->first.substr(0, 20);
    EXPECT_LT(st.error_message().size(), 400u);
  }
  ASSERT_TRUE(s.Submit(a, "tokA", 0, 10, s.Weights(1), {{"eval_loss_sum", 9e15}, {"eval_examples", 9e15}}).ok());
  ASSERT_TRUE(s.Submit(b, "tokB", 0, 10, s.Weights(1), {{"eval_loss_sum", 9e15}, {"eval_examples", 9e15}}).ok());
  const auto refusals = s.manager_->refusals();
  EXPECT_EQ(refusals.at("bad_metrics") + refusals.at("bad_stream"), static_cast<int64_t>(hostile.size()));
  // The state after the round reloads into a fresh manager.
  const NamedTensors state = s.manager_->State();
  RoundManager fresh({}, {{"model/w", torch::zeros({2, 3})}, {"model/b", torch::zeros({3})}},
                     *aggregation::MakeStrategy({"fedavg"}));
  ASSERT_TRUE(fresh.LoadState(state, Clock::now()).ok());
  EXPECT_DOUBLE_EQ(fresh.history()[0].site_metrics.at("eval_loss_sum"), 1.8e16);
  // A checkpoint written before the bounds, with the null its Inf became, resumes too.
  NamedTensors old = state;
  for (auto& [name, t] : old) {
    if (name != "coordinator/registry") continue;
    std::string json(reinterpret_cast<const char*>(t.data_ptr<uint8_t>()), t.numel());
    const std::string from = "\"eval_loss_sum\":1.8e+16";
    ASSERT_NE(json.find(from), std::string::npos) << json;
    json.replace(json.find(from), from.size(), "\"eval_loss_sum\":null");
    t = torch::empty({static_cast<int64_t>(json.size())}, torch::kByte);
    std::memcpy(t.data_ptr<uint8_t>(), json.data(), json.size());
  }
  RoundManager from_old({}, {{"model/w", torch::zeros({2, 3})}, {"model/b", torch::zeros({3})}},
                        *aggregation::MakeStrategy({"fedavg"}));
  auto loaded = from_old.LoadState(old, Clock::now());
  ASSERT_TRUE(loaded.ok()) << loaded.message();
  EXPECT_EQ(from_old.history()[0].site_metrics.count("eval_loss_sum"), 0u);
}

std::set<std::string> Files(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out.insert(std::filesystem::relative(e.path(), dir).string());
  }
  return out;
}

// Three checkpoints of 64 KiB tensors (so their bytes go to blob files, one per save).
std::vector<std::string> MakeStore(const std::string& db) {
  auto store = storage::OpenCheckpointStore(db);
  EXPECT_TRUE(store.ok()) << store.status();
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    storage::CheckpointInfo info;
    info.step = i;
    auto id = (*store)->Save("run", info, {{"w", torch::full({16384}, static_cast<float>(i))}});
    EXPECT_TRUE(id.ok());
    ids.push_back(*id);
  }
  return ids;
}

std::vector<std::string> ByNumber(const std::string& db, const std::string& ext) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(db)) {
    if (e.path().extension() == ext) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// 6. One flipped byte in the oldest checkpoint's blob failed every writable open in the orphan scan.
TEST(Defect6, ADamagedOldCheckpointDoesNotBlockTheIntactNewOnes) {
  testing::ScratchDir dir;
  const std::string db = dir / "db";
  const auto ids = MakeStore(db);
  const auto blobs = ByNumber(db, ".blob");
  ASSERT_GE(blobs.size(), 3u);
  {
    std::fstream f(blobs.front(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(std::filesystem::file_size(blobs.front()) / 2));
    char c = 0;
    f.read(&c, 1);
    f.seekp(-1, std::ios::cur);
    c = static_cast<char>(c ^ 0x5a);
    f.write(&c, 1);
  }
  auto store = storage::OpenCheckpointStore(db);  // writable, as --resume and a fresh run open it
  ASSERT_TRUE(store.ok()) << store.status();
  auto bad = (*store)->Verify(ids[0]);
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(*bad, std::vector<std::string>{"w"});
  for (size_t k = 1; k < ids.size(); ++k) {
    auto t = (*store)->Load(ids[k]);
    ASSERT_TRUE(t.ok()) << ids[k] << ": " << t.status();
    EXPECT_TRUE((*t)[0].second.equal(torch::full({16384}, static_cast<float>(k))));
  }
  auto pruned = (*store)->Prune("run", {1, 0});
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  EXPECT_EQ(pruned->size(), 2u);
  EXPECT_TRUE((*store)->Save("run", {}, {{"w", torch::ones({16384})}}).ok());
}

std::string ManifestOf(const std::string& db) {
  for (const auto& e : std::filesystem::directory_iterator(db)) {
    if (e.path().filename().string().rfind("MANIFEST-", 0) == 0) return e.path().string();
  }
  return "";
}

void ExpectLoadsAsSaved(const std::string& db, const std::vector<std::string>& ids, const std::vector<std::string>& want) {
  auto store = storage::OpenCheckpointStore(db);
  ASSERT_TRUE(store.ok()) << store.status();
  for (const auto& id : want) {
    auto t = (*store)->Load(id);
    ASSERT_TRUE(t.ok()) << id << ": " << t.status();
    const int64_t k = std::find(ids.begin(), ids.end(), id) - ids.begin();
    EXPECT_TRUE((*t)[0].second.equal(torch::full({16384}, static_cast<float>(k)))) << id;
  }
}

// 7. A MANIFEST cut in half: verify saw no checkpoint, and a writable open deleted the data files.
TEST(Defect7, ATruncatedManifestIsAnErrorThatDeletesNothingAndRepairRecoversEveryCheckpoint) {
  testing::ScratchDir dir;
  const std::string db = dir / "db";
  const auto ids = MakeStore(db);
  std::filesystem::copy(db, dir / "intact", std::filesystem::copy_options::recursive);
  const std::string manifest = ManifestOf(db);
  ASSERT_FALSE(manifest.empty());
  std::filesystem::resize_file(manifest, std::filesystem::file_size(manifest) / 2);
  const std::set<std::string> before = Files(db);
  for (bool read_only : {true, false}) {
    storage::StoreOptions o;
    o.read_only = read_only;
    auto store = storage::OpenCheckpointStore(db, o);
    ASSERT_FALSE(store.ok()) << (read_only ? "read-only" : "writable") << " open of a store that lost its checkpoints";
    EXPECT_THAT(std::string(store.status().message()), HasSubstr("MANIFEST-"));
    EXPECT_THAT(std::string(store.status().message()), HasSubstr("allround-ckpt repair"));
  }
  EXPECT_EQ(Files(db), before) << "a refused open changed or deleted files";
  // The explicit repair moves the store aside untouched and salvages every checkpoint: all their
  // bytes are still in the table and blob files.
  auto report = storage::RepairCheckpointStore(db);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->kept, ids);
  EXPECT_TRUE(report->damaged.empty()) << report->damaged[0];
  EXPECT_TRUE(report->lost.empty());
  EXPECT_EQ(Files(report->backup), before);
  ExpectLoadsAsSaved(db, ids, ids);
  // Repairing an intact store keeps everything too (RocksDB's RepairDB alone drops blob files);
  // a path with a trailing slash, as a shell completes it, names the same store.
  auto intact = storage::RepairCheckpointStore((dir / "intact") + "/");
  ASSERT_TRUE(intact.ok()) << intact.status();
  EXPECT_EQ(intact->kept, ids);
  ExpectLoadsAsSaved(dir / "intact", ids, ids);
  // A repair that fails (here: no store at all) puts the directory back as it was.
  std::filesystem::create_directories(dir / "empty");
  std::ofstream(dir / "empty/notes.txt") << "mine\n";
  EXPECT_FALSE(storage::RepairCheckpointStore(dir / "empty").ok());
  EXPECT_EQ(Files(dir / "empty"), std::set<std::string>{"notes.txt"});
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename().string().find("empty."), std::string::npos) << e.path() << " left behind";
  }
}

// 7, for a store written before ALLROUND-CHECKPOINTS existed: its data files that the damaged
// MANIFEST does not name are the evidence.
TEST(Defect7, AStoreFromBeforeTheCommittedListIsRefusedWhenItsManifestLostFiles) {
  testing::ScratchDir dir;
  const std::string db = dir / "db";
  const auto ids = MakeStore(db);
  std::filesystem::remove(db + "/ALLROUND-CHECKPOINTS");
  const std::string manifest = ManifestOf(db);
  std::filesystem::resize_file(manifest, std::filesystem::file_size(manifest) / 2);
  const std::set<std::string> before = Files(db);
  auto store = storage::OpenCheckpointStore(db);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("does not name"));
  EXPECT_EQ(Files(db), before);
  auto report = storage::RepairCheckpointStore(db);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->kept, ids);
  ExpectLoadsAsSaved(db, ids, ids);
}

// 8. A refused Join echoed a 10 MB site name back.
TEST(Defect8, ARefusedJoinEchoesAtMostTheEchoLimit) {
  Server s;
  // 10 MB: past one message's limit, refused by gRPC itself; 3 MB: refused by the coordinator,
  // which quotes 128 characters and the length.
  for (const int64_t bytes : {int64_t{10} << 20, int64_t{3} << 20}) {
    const std::string name(bytes, 'z');
    for (const std::string token : {"tokA", "wrong"}) {
      grpc::Status st = s.Join(name, token, 10);
      EXPECT_FALSE(st.ok());
      EXPECT_LT(st.error_message().size(), 300u) << st.error_message().substr(0, 200);
      if (bytes == (3 << 20)) {
        EXPECT_THAT(st.error_message(), HasSubstr("(3145728 bytes)"));
      }
    }
  }
}

void WriteWithMode(const std::string& path, const std::string& text, mode_t mode) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
}

// 9. A tokens file of mode 0666 and a TLS key of mode 0644 were accepted silently.
TEST(Defect9, SecretsOpenToOtherUsersAreRefusedNamingTheFix) {
  testing::ScratchDir dir;
  WriteWithMode(dir / "tokens", "a tokA\n", 0666);
  auto tokens = ReadTokensFile(dir / "tokens", "--tokens");
  ASSERT_FALSE(tokens.ok());
  EXPECT_THAT(std::string(tokens.status().message()), HasSubstr("mode 0666"));
  EXPECT_THAT(std::string(tokens.status().message()), HasSubstr("chmod 600"));
  ::chmod((dir / "tokens").c_str(), 0600);
  EXPECT_TRUE(ReadTokensFile(dir / "tokens", "--tokens").ok());
  WriteWithMode(dir / "key.pem", "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n", 0644);
  auto key = ReadPemFile(dir / "key.pem", "--tls-key", "PRIVATE KEY");
  ASSERT_FALSE(key.ok());
  EXPECT_THAT(std::string(key.status().message()), HasSubstr("--tls-key"));
  ::chmod((dir / "key.pem").c_str(), 0400);
  EXPECT_TRUE(ReadPemFile(dir / "key.pem", "--tls-key", "PRIVATE KEY").ok());
  // A certificate is public: any mode.
  WriteWithMode(dir / "cert.pem", "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n", 0644);
  EXPECT_TRUE(ReadPemFile(dir / "cert.pem", "--tls-cert", "CERTIFICATE").ok());
}

// 10. --token on the command line shows in ps: --token-file reads it from a private file.
TEST(Defect10, ATokenFileIsReadAndMustBePrivate) {
  testing::ScratchDir dir;
  WriteWithMode(dir / "token", "  s3cret0\n", 0600);
  auto token = ReadTokenFile(dir / "token", "--token-file");
  ASSERT_TRUE(token.ok());
  EXPECT_EQ(*token, "s3cret0");
  ::chmod((dir / "token").c_str(), 0644);
  EXPECT_FALSE(ReadTokenFile(dir / "token", "--token-file").ok());
  WriteWithMode(dir / "two", "a b\n", 0600);
  EXPECT_FALSE(ReadTokenFile(dir / "two", "--token-file").ok());
}

// 11. --resume auto made a store inside a non-empty directory that held none.
TEST(Defect11, NoStoreIsCreatedInADirectoryThatHoldsOtherThings) {
  testing::ScratchDir dir;
  std::filesystem::create_directories(dir / "results");
  std::ofstream(dir / "results/notes.txt") << "mine\n";
  auto store = storage::OpenCheckpointStore(dir / "results");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("is not empty and holds no store (notes.txt)"));
  EXPECT_EQ(Files(dir / "results"), std::set<std::string>{"notes.txt"});
  // A missing or empty directory becomes a store as before.
  std::filesystem::create_directories(dir / "empty");
  EXPECT_TRUE(storage::OpenCheckpointStore(dir / "empty").ok());
  EXPECT_TRUE(storage::OpenCheckpointStore(dir / "new").ok());
}

// 12. A worker resumed from a coordinator's checkpoint with only a note.
TEST(Defect12, AWorkerRefusesToResumeFromACoordinatorCheckpointByName) {
  testing::ScratchDir dir;
  Job job;
  job.name = "fed";
  job.checkpoint.dir = dir / "ckpt";
  std::string id;
  {
    auto store = storage::OpenCheckpointStore(job.checkpoint.dir);
    ASSERT_TRUE(store.ok());
    storage::CheckpointInfo info;
    info.mode = runtime::kCoordinatorMode;
    auto saved = (*store)->Save("fed.coordinator", info, {{"model/w", torch::ones({3})}});
    ASSERT_TRUE(saved.ok());
    id = *saved;
  }
  auto r = runtime::ReadCheckpointForResume(job, id);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("was written by allround-coordinator"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("model.init"));
  // auto looks only at the worker's own run, which has none: a fresh start, as before.
  auto fresh = runtime::ReadCheckpointForResume(job, "auto");
  ASSERT_TRUE(fresh.ok());
  EXPECT_FALSE(fresh->has_value());
}

}  // namespace
}  // namespace allround
