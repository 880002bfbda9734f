// allround-dp: the privacy accountant from the command line (privacy/accountant.h), as Opacus's
// and TensorFlow Privacy's compute_dp_sgd_privacy scripts are.
//
//   allround-dp epsilon --q 0.004 --noise 1.1 --steps 15000 --delta 1e-5
//       epsilon=... order=...
//   allround-dp noise --q 0.004 --steps 15000 --epsilon 3 --delta 1e-5
//       noise_multiplier=... epsilon=...
//   allround-dp orders      (the RDP orders it tracks, one line, comma-separated)
//
// q is the sampling rate (batch size / dataset size for DP-SGD; the expected sampled fraction of
// sites for DP-FedAvg), steps the number of noisy releases.

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "absl/strings/str_join.h"
#include "privacy/accountant.h"

int main(int argc, char** argv) {
  using namespace allround;
  CLI::App app{"allround-dp: (epsilon, delta) of DP-SGD / DP-FedAvg by Renyi DP accounting of the sampled Gaussian "
               "mechanism"};
  app.require_subcommand(1);
  double q = 0, noise = 0, delta = 1e-5, epsilon = 0;
  int64_t steps = 0;
  auto* eps_cmd = app.add_subcommand("epsilon", "the epsilon spent by STEPS steps at rate Q with noise multiplier NOISE");
  eps_cmd->add_option("--q", q, "sampling rate, in [0, 1]")->required()->check(CLI::Range(0.0, 1.0));
  eps_cmd->add_option("--noise", noise, "noise multiplier (std / clip norm), >= 0")->required()->check(CLI::NonNegativeNumber);
  eps_cmd->add_option("--steps", steps, "noisy steps")->required()->check(CLI::NonNegativeNumber);
  eps_cmd->add_option("--delta", delta, "delta, in (0, 1)")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  auto* noise_cmd = app.add_subcommand("noise", "the smallest noise multiplier that keeps STEPS steps within EPSILON");
  noise_cmd->add_option("--q", q, "sampling rate, in (0, 1]")->required()->check(CLI::Range(0.0, 1.0));
  noise_cmd->add_option("--steps", steps, "noisy steps")->required()->check(CLI::PositiveNumber);
  noise_cmd->add_option("--epsilon", epsilon, "target epsilon, > 0")->required()->check(CLI::PositiveNumber);
  noise_cmd->add_option("--delta", delta, "delta, in (0, 1)")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  auto* orders_cmd = app.add_subcommand("orders", "the RDP orders tracked");
  CLI11_PARSE(app, argc, argv);

  if (*orders_cmd) {
    std::printf("%s\n", absl::StrJoin(privacy::DefaultRdpOrders(), ",").c_str());
    return 0;
  }
  if (delta <= 0 || delta >= 1) {
    std::fprintf(stderr, "allround-dp: --delta must be in (0, 1), not %g\n", delta);
    return 2;
  }
  if (*eps_cmd) {
    privacy::RdpAccountant accountant;
    accountant.Compose(q, noise, steps);
    const privacy::PrivacySpent spent = accountant.Spent(delta);
    std::printf("epsilon=%.10g order=%g\n", spent.epsilon, spent.order);
    return 0;
  }
  auto sigma = privacy::NoiseForEpsilon(q, steps, epsilon, delta);
  if (!sigma.ok()) {
    std::fprintf(stderr, "allround-dp: %s\n", std::string(sigma.status().message()).c_str());
    return 1;
  }
  privacy::RdpAccountant accountant;
  accountant.Compose(q, *sigma, steps);
  std::printf("noise_multiplier=%.10g epsilon=%.10g\n", *sigma, accountant.Spent(delta).epsilon);
  return 0;
}
