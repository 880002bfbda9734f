#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "algorithms/aggregation/strategy.h"
#include "common/registry.h"

namespace allround::aggregation {
namespace {

// The built-in strategies' parameters, read from the job's keys (registered below).
struct StrategySpec {
  std::string name;
  double server_lr = 1.0;      // fedavgm, fedadagrad, fedadam, fedyogi
  double momentum = 0.9;       // fedavgm
  double beta1 = 0.9;          // adaptive
  double beta2 = 0.99;         // adaptive
  double tau = 1e-3;           // adaptive
  double trim_beta = 0.1;      // trimmed_mean
  int64_t byzantine = 0;       // krum: f
  int64_t multi_krum = 0;      // krum: m (0: 1 for krum, n - f for multi_krum)
  double cc_tau = 0;           // centered_clipping: the radius (0: the median distance to the center)
  int64_t cc_iterations = 1;   // centered_clipping: L
};

bool Aggregated(const at::Tensor& t) { return at::isFloatingType(t.scalar_type()); }

// Every update matches the global state tensor for tensor, and holds finite values.
absl::Status Check(const NamedTensors& global, const std::vector<SiteUpdate>& updates) {
  if (updates.empty()) return absl::FailedPreconditionError("no updates to aggregate");
  int64_t total = 0;
  for (const SiteUpdate& u : updates) {
    if (u.examples < 0) return absl::InvalidArgumentError(absl::StrCat("site ", u.site_id, ": negative example count"));
    total += u.examples;
    if (std::string bad = tensor::LayoutMismatch(u.weights, global); !bad.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("site ", u.site_id, ": ", bad));
    }
    for (const auto& [name, t] : u.weights) {
      if (!AllFinite(t)) {
        return absl::InvalidArgumentError(absl::StrCat("site ", u.site_id, ": tensor ", name, " holds NaN or Inf"));
      }
    }
  }
  if (total <= 0) return absl::InvalidArgumentError("updates hold no examples");
  return absl::OkStatus();
}

// The example-weighted mean of the updates' tensor k, in float64 (then the caller's dtype). For
// contiguous float32/float64 tensors the sum runs block by block, so the accumulator stays in
// cache and each update is read once: memory traffic is the updates themselves.
at::Tensor WeightedMean(const std::vector<SiteUpdate>& updates, size_t k) {
  double total = 0;
  for (const auto& u : updates) total += static_cast<double>(u.examples);
  const at::Tensor& first = updates[0].weights[k].second;
  at::Tensor acc = at::zeros(first.sizes(), first.options().dtype(at::kDouble));
  bool fast = first.device().is_cpu();
  for (const auto& u : updates) {
    const at::Tensor& t = u.weights[k].second;
    fast = fast && t.is_contiguous() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
  }
  if (!fast) {
    for (const auto& u : updates) acc.add_(u.weights[k].second.to(at::kDouble), static_cast<double>(u.examples) / total);
    return acc;
  }
  double* out = acc.data_ptr<double>();
  const int64_t n = acc.numel();
  constexpr int64_t kBlock = 4096;
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    const int64_t end = std::min(n, begin + kBlock);
    for (const auto& u : updates) {
      const at::Tensor& t = u.weights[k].second;
      const double w = static_cast<double>(u.examples) / total;
      if (t.scalar_type() == at::kFloat) {
        const float* in = t.data_ptr<float>();
        for (int64_t i = begin; i < end; ++i) out[i] += w * static_cast<double>(in[i]);
      } else {
        const double* in = t.data_ptr<double>();
        for (int64_t i = begin; i < end; ++i) out[i] += w * in[i];
      }
    }
  }
  return acc;
}

// Applies `fn(k, global tensor in float64) -> new float64 tensor` to aggregated tensors; integer
// tensors come from the first update.
template <typename Fn>
NamedTensors Map(const NamedTensors& global, const std::vector<SiteUpdate>& updates, Fn fn) {
  NamedTensors out;
  for (size_t k = 0; k < global.size(); ++k) {
    const auto& [name, g] = global[k];
    if (!Aggregated(g)) {
      out.emplace_back(name, updates[0].weights[k].second.clone());
    } else {
      out.emplace_back(name, fn(k, g.to(at::kDouble)).to(g.scalar_type()));
    }
  }
  return out;
}

class FedAvg : public Strategy {
 public:
  explicit FedAvg(double mu = 0.0, std::string name = "fedavg") : mu_(mu), name_(std::move(name)) {}
  std::string name() const override { return name_; }
  double proximal_mu() const override { return mu_; }
  absl::StatusOr<NamedTensors> Aggregate(const NamedTensors& global, const std::vector<SiteUpdate>& updates) override {
    if (auto s = Check(global, updates); !s.ok()) return s;
    return Map(global, updates, [&](size_t k, const at::Tensor&) { return WeightedMean(updates, k); });
  }

 private:
  double mu_;
  std::string name_;
};

// Server optimizers over the pseudo-gradient delta: FedAvgM and the adaptive family.
class ServerOptimizer : public Strategy {
 public:
  explicit ServerOptimizer(const StrategySpec& spec) : spec_(spec) {}
  std::string name() const override { return spec_.name; }

  absl::StatusOr<NamedTensors> Aggregate(const NamedTensors& global, const std::vector<SiteUpdate>& updates) override {
    if (auto s = Check(global, updates); !s.ok()) return s;
    std::map<std::string, at::Tensor> m = m_, v = v_;  // committed only on success
    NamedTensors out = Map(global, updates, [&](size_t k, const at::Tensor& x) {
      const std::string& name = global[k].first;
      const at::Tensor delta = WeightedMean(updates, k) - x;
      if (!m.count(name)) {
        m[name] = at::zeros_like(x);
        v[name] = at::full_like(x, spec_.tau * spec_.tau);
      }
      at::Tensor& mt = m[name];
      at::Tensor& vt = v[name];
      if (spec_.name == "fedavgm") {
        mt = spec_.momentum * mt + delta;
        return x + spec_.server_lr * mt;
      }
      mt = spec_.beta1 * mt + (1 - spec_.beta1) * delta;
      const at::Tensor d2 = delta * delta;
      if (spec_.name == "fedadagrad") {
        vt = vt + d2;
      } else if (spec_.name == "fedadam") {
        vt = spec_.beta2 * vt + (1 - spec_.beta2) * d2;
      } else {  // fedyogi
        vt = vt - (1 - spec_.beta2) * d2 * at::sign(vt - d2);
      }
      return x + spec_.server_lr * mt / (at::sqrt(vt) + spec_.tau);
    });
    m_ = std::move(m);
    v_ = std::move(v);
    return out;
  }

  NamedTensors State() const override {
    NamedTensors out;
    for (const auto& [k, t] : m_) out.emplace_back("strategy/m/" + k, t);
    for (const auto& [k, t] : v_) out.emplace_back("strategy/v/" + k, t);
    return out;
  }
  absl::Status LoadState(const NamedTensors& state) override {
    std::map<std::string, at::Tensor> m, v;
    for (const auto& [name, t] : state) {
      if (name.rfind("strategy/m/", 0) == 0) m[name.substr(11)] = t.to(at::kDouble);
      if (name.rfind("strategy/v/", 0) == 0) v[name.substr(11)] = t.to(at::kDouble);
    }
    m_ = std::move(m);
    v_ = std::move(v);
    return absl::OkStatus();
  }

 private:
  StrategySpec spec_;
  std::map<std::string, at::Tensor> m_, v_;  // float64, by tensor name
};

// Coordinate-wise robust statistics over the stacked updates (unweighted, as in Yin et al.).
class Robust : public Strategy {
 public:
  explicit Robust(const StrategySpec& spec) : spec_(spec) {}
  std::string name() const override { return spec_.name; }
  absl::StatusOr<NamedTensors> Aggregate(const NamedTensors& global, const std::vector<SiteUpdate>& updates) override {
    if (auto s = Check(global, updates); !s.ok()) return s;
    const int64_t n = static_cast<int64_t>(updates.size());
    const int64_t cut = spec_.name == "trimmed_mean" ? static_cast<int64_t>(std::floor(spec_.trim_beta * n)) : 0;
    if (2 * cut >= n) {
      return absl::InvalidArgumentError(absl::StrCat("trimmed_mean: trimming ", cut, " from each end of ", n,
                                                     " updates leaves none"));
    }
    return Map(global, updates, [&](size_t k, const at::Tensor&) {
      std::vector<at::Tensor> all;
      for (const auto& u : updates) all.push_back(u.weights[k].second.to(at::kDouble));
      const at::Tensor sorted = std::get<0>(at::stack(all).sort(0));
      if (spec_.name == "median") {
        return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
      }
      return sorted.narrow(0, cut, n - 2 * cut).mean(0);
    });
  }

 private:
  StrategySpec spec_;
};

class Krum : public Strategy {
 public:
  explicit Krum(const StrategySpec& spec) : spec_(spec) {}
  std::string name() const override { return spec_.name; }
  absl::StatusOr<NamedTensors> Aggregate(const NamedTensors& global, const std::vector<SiteUpdate>& updates) override {
    if (auto s = Check(global, updates); !s.ok()) return s;
    const int64_t n = static_cast<int64_t>(updates.size());
    const int64_t neighbours = n - spec_.byzantine - 2;
    const int64_t m = spec_.multi_krum > 0 ? spec_.multi_krum : spec_.name == "multi_krum" ? n - spec_.byzantine : 1;
    if (neighbours < 1) {
      return absl::InvalidArgumentError(absl::StrCat(spec_.name, ": ", n, " updates cannot tolerate ", spec_.byzantine,
                                                     " byzantine sites (needs n > f + 2)"));
    }
    if (m > n) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec_.name, ": strategy.multi_krum is ", m, " but the round has ", n, " updates"));
    }
    // Each update as one flat float64 vector of its aggregated tensors.
    std::vector<at::Tensor> flat;
    for (const auto& u : updates) {
      std::vector<at::Tensor> parts;
      for (const auto& [name, t] : u.weights) {
        if (Aggregated(t)) parts.push_back(t.to(at::kDouble).reshape({-1}));
      }
      flat.push_back(at::cat(parts));
    }
    const at::Tensor x = at::stack(flat);
    const at::Tensor d2 = at::cdist(x, x).pow(2);
    std::vector<std::pair<double, int64_t>> scores;
    for (int64_t i = 0; i < n; ++i) {
      // The smallest `neighbours` distances to others (index 0 of the sorted row is itself, 0).
      const at::Tensor row = std::get<0>(d2[i].sort());
      scores.emplace_back(row.narrow(0, 1, neighbours).sum().item<double>(), i);
    }
    std::stable_sort(scores.begin(), scores.end());
    std::vector<SiteUpdate> chosen;
    for (int64_t j = 0; j < m; ++j) {
      SiteUpdate u = updates[scores[j].second];
      u.examples = 1;  // multi-Krum averages the selected updates plainly
      chosen.push_back(std::move(u));
    }
    return Map(global, chosen, [&](size_t k, const at::Tensor&) { return WeightedMean(chosen, k); });
  }

 private:
  StrategySpec spec_;
};

// Centered clipping (Karimireddy, He and Jaggi 2021, "Learning from History for Byzantine Robust
// Optimization"), on the sites' deltas delta_i = x_i - x as whole vectors: starting from the last
// round's aggregate v (the history; 0 at first), L times v <- v + (1/n) sum_i (delta_i - v)
// min(1, tau / ||delta_i - v||); then x + v. Unweighted, as the robust statistics are. With
// strategy.cc_tau 0 the radius is the median of the distances ||delta_i - v|| in each iteration, so
// it follows the honest updates' scale: with fewer than half the sites lying, the median is an
// honest distance and each liar moves v by at most tau / n. The center v is checkpointed.
class CenteredClipping : public Strategy {
 public:
  explicit CenteredClipping(const StrategySpec& spec) : spec_(spec) {}
  std::string name() const override { return "centered_clipping"; }

  absl::StatusOr<NamedTensors> Aggregate(const NamedTensors& global, const std::vector<SiteUpdate>& updates) override {
    if (auto s = Check(global, updates); !s.ok()) return s;
    std::vector<at::Tensor> deltas;  // flat float64, the aggregated tensors in model order
    for (const auto& u : updates) {
      std::vector<at::Tensor> parts;
      for (size_t k = 0; k < global.size(); ++k) {
        if (Aggregated(global[k].second)) {
          parts.push_back((u.weights[k].second.to(at::kDouble) - global[k].second.to(at::kDouble)).reshape({-1}));
        }
      }
      deltas.push_back(at::cat(parts));
    }
    const int64_t d = deltas[0].numel();
    at::Tensor v = center_.defined() && center_.numel() == d ? center_.clone() : at::zeros({d}, at::kDouble);
    const double n = static_cast<double>(deltas.size());
    for (int64_t l = 0; l < spec_.cc_iterations; ++l) {
      std::vector<double> norms;
      for (const auto& delta : deltas) norms.push_back((delta - v).norm().item<double>());
      double tau = spec_.cc_tau;
      if (tau <= 0) {
        std::vector<double> sorted = norms;
        std::sort(sorted.begin(), sorted.end());
        tau = sorted.size() % 2 == 1 ? sorted[sorted.size() / 2]
                                     : (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]) / 2;
      }
      at::Tensor step = at::zeros({d}, at::kDouble);
      for (size_t i = 0; i < deltas.size(); ++i) {
        const double scale = norms[i] > tau ? tau / norms[i] : 1.0;
        step.add_(deltas[i] - v, scale / n);
      }
      v.add_(step);
    }
    int64_t offset = 0;
    NamedTensors out = Map(global, updates, [&](size_t k, const at::Tensor& x) {
      const int64_t size = x.numel();
      at::Tensor next = x + v.narrow(0, offset, size).view(x.sizes());
      offset += size;
      return next;
    });
    center_ = v;
    return out;
  }

  NamedTensors State() const override {
    if (!center_.defined()) return {};
    return {{"strategy/center", center_}};
  }
  absl::Status LoadState(const NamedTensors& state) override {
    for (const auto& [name, t] : state) {
      if (name == "strategy/center") center_ = t.to(at::kDouble).reshape({-1}).clone();
    }
    return absl::OkStatus();
  }

 private:
  StrategySpec spec_;
  at::Tensor center_;  // float64, flat: the last aggregate delta
};

// The strategies, their keys and defaults. A key several strategies read (strategy.server_lr) is
// registered with the same default by each.
ComponentKey ServerLr() { return NumberKey("strategy.server_lr", 1.0, "server learning rate", 0, 1e6); }
ComponentKey Beta1() { return NumberKey("strategy.beta1", 0.9, "first-moment decay", 0, 1); }
ComponentKey Beta2() { return NumberKey("strategy.beta2", 0.99, "second-moment decay", 0, 1); }
ComponentKey Tau() { return NumberKey("strategy.tau", 1e-3, "adaptivity: added to sqrt(v)", 0, 1); }

// A factory that reads the named keys into StrategySpec and makes T from it.
template <typename T>
StrategyFactory FromSpec() {
  return [](const Job& job) -> absl::StatusOr<std::unique_ptr<Strategy>> {
    StrategySpec spec;
    spec.name = job.strategy.name;
    // Every key below is registered in this file, so each reads the job's value or its default.
    const auto number = [&](const char* key, double& field) { field = JobNumber(job, key); };
    number("strategy.server_lr", spec.server_lr);
    number("strategy.momentum", spec.momentum);
    number("strategy.beta1", spec.beta1);
    number("strategy.beta2", spec.beta2);
    number("strategy.tau", spec.tau);
    number("strategy.trim_beta", spec.trim_beta);
    spec.byzantine = JobInteger(job, "strategy.byzantine");
    spec.multi_krum = JobInteger(job, "strategy.multi_krum");
    spec.cc_tau = JobNumber(job, "strategy.cc_tau");
    spec.cc_iterations = JobInteger(job, "strategy.cc_iterations");
    return std::unique_ptr<Strategy>(std::make_unique<T>(spec));
  };
}

// The trait of strategies that look at each site's update (common/registry.h): refused where the
// coordinator only learns the sum (secure aggregation).
constexpr char kIndividual[] = "individual_updates";

[[maybe_unused]] const bool kRegistered = [] {
  RegisterStrategy({"strategy", "fedavg", "the example-weighted mean of the sites' weights (McMahan et al. 2017)", {}},
                   [](const Job&) -> absl::StatusOr<std::unique_ptr<Strategy>> { return std::make_unique<FedAvg>(); });
  RegisterStrategy(
      {"strategy", "fedprox", "fedavg, with a proximal term mu/2 |w - w_global|^2 at the sites (Li et al. 2020)",
       {NumberKey("strategy.proximal_mu", 0.0, "the sites' proximal term", 0, 1e6)}},
      [](const Job& job) -> absl::StatusOr<std::unique_ptr<Strategy>> {
        return std::make_unique<FedAvg>(JobNumber(job, "strategy.proximal_mu"), "fedprox");
      });
  RegisterStrategy({"strategy", "fedavgm", "server momentum on the mean update (Hsu et al. 2019)",
                    {ServerLr(), NumberKey("strategy.momentum", 0.9, "server momentum", 0, 1)}},
                   FromSpec<ServerOptimizer>());
  RegisterStrategy({"strategy", "fedadagrad", "adaptive server optimizer (Reddi et al. 2021)", {ServerLr(), Beta1(), Tau()}},
                   FromSpec<ServerOptimizer>());
  for (const char* name : {"fedadam", "fedyogi"}) {
    RegisterStrategy({"strategy", name, "adaptive server optimizer (Reddi et al. 2021)", {ServerLr(), Beta1(), Beta2(), Tau()}},
                     FromSpec<ServerOptimizer>());
  }
  RegisterStrategy({"strategy", "median", "coordinate-wise median of the sites' weights (Yin et al. 2018)", {}, {kIndividual}},
                   FromSpec<Robust>());
  RegisterStrategy({"strategy", "trimmed_mean", "coordinate-wise mean after trimming each end (Yin et al. 2018)",
                    {NumberKey("strategy.trim_beta", 0.1, "fraction cut at each end", 0, 0.4999)},
                    {kIndividual}},
                   FromSpec<Robust>());
  const auto byzantine = [] { return IntegerKey("strategy.byzantine", 0, "f: the sites that may lie", 0, int64_t{1} << 40); };
  const auto multi_krum = [] {
    return IntegerKey("strategy.multi_krum", 0, "m: the best updates averaged (0: 1 for krum, n - f for multi_krum)",
                      0, int64_t{1} << 40);
  };
  RegisterStrategy({"strategy", "krum", "the update closest to its n - f - 2 neighbours (Blanchard et al. 2017)",
                    {byzantine(), multi_krum()}, {kIndividual}},
                   FromSpec<Krum>());
  RegisterStrategy({"strategy", "multi_krum",
                    "the mean of the m updates with the best Krum scores (Blanchard et al. 2017; m = n - f by default)",
                    {byzantine(), multi_krum()}, {kIndividual}},
                   FromSpec<Krum>());
  RegisterStrategy(
      {"strategy", "centered_clipping",
       "the last aggregate moved by each update's difference clipped to tau (Karimireddy et al. 2021)",
       {NumberKey("strategy.cc_tau", 0, "centered_clipping: the clipping radius (0: the median distance, each iteration)",
                  0, 1e12),
        IntegerKey("strategy.cc_iterations", 1, "centered_clipping: L, clipping iterations per round", 1, 100)},
       {kIndividual}},
      FromSpec<CenteredClipping>());
  return true;
}();

TypedRegistry<StrategyFactory>& Strategies() {
  static auto* registry = new TypedRegistry<StrategyFactory>("strategy", "strategy");
  return *registry;
}

}  // namespace

bool RegisterStrategy(ComponentInfo info, StrategyFactory factory) {
  return Strategies().Register(std::move(info), std::move(factory));
}

absl::StatusOr<std::unique_ptr<Strategy>> MakeStrategy(const Job& job) {
  auto factory = Strategies().Get(job.strategy.name);
  if (!factory.ok()) return factory.status();
  return (**factory)(job);
}

}  // namespace allround::aggregation
