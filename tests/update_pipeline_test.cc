// The update pipeline (privacy/update_pipeline.h): job keys, the mirror rule between site and
// coordinator steps, the clip step's numbers, and the coordinator refusing a site whose pipeline
// is not the job's.

#include "privacy/update_pipeline.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "comm/proto/federated.grpc.pb.h"
#include "comm/wire.h"
#include "coordinator/round_manager.h"
#include "coordinator/service.h"

namespace allround::privacy {
namespace {

using ::testing::HasSubstr;

// A toy pair registered by this test alone: an encoding site step (adds 1000 to every value and
// remembers how often it ran, as state) and its coordinator counterpart.
class ToyEncode final : public UpdateTransform {
 public:
  std::string name() const override { return "toy_encode"; }
  absl::Status Apply(const StepContext&, Update& update) override {
    for (auto& [name, t] : update.delta) t = t + 1000;
    ++runs_;
    return absl::OkStatus();
  }
  NamedTensors State() const override { return {{"runs", torch::tensor({runs_})}}; }
  absl::Status LoadState(const NamedTensors& state) override {
    for (const auto& [name, t] : state) {
      if (name == "runs") runs_ = t.item<int64_t>();
    }
    return absl::OkStatus();
  }
  int64_t runs_ = 0;
};

class ToyDecode final : public UpdateTransform {
 public:
  std::string name() const override { return "toy_decode"; }
  absl::Status Apply(const StepContext&, Update& update) override {
    for (auto& [name, t] : update.delta) t = t - 1000;
    return absl::OkStatus();
  }
};

[[maybe_unused]] const bool kToys = [] {
  RegisterTransform(Side::kSite, {"", "toy_encode", "test only", {}}, TransformTraits{"toy_decode"},
                    [](const Job&) -> absl::StatusOr<std::unique_ptr<UpdateTransform>> {
                      return std::make_unique<ToyEncode>();
                    });
  RegisterTransform(Side::kCoordinator, {"", "toy_decode", "test only", {}}, TransformTraits{},
                    [](const Job&) -> absl::StatusOr<std::unique_ptr<UpdateTransform>> {
                      return std::make_unique<ToyDecode>();
                    });
  return true;
}();

absl::StatusOr<Job> Parse(const std::string& yaml) {
  auto job = ParseJobYaml(yaml, "t.yaml");
  if (!job.ok()) return job.status();
  if (auto s = ValidateJob(*job); !s.ok()) return s;
  return job;
}

double Norm(const NamedTensors& tensors) {
  double squares = 0;
  for (const auto& [name, t] : tensors) squares += t.to(torch::kDouble).square().sum().item<double>();
  return std::sqrt(squares);
}

TEST(UpdatePipeline, JobKeysNameRegisteredStepsOnceEach) {
  auto job = Parse("pipeline: {site: [clip], clip_norm: 0.5}\n");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(PipelineSteps(*job, Side::kSite), std::vector<std::string>{"clip"});
  EXPECT_TRUE(PipelineSteps(*job, Side::kCoordinator).empty());
  auto pipeline = UpdatePipeline::Make(*job, Side::kSite);
  ASSERT_TRUE(pipeline.ok());
  EXPECT_EQ(pipeline->Describe(), "clip");

  auto unknown = Parse("pipeline: {site: [clip, squash]}\n");
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(std::string(unknown.status().message()),
              HasSubstr("job key 'pipeline.site': unknown site transform 'squash' (known: "));
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("clip"));
  auto twice = Parse("pipeline: {site: [clip, clip]}\n");
  ASSERT_FALSE(twice.ok());
  EXPECT_THAT(std::string(twice.status().message()), HasSubstr("step 'clip' is named twice"));
  auto bad_bound = Parse("pipeline: {site: [clip], clip_norm: -1}\n");
  ASSERT_FALSE(bad_bound.ok());
  EXPECT_THAT(std::string(bad_bound.status().message()), HasSubstr("pipeline.clip_norm"));
  // A site step is not a coordinator step.
  EXPECT_FALSE(Parse("pipeline: {coordinator: [clip]}\n").ok());
}

TEST(UpdatePipeline, AnEncodingSiteStepNeedsItsCounterpartAtTheCoordinator) {
  auto alone = Parse("pipeline: {site: [toy_encode]}\n");
  ASSERT_FALSE(alone.ok());
  EXPECT_THAT(std::string(alone.status().message()), HasSubstr("must be undone at the coordinator by [toy_decode]"));
  auto orphan = Parse("pipeline: {coordinator: [toy_decode]}\n");
  ASSERT_FALSE(orphan.ok());
  EXPECT_THAT(std::string(orphan.status().message()), HasSubstr("the coordinator names [toy_decode]"));
  auto paired = Parse("pipeline: {site: [clip, toy_encode], coordinator: [toy_decode]}\n");
  ASSERT_TRUE(paired.ok()) << paired.status();

  // Encoded at the site, decoded at the coordinator: the clipped delta comes back.
  auto site = UpdatePipeline::Make(*paired, Side::kSite);
  auto coordinator = UpdatePipeline::Make(*paired, Side::kCoordinator);
  ASSERT_TRUE(site.ok() && coordinator.ok());
  Update update{{{"w", torch::full({4}, 3.0)}}, 10};  // norm 6, clip_norm 1
  ASSERT_TRUE(site->Apply({1, 0, "a"}, update).ok());
  EXPECT_NEAR(update.delta[0].second[0].item<double>(), 1000.5, 1e-4);
  ASSERT_TRUE(coordinator->Apply({1, 0, ""}, update).ok());
  EXPECT_NEAR(Norm(update.delta), 1.0, 1e-4);

  // A step's state goes out under its own prefix and comes back into a fresh pipeline.
  NamedTensors state = site->State();
  ASSERT_EQ(state.size(), 1u);
  EXPECT_EQ(state[0].first, "pipeline/toy_encode/runs");
  auto restored = UpdatePipeline::Make(*paired, Side::kSite);
  ASSERT_TRUE(restored->LoadState({{"pipeline/toy_encode/runs", torch::tensor({int64_t{7}})}}).ok());
  EXPECT_EQ(restored->State()[0].second.item<int64_t>(), 7);
}

TEST(UpdatePipeline, ClipBoundsTheWholeUpdatesNormAndKeepsItsDirection) {
  Job job = *Parse("pipeline: {site: [clip], clip_norm: 0.5}\n");
  auto pipeline = *UpdatePipeline::Make(job, Side::kSite);
  torch::manual_seed(3);
  const at::Tensor a = torch::randn({30, 20}), b = torch::randn({7});
  Update big{{{"a", a.clone()}, {"b", b.clone()}}, 1};
  const double before = Norm(big.delta);
  ASSERT_GT(before, 0.5);
  ASSERT_TRUE(pipeline.Apply({}, big).ok());
  EXPECT_NEAR(Norm(big.delta), 0.5, 1e-6);
  // Both tensors scaled by the same factor.
  EXPECT_TRUE(torch::allclose(big.delta[0].second, a * (0.5 / before), 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(big.delta[1].second, b * (0.5 / before), 1e-6, 1e-7));

  // Within the bound: untouched, bit for bit.
  const at::Tensor small = a * (0.4 / Norm({{"a", a}}));
  Update inside{{{"a", small.clone()}}, 1};
  ASSERT_TRUE(pipeline.Apply({}, inside).ok());
  EXPECT_TRUE(torch::equal(inside.delta[0].second, small));

  // A non-finite update is refused and left as it was.
  at::Tensor nan = a.clone();
  nan[0][0] = std::nan("");
  Update bad{{{"a", nan}}, 1};
  const absl::Status s = pipeline.Apply({}, bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("pipeline step 'clip': the update's L2 norm is not finite"));
  EXPECT_TRUE(bad.delta[0].second.is_same(nan));  // not replaced by a scaled copy
}

TEST(UpdatePipeline, AtASiteTheWeightsBecomeGlobalPlusTheClippedDelta) {
  Job job = *Parse("pipeline: {site: [clip], clip_norm: 2}\n");
  auto pipeline = *UpdatePipeline::Make(job, Side::kSite);
  const NamedTensors global = {{"model/w", torch::ones({10})}, {"model/steps", torch::tensor({int64_t{4}})}};
  const NamedTensors trained = {{"model/w", torch::ones({10}) + 3}, {"model/steps", torch::tensor({int64_t{9}})}};
  auto out = pipeline.ApplyToWeights({}, global, trained, 100);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 2u);
  EXPECT_NEAR(Norm({{"d", (*out)[0].second - global[0].second}}), 2.0, 1e-5);
  EXPECT_EQ((*out)[1].second.item<int64_t>(), 9);  // integer tensors pass through
  // A tensor the global model lacks is refused.
  auto stray = pipeline.ApplyToWeights({}, global, {{"model/v", torch::ones({10})}}, 100);
  EXPECT_FALSE(stray.ok());
}

TEST(UpdatePipeline, TheCoordinatorRefusesASiteWhosePipelineIsNotTheJobs) {
  coordinator::RoundManagerOptions o;
  coordinator::RoundManager manager(o, NamedTensors{{"model/w", torch::zeros({2})}},
                                    *aggregation::MakeStrategy(*Parse("strategy: {name: fedavg}\n")));
  coordinator::ServiceOptions so;
  so.site_pipeline = "clip";
  coordinator::CoordinatorService service(&manager, so);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ASSERT_NE(port, 0);
  auto stub = v1::Coordinator::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  const auto join = [&](const std::string& pipeline) {
    grpc::ClientContext ctx;
    v1::JoinRequest req;
    req.set_site_name("a");
    req.set_examples(10);
    req.set_protocol_version(allround::comm::kProtocolVersion);
    req.set_site_pipeline(pipeline);
    v1::JoinReply reply;
    return stub->Join(&ctx, req, &reply);
  };
  const grpc::Status none = join("");
  EXPECT_EQ(none.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(none.error_message(), HasSubstr("applies the update pipeline [], the job's is [clip]"));
  EXPECT_EQ(manager.refusals()["bad_pipeline"], 1);
  EXPECT_TRUE(join("clip").ok());
  server->Shutdown();
}

}  // namespace
}  // namespace allround::privacy
