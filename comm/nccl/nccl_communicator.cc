#include "comm/nccl/nccl_communicator.h"

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstring>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"

namespace allround::comm {
namespace {

using Clock = std::chrono::steady_clock;

absl::Status CudaError(cudaError_t e, const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

absl::Status NcclError(ncclResult_t r, const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

absl::StatusOr<ncclDataType_t> NcclType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    case at::kChar: return ncclInt8;
    default: return absl::InvalidArgumentError(absl::StrCat("NCCL backend: unsupported dtype ", c10::toString(t)));
  }
}

// A non-blocking communicator may answer a call with ncclInProgress: the call is still being
// carried out (initialization, or a collective whose connections are set up lazily, at its first
// use). Until the communicator's state leaves ncclInProgress, no other NCCL call may be made and
// nothing may be queued on its stream, so this polls it until `deadline`, then aborts the
// communicator. Returns the final state (ncclSuccess or an error), or nullopt on timeout.
std::optional<ncclResult_t> AwaitProgress(ncclComm_t comm, ncclResult_t started, Clock::time_point deadline) {
  ncclResult_t state = started;
  while (state == ncclInProgress) {
    if (Clock::now() > deadline) {
      ncclCommAbort(comm);
      return std::nullopt;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
    if (ncclResult_t r = ncclCommGetAsyncError(comm, &state); r != ncclSuccess) state = r;
  }
  return state;
}

ncclRedOp_t NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kAverage: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
    default: return ncclSum;
  }
}

// The NCCL communicator and stream, shared by the communicator and its Work handles (a Work may
// abort the communicator on timeout).
struct Shared {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int device = 0;
  bool aborted = false;
  ~Shared() {
    if (comm != nullptr && !aborted) ncclCommDestroy(comm);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<Shared> shared, cudaEvent_t done, std::vector<at::Tensor> keep, std::string what)
      : shared_(std::move(shared)), done_(done), keep_(std::move(keep)), what_(std::move(what)) {}
  ~NcclWork() override {
    if (done_ != nullptr) cudaEventDestroy(done_);
  }

  absl::Status Wait(std::chrono::milliseconds timeout) override {
    cudaSetDevice(shared_->device);  // the default stream made to wait below is this device's
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      const cudaError_t q = cudaEventQuery(done_);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) return CudaError(q, what_);
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(shared_->comm, &async);
      if (async != ncclSuccess && async != ncclInProgress) return NcclError(async, what_);
      if (Clock::now() > deadline) {
        ncclCommAbort(shared_->comm);  // unblocks the stream; the communicator is unusable after
        shared_->aborted = true;
        return absl::DeadlineExceededError(absl::StrCat(what_, " did not complete within ", timeout.count(),
                                                        " ms: a peer rank died or stopped calling collectives"));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    // Later work on the default stream sees the result.
    cudaStreamWaitEvent(cudaStreamLegacy, done_, 0);
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<Shared> shared_;
  cudaEvent_t done_;
  std::vector<at::Tensor> keep_;  // alive until the collective is done
  std::string what_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<Shared> shared, int rank, int size)
      : shared_(std::move(shared)), rank_(rank), size_(size) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  at::Device device() const override { return at::Device(at::kCUDA, shared_->device); }

  std::unique_ptr<Work> AllReduce(at::Tensor& t, ReduceOp op) override {
    return Launch("allreduce", {t}, t, [&](ncclDataType_t type) {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), type, NcclOp(op), shared_->comm, shared_->stream);
    });
  }
  std::unique_ptr<Work> Broadcast(at::Tensor& t, int root) override {
    return Launch("broadcast", {t}, t, [&](ncclDataType_t type) {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), type, root, shared_->comm, shared_->stream);
    });
  }
  std::unique_ptr<Work> AllGather(const at::Tensor& in, at::Tensor& out) override {
    if (out.numel() != in.numel() * size_) {
      return CompletedWork(absl::InvalidArgumentError("allgather: output needs size() x input elements"));
    }
    return Launch("allgather", {in, out}, in, [&](ncclDataType_t type) {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), type, shared_->comm, shared_->stream);
    });
  }
  std::unique_ptr<Work> Barrier() override {
    at::Tensor one = at::ones({1}, at::TensorOptions().dtype(at::kFloat).device(device()));
    return AllReduce(one, ReduceOp::kSum);
  }

 private:
  template <typename Call>
  std::unique_ptr<Work> Launch(const char* name, std::vector<at::Tensor> keep, const at::Tensor& t, Call call) {
    const std::string what = absl::StrCat(name, " #", seq_++, " on rank ", rank_, " of ", size_, " (",
                                          c10::toString(t.scalar_type()), " x ", t.numel(), ")");
    if (shared_->aborted) return CompletedWork(absl::FailedPreconditionError(what + ": communicator was aborted"));
    if (!t.is_cuda() || !t.is_contiguous()) {
      return CompletedWork(absl::InvalidArgumentError(what + ": the NCCL backend takes contiguous CUDA tensors"));
    }
    auto type = NcclType(t.scalar_type());
    if (!type.ok()) return CompletedWork(type.status());
    cudaSetDevice(shared_->device);
    cudaEvent_t ready = nullptr, done = nullptr;
    if (cudaError_t e = cudaEventCreateWithFlags(&ready, cudaEventDisableTiming); e != cudaSuccess) {
      return CompletedWork(CudaError(e, what));
    }
    // After everything already queued on the default stream (where LibTorch computes).
    cudaError_t e = cudaEventRecord(ready, cudaStreamLegacy);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(shared_->stream, ready, 0);
    cudaEventDestroy(ready);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
    if (e != cudaSuccess) return CompletedWork(CudaError(e, what));
    // The call may still be queuing the collective when it returns ncclInProgress: the completion
    // event goes on the stream only once it has.
    const auto state = AwaitProgress(shared_->comm, call(*type), Clock::now() + timeout());
    if (!state.has_value()) shared_->aborted = true;
    if (!state.has_value() || *state != ncclSuccess) {
      cudaEventDestroy(done);
      return CompletedWork(state.has_value() ? NcclError(*state, what)
                                            : absl::DeadlineExceededError(absl::StrCat(
                                                  what, " was not queued within ", timeout().count(),
                                                  " ms: a peer rank died or stopped calling collectives")));
    }
    if (e = cudaEventRecord(done, shared_->stream); e != cudaSuccess) {
      cudaEventDestroy(done);
      return CompletedWork(CudaError(e, what));
    }
    return std::make_unique<NcclWork>(shared_, done, std::move(keep), what);
  }

  std::shared_ptr<Shared> shared_;
  const int rank_, size_;
  int64_t seq_ = 0;
};

}  // namespace

int CudaDeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

absl::StatusOr<std::string> NcclUniqueId() {
  ncclUniqueId id;
  if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) return NcclError(r, "ncclGetUniqueId");
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(int rank, int world_size, int device,
                                                                   const std::string& unique_id,
                                                                   std::chrono::milliseconds timeout) {
  if (CudaDeviceCount() == 0) return absl::UnavailableError("NCCL backend: no CUDA device");
  if (!at::hasCUDA()) {
    return absl::FailedPreconditionError("NCCL backend: this LibTorch is CPU-only (build against a CUDA LibTorch)");
  }
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal)) return absl::InvalidArgumentError("NCCL unique id has the wrong size");
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  auto shared = std::make_shared<Shared>();
  shared->device = device;
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return CudaError(e, absl::StrCat("cudaSetDevice ", device));
  if (cudaError_t e = cudaStreamCreateWithFlags(&shared->stream, cudaStreamNonBlocking); e != cudaSuccess) {
    return CudaError(e, "cudaStreamCreate");
  }
  // Non-blocking initialization, so a rank that never joins cannot hang this one past the timeout.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = ncclCommInitRankConfig(&shared->comm, world_size, id, rank, &config);
  if (r == ncclSuccess) ncclCommGetAsyncError(shared->comm, &r);  // may still be in progress
  const auto state = AwaitProgress(shared->comm, r, Clock::now() + timeout);
  if (!state.has_value()) {
    shared->aborted = true;
    return absl::DeadlineExceededError(absl::StrCat("NCCL init of rank ", rank, " of ", world_size,
                                                    " did not finish within ", timeout.count(), " ms"));
  }
  if (*state != ncclSuccess) {
    // NCCL keeps its last warning (the cause, such as "Duplicate GPU detected : rank 0 and rank 1
    // both on CUDA device 60") whatever NCCL_DEBUG says; its error string alone says only
    // "invalid usage".
    const std::string cause = ncclGetLastError(shared->comm);
    if (shared->comm != nullptr) {
      ncclCommAbort(shared->comm);
      shared->aborted = true;
    }
    absl::Status s = NcclError(*state, "ncclCommInitRankConfig");
    return cause.empty() ? s : absl::InternalError(absl::StrCat(s.message(), ": ", cause));
  }
  return std::unique_ptr<Communicator>(std::make_unique<NcclCommunicator>(std::move(shared), rank, world_size));
}

}  // namespace allround::comm
