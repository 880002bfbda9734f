// The accountant's own invariants; tests/accountant_test.py checks its figures against Google's
// dp_accounting.

#include "privacy/accountant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace allround::privacy {
namespace {

TEST(PrivacyAccountant, EdgeCasesHaveTheirClosedForms) {
  // No sampling: the Gaussian mechanism itself, order / (2 sigma^2).
  EXPECT_DOUBLE_EQ(SampledGaussianRdp(1.0, 2.0, 3.0), 3.0 / 8.0);
  EXPECT_EQ(SampledGaussianRdp(0.0, 1.0, 3.0), 0.0);
  EXPECT_TRUE(std::isinf(SampledGaussianRdp(0.1, 0.0, 3.0)));
  RdpAccountant none;
  EXPECT_EQ(none.Spent(1e-5).epsilon, 0.0);
  // Integer order 2 by hand: A_2 = (1-q)^2 + 2q(1-q) + q^2 e^{1/sigma^2}.
  const double q = 0.1, sigma = 1.5;
  const double a2 = (1 - q) * (1 - q) + 2 * q * (1 - q) + q * q * std::exp(1 / (sigma * sigma));
  EXPECT_NEAR(SampledGaussianRdp(q, sigma, 2.0), std::log(a2), 1e-12);
}

TEST(PrivacyAccountant, EpsilonGrowsWithStepsAndFallsWithNoise) {
  RdpAccountant a, b, c;
  a.Compose(0.01, 1.1, 1000);
  b.Compose(0.01, 1.1, 2000);
  c.Compose(0.01, 2.0, 1000);
  EXPECT_LT(a.Spent(1e-5).epsilon, b.Spent(1e-5).epsilon);
  EXPECT_GT(a.Spent(1e-5).epsilon, c.Spent(1e-5).epsilon);
  // Composition adds up: two calls of 1000 equal one of 2000.
  a.Compose(0.01, 1.1, 1000);
  EXPECT_DOUBLE_EQ(a.Spent(1e-5).epsilon, b.Spent(1e-5).epsilon);
  // A resumed run restores the accumulated RDP.
  RdpAccountant resumed;
  ASSERT_TRUE(resumed.SetRdp(b.rdp()).ok());
  EXPECT_DOUBLE_EQ(resumed.Spent(1e-5).epsilon, b.Spent(1e-5).epsilon);
  EXPECT_FALSE(resumed.SetRdp({1.0, 2.0}).ok());
}

TEST(PrivacyAccountant, NoiseForEpsilonIsTheSmallestThatKeepsTheBudget) {
  auto sigma = NoiseForEpsilon(256.0 / 60000, 14000, 3.0, 1e-5);
  ASSERT_TRUE(sigma.ok()) << sigma.status();
  RdpAccountant at, below;
  at.Compose(256.0 / 60000, *sigma, 14000);
  below.Compose(256.0 / 60000, *sigma * (1 - 1e-3), 14000);
  EXPECT_LE(at.Spent(1e-5).epsilon, 3.0);
  EXPECT_GT(below.Spent(1e-5).epsilon, 3.0);
  EXPECT_FALSE(NoiseForEpsilon(0.01, 100, 0.0, 1e-5).ok());
  EXPECT_FALSE(NoiseForEpsilon(0.01, 100, 1.0, 1.5).ok());
}

}  // namespace
}  // namespace allround::privacy
