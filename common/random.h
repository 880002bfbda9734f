#ifndef ALLROUND_COMMON_RANDOM_H_
#define ALLROUND_COMMON_RANDOM_H_

// Deterministic random numbers whose values do not depend on the standard library's
// implementation: std::uniform_int_distribution, std::shuffle and std::gamma_distribution may
// produce different sequences on another libstdc++ or libc++, and a seed must mean the same data
// order everywhere. Only the engine (std::mt19937_64, fully specified by the standard) is reused.
//
// Not thread-safe: each thread or purpose owns its own Rng, derived with DeriveSeed.

#include <cstdint>
#include <random>
#include <string_view>
#include <vector>

namespace allround {

// Mixes a parent seed with a purpose tag and indices (e.g. ("sampler", epoch, rank)) into an
// independent seed, so that one job seed derives every other seed (SplitMix64 finalizer).
uint64_t DeriveSeed(uint64_t parent, std::string_view purpose, uint64_t a = 0, uint64_t b = 0);

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}

  uint64_t Next() { return engine_(); }
  // Uniform integer in [0, n), n > 0, without modulo bias.
  uint64_t UniformInt(uint64_t n);
  // Uniform double in [0, 1) with 53 random bits.
  double UniformDouble();
  // Standard normal (Box-Muller).
  double Normal();
  // Gamma(shape, 1) by Marsaglia and Tsang; shape > 0.
  double Gamma(double shape);
  // Dirichlet(alpha, ..., alpha) with k components.
  std::vector<double> Dirichlet(double alpha, int k);

  // Fisher-Yates shuffle.
  template <typename T>
  void Shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) {
      size_t j = UniformInt(i);
      std::swap(v[i - 1], v[j]);
    }
  }
  // 0..n-1 in random order.
  std::vector<int64_t> Permutation(int64_t n);

 private:
  std::mt19937_64 engine_;
};

}  // namespace allround

#endif  // ALLROUND_COMMON_RANDOM_H_
