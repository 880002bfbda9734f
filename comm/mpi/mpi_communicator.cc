#include "comm/mpi/mpi_communicator.h"

#include <ATen/ATen.h>
#include <mpi.h>
#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/checked_communicator.h"

namespace allround::comm {
namespace {

absl::Status MpiError(int code, const std::string& what) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return absl::InternalError(absl::StrCat(what, ": ", std::string(text, len)));
}

absl::StatusOr<MPI_Datatype> MpiType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    case at::kByte: return MPI_UINT8_T;
    case at::kChar: return MPI_INT8_T;
    default:
      return absl::InvalidArgumentError(absl::StrCat("MPI backend: unsupported dtype ", c10::toString(t)));
  }
}

MPI_Op MpiOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
    default: return MPI_SUM;  // kAverage divides afterwards
  }
}

// Completion state shared by a Work handle and the communication thread.
struct Completion {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  absl::Status status;

  void Finish(absl::Status s) {
    std::lock_guard<std::mutex> lock(mu);
    status = std::move(s);
    done = true;
    cv.notify_all();
  }
};

// "gone", "stopped", "defunct", or "" for a running process (from /proc/PID/stat).
std::string ProcessState(int pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return "gone";
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return "";
  const size_t paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 >= line.size()) return "";
  switch (line[paren + 2]) {
    case 'T':
    case 't': return "stopped";
    case 'Z':
    case 'X': return "defunct";
    default: return "";
  }
}

class MpiCommunicator;

class MpiWork final : public Work {
 public:
  MpiWork(std::shared_ptr<Completion> c, std::string what, const MpiCommunicator* comm)
      : completion_(std::move(c)), what_(std::move(what)), comm_(comm) {}
  absl::Status Wait(std::chrono::milliseconds timeout) override;

 private:
  std::shared_ptr<Completion> completion_;
  std::string what_;
  const MpiCommunicator* comm_;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {
    debug_ = CommDebugEnabled();
    thread_ = std::thread([this] { Loop(); });
  }

  ~MpiCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    if (stuck_) {
      thread_.detach();  // blocked inside MPI on a peer that is gone; the process is exiting
    } else {
      thread_.join();
      MPI_Comm_free(&comm_);
    }
  }

  // Exchanges (pid, host) so a timeout can name the ranks on this host that died.
  absl::Status ExchangeIdentity() {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    std::vector<char> hosts(256 * size_);
    pids_.resize(size_);
    int pid = static_cast<int>(getpid());
    int rc = MPI_Allgather(&pid, 1, MPI_INT, pids_.data(), 1, MPI_INT, comm_);
    if (rc == MPI_SUCCESS) rc = MPI_Allgather(host, 256, MPI_CHAR, hosts.data(), 256, MPI_CHAR, comm_);
    if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Allgather of rank identities");
    for (int r = 0; r < size_; ++r) hosts_.emplace_back(hosts.data() + 256 * r);
    return absl::OkStatus();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  std::unique_ptr<Work> AllReduce(at::Tensor& tensor, ReduceOp op) override {
    at::Tensor t = tensor;
    return Enqueue("allreduce", t, [this, t, op]() mutable -> absl::Status {
      auto type = MpiType(t.scalar_type());
      if (!type.ok()) return type.status();
      if (auto s = CheckLayout(t, "allreduce"); !s.ok()) return s;
      if (auto s = DebugCheck(CollectiveOp::kAllReduce, t); !s.ok()) return s;
      const int rc = MPI_Allreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), *type, MpiOp(op), comm_);
      if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Allreduce");
      if (op == ReduceOp::kAverage) {
        if (at::isIntegralType(t.scalar_type(), /*includeBool=*/true)) {
          t.div_(size_, "floor");
        } else {
          t.div_(size_);
        }
      }
      return absl::OkStatus();
    });
  }

  std::unique_ptr<Work> Broadcast(at::Tensor& tensor, int root) override {
    at::Tensor t = tensor;
    return Enqueue("broadcast", t, [this, t, root]() mutable -> absl::Status {
      auto type = MpiType(t.scalar_type());
      if (!type.ok()) return type.status();
      if (auto s = CheckLayout(t, "broadcast"); !s.ok()) return s;
      if (auto s = DebugCheck(CollectiveOp::kBroadcast, t); !s.ok()) return s;
      const int rc = MPI_Bcast(t.data_ptr(), static_cast<int>(t.numel()), *type, root, comm_);
      return rc == MPI_SUCCESS ? absl::OkStatus() : MpiError(rc, "MPI_Bcast");
    });
  }

  std::unique_ptr<Work> AllGather(const at::Tensor& input, at::Tensor& output) override {
    at::Tensor in = input, out = output;
    return Enqueue("allgather", in, [this, in, out]() mutable -> absl::Status {
      auto type = MpiType(in.scalar_type());
      if (!type.ok()) return type.status();
      if (auto s = CheckLayout(in, "allgather"); !s.ok()) return s;
      if (out.numel() != in.numel() * size_ || out.scalar_type() != in.scalar_type() || !out.is_contiguous()) {
        return absl::InvalidArgumentError(absl::StrCat("allgather: output needs ", in.numel() * size_,
                                                       " contiguous elements of the input's dtype"));
      }
      if (auto s = DebugCheck(CollectiveOp::kAllGather, in); !s.ok()) return s;
      const int rc = MPI_Allgather(in.data_ptr(), static_cast<int>(in.numel()), *type, out.data_ptr(),
                                   static_cast<int>(in.numel()), *type, comm_);
      return rc == MPI_SUCCESS ? absl::OkStatus() : MpiError(rc, "MPI_Allgather");
    });
  }

  std::unique_ptr<Work> Barrier() override {
    return Enqueue("barrier", at::Tensor(), [this]() -> absl::Status {
      if (auto s = DebugCheck(CollectiveOp::kBarrier, at::Tensor()); !s.ok()) return s;
      const int rc = MPI_Barrier(comm_);
      return rc == MPI_SUCCESS ? absl::OkStatus() : MpiError(rc, "MPI_Barrier");
    });
  }

  // Called by a Work whose wait timed out: the thread is stuck in MPI for good. Names the ranks on
  // this host whose processes are gone, stopped or defunct.
  std::string DescribeTimeout() const {
    stuck_ = true;
    std::vector<std::string> named;
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    for (int r = 0; r < size_ && r < static_cast<int>(pids_.size()); ++r) {
      if (r == rank_ || hosts_[r] != host) continue;
      const std::string state = ProcessState(pids_[r]);
      if (!state.empty()) named.push_back(absl::StrCat("rank ", r, " (pid ", pids_[r], ") is ", state));
    }
    if (!named.empty()) return absl::StrCat("; ", absl::StrJoin(named, ", "));
    return "; every rank on this host is running: a rank on another host, or one stuck elsewhere, did not answer";
  }

 private:
  struct Op {
    std::function<absl::Status()> run;
    std::shared_ptr<Completion> completion;
  };

  std::unique_ptr<Work> Enqueue(const char* name, const at::Tensor& t, std::function<absl::Status()> run) {
    auto completion = std::make_shared<Completion>();
    const int64_t seq = next_seq_++;
    std::string what = absl::StrCat(name, " #", seq, " on rank ", rank_, " of ", size_);
    if (t.defined()) absl::StrAppend(&what, " (", c10::toString(t.scalar_type()), " x ", t.numel(), ")");
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back({std::move(run), completion});
      cv_.notify_all();
    }
    return std::make_unique<MpiWork>(completion, what, this);
  }

  static absl::Status CheckLayout(const at::Tensor& t, const char* op) {
    if (!t.device().is_cpu() || !t.is_contiguous()) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": the MPI backend takes contiguous CPU tensors"));
    }
    if (t.numel() > INT32_MAX) return absl::InvalidArgumentError(absl::StrCat(op, ": tensor too large for one MPI call"));
    return absl::OkStatus();
  }

  // With ALLROUND_COMM_DEBUG=1: every rank shares (op, dtype, numel); any disagreement fails on
  // every rank with the same message naming who called what. The check of
  // comm/checked_communicator.h, made here on the communication thread so the issuing thread
  // never waits for it.
  absl::Status DebugCheck(CollectiveOp op, const at::Tensor& t) {
    if (!debug_) return absl::OkStatus();
    std::vector<int64_t> mine = CollectiveSignature(op, t);
    std::vector<int64_t> all(mine.size() * size_);
    const int n = static_cast<int>(mine.size());
    const int rc = MPI_Allgather(mine.data(), n, MPI_INT64_T, all.data(), n, MPI_INT64_T, comm_);
    if (rc != MPI_SUCCESS) return MpiError(rc, "debug check");
    return CompareSignatures(all, size_);
  }

  void Loop() {
    for (;;) {
      Op op;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        op = std::move(queue_.front());
        queue_.pop_front();
      }
      absl::Status s;
      try {
        s = op.run();
      } catch (const c10::Error& e) {
        s = absl::InternalError(e.what_without_backtrace());
      }
      op.run = nullptr;  // drops the op's tensors first: once Wait returns, this thread holds none
      op.completion->Finish(s);
    }
  }

  MPI_Comm comm_;
  const int rank_, size_;
  bool debug_ = false;
  std::vector<int> pids_;
  std::vector<std::string> hosts_;
  int64_t next_seq_ = 0;  // issuing thread only
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Op> queue_;
  bool stop_ = false;
  mutable std::atomic<bool> stuck_{false};
  std::thread thread_;
};

absl::Status MpiWork::Wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(completion_->mu);
  if (!completion_->cv.wait_for(lock, timeout, [this] { return completion_->done; })) {
    return absl::DeadlineExceededError(absl::StrCat(what_, " did not complete within ", timeout.count(), " ms",
                                                    comm_->DescribeTimeout()));
  }
  if (!completion_->status.ok()) {
    return absl::Status(completion_->status.code(), absl::StrCat(what_, ": ", completion_->status.message()));
  }
  return absl::OkStatus();
}

}  // namespace

bool MpiEnvironment::LaunchedByMpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
}

absl::StatusOr<std::unique_ptr<MpiEnvironment>> MpiEnvironment::Init(int* argc, char*** argv) {
  int provided = 0;
  const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
  if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Init_thread");
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Finalize();
    return absl::FailedPreconditionError("MPI library lacks MPI_THREAD_SERIALIZED support");
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return std::unique_ptr<MpiEnvironment>(new MpiEnvironment());
}

MpiEnvironment::~MpiEnvironment() { MPI_Finalize(); }

absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(MpiEnvironment*) {
  MPI_Comm comm;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  auto c = std::make_unique<MpiCommunicator>(comm, rank, size);
  if (auto s = c->ExchangeIdentity(); !s.ok()) return s;
  return std::unique_ptr<Communicator>(std::move(c));
}

}  // namespace allround::comm
