// Launched by ctest through mpirun (2 and 4 ranks): N ranks training with the Reducer end with
// the same parameters as one process training on the concatenated batches.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <map>

#include "algorithms/models/network.h"
#include "algorithms/modes/dino.h"
#include "algorithms/modes/gan.h"
#include "comm/checked_communicator.h"
#include "comm/reducer.h"
#include "comm/registry.h"
#include "reducer_cases.h"
#include "runtime/trainer.h"

namespace allround {
namespace {

comm::Communicator* g_comm = nullptr;

using comm::testing::MaxAbsDiff;
using comm::testing::Sgd;

std::shared_ptr<models::Network> SimpleCnn() {
  torch::manual_seed(7);
  models::ModelSpec spec;
  spec.name = "simple_cnn";
  auto model = *models::MakeModel(spec, {});
  // Double precision: in float, rounding differences between one batch of 8 and two of 4 (~1e-8)
  // can flip a ReLU or a max-pool choice after a few steps and the runs drift apart by ~1e-4.
  model->to(torch::kDouble);
  return model;
}

class DdpEquivalence : public ::testing::TestWithParam<int64_t> {};  // bucket cap in bytes

TEST_P(DdpEquivalence, SgdMomentumMatchesOneProcess) {
  const int n = g_comm->size(), r = g_comm->rank();
  const int64_t b = 4, steps = 10;
  auto dist = SimpleCnn(), ref = SimpleCnn();
  if (r != 0) {  // the broadcast must overwrite whatever other ranks start with
    torch::NoGradGuard ng;
    for (auto& p : dist->parameters()) p.add_(1.0);
  }
  ASSERT_TRUE(comm::BroadcastFromRoot(*g_comm, dist->parameters()).ok());
  comm::Reducer reducer(dist->parameters(), g_comm, {GetParam(), GetParam()});
  if (GetParam() < 1024) {
    EXPECT_GT(reducer.num_buckets(), 5);
  }
  auto opt_d = Sgd(dist->parameters()), opt_r = Sgd(ref->parameters());
  torch::manual_seed(1234);
  const at::Tensor x = torch::randn({steps, n * b, 1, 28, 28}, torch::kDouble), y = torch::randint(0, 10, {steps, n * b});
  for (int64_t s = 0; s < steps; ++s) {
    opt_d.zero_grad();
    at::Tensor loss = torch::cross_entropy_loss(dist->forward(x[s].narrow(0, r * b, b)), y[s].narrow(0, r * b, b));
    reducer.BeforeBackward();
    loss.backward();
    ASSERT_TRUE(reducer.AfterBackward().ok());
    opt_d.step();
    opt_r.zero_grad();
    torch::cross_entropy_loss(ref->forward(x[s]), y[s]).backward();
    opt_r.step();
  }
  const double diff = MaxAbsDiff(dist->parameters(), ref->parameters());
  EXPECT_LE(diff, 1e-9) << "rank " << r << " of " << n;
  EXPECT_GT(MaxAbsDiff(ref->parameters(), SimpleCnn()->parameters()), 1e-2);  // it did train
}

INSTANTIATE_TEST_SUITE_P(BucketCaps, DdpEquivalence, ::testing::Values(int64_t{256}, int64_t{25} << 20),
                         [](const auto& info) { return info.param < 1024 ? "tiny" : "default"; });

// The cases every backend passes (tests/reducer_cases.h), here one rank per process.
template <typename Case>
void RunCase() {
  Case c;
  c.Prepare(g_comm->size());
  c.Rank(*g_comm);
}

TEST(DdpEquivalence, GradientAccumulationMatchesOneProcess) { RunCase<comm::testing::GradientAccumulationCase>(); }
TEST(DdpEquivalence, ParameterUnusedOnSomeRanksDoesNotHang) { RunCase<comm::testing::UnusedParameterCase>(); }
TEST(DdpEquivalence, SecondBackwardBeforeAfterBackwardIsAnError) { RunCase<comm::testing::SecondBackwardCase>(); }

// A GAN-like step: a discriminator's backward and step, then a generator's backward (which also
// reaches the discriminator) and step, each with its own Reducer over its own parameters.
struct Gan {
  torch::nn::Sequential d{torch::nn::Linear(784, 32), torch::nn::Functional(torch::relu), torch::nn::Linear(32, 1)};
  torch::nn::Linear g{16, 784};
  Gan() {
    d->to(torch::kDouble);
    g->to(torch::kDouble);
  }
};

TEST(DdpEquivalence, TwoBackwardStepMatchesOneProcess) {
  const int n = g_comm->size(), r = g_comm->rank();
  const int64_t b = 4, steps = 10;
  torch::manual_seed(5);
  Gan dist;
  torch::manual_seed(5);
  Gan ref;
  comm::Reducer rd(dist.d->parameters(), g_comm, {4096, 4096}), rg(dist.g->parameters(), g_comm);
  torch::optim::SGD od(dist.d->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  torch::optim::Adam og(dist.g->parameters(), torch::optim::AdamOptions(1e-3));
  torch::optim::SGD od_ref(ref.d->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  torch::optim::Adam og_ref(ref.g->parameters(), torch::optim::AdamOptions(1e-3));
  torch::manual_seed(11);
  const at::Tensor real = torch::randn({steps, n * b, 784}, torch::kDouble),
                   z = torch::randn({steps, n * b, 16}, torch::kDouble);
  const auto bce = [](const at::Tensor& logits, double target) {
    return torch::binary_cross_entropy_with_logits(logits, torch::full_like(logits, target));
  };
  const auto step = [&](Gan& gan, torch::optim::Optimizer& o_d, torch::optim::Optimizer& o_g, const at::Tensor& xr,
                        const at::Tensor& zz, comm::GradientSync* sd, comm::GradientSync* sg) {
    o_d.zero_grad();
    at::Tensor loss_d = bce(gan.d->forward(xr), 1.0) + bce(gan.d->forward(gan.g->forward(zz).detach()), 0.0);
    if (sd) sd->BeforeBackward();
    loss_d.backward();
    if (sd) {
      ASSERT_TRUE(sd->AfterBackward().ok());
    }
    o_d.step();
    o_g.zero_grad();
    at::Tensor loss_g = bce(gan.d->forward(gan.g->forward(zz)), 1.0);
    if (sg) sg->BeforeBackward();
    loss_g.backward();
    if (sg) {
      ASSERT_TRUE(sg->AfterBackward().ok());
    }
    o_g.step();
  };
  for (int64_t s = 0; s < steps; ++s) {
    step(dist, od, og, real[s].narrow(0, r * b, b), z[s].narrow(0, r * b, b), &rd, &rg);
    step(ref, od_ref, og_ref, real[s], z[s], nullptr, nullptr);
  }
  EXPECT_LE(MaxAbsDiff(dist.d->parameters(), ref.d->parameters()), 1e-9) << "rank " << r;
  EXPECT_LE(MaxAbsDiff(dist.g->parameters(), ref.g->parameters()), 1e-9) << "rank " << r;
}

// With ALLROUND_COMM_DEBUG=1 (a separate ctest entry), ranks that call the same collective with
// different sizes get an error naming each rank's call instead of a hang or a wrong sum.
TEST(CommDebug, MismatchedCollectivesAreNamed) {
  const char* debug = std::getenv("ALLROUND_COMM_DEBUG");
  if (debug == nullptr || std::string(debug) != "1") GTEST_SKIP() << "needs ALLROUND_COMM_DEBUG=1";
  at::Tensor t = torch::ones({g_comm->rank() == 1 ? 20 : 10});
  absl::Status s = g_comm->AllReduce(t, comm::ReduceOp::kSum)->Wait(std::chrono::seconds(60));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()),
              ::testing::AllOf(::testing::HasSubstr("rank 0: allreduce of 10 elements"),
                               ::testing::HasSubstr("rank 1: allreduce of 20 elements")));
  at::Tensor ok = torch::ones({5});
  ASSERT_TRUE(g_comm->AllReduce(ok, comm::ReduceOp::kSum)->Wait(std::chrono::seconds(60)).ok());
  EXPECT_EQ(ok[0].item<float>(), g_comm->size());  // the communicator still works afterwards
}

// The same check as a wrapper, for backends without their own (the registry puts NCCL in it):
// here over the MPI backend, and in the entries without ALLROUND_COMM_DEBUG the wrapper alone can
// catch the mismatch.
TEST(CommDebug, CheckedCommunicatorNamesMismatchesOverAnyBackend) {
  const int n = g_comm->size(), r = g_comm->rank();
  const auto before = g_comm->timeout();
  auto checked = comm::MakeCheckedCommunicator(g_comm);
  checked->set_timeout(std::chrono::seconds(60));
  EXPECT_EQ(g_comm->timeout(), std::chrono::seconds(60));  // passed on to the wrapped one
  // Different collectives: rank 1 broadcasts while the others allreduce.
  at::Tensor t = torch::ones({10});
  absl::Status s = (r == 1 ? checked->Broadcast(t, 0) : checked->AllReduce(t, comm::ReduceOp::kSum))->Wait(
      std::chrono::seconds(60));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()),
              ::testing::AllOf(::testing::HasSubstr("rank 0: allreduce of 10 elements (Float)"),
                               ::testing::HasSubstr("rank 1: broadcast of 10 elements (Float)")));
  EXPECT_TRUE(t.equal(torch::ones({10})));  // nothing was reduced
  // The same collective with different sizes and dtypes.
  at::Tensor u = r == 0 ? torch::ones({7}, torch::kDouble) : torch::ones({9});
  s = checked->AllReduce(u, comm::ReduceOp::kSum)->Wait(std::chrono::seconds(60));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()),
              ::testing::AllOf(::testing::HasSubstr("rank 0: allreduce of 7 elements (Double)"),
                               ::testing::HasSubstr("rank 1: allreduce of 9 elements (Float)")));
  // Matching calls still go through, with the right results.
  at::Tensor ok = torch::full({5}, static_cast<float>(r + 1));
  ASSERT_TRUE(checked->AllReduce(ok, comm::ReduceOp::kSum)->Wait(std::chrono::seconds(60)).ok());
  EXPECT_EQ(ok[4].item<float>(), n * (n + 1) / 2.0f);
  at::Tensor out = torch::empty({n}, torch::kLong);
  ASSERT_TRUE(checked->AllGather(torch::tensor({int64_t{r}}), out)->Wait(std::chrono::seconds(60)).ok());
  EXPECT_TRUE(out.equal(torch::arange(n, torch::kLong)));
  ASSERT_TRUE(checked->Barrier()->Wait(std::chrono::seconds(60)).ok());
  g_comm->set_timeout(before);
}

TEST(Collectives, AverageBroadcastAllGather) {
  const int n = g_comm->size(), r = g_comm->rank();
  at::Tensor v = torch::full({3}, static_cast<double>(r + 1), torch::kDouble);
  ASSERT_TRUE(g_comm->AllReduce(v, comm::ReduceOp::kAverage)->Wait(std::chrono::seconds(60)).ok());
  EXPECT_DOUBLE_EQ(v[2].item<double>(), (n + 1) / 2.0);
  at::Tensor m = torch::full({2}, static_cast<int64_t>(r), torch::kLong);
  ASSERT_TRUE(g_comm->AllReduce(m, comm::ReduceOp::kMax)->Wait(std::chrono::seconds(60)).ok());
  EXPECT_EQ(m[0].item<int64_t>(), n - 1);
  at::Tensor bc = torch::full({4}, static_cast<float>(r == 1 % n ? 42 : -1));
  ASSERT_TRUE(g_comm->Broadcast(bc, 1 % n)->Wait(std::chrono::seconds(60)).ok());
  EXPECT_EQ(bc[3].item<float>(), 42.0f);
  at::Tensor out = torch::empty({2 * n}, torch::kInt);
  ASSERT_TRUE(g_comm->AllGather(torch::tensor({r, 10 * r}, torch::kInt), out)->Wait(std::chrono::seconds(60)).ok());
  for (int k = 0; k < n; ++k) EXPECT_EQ(out[2 * k + 1].item<int>(), 10 * k);
  ASSERT_TRUE(g_comm->Barrier()->Wait(std::chrono::seconds(60)).ok());
}

// DINO under N ranks: each rank steps on its own images and views, the Reducer averages the
// student's gradients, and the teacher (an EMA of the student) and the center (an EMA of the
// group's mean teacher output) stay bit-identical on every rank.
TEST(DinoRanks, TeacherAndCenterStayIdenticalAcrossRanks) {
  const int n = g_comm->size(), r = g_comm->rank();
  Job job;
  job.mode = "dino";
  job.model.name = "simple_cnn";
  EXPECT_TRUE(SetJobKey(job, "dino.out_dim", "64").ok());
  EXPECT_TRUE(SetJobKey(job, "dino.local_crops", "2").ok());
  job.optimizer.name = "adamw";
  auto made = modes::MakeDinoMode(job, modes::InputInfo{}, at::Device(at::kCPU), at::Tensor(), at::Tensor());
  ASSERT_TRUE(made.ok()) << made.status();
  modes::LearningMode& mode = **made;
  ASSERT_TRUE(comm::BroadcastFromRoot(*g_comm, mode.ModelState()).ok());
  const auto snapshot = [&] {
    std::map<std::string, at::Tensor> out;
    for (const auto& [name, t] : mode.State()) out[name] = t.clone();
    return out;
  };
  const auto initial = snapshot();
  comm::Reducer reducer(mode.TrainableParameters(), g_comm, {4096, 1024});
  torch::manual_seed(100 + r);  // each rank its own images
  double loss = 0;
  for (int s = 0; s < 4; ++s) {
    modes::Batch batch;
    batch.inputs = torch::rand({8, 1, 28, 28});
    batch.seed = 1000 * (r + 1) + s;  // and its own views
    batch.progress = s / 4.0;
    ASSERT_TRUE(runtime::SyncBuffers(*g_comm, mode).ok());  // as the trainer does before each step
    auto step = mode.TrainStep(batch, 1e-3, &reducer);
    ASSERT_TRUE(step.ok()) << step.status();
    loss = step->loss;
  }
  // The ranks' losses differ (their batches do) ...
  at::Tensor losses = torch::empty({n}, torch::kDouble);
  ASSERT_TRUE(g_comm->AllGather(torch::tensor({loss}, torch::kDouble), losses)->Wait(std::chrono::seconds(60)).ok());
  if (n > 1) {
    EXPECT_NE(losses[0].item<double>(), losses[1].item<double>());
  }
  // ... and still every tensor of the model is the same bits everywhere (batch-norm statistics
  // once the trainer syncs them, before evaluating), and the teacher moved.
  ASSERT_TRUE(runtime::SyncBuffers(*g_comm, mode).ok());
  const auto after = snapshot();
  int compared = 0;
  for (const auto& [name, t] : after) {
    if (name.rfind("model/", 0) != 0 || !t.is_floating_point()) continue;
    at::Tensor all = torch::empty({n * t.numel()}, t.options());
    ASSERT_TRUE(g_comm->AllGather(t.contiguous().view(-1), all)->Wait(std::chrono::seconds(60)).ok());
    const at::Tensor per_rank = all.view({n, -1});
    for (int k = 1; k < n; ++k) EXPECT_TRUE(torch::equal(per_rank[k], per_rank[0])) << name << " differs on rank " << k;
    ++compared;
  }
  EXPECT_GT(compared, 20);
  EXPECT_FALSE(torch::equal(after.at("model/center"), initial.at("model/center")));
  EXPECT_FALSE(torch::equal(after.at("model/teacher/backbone.conv1.weight"), initial.at("model/teacher/backbone.conv1.weight")));
}

// The GAN's step (D then G: two backward passes, both reduced) under N ranks, each on its share of
// the images and noise, ends with the parameters of one process stepping on all of them. Without
// batch norm (gan.batch_norm false), which would normalize each rank's batch on its own, and from
// LibTorch's initial weights: without batch norm, DCGAN's N(0, 0.02) ones leave the generator's
// output layer a gradient too small to show in 4 steps.
TEST(GanRanks, TwoBackwardStepEqualsOneProcess) {
  const int n = g_comm->size(), r = g_comm->rank();
  Job job;
  job.mode = "gan";
  EXPECT_TRUE(SetJobKey(job, "gan.batch_norm", "false").ok());
  EXPECT_TRUE(SetJobKey(job, "gan.init", "torch").ok());
  EXPECT_TRUE(SetJobKey(job, "gan.width", "8").ok());
  EXPECT_TRUE(SetJobKey(job, "gan.noise_dim", "16").ok());
  job.optimizer.name = "sgd";
  job.optimizer.momentum = 0.9;
  auto dist = modes::MakeGanMode(job, modes::InputInfo{}, at::Device(at::kCPU), at::Tensor(), at::Tensor());
  auto ref = modes::MakeGanMode(job, modes::InputInfo{}, at::Device(at::kCPU), at::Tensor(), at::Tensor());
  ASSERT_TRUE(dist.ok() && ref.ok());
  std::map<std::string, at::Tensor> start;
  for (const auto& [name, t] : (*ref)->State()) start[name] = t.clone();
  comm::Reducer reducer((*dist)->TrainableParameters(), g_comm, {2048, 1024});
  const int64_t b = 4;
  torch::manual_seed(77);  // the same images and noise on every rank
  for (int s = 0; s < 4; ++s) {
    const at::Tensor x = torch::randn({n * b, 1, 28, 28}), z = torch::randn({n * b, 16});
    modes::Batch mine{x.narrow(0, r * b, b), torch::zeros({b}, torch::kLong)};
    mine.noise = z.narrow(0, r * b, b);
    ASSERT_TRUE((*dist)->TrainStep(mine, 0.02, &reducer).ok());
    modes::Batch all{x, torch::zeros({n * b}, torch::kLong)};
    all.noise = z;
    ASSERT_TRUE((*ref)->TrainStep(all, 0.02, nullptr).ok());
  }
  const double diff = MaxAbsDiff((*dist)->ModelState(), (*ref)->ModelState());
  EXPECT_LE(diff, 1e-5) << "rank " << r << " of " << n;
  std::map<std::string, at::Tensor> end;
  for (const auto& [name, t] : (*ref)->State()) end[name] = t;
  for (const char* name : {"model/generator.up2.weight", "model/discriminator.conv1.weight"}) {
    EXPECT_GT((end.at(name) - start.at(name)).abs().max().item<double>(), 1e-4) << name << " did not train";
  }
}

}  // namespace
}  // namespace allround

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  torch::set_num_threads(1);
  auto context = allround::comm::InitComm("mpi", "cpu", &argc, &argv);
  if (!context.ok()) {
    std::fprintf(stderr, "%s\n", std::string(context.status().message()).c_str());
    return 1;
  }
  allround::g_comm = &(*context)->comm();
  if (allround::g_comm->rank() != 0) {  // one rank reports; the exit code carries every rank's result
    delete ::testing::UnitTest::GetInstance()->listeners().Release(
        ::testing::UnitTest::GetInstance()->listeners().default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  int all = rc;
  at::Tensor t = torch::tensor({rc}, torch::kInt);
  if (allround::g_comm->AllReduce(t, allround::comm::ReduceOp::kMax)->Wait(std::chrono::seconds(60)).ok()) {
    all = t[0].item<int>();
  }
  if (all != 0 && rc == 0 && allround::g_comm->rank() == 0) std::fprintf(stderr, "another rank failed\n");
  return all;
}
