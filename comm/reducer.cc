#include "comm/reducer.h"

#include <chrono>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/timeline.h"
#include "common/worker_metrics.h"

namespace allround::comm {

Reducer::Reducer(std::vector<at::Tensor> params, Communicator* comm, ReducerOptions options) : comm_(comm) {
  for (auto& p : params) {
    if (p.requires_grad()) params_.push_back(std::move(p));  // frozen parameters get no gradient to average
  }
  const int n = static_cast<int>(params_.size());
  bucket_of_.assign(n, -1);
  slot_of_.assign(n, -1);
  ready_.assign(n, false);
  // Reverse registration order; a new bucket when the current one's cap would be passed or the
  // dtype changes. A parameter larger than the cap gets a bucket of its own.
  int64_t bytes = 0;
  for (int i = n - 1; i >= 0; --i) {
    const at::Tensor& p = params_[i];
    const int64_t pbytes = p.numel() * static_cast<int64_t>(p.element_size());
    bool open_new = buckets_.empty();
    if (!open_new) {
      const int64_t cap = buckets_.size() == 1 ? options.first_bucket_bytes : options.bucket_bytes;
      open_new = (bytes > 0 && bytes + pbytes > cap) ||
                 params_[buckets_.back().params.front()].scalar_type() != p.scalar_type();
    }
    if (open_new) {
      buckets_.emplace_back();
      bytes = 0;
    }
    Bucket& b = buckets_.back();
    bucket_of_[i] = static_cast<int>(buckets_.size()) - 1;
    slot_of_[i] = static_cast<int>(b.params.size());
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + params_[b.params.back()].numel());
    b.params.push_back(i);
    bytes += pbytes;
  }
  for (Bucket& b : buckets_) {
    const at::Tensor& last = params_[b.params.back()];
    b.flat = torch::zeros({b.offsets.back() + last.numel()}, last.options().requires_grad(false));
    b.pending = static_cast<int>(b.params.size());
  }
  for (int i = 0; i < n; ++i) {
    hook_ids_.push_back(params_[i].register_hook([this, i](const at::Tensor& grad) { OnGradient(i, grad); }));
  }
}

Reducer::~Reducer() {
  for (size_t i = 0; i < hook_ids_.size(); ++i) params_[i].remove_hook(hook_ids_[i]);
}

void Reducer::OnGradient(int param, const at::Tensor& grad) {
  if (!armed_) return;
  if (ready_[param]) {  // a second backward since BeforeBackward: its gradient would miss the average
    if (second_gradient_ < 0) second_gradient_ = param;
    return;
  }
  Bucket& b = buckets_[bucket_of_[param]];
  at::Tensor slot = b.flat.narrow(0, b.offsets[slot_of_[param]], params_[param].numel()).view(params_[param].sizes());
  const at::Tensor& acc = params_[param].grad();
  if (acc.defined()) {
    at::add_out(slot, acc, grad);  // accumulated micro-batches plus this one
  } else {
    slot.copy_(grad);
  }
  ready_[param] = true;
  if (--b.pending == 0) LaunchReady();
}

void Reducer::LaunchReady() {
  while (next_launch_ < num_buckets() && buckets_[next_launch_].pending == 0) Launch(next_launch_++);
}

void Reducer::Launch(int bucket) {
  buckets_[bucket].launched_us = timeline::Active() != nullptr ? timeline::NowUs() : 0;
  buckets_[bucket].work = comm_->AllReduce(buckets_[bucket].flat, ReduceOp::kAverage);
}

absl::Status Reducer::AverageAcrossGroup(at::Tensor& t) {
  return comm_->AllReduce(t, ReduceOp::kAverage)->Wait(comm_->timeout());
}

absl::Status Reducer::AfterBackward() {
  if (!armed_) return absl::OkStatus();
  armed_ = false;
  torch::NoGradGuard no_grad;
  // Parameters without a gradient this backward: their accumulated .grad, or zeros.
  for (int b = next_launch_; b < num_buckets(); ++b) {
    Bucket& bucket = buckets_[b];
    for (size_t k = 0; k < bucket.params.size(); ++k) {
      const int p = bucket.params[k];
      if (ready_[p]) continue;
      at::Tensor slot = bucket.flat.narrow(0, bucket.offsets[k], params_[p].numel());
      const at::Tensor& g = params_[p].grad();
      if (g.defined()) {
        slot.copy_(g.reshape({-1}));
      } else {
        slot.zero_();
      }
      ready_[p] = true;
    }
    bucket.pending = 0;
  }
  LaunchReady();
  absl::Status status;
  timeline::Recorder* timeline = timeline::Active();
  worker_metrics::Sink* metrics = worker_metrics::Active();
  const auto wait_start = std::chrono::steady_clock::now();
  for (size_t b = 0; b < buckets_.size(); ++b) {
    Bucket& bucket = buckets_[b];
    absl::Status s = bucket.work->Wait(comm_->timeout());
    if (!s.ok() && status.ok()) status = s;
    // From its launch (during backward, for all but the last buckets) to when its completion was
    // seen here.
    if (timeline != nullptr && bucket.launched_us > 0) {
      timeline->Complete(absl::StrCat("allreduce bucket ", b), "comm", bucket.launched_us, timeline::NowUs(),
                         absl::StrCat("\"bytes\": ", bucket.flat.numel() * bucket.flat.element_size()));
    }
  }
  if (metrics != nullptr) {
    int64_t bytes = 0;
    for (const Bucket& bucket : buckets_) bytes += bucket.flat.numel() * static_cast<int64_t>(bucket.flat.element_size());
    metrics->GradientSync(std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count(), bytes);
  }
  if (status.ok() && second_gradient_ >= 0) {
    // Every bucket was still reduced, so the ranks stay in step; .grad keeps the local sum.
    const at::Tensor& p = params_[second_gradient_];
    status = absl::FailedPreconditionError(absl::StrCat(
        "parameter ", second_gradient_, " (shape [", absl::StrJoin(p.sizes(), ", "),
        "]) got a gradient from a second backward after BeforeBackward; its bucket's average would miss "
        "it. Call BeforeBackward and AfterBackward around each backward, or sum the losses into one"));
  }
  if (status.ok()) {
    for (Bucket& bucket : buckets_) {
      for (size_t k = 0; k < bucket.params.size(); ++k) {
        at::Tensor& param = params_[bucket.params[k]];
        at::Tensor avg = bucket.flat.narrow(0, bucket.offsets[k], param.numel()).view(param.sizes());
        if (param.grad().defined()) {
          param.mutable_grad().copy_(avg);
        } else {
          param.mutable_grad() = avg.clone();
        }
      }
    }
  }
  ResetForNextBackward();
  return status;
}

void Reducer::ResetForNextBackward() {
  for (Bucket& b : buckets_) {
    b.pending = static_cast<int>(b.params.size());
    b.work.reset();
  }
  std::fill(ready_.begin(), ready_.end(), false);
  next_launch_ = 0;
  second_gradient_ = -1;
}

absl::Status BroadcastFromRoot(Communicator& comm, const std::vector<at::Tensor>& tensors) {
  if (comm.size() == 1) return absl::OkStatus();
  torch::NoGradGuard no_grad;
  std::vector<std::unique_ptr<Work>> works;
  std::vector<at::Tensor> staged;
  for (const at::Tensor& t : tensors) {
    at::Tensor c = t.is_contiguous() ? t.detach() : t.detach().contiguous();
    staged.push_back(c);
    works.push_back(comm.Broadcast(staged.back(), 0));
  }
  for (size_t i = 0; i < works.size(); ++i) {
    if (auto s = works[i]->Wait(comm.timeout()); !s.ok()) return s;
    if (!tensors[i].is_contiguous()) tensors[i].detach().copy_(staged[i]);
  }
  return absl::OkStatus();
}

}  // namespace allround::comm
