#ifndef ALLROUND_COMM_REDUCER_H_
#define ALLROUND_COMM_REDUCER_H_

// Averages gradients over a worker group, DDP-style. Parameters are packed into buckets in reverse
// registration order (roughly the order backward produces their gradients): the first bucket
// holds up to first_bucket_bytes, the others up to bucket_bytes. A hook on each parameter copies
// its gradient into its bucket during backward; when every gradient of a bucket is in, and every
// earlier bucket has been launched, the bucket's allreduce starts on the Communicator's thread,
// overlapping the rest of backward. AfterBackward() launches whatever is left (a parameter that
// got no gradient contributes zeros, so no rank waits for it), waits for every bucket, and writes
// the averages into each parameter's .grad.
//
// Call BeforeBackward() before each backward and AfterBackward() after it. A second backward in
// between that reaches a parameter again is an error (AfterBackward says which parameter), not a
// gradient silently left out of the average, as in PyTorch DDP.
// Gradient accumulation: set_sync(false) for the first K-1 micro-batches (no communication);
// on the K-th, the hooks bucket the accumulated sum (.grad so far plus the new gradient).
// Several Reducers may coexist over disjoint parameter sets (a GAN's discriminator and
// generator); each covers one backward's parameters and is called after that backward.
//
// Buckets launch in the same order on every rank, so collectives always match. Not thread-safe:
// one training thread (autograd runs CPU hooks on it).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "comm/communicator.h"
#include "comm/gradient_sync.h"

namespace allround::comm {

struct ReducerOptions {
  int64_t bucket_bytes = 25 << 20;
  int64_t first_bucket_bytes = 1 << 20;
};

class Reducer final : public GradientSync {
 public:
  // `params` must outlive the Reducer (those without requires_grad are left out); `comm` too.
  Reducer(std::vector<at::Tensor> params, Communicator* comm, ReducerOptions options = {});
  ~Reducer() override;
  Reducer(const Reducer&) = delete;
  Reducer& operator=(const Reducer&) = delete;

  // Arms the hooks for the next backward (unless sync is off); a backward that this Reducer was
  // not armed for (another Reducer's) leaves its buckets alone.
  void BeforeBackward() override { armed_ = sync_; }
  absl::Status AfterBackward() override;
  absl::Status AverageAcrossGroup(at::Tensor& t) override;

  // false: the next backwards accumulate locally and AfterBackward does nothing.
  void set_sync(bool sync) { sync_ = sync; }
  int num_buckets() const { return static_cast<int>(buckets_.size()); }

 private:
  struct Bucket {
    at::Tensor flat;                 // contiguous, one dtype
    std::vector<int> params;         // indices into params_
    std::vector<int64_t> offsets;    // element offset of each parameter in flat
    int pending = 0;                 // gradients not yet copied in this backward
    std::unique_ptr<Work> work;      // in flight
    int64_t launched_us = 0;         // when, for the timeline (0: no timeline)
  };

  void OnGradient(int param, const at::Tensor& grad);
  void LaunchReady();
  void Launch(int bucket);
  void ResetForNextBackward();

  std::vector<at::Tensor> params_;
  Communicator* comm_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;       // param -> bucket
  std::vector<int> slot_of_;         // param -> position within its bucket
  std::vector<bool> ready_;          // param's gradient is in its bucket this backward
  std::vector<unsigned> hook_ids_;
  int next_launch_ = 0;
  int second_gradient_ = -1;         // a parameter whose gradient came twice in one armed backward
  bool sync_ = true;
  bool armed_ = false;
};

// Overwrites every tensor with rank 0's values (parameters and buffers at start, so every rank
// trains the same model). Blocks up to the communicator's timeout.
absl::Status BroadcastFromRoot(Communicator& comm, const std::vector<at::Tensor>& tensors);

}  // namespace allround::comm

#endif  // ALLROUND_COMM_REDUCER_H_
