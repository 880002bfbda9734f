// The NCCL backend on a real GPU (a group of one: one GPU per rank). Skips, with the reason, where
// there is no CUDA device or LibTorch is CPU-only; deploy/device-check.sh runs it on a GPU machine.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "algorithms/models/network.h"
#include "comm/checked_communicator.h"
#include "comm/nccl/nccl_communicator.h"
#include "comm/reducer.h"

namespace allround::comm {
namespace {

class Nccl : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    if (!torch::cuda::is_available()) GTEST_SKIP() << "LibTorch is CPU-only";
    auto id = NcclUniqueId();
    ASSERT_TRUE(id.ok()) << id.status();
    auto c = MakeNcclCommunicator(0, 1, 0, *id, std::chrono::seconds(60));
    ASSERT_TRUE(c.ok()) << c.status();
    comm_ = *std::move(c);
  }
  std::unique_ptr<Communicator> comm_;
};

TEST_F(Nccl, CollectivesOnCudaTensors) {
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  at::Tensor t = torch::arange(1000, cuda.dtype(torch::kFloat));
  const at::Tensor want = t.clone();
  ASSERT_TRUE(comm_->AllReduce(t, ReduceOp::kSum)->Wait(std::chrono::seconds(30)).ok());
  EXPECT_TRUE(t.equal(want));
  ASSERT_TRUE(comm_->AllReduce(t, ReduceOp::kAverage)->Wait(std::chrono::seconds(30)).ok());
  EXPECT_TRUE(t.equal(want));
  at::Tensor out = torch::empty({1000}, cuda.dtype(torch::kFloat));
  ASSERT_TRUE(comm_->AllGather(t, out)->Wait(std::chrono::seconds(30)).ok());
  EXPECT_TRUE(out.equal(want));
  ASSERT_TRUE(comm_->Broadcast(t, 0)->Wait(std::chrono::seconds(30)).ok());
  ASSERT_TRUE(comm_->Barrier()->Wait(std::chrono::seconds(30)).ok());
  at::Tensor cpu = torch::ones({4});
  EXPECT_EQ(comm_->AllReduce(cpu, ReduceOp::kSum)->Wait(std::chrono::seconds(30)).code(),
            absl::StatusCode::kInvalidArgument);  // CPU tensors are refused, with a reason
}

// ALLROUND_COMM_DEBUG's wrapper over NCCL: its signature exchange runs on the GPU (an allgather
// of int64, read back to the host) and matching calls go through to the backend unchanged.
TEST_F(Nccl, CheckedWrapperPassesMatchingCallsThrough) {
  auto checked = MakeCheckedCommunicator(comm_.get());
  checked->set_timeout(std::chrono::seconds(30));
  EXPECT_EQ(checked->device(), comm_->device());
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  at::Tensor t = torch::arange(100, cuda.dtype(torch::kDouble));
  const at::Tensor want = t.clone();
  ASSERT_TRUE(checked->AllReduce(t, ReduceOp::kSum)->Wait(std::chrono::seconds(30)).ok());
  EXPECT_TRUE(t.equal(want));
  at::Tensor out = torch::empty({100}, cuda.dtype(torch::kDouble));
  ASSERT_TRUE(checked->AllGather(t, out)->Wait(std::chrono::seconds(30)).ok());
  EXPECT_TRUE(out.equal(want));
  ASSERT_TRUE(checked->Barrier()->Wait(std::chrono::seconds(30)).ok());
}

TEST_F(Nccl, ReducerOnGpuLeavesAGroupOfOnesGradientsUnchanged) {
  torch::manual_seed(1);
  models::ModelSpec spec;
  spec.name = "simple_cnn";
  auto model = *models::MakeModel(spec, {});
  model->to(torch::kCUDA);
  Reducer reducer(model->parameters(), comm_.get(), {256, 256});
  // The options' dtype must be named: torch::randint with options of a device alone makes floats.
  const at::Tensor x = torch::randn({8, 1, 28, 28}, torch::kCUDA),
                   y = torch::randint(0, 10, {8}, torch::TensorOptions(torch::kCUDA).dtype(torch::kLong));
  reducer.BeforeBackward();
  torch::cross_entropy_loss(model->forward(x), y).backward();
  std::vector<at::Tensor> local;
  for (const auto& p : model->parameters()) local.push_back(p.grad().clone());
  ASSERT_TRUE(reducer.AfterBackward().ok());
  auto params = model->parameters();
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(params[i].grad().allclose(local[i])) << i;
}

}  // namespace
}  // namespace allround::comm
