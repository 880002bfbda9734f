#include "privacy/shamir.h"

#include <sodium.h>

#include <set>

#include "absl/strings/str_cat.h"

namespace allround::privacy {
namespace {

constexpr uint64_t kP = kShamirPrime;
constexpr int kElementBytes = 7;

// a * b mod p for a, b < p: the product is < 2^122, and 2^61 = 1 (mod p) folds it twice.
uint64_t MulMod(uint64_t a, uint64_t b) {
  const unsigned __int128 v = static_cast<unsigned __int128>(a) * b;
  uint64_t r = (static_cast<uint64_t>(v) & kP) + static_cast<uint64_t>(v >> 61);
  r = (r & kP) + (r >> 61);
  return r >= kP ? r - kP : r;
}
uint64_t AddMod(uint64_t a, uint64_t b) {
  const uint64_t s = a + b;
  return s >= kP ? s - kP : s;
}
uint64_t SubMod(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kP - b; }
uint64_t PowMod(uint64_t base, uint64_t e) {
  uint64_t r = 1;
  while (e) {
    if (e & 1) r = MulMod(r, base);
    base = MulMod(base, base);
    e >>= 1;
  }
  return r;
}
// Fermat: a^(p-2) = a^-1 for a != 0.
uint64_t InvMod(uint64_t a) { return PowMod(a, kP - 2); }

// Inverts every element (all non-zero) with one field inversion (Montgomery's trick).
std::vector<uint64_t> BatchInverse(const std::vector<uint64_t>& a) {
  std::vector<uint64_t> prefix(a.size() + 1, 1);
  for (size_t i = 0; i < a.size(); ++i) prefix[i + 1] = MulMod(prefix[i], a[i]);
  uint64_t inv = InvMod(prefix.back());
  std::vector<uint64_t> out(a.size());
  for (size_t i = a.size(); i-- > 0;) {
    out[i] = MulMod(inv, prefix[i]);
    inv = MulMod(inv, a[i]);
  }
  return out;
}

// 1 / prod_{j != i} (x_i - x_j) for distinct x.
std::vector<uint64_t> BarycentricDenominators(const std::vector<ShamirShare>& base) {
  std::vector<uint64_t> den(base.size(), 1);
  for (size_t i = 0; i < base.size(); ++i) {
    for (size_t j = 0; j < base.size(); ++j) {
      if (j != i) den[i] = MulMod(den[i], SubMod(base[i].x, base[j].x));
    }
  }
  return BatchInverse(den);
}

// The Lagrange basis of `base` evaluated at x0: l_i(x0) = prod_{j != i} (x0 - x_j) / (x_i - x_j).
// x0 is 0 or an x not in base.
std::vector<uint64_t> LagrangeAt(const std::vector<ShamirShare>& base, const std::vector<uint64_t>& inv_den,
                                 uint64_t x0) {
  std::vector<uint64_t> diff(base.size());
  uint64_t all = 1;
  for (size_t i = 0; i < base.size(); ++i) {
    diff[i] = SubMod(x0, base[i].x);
    all = MulMod(all, diff[i]);
  }
  const std::vector<uint64_t> inv_diff = BatchInverse(diff);
  std::vector<uint64_t> l(base.size());
  for (size_t i = 0; i < base.size(); ++i) l[i] = MulMod(MulMod(all, inv_diff[i]), inv_den[i]);
  return l;
}

uint64_t RandomElement() {
  for (;;) {
    uint64_t v;
    randombytes_buf(&v, sizeof v);
    v &= kP;  // uniform in [0, 2^61); reject the single value p
    if (v != kP) return v;
  }
}

// Bytes [7e, 7e + 7) of the secret (clipped at 32), little-endian.
std::array<uint64_t, kShamirElements> ToElements(const Bytes32& secret) {
  std::array<uint64_t, kShamirElements> out{};
  for (size_t i = 0; i < secret.size(); ++i) {
    out[i / kElementBytes] |= static_cast<uint64_t>(secret[i]) << (8 * (i % kElementBytes));
  }
  return out;
}

void PutLe(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t GetLe(std::string_view in, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(in[at + i])) << (8 * i);
  return v;
}

}  // namespace

absl::StatusOr<std::vector<ShamirShare>> ShamirSplit(const Bytes32& secret, int threshold, int num_shares) {
  if (threshold < 1 || num_shares < threshold || num_shares > kShamirMaxShares) {
    return absl::InvalidArgumentError(absl::StrCat("Shamir: cannot share ", threshold, "-of-", num_shares,
                                                   " (need 1 <= t <= n <= ", kShamirMaxShares, ")"));
  }
  if (sodium_init() < 0) return absl::InternalError("Shamir: libsodium failed to initialize");
  std::vector<ShamirShare> shares(num_shares);
  for (int i = 0; i < num_shares; ++i) shares[i].x = static_cast<uint32_t>(i + 1);
  std::array<uint64_t, kShamirElements> elements = ToElements(secret);
  std::vector<uint64_t> coef(threshold);
  for (int e = 0; e < kShamirElements; ++e) {
    coef[0] = elements[e];
    for (int c = 1; c < threshold; ++c) coef[c] = RandomElement();
    for (auto& share : shares) {  // Horner
      uint64_t y = 0;
      for (int c = threshold - 1; c >= 0; --c) y = AddMod(MulMod(y, share.x), coef[c]);
      share.y[e] = y;
    }
  }
  sodium_memzero(coef.data(), coef.size() * sizeof(uint64_t));
  sodium_memzero(elements.data(), sizeof elements);
  return shares;
}

absl::StatusOr<Bytes32> ShamirReconstruct(const std::vector<ShamirShare>& shares, int threshold) {
  if (threshold < 1 || shares.size() < static_cast<size_t>(threshold)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Shamir: ", shares.size(), " shares given, the threshold is ", threshold));
  }
  std::set<uint32_t> xs;
  for (const auto& s : shares) {
    if (s.x == 0) return absl::InvalidArgumentError("Shamir: a share has x = 0");
    if (!xs.insert(s.x).second) return absl::InvalidArgumentError(absl::StrCat("Shamir: two shares have x = ", s.x));
    for (uint64_t y : s.y) {
      if (y >= kP) return absl::InvalidArgumentError(absl::StrCat("Shamir: share x = ", s.x, " holds a value >= p"));
    }
  }
  // The first t shares fix the polynomial; its value at 0 is the secret, and every further share
  // must lie on it too (so with more than t shares one changed share is always caught).
  const std::vector<ShamirShare> base(shares.begin(), shares.begin() + threshold);
  const std::vector<uint64_t> inv_den = BarycentricDenominators(base);
  std::array<uint64_t, kShamirElements> acc{};
  std::vector<uint64_t> l = LagrangeAt(base, inv_den, 0);
  for (int i = 0; i < threshold; ++i) {
    for (int e = 0; e < kShamirElements; ++e) acc[e] = AddMod(acc[e], MulMod(l[i], base[i].y[e]));
  }
  for (size_t k = threshold; k < shares.size(); ++k) {
    l = LagrangeAt(base, inv_den, shares[k].x);
    for (int e = 0; e < kShamirElements; ++e) {
      uint64_t v = 0;
      for (int i = 0; i < threshold; ++i) v = AddMod(v, MulMod(l[i], base[i].y[e]));
      if (v != shares[k].y[e]) {
        sodium_memzero(acc.data(), sizeof acc);
        return absl::DataLossError(absl::StrCat("Shamir: shares do not belong together (share x = ", shares[k].x,
                                                " is not on the polynomial of the first ", threshold, ")"));
      }
    }
  }
  Bytes32 secret{};
  for (int e = 0; e < kShamirElements; ++e) {
    const int bytes = std::min<int>(kElementBytes, static_cast<int>(secret.size()) - e * kElementBytes);
    if (acc[e] >> (8 * bytes)) {
      sodium_memzero(acc.data(), sizeof acc);
      return absl::DataLossError("Shamir: shares do not belong together (the result is not a sharing of 32 bytes)");
    }
    for (int b = 0; b < bytes; ++b) secret[e * kElementBytes + b] = static_cast<uint8_t>(acc[e] >> (8 * b));
  }
  sodium_memzero(acc.data(), sizeof acc);
  return secret;
}

std::string SerializeShare(const ShamirShare& share) {
  std::string out;
  out.reserve(kShamirShareBytes);
  PutLe(out, share.x, 4);
  for (uint64_t y : share.y) PutLe(out, y, 8);
  return out;
}

absl::StatusOr<ShamirShare> ParseShare(std::string_view bytes) {
  if (bytes.size() != kShamirShareBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("Shamir share has ", bytes.size(), " bytes, not ", kShamirShareBytes));
  }
  ShamirShare share;
  share.x = static_cast<uint32_t>(GetLe(bytes, 0, 4));
  if (share.x == 0) return absl::InvalidArgumentError("Shamir share has x = 0");
  for (int e = 0; e < kShamirElements; ++e) {
    share.y[e] = GetLe(bytes, 4 + 8 * e, 8);
    if (share.y[e] >= kP) {
      return absl::InvalidArgumentError(absl::StrCat("Shamir share x = ", share.x, ": element ", e, " is not below p"));
    }
  }
  return share;
}

}  // namespace allround::privacy
