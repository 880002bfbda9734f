#include "privacy/secagg_crypto.h"

#include <sodium.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace allround::privacy {
namespace {

static_assert(crypto_box_PUBLICKEYBYTES == 32 && crypto_box_SECRETKEYBYTES == 32);
static_assert(crypto_scalarmult_BYTES == 32 && crypto_scalarmult_SCALARBYTES == 32);
static_assert(crypto_kdf_KEYBYTES == 32 && crypto_kdf_CONTEXTBYTES == 8);
static_assert(crypto_stream_chacha20_ietf_KEYBYTES == 32 && crypto_stream_chacha20_ietf_NONCEBYTES == 12);
static_assert(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + crypto_aead_xchacha20poly1305_ietf_ABYTES ==
              kShareCiphertextOverhead);

// libsodium KDF contexts (8 bytes each): one per use of an agreed key.
constexpr char kMaskContext[] = "sagMask1";
constexpr char kShareContext[] = "sagShar1";
constexpr char kAgreeTag[] = "allround/secagg/agree/v1";
constexpr char kAdTag[] = "allround/secagg/share/v1";

// Words per chunk of keystream: 16 KiB, a multiple of the 16-word ChaCha20 block.
constexpr size_t kChunkWords = 4096;

Bytes32 DeriveKey(const Bytes32& agreed, const char (&context)[9]) {
  Bytes32 out;
  crypto_kdf_derive_from_key(out.data(), out.size(), 1, context, agreed.data());
  return out;
}

std::string AssociatedData(const ShareAd& ad) {
  std::string out(kAdTag, sizeof kAdTag - 1);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((ad.round >> (8 * i)) & 0xff));
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((ad.sender >> (8 * i)) & 0xff));
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((ad.receiver >> (8 * i)) & 0xff));
  return out;
}

}  // namespace

absl::Status InitCrypto() {
  // sodium_init is idempotent and thread-safe; 1 means it had already run.
  if (sodium_init() < 0) return absl::InternalError("libsodium failed to initialize (no entropy source?)");
  return absl::OkStatus();
}

absl::StatusOr<KeyPair> GenerateKeyPair() {
  if (auto s = InitCrypto(); !s.ok()) return s;
  KeyPair kp;
  if (crypto_box_keypair(kp.public_key.data(), kp.secret_key.data()) != 0) {
    return absl::InternalError("libsodium could not make an X25519 key pair");
  }
  return kp;
}

absl::StatusOr<Bytes32> RandomBytes32() {
  if (auto s = InitCrypto(); !s.ok()) return s;
  Bytes32 out;
  randombytes_buf(out.data(), out.size());
  return out;
}

absl::StatusOr<Bytes32> PublicKeyOf(const Bytes32& secret_key) {
  if (auto s = InitCrypto(); !s.ok()) return s;
  Bytes32 out;
  if (crypto_scalarmult_base(out.data(), secret_key.data()) != 0) {
    return absl::InvalidArgumentError("X25519 refused this secret key");
  }
  return out;
}

absl::Status CheckPublicKey(const Bytes32& public_key) {
  if (auto s = InitCrypto(); !s.ok()) return s;
  // A small-order point gives the all-zero result (refused by libsodium) for every clamped scalar.
  Bytes32 probe, q;
  probe.fill(0x5a);
  const int rc = crypto_scalarmult(q.data(), probe.data(), public_key.data());
  sodium_memzero(q.data(), q.size());
  if (rc != 0) return absl::InvalidArgumentError("public key has small order (X25519 refuses it)");
  return absl::OkStatus();
}

absl::StatusOr<Bytes32> Agree(const Bytes32& my_secret, const Bytes32& their_public, const Bytes32& my_public) {
  if (auto s = InitCrypto(); !s.ok()) return s;
  Bytes32 q;
  if (crypto_scalarmult(q.data(), my_secret.data(), their_public.data()) != 0) {
    return absl::InvalidArgumentError("key agreement refused: the peer's public key has small order");
  }
  const bool mine_first = std::memcmp(my_public.data(), their_public.data(), my_public.size()) < 0;
  const Bytes32& lo = mine_first ? my_public : their_public;
  const Bytes32& hi = mine_first ? their_public : my_public;
  crypto_generichash_state st;
  Bytes32 out;
  crypto_generichash_init(&st, nullptr, 0, out.size());
  crypto_generichash_update(&st, reinterpret_cast<const unsigned char*>(kAgreeTag), sizeof kAgreeTag - 1);
  crypto_generichash_update(&st, q.data(), q.size());
  crypto_generichash_update(&st, lo.data(), lo.size());
  crypto_generichash_update(&st, hi.data(), hi.size());
  crypto_generichash_final(&st, out.data(), out.size());
  sodium_memzero(q.data(), q.size());
  sodium_memzero(&st, sizeof st);
  return out;
}

Bytes32 DeriveMaskSeed(const Bytes32& agreed) { return DeriveKey(agreed, kMaskContext); }

std::vector<uint32_t> ExpandMask(const Bytes32& seed, uint64_t stream_id, size_t n) {
  std::vector<uint32_t> out(n, 0);
  AddMask(seed, stream_id, /*subtract=*/false, absl::MakeSpan(out));
  return out;
}

void AddMask(const Bytes32& seed, uint64_t stream_id, bool subtract, absl::Span<uint32_t> acc, size_t first_word) {
  // A programmer error, not input: callers slice on block boundaries.
  if (first_word % 16 != 0) std::abort();
  // Picks the fastest ChaCha20 code; without it the reference code gives the same stream.
  [[maybe_unused]] const int sodium = sodium_init();
  unsigned char nonce[crypto_stream_chacha20_ietf_NONCEBYTES] = {};
  for (int i = 0; i < 8; ++i) nonce[i] = static_cast<unsigned char>((stream_id >> (8 * i)) & 0xff);
  alignas(64) unsigned char buf[kChunkWords * 4];
  for (size_t done = 0; done < acc.size(); done += kChunkWords) {
    const size_t words = std::min(kChunkWords, acc.size() - done);
    const size_t bytes = ((words + 15) / 16) * 64;  // whole blocks
    const uint64_t block = (first_word + done) / 16;
    std::memset(buf, 0, bytes);
    crypto_stream_chacha20_ietf_xor_ic(buf, buf, bytes, nonce, static_cast<uint32_t>(block), seed.data());
    uint32_t* out = acc.data() + done;
    for (size_t i = 0; i < words; ++i) {
      const unsigned char* p = buf + 4 * i;
      const uint32_t w = static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
                         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
      out[i] = subtract ? out[i] - w : out[i] + w;
    }
  }
  sodium_memzero(buf, sizeof buf);
}

absl::StatusOr<std::string> EncryptShare(const Bytes32& agreed, const ShareAd& ad, std::string_view plaintext) {
  if (auto s = InitCrypto(); !s.ok()) return s;
  Bytes32 key = DeriveKey(agreed, kShareContext);
  const std::string aad = AssociatedData(ad);
  std::string out(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + plaintext.size() +
                      crypto_aead_xchacha20poly1305_ietf_ABYTES, '\0');
  auto* nonce = reinterpret_cast<unsigned char*>(out.data());
  randombytes_buf(nonce, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
  unsigned long long written = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(
      nonce + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, &written,
      reinterpret_cast<const unsigned char*>(plaintext.data()), plaintext.size(),
      reinterpret_cast<const unsigned char*>(aad.data()), aad.size(), nullptr, nonce, key.data());
  sodium_memzero(key.data(), key.size());
  out.resize(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + written);
  return out;
}

absl::StatusOr<std::string> DecryptShare(const Bytes32& agreed, const ShareAd& ad, std::string_view ciphertext) {
  if (auto s = InitCrypto(); !s.ok()) return s;
  if (ciphertext.size() < kShareCiphertextOverhead) {
    return absl::InvalidArgumentError(absl::StrCat("share ciphertext from site ", ad.sender, " to site ", ad.receiver,
                                                   " has ", ciphertext.size(), " bytes: too short"));
  }
  Bytes32 key = DeriveKey(agreed, kShareContext);
  const std::string aad = AssociatedData(ad);
  const auto* nonce = reinterpret_cast<const unsigned char*>(ciphertext.data());
  const size_t body = ciphertext.size() - crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
  std::string out(body - crypto_aead_xchacha20poly1305_ietf_ABYTES, '\0');
  unsigned long long written = 0;
  const int rc = crypto_aead_xchacha20poly1305_ietf_decrypt(
      reinterpret_cast<unsigned char*>(out.data()), &written, nullptr,
      nonce + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, body,
      reinterpret_cast<const unsigned char*>(aad.data()), aad.size(), nonce, key.data());
  sodium_memzero(key.data(), key.size());
  if (rc != 0) {
    sodium_memzero(out.data(), out.size());
    return absl::PermissionDeniedError(absl::StrCat(
        "share ciphertext from site ", ad.sender, " to site ", ad.receiver, " (round ", ad.round,
        ") failed authentication: changed in transit, or made for another round, pair or key"));
  }
  out.resize(written);
  return out;
}

absl::StatusOr<PublicKeys> ParsePublicKeys(std::string_view c_public_key, std::string_view s_public_key,
                                           const std::string& who) {
  auto c = ToBytes32(c_public_key, absl::StrCat(who, ": encryption key"));
  if (!c.ok()) return c.status();
  auto s = ToBytes32(s_public_key, absl::StrCat(who, ": masking key"));
  if (!s.ok()) return s.status();
  for (const Bytes32* key : {&*c, &*s}) {
    if (auto st = CheckPublicKey(*key); !st.ok()) return absl::InvalidArgumentError(absl::StrCat(who, ": ", st.message()));
  }
  return PublicKeys{*c, *s};
}

}  // namespace allround::privacy
