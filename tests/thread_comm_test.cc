// The thread backend (comm/thread_communicator.h): ranks as threads of this process. Its
// collectives against values computed by hand, its errors, and the Reducer and the checked
// communicator over it: the cases tests/ddp_equivalence_test.cc runs under mpirun, here with 2 to
// 4 ranks in one process. Models and data are made on the main thread before the ranks start
// (LibTorch's generator is one per process, not one per rank as under mpirun).

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <thread>

#include "comm/checked_communicator.h"
#include "comm/reducer.h"
#include "comm/thread_communicator.h"
#include "reducer_cases.h"

namespace allround::comm {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr std::chrono::seconds kWait(60);

// Runs body(comm) on every rank of a fresh group of `n`, each on its own thread.
void OnRanks(int n, const std::function<void(Communicator&)>& body) {
  auto group = MakeThreadGroup(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { body(*group[r]); });
  for (auto& t : threads) t.join();
}

class ThreadRanks : public ::testing::TestWithParam<int> {};
INSTANTIATE_TEST_SUITE_P(Sizes, ThreadRanks, ::testing::Values(1, 2, 3, 4));

TEST_P(ThreadRanks, CollectivesGiveTheValuesComputedByHand) {
  const int n = GetParam();
  OnRanks(n, [n](Communicator& c) {
    const int r = c.rank();
    EXPECT_EQ(c.size(), n);
    EXPECT_EQ(c.backend(), "threads");
    at::Tensor sum = torch::full({3}, static_cast<double>(r + 1), torch::kDouble);
    ASSERT_TRUE(c.AllReduce(sum, ReduceOp::kSum)->Wait(kWait).ok());
    EXPECT_DOUBLE_EQ(sum[2].item<double>(), n * (n + 1) / 2.0);
    at::Tensor avg = torch::full({2}, static_cast<double>(r + 1), torch::kDouble);
    ASSERT_TRUE(c.AllReduce(avg, ReduceOp::kAverage)->Wait(kWait).ok());
    EXPECT_DOUBLE_EQ(avg[0].item<double>(), (n + 1) / 2.0);
    at::Tensor mx = torch::tensor({int64_t{r}, int64_t{-r}});
    at::Tensor mn = mx.clone();
    ASSERT_TRUE(c.AllReduce(mx, ReduceOp::kMax)->Wait(kWait).ok());
    ASSERT_TRUE(c.AllReduce(mn, ReduceOp::kMin)->Wait(kWait).ok());
    EXPECT_EQ(mx[0].item<int64_t>(), n - 1);
    EXPECT_EQ(mx[1].item<int64_t>(), 0);
    EXPECT_EQ(mn[1].item<int64_t>(), -(n - 1));
    at::Tensor bc = torch::full({4}, r == n - 1 ? 42.0f : -1.0f);
    ASSERT_TRUE(c.Broadcast(bc, n - 1)->Wait(kWait).ok());
    EXPECT_EQ(bc[3].item<float>(), 42.0f);
    at::Tensor out = torch::empty({2 * n}, torch::kInt);
    ASSERT_TRUE(c.AllGather(torch::tensor({r, 10 * r}, torch::kInt), out)->Wait(kWait).ok());
    for (int k = 0; k < n; ++k) EXPECT_EQ(out[2 * k + 1].item<int>(), 10 * k);
    ASSERT_TRUE(c.Barrier()->Wait(kWait).ok());
  });
}

// Several collectives in flight at once, waited for in reverse: each meets its own position.
TEST(ThreadBackend, CollectivesInFlightMatchByPosition) {
  OnRanks(3, [](Communicator& c) {
    std::vector<at::Tensor> ts;
    std::vector<std::unique_ptr<Work>> works;
    for (int k = 0; k < 5; ++k) ts.push_back(torch::full({2}, static_cast<float>(k * 10 + c.rank())));
    for (int k = 0; k < 5; ++k) works.push_back(c.AllReduce(ts[k], ReduceOp::kSum));
    for (int k = 4; k >= 0; --k) ASSERT_TRUE(works[k]->Wait(kWait).ok());
    for (int k = 0; k < 5; ++k) EXPECT_EQ(ts[k][0].item<float>(), 30.0f * k + 3.0f) << k;
  });
}

TEST(ThreadBackend, MismatchedCallsFailOnEveryRankNamingEach) {
  OnRanks(2, [](Communicator& c) {
    at::Tensor t = torch::ones({c.rank() == 1 ? 20 : 10});
    absl::Status s = c.AllReduce(t, ReduceOp::kSum)->Wait(kWait);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("rank 0: allreduce of 10 elements"),
                                                HasSubstr("rank 1: allreduce of 20 elements")));
    EXPECT_TRUE(t.equal(torch::ones_like(t)));  // nothing was reduced
    at::Tensor ok = torch::ones({5});
    ASSERT_TRUE(c.AllReduce(ok, ReduceOp::kSum)->Wait(kWait).ok());  // and the group still works
    EXPECT_EQ(ok[0].item<float>(), 2.0f);
  });
}

TEST(ThreadBackend, ARankThatNeverComesIsNamedAtTheTimeout) {
  auto group = MakeThreadGroup(3);
  at::Tensor t = torch::ones({4});
  absl::Status s = group[0]->AllReduce(t, ReduceOp::kSum)->Wait(std::chrono::milliseconds(50));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("rank 0: allreduce"), HasSubstr("rank(s) 1, 2 did not take part")));
}

// --- The Reducer over threads: N ranks end with the parameters of one process on all the data.

using testing::MaxAbsDiff;
using testing::Sgd;
torch::nn::Sequential Net() { return testing::SmallNet(); }

class ReducerOverThreads : public ::testing::TestWithParam<std::tuple<int, int64_t>> {};  // ranks, bucket cap
INSTANTIATE_TEST_SUITE_P(RanksAndBuckets, ReducerOverThreads,
                         ::testing::Combine(::testing::Values(2, 4), ::testing::Values(int64_t{256}, int64_t{25} << 20)));

TEST_P(ReducerOverThreads, SgdMomentumMatchesOneProcess) {
  const auto [n, cap] = GetParam();
  const int64_t b = 4, steps = 8;
  torch::manual_seed(1234);
  const at::Tensor x = torch::randn({steps, n * b, 1, 8, 8}, torch::kDouble), y = torch::randint(0, 10, {steps, n * b});
  std::vector<torch::nn::Sequential> nets;
  for (int r = 0; r < n; ++r) {
    nets.push_back(Net());
    if (r != 0) {  // the broadcast must overwrite whatever other ranks start with
      torch::NoGradGuard ng;
      for (auto& p : nets.back()->parameters()) p.add_(1.0);
    }
  }
  auto ref = Net();
  auto opt_r = Sgd(ref->parameters());
  for (int64_t s = 0; s < steps; ++s) {
    opt_r.zero_grad();
    torch::cross_entropy_loss(ref->forward(x[s]), y[s]).backward();
    opt_r.step();
  }
  OnRanks(n, [&, cap = cap](Communicator& c) {
    const int r = c.rank();
    auto& net = nets[r];
    ASSERT_TRUE(BroadcastFromRoot(c, net->parameters()).ok());
    Reducer reducer(net->parameters(), &c, {cap, cap});
    if (cap < 1024) {
      EXPECT_GT(reducer.num_buckets(), 2);
    }
    auto opt = Sgd(net->parameters());
    for (int64_t s = 0; s < steps; ++s) {
      opt.zero_grad();
      at::Tensor loss = torch::cross_entropy_loss(net->forward(x[s].narrow(0, r * b, b)), y[s].narrow(0, r * b, b));
      reducer.BeforeBackward();
      loss.backward();
      ASSERT_TRUE(reducer.AfterBackward().ok());
      opt.step();
    }
    EXPECT_LE(MaxAbsDiff(net->parameters(), ref->parameters()), 1e-9) << "rank " << r << " of " << n;
  });
  EXPECT_GT(MaxAbsDiff(ref->parameters(), Net()->parameters()), 1e-2);  // it did train
}

// The shared cases (tests/reducer_cases.h), with their ranks as threads.
template <typename Case>
void RunCase(int n) {
  Case c;
  c.Prepare(n);
  OnRanks(n, [&](Communicator& comm) { c.Rank(comm); });
}

TEST(ReducerOverThreadsCases, GradientAccumulationMatchesOneProcess) { RunCase<testing::GradientAccumulationCase>(3); }
TEST(ReducerOverThreadsCases, ParameterUnusedOnSomeRanksDoesNotHang) { RunCase<testing::UnusedParameterCase>(3); }
TEST(ReducerOverThreadsCases, SecondBackwardBeforeAfterBackwardIsAnError) { RunCase<testing::SecondBackwardCase>(2); }

// The checked communicator (the ALLROUND_COMM_DEBUG wrapper) over threads: its exchange of
// signatures names what each rank called before the thread backend sees the mismatch.
TEST(CheckedOverThreads, NamesMismatchesThenPassesMatchingCalls) {
  const int n = 3;
  OnRanks(n, [n](Communicator& inner) {
    const int r = inner.rank();
    auto checked = MakeCheckedCommunicator(&inner);
    checked->set_timeout(std::chrono::seconds(30));
    EXPECT_EQ(inner.timeout(), std::chrono::seconds(30));  // passed on to the wrapped one
    at::Tensor t = torch::ones({10});
    absl::Status s = (r == 1 ? checked->Broadcast(t, 0) : checked->AllReduce(t, ReduceOp::kSum))->Wait(kWait);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("rank 0: allreduce of 10 elements (Float)"),
                                                HasSubstr("rank 1: broadcast of 10 elements (Float)")));
    EXPECT_TRUE(t.equal(torch::ones({10})));
    at::Tensor u = r == 0 ? torch::ones({7}, torch::kDouble) : torch::ones({9});
    s = checked->AllReduce(u, ReduceOp::kSum)->Wait(kWait);
    EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("rank 0: allreduce of 7 elements (Double)"),
                                                HasSubstr("rank 2: allreduce of 9 elements (Float)")));
    at::Tensor ok = torch::full({5}, static_cast<float>(r + 1));
    ASSERT_TRUE(checked->AllReduce(ok, ReduceOp::kSum)->Wait(kWait).ok());
    EXPECT_EQ(ok[4].item<float>(), n * (n + 1) / 2.0f);
    at::Tensor out = torch::empty({n}, torch::kLong);
    ASSERT_TRUE(checked->AllGather(torch::tensor({int64_t{r}}), out)->Wait(kWait).ok());
    EXPECT_TRUE(out.equal(torch::arange(n, torch::kLong)));
  });
}

}  // namespace
}  // namespace allround::comm
