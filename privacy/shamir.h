#ifndef ALLROUND_PRIVACY_SHAMIR_H_
#define ALLROUND_PRIVACY_SHAMIR_H_

// t-of-n Shamir secret sharing of a 32-byte secret over GF(p), p = 2^61 - 1.
//
// The secret is cut into five field elements of 7 bytes (56 bits) each, little-endian; the last
// holds the remaining 4 bytes. Each element gets its own random polynomial of degree t-1 whose
// constant term is the element; share x holds the five polynomials' values at x (x = 1..n). Any t
// shares give the secret back; t-1 shares say nothing about it. Coefficients come from
// libsodium's randombytes, uniform in [0, p).
//
// Shares are not authenticated. Given more than t shares, reconstruction checks that they all lie on
// one polynomial; given exactly t, a changed share gives another secret, caught only by the range
// check (5 bits per element of slack). Whoever needs more checks the result (the SecAgg server
// compares a reconstructed secret key with its public key).
//
// All functions are thread-safe (no shared state).

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "privacy/bytes.h"

namespace allround::privacy {

inline constexpr uint64_t kShamirPrime = (uint64_t{1} << 61) - 1;
inline constexpr int kShamirElements = 5;
// x (uint32) and five elements (uint64), little-endian.
inline constexpr size_t kShamirShareBytes = 4 + 8 * kShamirElements;
// Shares per secret, at most; far below p, so x never wraps.
inline constexpr int kShamirMaxShares = 65535;

struct ShamirShare {
  uint32_t x = 0;                              // 1-based evaluation point; 0 is the secret itself
  std::array<uint64_t, kShamirElements> y{};   // each < kShamirPrime
};

// Shares `secret` t-of-n: returns n shares with x = 1..n. Fails with InvalidArgument unless
// 1 <= threshold <= num_shares <= kShamirMaxShares, and with Internal if libsodium cannot start.
absl::StatusOr<std::vector<ShamirShare>> ShamirSplit(const Bytes32& secret, int threshold, int num_shares);

// Lagrange interpolation at 0 over the first `threshold` shares; every further share must lie on
// the same polynomial, so with more than t shares a changed share is always caught (with exactly t
// only the range check can catch it). Cost O(t * n) field products. Fails with InvalidArgument
// when fewer than `threshold` shares are given, two share the same x, an x is 0 or an element is
// >= p; with DataLoss ("shares do not belong together") when a further share is off the polynomial
// or the result does not fit the 56/32-bit layout.
absl::StatusOr<Bytes32> ShamirReconstruct(const std::vector<ShamirShare>& shares, int threshold);

// Exactly kShamirShareBytes bytes.
std::string SerializeShare(const ShamirShare& share);
// Inverse of SerializeShare; InvalidArgument on a wrong length, x == 0 or an element >= p.
absl::StatusOr<ShamirShare> ParseShare(std::string_view bytes);

}  // namespace allround::privacy

#endif  // ALLROUND_PRIVACY_SHAMIR_H_
