#include "algorithms/optim/optimizer.h"

#include <torch/optim.h>

#include <cmath>
#include <sstream>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/timeline.h"

namespace allround::optim {
namespace {

// Optimizer state is keyed by the parameter's TensorImpl: LibTorch 1.13 uses the address printed
// as a string, 2.x the address itself. One helper serves both.
template <typename Key>
Key StateKeyAs(const at::Tensor& param) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;  // what c10::guts::to_string did (it is gone from newer LibTorch)
    os << param.unsafeGetTensorImpl();
    return os.str();
  } else {
    return param.unsafeGetTensorImpl();
  }
}
using StateMap = std::decay_t<decltype(std::declval<torch::optim::Optimizer&>().state())>;
StateMap::key_type StateKey(const at::Tensor& param) { return StateKeyAs<StateMap::key_type>(param); }

}  // namespace

absl::StatusOr<std::unique_ptr<torch::optim::Optimizer>> MakeOptimizer(const OptimizerSpec& spec,
                                                                        const std::vector<at::Tensor>& params) {
  if (spec.name == "sgd") {
    return std::unique_ptr<torch::optim::Optimizer>(std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(spec.lr)
                    .momentum(spec.momentum)
                    .nesterov(spec.nesterov)
                    .weight_decay(spec.weight_decay)));
  }
  if (spec.name == "adam" || spec.name == "adamw") {
    const auto betas = std::make_tuple(spec.beta1, spec.beta2);
    if (spec.name == "adam") {
      return std::unique_ptr<torch::optim::Optimizer>(std::make_unique<torch::optim::Adam>(
          params, torch::optim::AdamOptions(spec.lr).betas(betas).eps(spec.eps).weight_decay(spec.weight_decay)));
    }
    return std::unique_ptr<torch::optim::Optimizer>(std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(spec.lr).betas(betas).eps(spec.eps).weight_decay(spec.weight_decay)));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown optimizer '", spec.name, "' (known: sgd, adam, adamw)"));
}

void SetLearningRate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

absl::StatusOr<double> BackwardAndStep(const at::Tensor& loss, comm::GradientSync* sync,
                                       torch::optim::Optimizer& optimizer, double lr) {
  const double value = loss.item<double>();
  if (!std::isfinite(value)) {
    return absl::FailedPreconditionError(absl::StrCat("loss is ", value, ": step skipped (learning rate too high?)"));
  }
  timeline::Recorder* timeline = timeline::Active();
  int64_t t = timeline != nullptr ? timeline::NowUs() : 0;
  if (timeline != nullptr) {
    // The step's forward: from the trainer's mark to here (the loss is computed: item() waited).
    if (const int64_t start = timeline::TakeStepStart(); start > 0) timeline->Complete("forward", "step", start, t);
  }
  if (sync != nullptr) sync->BeforeBackward();
  loss.backward();
  if (timeline != nullptr) {
    const int64_t end = timeline::NowUs();
    timeline->Complete("backward", "step", t, end);
    t = end;
  }
  if (sync != nullptr) {
    if (auto s = sync->AfterBackward(); !s.ok()) return s;
    if (timeline != nullptr) {
      const int64_t end = timeline::NowUs();
      timeline->Complete("gradient sync", "step", t, end);
      t = end;
    }
  }
  SetLearningRate(optimizer, lr);
  optimizer.step();
  if (timeline != nullptr) timeline->Complete("optimizer", "step", t, timeline::NowUs());
  return value;
}

NamedTensors OptimizerState(torch::optim::Optimizer& optimizer, const NamedTensors& named_params) {
  NamedTensors out;
  for (const auto& p : named_params) {
    auto it = optimizer.state().find(StateKey(p.second));
    if (it == optimizer.state().end()) continue;  // no step taken yet
    const std::string prefix = "optim/" + p.first + "/";
    if (auto* sgd = dynamic_cast<torch::optim::SGDParamState*>(it->second.get())) {
      if (sgd->momentum_buffer().defined()) out.emplace_back(prefix + "momentum_buffer", sgd->momentum_buffer());
    } else if (auto* adam = dynamic_cast<torch::optim::AdamParamState*>(it->second.get())) {
      out.emplace_back(prefix + "step", torch::tensor(adam->step(), torch::kLong));
      out.emplace_back(prefix + "exp_avg", adam->exp_avg());
      out.emplace_back(prefix + "exp_avg_sq", adam->exp_avg_sq());
    } else if (auto* adamw = dynamic_cast<torch::optim::AdamWParamState*>(it->second.get())) {
      out.emplace_back(prefix + "step", torch::tensor(adamw->step(), torch::kLong));
      out.emplace_back(prefix + "exp_avg", adamw->exp_avg());
      out.emplace_back(prefix + "exp_avg_sq", adamw->exp_avg_sq());
    }
  }
  return out;
}

absl::Status LoadOptimizerState(torch::optim::Optimizer& optimizer, const NamedTensors& named_params,
                                const std::map<std::string, at::Tensor>& by_name) {
  auto find = [&](const std::string& name, c10::IntArrayRef shape) -> absl::StatusOr<at::Tensor> {
    auto it = by_name.find(name);
    if (it == by_name.end()) return absl::NotFoundError(absl::StrCat("state has no tensor '", name, "'"));
    if (it->second.sizes() != shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape ", c10::str(it->second.sizes()),
                                                     ", the parameter ", c10::str(shape)));
    }
    return it->second;
  };
  // The state must be this optimizer's kind: SGD's momentum buffers do not become Adam's moments
  // (nor the reverse), and dropping them silently would change the run without a word.
  const bool sgd = dynamic_cast<torch::optim::SGD*>(&optimizer) != nullptr;
  for (const auto& p : named_params) {
    const std::string prefix = "optim/" + p.first + "/";
    const bool has_momentum = by_name.count(prefix + "momentum_buffer") > 0, has_moments = by_name.count(prefix + "step") > 0;
    if (sgd ? has_moments : has_momentum) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the saved optimizer state of '", p.first, "' is ", has_moments ? "Adam's moments" : "SGD's momentum",
          " but this job's optimizer is ", sgd ? "sgd" : "adam/adamw",
          ": resume with the optimizer it was written with, or start from its weights alone "
          "(allround-ckpt export, then model.init)"));
    }
  }
  optimizer.state().clear();
  for (const auto& p : named_params) {
    const std::string prefix = "optim/" + p.first + "/";
    const auto key = StateKey(p.second);
    if (sgd) {
      if (!by_name.count(prefix + "momentum_buffer")) continue;
      auto buffer = find(prefix + "momentum_buffer", p.second.sizes());
      if (!buffer.ok()) return buffer.status();
      auto st = std::make_unique<torch::optim::SGDParamState>();
      st->momentum_buffer(buffer->to(p.second.device()).clone());
      optimizer.state()[key] = std::move(st);
    } else if (by_name.count(prefix + "step")) {
      auto avg = find(prefix + "exp_avg", p.second.sizes()), sq = find(prefix + "exp_avg_sq", p.second.sizes());
      if (!avg.ok()) return avg.status();
      if (!sq.ok()) return sq.status();
      auto step = find(prefix + "step", {});
      if (!step.ok()) return step.status();
      if (dynamic_cast<torch::optim::AdamW*>(&optimizer) != nullptr) {
        auto st = std::make_unique<torch::optim::AdamWParamState>();
        st->step(step->item<int64_t>());
        st->exp_avg(avg->to(p.second.device()).clone());
        st->exp_avg_sq(sq->to(p.second.device()).clone());
        optimizer.state()[key] = std::move(st);
      } else {
        auto st = std::make_unique<torch::optim::AdamParamState>();
        st->step(step->item<int64_t>());
        st->exp_avg(avg->to(p.second.device()).clone());
        st->exp_avg_sq(sq->to(p.second.device()).clone());
        optimizer.state()[key] = std::move(st);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace allround::optim
