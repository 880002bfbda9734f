#include "algorithms/optim/dp_sgd.h"

#include <torch/optim.h>
#include <torch/torch.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "algorithms/models/grad_sample.h"
#include "algorithms/optim/optimizer.h"
#include "common/registry.h"
#include "common/timeline.h"

namespace allround::optim {
namespace {

constexpr char kMode[] = "privacy.mode";

absl::Status CheckJob(const Job& job) {
  const DpSpec spec = DpSpecFromJob(job);
  if (!spec.on()) return absl::OkStatus();
  if (spec.noise_multiplier <= 0 && spec.target_epsilon <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "job key 'privacy.mode': ", spec.mode,
        " needs privacy.noise_multiplier > 0 or privacy.target_epsilon > 0 (the noise is computed from it)"));
  }
  if (spec.example_level() && job.mode != "supervised") {
    return absl::InvalidArgumentError(absl::StrCat(
        "job key 'privacy.mode': example-level DP-SGD runs the supervised mode; mode '", job.mode,
        "' computes its loss from more than one example at a time or has no per-example gradients here"));
  }
  // Site-level DP's own checks (sampling, strategy) sit beside it, in privacy/site_dp.cc.
  return absl::OkStatus();
}

[[maybe_unused]] const bool kRegistered = [] {
  RegisterComponent(
      {"privacy", "differential_privacy",
       "differential privacy: DP-SGD per example (privacy.mode example) or DP-FedAvg per site (site)",
       {ChoiceKey(kMode, "none", "none, example (DP-SGD: each training example) or site (DP-FedAvg: each site)",
                  {"none", "example", "site"}),
        NumberKey("privacy.noise_multiplier", 0,
                  "z: the noise's standard deviation is z * privacy.clip (0: computed from privacy.target_epsilon)", 0,
                  1e6),
        NumberKey("privacy.target_epsilon", 0,
                  "the budget: training stops at the last step within it (0: none; with no noise_multiplier the "
                  "noise is computed to spend it exactly over the run)",
                  0, 1e6),
        NumberKey("privacy.clip", 1.0, "C: the L2 bound on each example's (each site's) gradient or update", 1e-12, 1e12),
        ChoiceKey("privacy.noise_seed", "secret",
                  "secret (OS entropy, kept in the run's checkpoints) or job (from the job seed: reproducible, and "
                  "anyone with the job file can remove the noise)",
                  {"secret", "job"}),
        NumberKey("privacy.delta", 1e-5, "delta of the (epsilon, delta) guarantee (below 1 / examples)", 1e-300,
                  0.999999)}});
  RegisterJobCheck(&CheckJob);
  return true;
}();

}  // namespace

DpSpec DpSpecFromJob(const Job& job) {
  DpSpec spec;
  spec.mode = JobParam(job, kMode);
  spec.noise_multiplier = JobNumber(job, "privacy.noise_multiplier");
  spec.target_epsilon = JobNumber(job, "privacy.target_epsilon");
  spec.clip = JobNumber(job, "privacy.clip");
  spec.delta = JobNumber(job, "privacy.delta");
  spec.noise_seed = JobParam(job, "privacy.noise_seed");
  return spec;
}

at::Tensor ClipFactors(const at::Tensor& squared_norms, double clip) {
  return (clip / (squared_norms.to(at::kDouble).sqrt() + 1e-6)).clamp_max(1.0);
}

absl::StatusOr<DpStepResult> DpSgdStep(const at::Tensor& loss_sum, int64_t batch,
                                       models::PerExampleGradients& recorded, const NamedParams& params,
                                       const at::Tensor& penalty, comm::GradientSync* sync,
                                       torch::optim::Optimizer& optimizer, double lr, const DpStepContext& ctx) {
  if (ctx.expected_batch <= 0) {
    return absl::InvalidArgumentError("DP-SGD step without an expected batch size (the trainer sets it)");
  }
  DpStepResult result;
  timeline::Recorder* timeline = timeline::Active();
  int64_t t = timeline != nullptr ? timeline::NowUs() : 0;
  if (timeline != nullptr) {
    if (const int64_t start = timeline::TakeStepStart(); start > 0) timeline->Complete("forward", "step", start, t);
  }
  std::vector<at::Tensor> sums;
  if (batch > 0) {
    const double value = loss_sum.item<double>();
    if (!std::isfinite(value)) {
      return absl::FailedPreconditionError(absl::StrCat("loss is ", value, ": step skipped (learning rate too high?)"));
    }
    result.loss = value / static_cast<double>(batch);
    // The parameters' own .grad is not formed: the recorded layers give each example's gradient.
    recorded.Backward(loss_sum);
    auto norms = recorded.SquaredNorms(params, batch);
    if (!norms.ok()) return norms.status();
    const at::Tensor factors = ClipFactors(*norms, ctx.clip);
    result.clipped_share = (factors < 1.0).to(at::kDouble).mean().item<double>();
    auto weighted = recorded.WeightedSum(params, factors);
    if (!weighted.ok()) return weighted.status();
    sums = *std::move(weighted);
  } else {
    for (const auto& [name, p] : params) sums.push_back(at::zeros_like(p));
  }
  if (timeline != nullptr) {
    const int64_t end = timeline::NowUs();
    timeline->Complete("backward and clipping", "step", t, end);
    t = end;
  }
  // One flat tensor: the group's sum in one allreduce, and one noise draw of the same length.
  std::vector<at::Tensor> flat_parts;
  for (const at::Tensor& s : sums) flat_parts.push_back(s.reshape({-1}));
  at::Tensor flat = at::cat(flat_parts);
  if (sync != nullptr && ctx.group_size > 1) {
    if (auto s = sync->AverageAcrossGroup(flat); !s.ok()) return s;
    flat = flat * static_cast<double>(ctx.group_size);
    if (timeline != nullptr) {
      const int64_t end = timeline::NowUs();
      timeline->Complete("gradient sync", "step", t, end);
      t = end;
    }
  }
  if (ctx.noise_multiplier > 0) {
    auto gen = at::detail::createCPUGenerator(ctx.noise_seed);
    const at::Tensor noise = at::randn({flat.numel()}, gen, at::TensorOptions().dtype(flat.scalar_type()));
    flat = flat + noise.to(flat.device()) * (ctx.noise_multiplier * ctx.clip);
  }
  flat = flat / ctx.expected_batch;
  int64_t offset = 0;
  for (const auto& [name, p] : params) {
    const at::Tensor g = flat.narrow(0, offset, p.numel()).view(p.sizes());
    offset += p.numel();
    if (p.mutable_grad().defined()) {
      p.mutable_grad().copy_(g);
    } else {
      p.mutable_grad() = g.clone();
    }
  }
  // A data-independent term (FedProx's) touches no example's privacy: its gradient adds after.
  if (penalty.defined()) penalty.backward();
  SetLearningRate(optimizer, lr);
  optimizer.step();
  if (timeline != nullptr) timeline->Complete("optimizer", "step", t, timeline::NowUs());
  return result;
}

}  // namespace allround::optim
