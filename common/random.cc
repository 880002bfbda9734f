#include "common/random.h"

#include <cmath>
#include <numeric>

namespace allround {
namespace {

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t DeriveSeed(uint64_t parent, std::string_view purpose, uint64_t a, uint64_t b) {
  uint64_t h = SplitMix(parent);
  for (char c : purpose) h = SplitMix(h ^ static_cast<unsigned char>(c));
  h = SplitMix(h ^ a);
  return SplitMix(h ^ b);
}

uint64_t Rng::UniformInt(uint64_t n) {
  // Rejection from the largest multiple of n below 2^64.
  const uint64_t limit = UINT64_MAX - (UINT64_MAX % n);
  uint64_t x;
  do {
    x = engine_();
  } while (x >= limit);
  return x % n;
}

double Rng::UniformDouble() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

double Rng::Normal() {
  double u1;
  do {
    u1 = UniformDouble();
  } while (u1 <= 0.0);
  const double u2 = UniformDouble();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

double Rng::Gamma(double shape) {
  if (shape < 1.0) {
    // Boost: Gamma(a) = Gamma(a + 1) * U^(1/a).
    double u;
    do {
      u = UniformDouble();
    } while (u <= 0.0);
    return Gamma(shape + 1.0) * std::pow(u, 1.0 / shape);
  }
  const double d = shape - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = Normal();
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = UniformDouble();
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
    if (u > 0.0 && std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
  }
}

std::vector<double> Rng::Dirichlet(double alpha, int k) {
  std::vector<double> p(k);
  double sum = 0.0;
  for (auto& x : p) {
    x = Gamma(alpha);
    sum += x;
  }
  if (sum <= 0.0) {  // every draw underflowed (tiny alpha): all mass on one component
    std::fill(p.begin(), p.end(), 0.0);
    p[UniformInt(k)] = 1.0;
    return p;
  }
  for (auto& x : p) x /= sum;
  return p;
}

std::vector<int64_t> Rng::Permutation(int64_t n) {
  std::vector<int64_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  Shuffle(v);
  return v;
}

}  // namespace allround
