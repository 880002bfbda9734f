#ifndef ALLROUND_COMM_COMMUNICATOR_H_
#define ALLROUND_COMM_COMMUNICATOR_H_

// The collectives a worker group needs, on tensors, behind one interface (after c10d's
// ProcessGroup and Gloo's algorithms): every call is asynchronous and returns a Work handle whose
// Wait takes a timeout; an error names the op and the rank that did not answer. Backends (MPI,
// NCCL, and the single-process one here) live in their own folders and are chosen at run time.
//
// Thread safety: collectives must be issued in the same order on every rank; one thread issues
// them, any thread may wait on a Work.

#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace allround::comm {

enum class ReduceOp { kSum, kAverage, kMax, kMin };

// The handle of one collective in flight.
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the collective finished or `timeout` passed. On timeout the error names the op
  // and the ranks that did not take part; the communicator is then unusable (its peers are gone).
  virtual absl::Status Wait(std::chrono::milliseconds timeout) = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "mpi", "nccl", "local".
  virtual std::string backend() const = 0;
  // Where the tensors given to this communicator must live (CPU for MPI and local, the rank's GPU
  // for NCCL).
  virtual at::Device device() const { return at::Device(at::kCPU); }

  // In place on every rank. `tensor` must be contiguous and stay alive until Wait returns.
  virtual std::unique_ptr<Work> AllReduce(at::Tensor& tensor, ReduceOp op) = 0;
  // Overwrites `tensor` on every rank with root's.
  virtual std::unique_ptr<Work> Broadcast(at::Tensor& tensor, int root) = 0;
  // `output` holds size() x input.numel() elements, rank r's input at offset r x numel.
  virtual std::unique_ptr<Work> AllGather(const at::Tensor& input, at::Tensor& output) = 0;
  virtual std::unique_ptr<Work> Barrier() = 0;

  // The default timeout for a blocking wait (the job's collective timeout). A wrapping
  // communicator passes set_timeout on to the one it wraps.
  std::chrono::milliseconds timeout() const { return timeout_; }
  virtual void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

 private:
  std::chrono::milliseconds timeout_{std::chrono::minutes(5)};
};

// A Work that is already complete, with `status` (OK or the reason a collective was refused).
std::unique_ptr<Work> CompletedWork(absl::Status status);

// A worker group of one process: every collective is complete at once (the sum over one rank is
// the tensor itself). Lets single-process code run the same sharded evaluation and training path.
std::unique_ptr<Communicator> MakeLocalCommunicator();

}  // namespace allround::comm

#endif  // ALLROUND_COMM_COMMUNICATOR_H_
