#include <ATen/ATen.h>

#include "comm/communicator.h"

namespace allround::comm {
namespace {

class DoneWork final : public Work {
 public:
  absl::Status Wait(std::chrono::milliseconds) override { return absl::OkStatus(); }
};

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }

  std::unique_ptr<Work> AllReduce(at::Tensor&, ReduceOp) override {
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> Broadcast(at::Tensor&, int) override { return std::make_unique<DoneWork>(); }
  std::unique_ptr<Work> AllGather(const at::Tensor& input, at::Tensor& output) override {
    output.view(input.sizes()).copy_(input);
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> Barrier() override { return std::make_unique<DoneWork>(); }
};

}  // namespace

std::unique_ptr<Communicator> MakeLocalCommunicator() { return std::make_unique<LocalCommunicator>(); }

}  // namespace allround::comm
