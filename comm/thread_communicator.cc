#include "comm/thread_communicator.h"

#include <ATen/ATen.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/checked_communicator.h"

namespace allround::comm {
namespace {

// One collective position: what each rank brought, and the result once all have.
struct Meeting {
  std::vector<std::vector<int64_t>> signatures;  // per rank (empty: not yet issued)
  std::vector<at::Tensor> inputs;                // per rank
  int arrived = 0;
  int left = 0;  // ranks done with it (waited, or gave up their Work)
  bool complete = false;
  absl::Status status;
  at::Tensor result;
};

class Group {
 public:
  explicit Group(int size) : size_(size) {}
  int size() const { return size_; }

  // Rank `rank` issues its `seq`-th collective; the last rank to arrive computes the result.
  void Arrive(int64_t seq, int rank, CollectiveOp op, const at::Tensor& input, ReduceOp reduce, int root) {
    std::lock_guard<std::mutex> lock(mu_);
    Meeting& m = Get(seq);
    m.signatures[rank] = CollectiveSignature(op, input);
    m.inputs[rank] = input;
    if (++m.arrived < size_) return;
    std::vector<int64_t> all;
    for (const auto& s : m.signatures) all.insert(all.end(), s.begin(), s.end());
    m.status = CompareSignatures(all, size_);
    if (m.status.ok()) m.result = Compute(m, op, reduce, root);
    m.complete = true;
    cv_.notify_all();
  }

  // Waits for the `seq`-th collective; on success `out` (if defined) receives the result.
  absl::Status Wait(int64_t seq, int rank, std::chrono::milliseconds timeout, const char* what,
                    const std::function<void(const at::Tensor&)>& out) {
    std::unique_lock<std::mutex> lock(mu_);
    Meeting& m = Get(seq);
    const bool done = cv_.wait_for(lock, timeout, [&] { return m.complete; });
    absl::Status status = m.status;
    if (!done) {
      std::vector<int> missing;
      for (int r = 0; r < size_; ++r) {
        if (m.signatures[r].empty()) missing.push_back(r);
      }
      status = absl::DeadlineExceededError(absl::StrCat("rank ", rank, ": ", what, " (collective ", seq + 1,
                                                        ") timed out after ", timeout.count(), " ms: rank(s) ",
                                                        absl::StrJoin(missing, ", "), " did not take part"));
    } else if (status.ok() && out) {
      out(m.result);
    }
    Leave(seq);
    return status;
  }

  void Leave(int64_t seq) {
    auto it = meetings_.find(seq);
    if (it != meetings_.end() && ++it->second.left == size_) meetings_.erase(it);
  }
  std::mutex& mu() { return mu_; }

 private:
  Meeting& Get(int64_t seq) {
    Meeting& m = meetings_[seq];
    if (m.signatures.empty()) {
      m.signatures.resize(size_);
      m.inputs.resize(size_);
    }
    return m;
  }

  at::Tensor Compute(const Meeting& m, CollectiveOp op, ReduceOp reduce, int root) const {
    at::NoGradGuard no_grad;
    switch (op) {
      case CollectiveOp::kAllReduce: {
        at::Tensor acc = m.inputs[0].clone();
        for (int r = 1; r < size_; ++r) {
          if (reduce == ReduceOp::kMax) {
            acc = at::maximum(acc, m.inputs[r]);
          } else if (reduce == ReduceOp::kMin) {
            acc = at::minimum(acc, m.inputs[r]);
          } else {
            acc.add_(m.inputs[r]);
          }
        }
        if (reduce == ReduceOp::kAverage) acc.div_(size_);
        return acc;
      }
      case CollectiveOp::kBroadcast: return m.inputs[root].clone();
      case CollectiveOp::kAllGather: {
        std::vector<at::Tensor> flat;
        for (const auto& t : m.inputs) flat.push_back(t.reshape({-1}));
        return at::cat(flat);
      }
      case CollectiveOp::kBarrier: return at::Tensor();
    }
    return at::Tensor();
  }

  const int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int64_t, Meeting> meetings_;
};

class ThreadWork final : public Work {
 public:
  ThreadWork(std::shared_ptr<Group> group, int64_t seq, int rank, const char* what,
             std::function<void(const at::Tensor&)> out)
      : group_(std::move(group)), seq_(seq), rank_(rank), what_(what), out_(std::move(out)) {}
  ~ThreadWork() override {
    if (waited_) return;
    std::lock_guard<std::mutex> lock(group_->mu());
    group_->Leave(seq_);
  }
  absl::Status Wait(std::chrono::milliseconds timeout) override {
    if (waited_) return status_;
    waited_ = true;
    status_ = group_->Wait(seq_, rank_, timeout, what_, out_);
    return status_;
  }

 private:
  std::shared_ptr<Group> group_;
  const int64_t seq_;
  const int rank_;
  const char* what_;
  std::function<void(const at::Tensor&)> out_;
  bool waited_ = false;
  absl::Status status_;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<Group> group, int rank) : group_(std::move(group)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }
  std::string backend() const override { return "threads"; }

  std::unique_ptr<Work> AllReduce(at::Tensor& tensor, ReduceOp op) override {
    return Issue(CollectiveOp::kAllReduce, tensor, op, 0, "allreduce", [tensor](const at::Tensor& r) mutable {
      at::NoGradGuard no_grad;
      tensor.copy_(r);
    });
  }
  std::unique_ptr<Work> Broadcast(at::Tensor& tensor, int root) override {
    if (root < 0 || root >= size()) {
      return CompletedWork(absl::InvalidArgumentError(absl::StrCat("broadcast from rank ", root, " of ", size())));
    }
    return Issue(CollectiveOp::kBroadcast, tensor, ReduceOp::kSum, root, "broadcast",
                 [tensor](const at::Tensor& r) mutable {
                   at::NoGradGuard no_grad;
                   tensor.copy_(r);
                 });
  }
  std::unique_ptr<Work> AllGather(const at::Tensor& input, at::Tensor& output) override {
    if (output.numel() != input.numel() * size()) {
      return CompletedWork(absl::InvalidArgumentError(absl::StrCat(
          "allgather: output holds ", output.numel(), " elements, ", size(), " ranks x ", input.numel(), " needed")));
    }
    return Issue(CollectiveOp::kAllGather, input, ReduceOp::kSum, 0, "allgather",
                 [output](const at::Tensor& r) mutable {
                   at::NoGradGuard no_grad;
                   output.view({-1}).copy_(r);
                 });
  }
  std::unique_ptr<Work> Barrier() override {
    return Issue(CollectiveOp::kBarrier, at::Tensor(), ReduceOp::kSum, 0, "barrier", nullptr);
  }

 private:
  std::unique_ptr<Work> Issue(CollectiveOp op, const at::Tensor& input, ReduceOp reduce, int root, const char* what,
                              std::function<void(const at::Tensor&)> out) {
    const int64_t seq = next_++;
    group_->Arrive(seq, rank_, op, input, reduce, root);
    return std::make_unique<ThreadWork>(group_, seq, rank_, what, std::move(out));
  }

  std::shared_ptr<Group> group_;
  const int rank_;
  int64_t next_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> MakeThreadGroup(int size) {
  auto group = std::make_shared<Group>(size);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < size; ++r) out.push_back(std::make_unique<ThreadCommunicator>(group, r));
  return out;
}

}  // namespace allround::comm
