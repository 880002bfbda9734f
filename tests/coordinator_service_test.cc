// The coordinator's gRPC service on a real loopback server, called through the generated stub
// as a site would: every refusal the protocol promises comes back as a gRPC status with a reason,
// is counted, never reaches the aggregate, and the same site's good update is accepted next.

#include <grpcpp/grpcpp.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "comm/proto/federated.grpc.pb.h"
#include "comm/wire.h"
#include "coordinator/round_manager.h"
#include "coordinator/service.h"

namespace allround::coordinator {
namespace {

namespace v1 = allround::v1;
using ::testing::HasSubstr;

class CoordinatorServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RoundManagerOptions o;
    o.rounds = 2;
    o.min_sites = 2;
    o.min_available = 2;
    manager_ = std::make_unique<RoundManager>(o, NamedTensors{{"model/w", torch::zeros({2, 3})}},
                                              *aggregation::MakeStrategy({"fedavg"}));
    ServiceOptions so;
    so.tokens = {{"a", "tokA"}, {"b", "tokB"}};
    so.limits.max_update_bytes = 1024;
    so.long_poll = std::chrono::milliseconds(1000);
    service_ = std::make_unique<CoordinatorService>(manager_.get(), so);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    stub_ = v1::Coordinator::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override { server_->Shutdown(); }

  grpc::Status Join(const std::string& name, const std::string& token, int64_t* id) {
    grpc::ClientContext ctx;
    v1::JoinRequest req;
    req.set_site_name(name);
    req.set_token(token);
    req.set_examples(name == "a" ? 100 : 300);
    req.set_protocol_version(allround::comm::kProtocolVersion);
    v1::JoinReply reply;
    grpc::Status s = stub_->Join(&ctx, req, &reply);
    *id = reply.site_id();
    return s;
  }

  v1::TaskReply Task(int64_t site, const std::string& token, grpc::Status* status = nullptr) {
    grpc::ClientContext ctx;
    v1::TaskRequest req;
    req.set_site_id(site);
    req.set_token(token);
    v1::TaskReply reply;
    grpc::Status s = stub_->GetTask(&ctx, req, &reply);
    if (status != nullptr) *status = s;
    return reply;
  }

  // Submits `chunks` as one update stream; the first message carries the header.
  grpc::Status Submit(int64_t site, const std::string& token, int64_t round, std::vector<v1::TensorChunk> chunks,
                      std::map<std::string, double> metrics = {}) {
    grpc::ClientContext ctx;
    v1::SubmitReply reply;
    auto writer = stub_->SubmitUpdate(&ctx, &reply);
    for (size_t k = 0; k < chunks.size(); ++k) {
      v1::UpdateChunk msg;
      if (k == 0) {
        msg.set_site_id(site);
        msg.set_token(token);
        msg.set_round(round);
        msg.set_examples(site == a_ ? 100 : 300);
        for (const auto& [key, v] : metrics) (*msg.mutable_metrics())[key] = v;
      }
      *msg.mutable_chunk() = chunks[k];
      writer->Write(msg);
    }
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    EXPECT_EQ(reply.accepted(), s.ok());
    return s;
  }
  static std::vector<v1::TensorChunk> Update(const at::Tensor& w, const std::string& name = "model/w") {
    return comm::EncodeTensors({{name, w}}, 8);  // 8-byte chunks: several per tensor
  }

  std::unique_ptr<RoundManager> manager_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
  int64_t a_ = 0, b_ = 0;
};

TEST_F(CoordinatorServiceTest, EveryRefusalHasAStatusAndReasonAndTheNextGoodUpdateIsAccepted) {
  int64_t id = 0;
  grpc::Status s = Join("a", "wrong", &id);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(s.error_message(), HasSubstr("site 'a': unknown site or bad token"));
  EXPECT_EQ(Join("mallory", "tokA", &id).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(Join("a", "tokA", &a_).ok());
  ASSERT_TRUE(Join("b", "tokB", &b_).ok());
  // Another site's token, on any call.
  grpc::Status ts;
  Task(a_, "tokB", &ts);
  EXPECT_EQ(ts.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_EQ(Task(a_, "tokA").kind(), v1::TaskReply::TRAIN);
  ASSERT_EQ(Task(b_, "tokB").kind(), v1::TaskReply::TRAIN);
  const at::Tensor good = torch::ones({2, 3});

  struct Case {
    const char* what;
    std::function<grpc::Status()> submit;
    grpc::StatusCode code;
    const char* reason;
  };
  at::Tensor nan = good.clone();
  nan[1][2] = std::numeric_limits<float>::quiet_NaN();
  at::Tensor inf = good.clone();
  inf[0][0] = std::numeric_limits<float>::infinity();
  std::map<std::string, double> big_header;
  for (int k = 0; k < 40; ++k) big_header[std::string(60, 'm') + std::to_string(k)] = 1;
  std::vector<v1::TensorChunk> gap = Update(good);
  gap.erase(gap.begin() + 1);
  const std::vector<Case> cases = {
      {"bad token", [&] { return Submit(a_, "tokB", 0, Update(good)); }, grpc::StatusCode::UNAUTHENTICATED,
       "bad token"},
      {"unknown site", [&] { return Submit(99, "tokA", 0, Update(good)); }, grpc::StatusCode::NOT_FOUND,
       "unknown site 99"},
      {"wrong shape", [&] { return Submit(a_, "tokA", 0, Update(torch::ones({3, 2}))); },
       grpc::StatusCode::INVALID_ARGUMENT, "the model's is 'model/w' Float [2, 3]"},
      {"wrong dtype", [&] { return Submit(a_, "tokA", 0, Update(torch::ones({2, 3}, torch::kDouble))); },
       grpc::StatusCode::INVALID_ARGUMENT, "the model's is 'model/w' Float [2, 3]"},
      {"wrong name", [&] { return Submit(a_, "tokA", 0, Update(good, "model/v")); },
       grpc::StatusCode::INVALID_ARGUMENT, "the model's is 'model/w' Float [2, 3]"},
      {"NaN", [&] { return Submit(a_, "tokA", 0, Update(nan)); }, grpc::StatusCode::INVALID_ARGUMENT, "NaN or Inf"},
      {"Inf", [&] { return Submit(a_, "tokA", 0, Update(inf)); }, grpc::StatusCode::INVALID_ARGUMENT, "NaN or Inf"},
      {"wrong round", [&] { return Submit(a_, "tokA", 5, Update(good)); }, grpc::StatusCode::FAILED_PRECONDITION,
       "update for round 5 refused"},
      // The model's own tensor, with a header past the stream's bytes (a tensor of another size
      // is refused by the layout check at its first chunk: "wrong shape").
      {"oversized stream", [&] { return Submit(a_, "tokA", 0, Update(good), big_header); },
       grpc::StatusCode::RESOURCE_EXHAUSTED, "exceeds the 1024 bytes an update of this job's model takes"},
      {"malformed stream", [&] { return Submit(a_, "tokA", 0, gap); }, grpc::StatusCode::INVALID_ARGUMENT, "offset"},
      {"bad metrics", [&] { return Submit(a_, "tokA", 0, Update(good), {{"eval_loss_sum", -1}}); },
       grpc::StatusCode::INVALID_ARGUMENT, "eval_loss_sum"},
  };
  for (const Case& c : cases) {
    grpc::Status r = c.submit();
    EXPECT_EQ(r.error_code(), c.code) << c.what << ": " << r.error_message();
    EXPECT_THAT(r.error_message(), HasSubstr(c.reason)) << c.what;
    // Nothing reached the round: the site is still asked to train, and a good update goes in.
    EXPECT_EQ(manager_->model_version(), 0) << c.what;
  }
  ASSERT_TRUE(Submit(a_, "tokA", 0, Update(good)).ok());
  grpc::Status dup = Submit(a_, "tokA", 0, Update(good * 2));
  EXPECT_EQ(dup.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(dup.error_message(), HasSubstr("already submitted"));
  ASSERT_TRUE(Submit(b_, "tokB", 0, Update(good * 3)).ok());
  // The aggregate holds only the two good updates: (100 x 1 + 300 x 3) / 400 = 2.5.
  ASSERT_EQ(manager_->model_version(), 1);
  EXPECT_TRUE(at::allclose((*manager_->Model(1))[0].second, torch::full({2, 3}, 2.5f)));
  const auto refusals = manager_->refusals();
  EXPECT_EQ(refusals.at("bad_token"), 4);  // two joins, a task, a submission
  EXPECT_EQ(refusals.at("unknown_site"), 1);
  // A tensor of another shape, dtype or name is refused by the stream's layout check as it arrives.
  EXPECT_EQ(refusals.count("bad_tensor"), 0u);
  EXPECT_EQ(refusals.at("non_finite"), 2);
  EXPECT_EQ(refusals.at("wrong_round"), 1);
  EXPECT_EQ(refusals.at("bad_stream"), 5);
  EXPECT_EQ(refusals.at("bad_metrics"), 1);
  EXPECT_EQ(refusals.at("duplicate"), 1);
  // A round's late update: round 0 closed, so a resubmission for it is refused as late.
  grpc::Status late = Submit(a_, "tokA", 0, Update(good));
  EXPECT_EQ(late.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(late.error_message(), HasSubstr("closed before it arrived"));
}

TEST_F(CoordinatorServiceTest, GetTaskIsALongPollThatAnswersWhenTheRoundOpens) {
  ASSERT_TRUE(Join("a", "tokA", &a_).ok());
  // Alone, site a waits: the poll is held for the long-poll time, then answers WAIT.
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Task(a_, "tokA").kind(), v1::TaskReply::WAIT);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(900));
  // When b joins during a held poll, the poll answers TRAIN (well before its second is up).
  std::thread joiner([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(Join("b", "tokB", &b_).ok());
  });
  EXPECT_EQ(Task(a_, "tokA").kind(), v1::TaskReply::TRAIN);
  joiner.join();
}

}  // namespace
}  // namespace allround::coordinator
