#ifndef ALLROUND_ALGORITHMS_AGGREGATION_BYZANTINE_H_
#define ALLROUND_ALGORITHMS_AGGREGATION_BYZANTINE_H_

// Byzantine sites in simulation (job keys attack.*): what a robust strategy is measured against.
// The coordinator plays the colluding attackers: in each round it replaces the updates of the
// attacking sites it sampled with what the attack sends, knowing every honest update of the round
// (the omniscient adversary that Baruch et al. 2019 and Karimireddy et al. 2021 measure defences
// against). Label flipping is data poisoning and happens at the site instead: the coordinator tells
// an attacking site to train on flipped labels (y -> C - 1 - y), and a site does so only when its
// own job names the attack too.
//
// Attacks (x: the global model, x_i: site i's weights, delta_i = x_i - x; all in float64, then the
// tensor's dtype; integer tensors untouched):
//  - sign_flip: x - delta_i (the attacker pushes back along its own honest step).
//  - scaling: x + attack.scale delta_i (a boosted honest update: defeats plain averaging).
//  - gaussian: x + N(0, attack.sigma^2) per coordinate, seeded by the job seed, round and site.
//  - label_flip: the site's own update, trained on flipped labels.
//  - alie ("a little is enough", Baruch et al. 2019): every attacker sends x + mu - z sigma, with mu
//    and sigma the coordinate-wise mean and standard deviation of the round's honest deltas, and z
//    attack.alie_z or, at 0, Baruch's z_max = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f, for the
//    round's n updates and f attackers: just inside what median and Krum accept.
//
// Who attacks: the attack.sites joined sites that a shuffle seeded by the job seed picks from all
// joined sites in name order. With every site joined before the first round
// (federated.min_available), that is one fixed set for the run, the same on a rerun and a resume.
//
// Thread-compatible; pure functions of their arguments.

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "algorithms/aggregation/strategy.h"
#include "common/job.h"

namespace allround::aggregation {

enum class AttackKind { kNone, kSignFlip, kScaling, kGaussian, kLabelFlip, kAlie };

struct AttackSpec {
  AttackKind kind = AttackKind::kNone;
  std::string name = "none";  // as in attack.kind
  int64_t sites = 0;          // f: how many joined sites attack
  double scale = 10.0;        // scaling
  double sigma = 1.0;         // gaussian
  double alie_z = 0.0;        // alie: 0 = Baruch's z_max for the round
  uint64_t seed = 1;          // the job seed

  bool on() const { return kind != AttackKind::kNone && sites > 0; }
  // The coordinator changes the attackers' updates (every attack but label flipping).
  bool poisons_updates() const { return on() && kind != AttackKind::kLabelFlip; }
};

// The job's attack.* keys (registered in byzantine.cc; refused together at job reading where they
// cannot work: an attack without attackers, label flipping in a mode without labels, an attack on
// updates under secure aggregation).
AttackSpec AttackSpecFromJob(const Job& job);

// The attackers among `joined` (every joined site's name; order does not matter): spec.sites of
// them (all, if fewer joined), drawn by a shuffle seeded by spec.seed over the names sorted.
std::set<std::string> ChooseAttackers(const AttackSpec& spec, std::vector<std::string> joined);

// Baruch et al.'s z_max for n updates of which f attack (0 where the formula leaves no room).
double AlieZ(int64_t n, int64_t f);

// Replaces, in place, the updates at the positions where attacker[i] is true with what the attack
// sends (updates in aggregation order, names[i] the name of update i's site; the Gaussian attack is
// seeded by the job seed, `round` and the attacker's name, so it draws the same whoever else
// contributed). Fails, changing nothing, on sizes that differ or an update whose layout differs
// from `global`. No-op for label flipping and for no attack.
absl::Status ApplyAttack(const AttackSpec& spec, const NamedTensors& global, int64_t round,
                         const std::vector<bool>& attacker, const std::vector<std::string>& names,
                         std::vector<SiteUpdate>& updates);

// Flips class labels (int64, in [0, classes)) to classes - 1 - y; undefined tensors stay so.
at::Tensor FlipLabels(const at::Tensor& labels, int64_t classes);

}  // namespace allround::aggregation

#endif  // ALLROUND_ALGORITHMS_AGGREGATION_BYZANTINE_H_
