#include "comm/checked_communicator.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace allround::comm {
namespace {

constexpr int kSignatureLength = 3;

class CheckedCommunicator final : public Communicator {
 public:
  CheckedCommunicator(Communicator* inner, std::unique_ptr<Communicator> owned)
      : inner_(inner), owned_(std::move(owned)) {
    Communicator::set_timeout(inner_->timeout());
  }

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  at::Device device() const override { return inner_->device(); }
  void set_timeout(std::chrono::milliseconds t) override {
    Communicator::set_timeout(t);
    inner_->set_timeout(t);
  }

  std::unique_ptr<Work> AllReduce(at::Tensor& t, ReduceOp op) override {
    if (auto s = Check(CollectiveOp::kAllReduce, t); !s.ok()) return CompletedWork(std::move(s));
    return inner_->AllReduce(t, op);
  }
  std::unique_ptr<Work> Broadcast(at::Tensor& t, int root) override {
    if (auto s = Check(CollectiveOp::kBroadcast, t); !s.ok()) return CompletedWork(std::move(s));
    return inner_->Broadcast(t, root);
  }
  std::unique_ptr<Work> AllGather(const at::Tensor& in, at::Tensor& out) override {
    if (auto s = Check(CollectiveOp::kAllGather, in); !s.ok()) return CompletedWork(std::move(s));
    return inner_->AllGather(in, out);
  }
  std::unique_ptr<Work> Barrier() override {
    if (auto s = Check(CollectiveOp::kBarrier, at::Tensor()); !s.ok()) return CompletedWork(std::move(s));
    return inner_->Barrier();
  }

 private:
  // Exchanges this rank's signature with every other rank's, on the inner communicator's device.
  absl::Status Check(CollectiveOp op, const at::Tensor& t) {
    const std::vector<int64_t> mine = CollectiveSignature(op, t);
    const auto opts = at::TensorOptions().dtype(at::kLong).device(inner_->device());
    at::Tensor sig = at::tensor(mine, at::kLong).to(inner_->device());
    at::Tensor all = at::empty({kSignatureLength * size()}, opts);
    if (auto s = inner_->AllGather(sig, all)->Wait(timeout()); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("exchanging collective signatures (ALLROUND_COMM_DEBUG): ", s.message()));
    }
    const at::Tensor host = all.cpu();
    const int64_t* p = host.data_ptr<int64_t>();
    return CompareSignatures(std::vector<int64_t>(p, p + host.numel()), size());
  }

  Communicator* inner_;
  std::unique_ptr<Communicator> owned_;
};

}  // namespace

bool CommDebugEnabled() {
  const char* v = std::getenv("ALLROUND_COMM_DEBUG");
  return v != nullptr && std::string(v) == "1";
}

std::vector<int64_t> CollectiveSignature(CollectiveOp op, const at::Tensor& t) {
  return {static_cast<int64_t>(op), t.defined() ? static_cast<int64_t>(t.scalar_type()) : -1,
          t.defined() ? t.numel() : 0};
}

absl::Status CompareSignatures(const std::vector<int64_t>& all, int size) {
  bool same = true;
  for (int r = 1; r < size; ++r) {
    for (int i = 0; i < kSignatureLength; ++i) same = same && all[kSignatureLength * r + i] == all[i];
  }
  if (same) return absl::OkStatus();
  static const char* kNames[] = {"?", "allreduce", "broadcast", "allgather", "barrier"};
  std::vector<std::string> calls;
  for (int r = 0; r < size; ++r) {
    const int64_t o = all[kSignatureLength * r];
    const int64_t type = all[kSignatureLength * r + 1];
    std::string call = absl::StrCat("rank ", r, ": ", kNames[o >= 0 && o <= 4 ? o : 0], " of ",
                                    all[kSignatureLength * r + 2], " elements");
    if (type >= 0 && type < static_cast<int64_t>(at::ScalarType::NumOptions)) {
      absl::StrAppend(&call, " (", c10::toString(static_cast<at::ScalarType>(type)), ")");
    }
    calls.push_back(std::move(call));
  }
  return absl::FailedPreconditionError(absl::StrCat("ranks called mismatched collectives: ", absl::StrJoin(calls, "; ")));
}

std::unique_ptr<Communicator> MakeCheckedCommunicator(Communicator* inner) {
  return std::make_unique<CheckedCommunicator>(inner, nullptr);
}

std::unique_ptr<Communicator> MakeCheckedCommunicator(std::unique_ptr<Communicator> inner) {
  Communicator* raw = inner.get();
  return std::make_unique<CheckedCommunicator>(raw, std::move(inner));
}

}  // namespace allround::comm
