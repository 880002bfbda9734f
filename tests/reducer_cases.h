#ifndef ALLROUND_TESTS_REDUCER_CASES_H_
#define ALLROUND_TESTS_REDUCER_CASES_H_

// The Reducer cases every communicator backend must pass, written once: tests/ddp_equivalence_test.cc
// runs them under mpirun (one rank per process), tests/thread_comm_test.cc with ranks as threads of
// one process. Each case's Prepare(n) runs once per process before any rank starts: it makes the
// models and data of all n ranks (LibTorch's generator is one per process, so under threads they
// cannot be drawn by the ranks themselves); Rank(comm) is one rank's part, with its checks.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <vector>

#include "comm/communicator.h"
#include "comm/reducer.h"

namespace allround::comm::testing {

inline double MaxAbsDiff(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, (a[i] - b[i]).abs().max().item<double>());
  return m;
}

// A small convolutional network in double precision (float rounding between one batch of 8 and
// two of 4 would make the runs drift apart), the same weights at every call.
inline torch::nn::Sequential SmallNet() {
  torch::manual_seed(7);
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3)), torch::nn::Functional(torch::relu),
                            torch::nn::Flatten(), torch::nn::Linear(4 * 6 * 6, 10));
  net->to(torch::kDouble);
  return net;
}

inline torch::optim::SGD Sgd(const std::vector<at::Tensor>& params) {
  return torch::optim::SGD(params, torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
}

// k micro-batches per step with set_sync(false) for all but the last: N ranks end with the
// parameters of one process that took each step's whole batch at once.
struct GradientAccumulationCase {
  static constexpr int64_t b = 3, k = 3, steps = 6;
  int n = 0;
  at::Tensor x, y;
  std::vector<torch::nn::Sequential> nets;
  torch::nn::Sequential ref{nullptr};

  void Prepare(int ranks) {
    n = ranks;
    torch::manual_seed(99);
    x = torch::randn({steps, k * n * b, 1, 8, 8}, torch::kDouble);
    y = torch::randint(0, 10, {steps, k * n * b});
    for (int r = 0; r < n; ++r) nets.push_back(SmallNet());
    ref = SmallNet();
    auto opt = Sgd(ref->parameters());
    for (int64_t s = 0; s < steps; ++s) {
      opt.zero_grad();
      torch::cross_entropy_loss(ref->forward(x[s]), y[s]).backward();
      opt.step();
    }
  }

  void Rank(Communicator& c) {
    const int r = c.rank();
    auto& net = nets[r];
    Reducer reducer(net->parameters(), &c, {2048, 1024});
    auto opt = Sgd(net->parameters());
    for (int64_t s = 0; s < steps; ++s) {
      opt.zero_grad();
      for (int64_t m = 0; m < k; ++m) {
        const int64_t start = (m * n + r) * b;
        at::Tensor loss = torch::cross_entropy_loss(net->forward(x[s].narrow(0, start, b)), y[s].narrow(0, start, b)) / k;
        reducer.set_sync(m == k - 1);  // no communication for the first k-1 micro-batches
        reducer.BeforeBackward();
        loss.backward();
        ASSERT_TRUE(reducer.AfterBackward().ok());
      }
      opt.step();
    }
    EXPECT_LE(MaxAbsDiff(net->parameters(), ref->parameters()), 1e-9) << "rank " << r;
  }
};

// A parameter that only rank 0 uses: no rank hangs, and its gradient is rank 0's over N.
struct UnusedParameterCase {
  int n = 0;
  at::Tensor x;
  std::vector<torch::nn::Linear> as, extras;

  void Prepare(int ranks) {
    n = ranks;
    torch::manual_seed(4);
    x = torch::randn({n, 8});
    for (int r = 0; r < n; ++r) {
      torch::manual_seed(3);
      as.emplace_back(8, 4);
      extras.emplace_back(8, 4);
    }
  }

  void Rank(Communicator& c) {
    const int r = c.rank();
    std::vector<at::Tensor> params = as[r]->parameters();
    for (const auto& p : extras[r]->parameters()) params.push_back(p);
    Reducer reducer(params, &c, {64, 64});
    at::Tensor loss = as[r]->forward(x[r]).sum();
    if (r == 0) loss = loss + extras[r]->forward(x[0]).pow(2).sum();
    reducer.BeforeBackward();
    loss.backward();
    ASSERT_TRUE(reducer.AfterBackward().ok());
    // Rank 0's gradient of sum((W x0 + c)^2) w.r.t. W is 2 (W x0 + c) x0^T.
    at::Tensor want;
    {
      torch::NoGradGuard ng;
      want = 2 * (extras[r]->forward(x[0])).unsqueeze(1).matmul(x[0].unsqueeze(0)) / n;
    }
    EXPECT_TRUE(extras[r]->weight.grad().allclose(want, 1e-5, 1e-6)) << "rank " << r;
  }
};

// Two backwards between BeforeBackward and AfterBackward: the second one's gradients would miss
// buckets already averaged, so AfterBackward refuses, naming it, and leaves .grad alone; the ranks
// stay in step and the next proper step is averaged as usual.
struct SecondBackwardCase {
  int n = 0;
  std::vector<torch::nn::Linear> nets;

  void Prepare(int ranks) {
    n = ranks;
    for (int r = 0; r < n; ++r) {
      torch::manual_seed(5);
      nets.emplace_back(6, 3);
    }
  }

  void Rank(Communicator& c) {
    const int r = c.rank();
    auto& a = nets[r];
    Reducer reducer(a->parameters(), &c, {64, 64});
    const at::Tensor x = torch::full({2, 6}, static_cast<float>(r + 1));
    reducer.BeforeBackward();
    a->forward(x).sum().backward();
    a->forward(x).pow(2).sum().backward();
    const at::Tensor local = a->weight.grad().clone();
    absl::Status s = reducer.AfterBackward();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("second backward"));
    EXPECT_TRUE(a->weight.grad().equal(local)) << "rank " << r;
    for (auto& p : a->parameters()) p.mutable_grad().zero_();
    reducer.BeforeBackward();
    a->forward(x).sum().backward();
    ASSERT_TRUE(reducer.AfterBackward().ok());
    // d/dW of sum(W x + c) over 2 rows of (r + 1): 2 (r + 1) per entry; the mean over ranks is n + 1.
    EXPECT_TRUE(a->weight.grad().allclose(torch::full({3, 6}, static_cast<float>(n + 1)))) << "rank " << r;
  }
};

}  // namespace allround::comm::testing

#endif  // ALLROUND_TESTS_REDUCER_CASES_H_
