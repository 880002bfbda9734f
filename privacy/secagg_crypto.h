#ifndef ALLROUND_PRIVACY_SECAGG_CRYPTO_H_
#define ALLROUND_PRIVACY_SECAGG_CRYPTO_H_

// The cryptographic building blocks of SecAgg+, each a thin wrapper over libsodium (no primitive is
// implemented here):
//   - X25519 key pairs and key agreement, hashed (BLAKE2b) with both public keys so both ends get
//     the same 32-byte key;
//   - a ChaCha20 PRG that expands a 32-byte seed into uint32 mask words (little-endian keystream);
//   - XChaCha20-Poly1305 encryption of Shamir shares between two neighbours, bound by associated
//     data to (round, sender, receiver).
// One agreed key never serves two purposes: masks use DeriveMaskSeed(agreed), share encryption a
// key derived under another libsodium KDF context.
//
// Thread-safe: no shared mutable state (libsodium's one-time initialization is itself thread-safe
// and runs on first use). Keys are caller-owned values; nothing here keeps them.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "privacy/bytes.h"

namespace allround::privacy {

// Starts libsodium (idempotent). Internal error when it cannot (no entropy source). Every function
// below that can fail calls it; ExpandMask/AddMask need no randomness and work regardless.
absl::Status InitCrypto();

struct KeyPair {
  Bytes32 public_key{};
  Bytes32 secret_key{};
};

// A fresh X25519 key pair.
absl::StatusOr<KeyPair> GenerateKeyPair();
// 32 uniformly random bytes (a self-mask seed).
absl::StatusOr<Bytes32> RandomBytes32();
// The X25519 public key of `secret_key`.
absl::StatusOr<Bytes32> PublicKeyOf(const Bytes32& secret_key);
// InvalidArgument for a public key of small order (one no agreement can use).
absl::Status CheckPublicKey(const Bytes32& public_key);

// A site's two advertised public keys (c: encryption, s: masking), each 32 bytes and passing
// CheckPublicKey; InvalidArgument prefixed with `who` otherwise. Server and sites both parse them.
struct PublicKeys {
  Bytes32 c{};
  Bytes32 s{};
};
absl::StatusOr<PublicKeys> ParsePublicKeys(std::string_view c_public_key, std::string_view s_public_key,
                                           const std::string& who);

// The key that `my_secret`'s owner and `their_public`'s owner share:
// BLAKE2b-256(X25519(my_secret, their_public) || lower public key || higher public key), the public
// keys ordered bytewise so both ends hash the same bytes. InvalidArgument when X25519 refuses
// (their_public has small order).
absl::StatusOr<Bytes32> Agree(const Bytes32& my_secret, const Bytes32& their_public, const Bytes32& my_public);

// The seed of a pairwise mask, derived from an agreed key (KDF context distinct from encryption).
Bytes32 DeriveMaskSeed(const Bytes32& agreed);

// n words of the ChaCha20 (IETF) keystream under key `seed` and nonce `stream_id`, read as
// little-endian uint32. Deterministic; different stream ids give independent streams.
std::vector<uint32_t> ExpandMask(const Bytes32& seed, uint64_t stream_id, size_t n);
// acc[i] += w[first_word + i] (or -=, when `subtract`), mod 2^32, where w is ExpandMask's stream;
// generated in cache-sized chunks, with no allocation. `first_word` must be a multiple of 16 (one
// ChaCha20 block) so that a long vector can be unmasked in independent slices.
void AddMask(const Bytes32& seed, uint64_t stream_id, bool subtract, absl::Span<uint32_t> acc,
             size_t first_word = 0);

// What a share ciphertext is bound to: decrypting it under any other triple fails.
struct ShareAd {
  uint64_t round = 0;
  uint32_t sender = 0;
  uint32_t receiver = 0;
};
// Ciphertext bytes beyond the plaintext: a random 24-byte nonce in front, a 16-byte tag behind.
inline constexpr size_t kShareCiphertextOverhead = 24 + 16;

// Encrypts `plaintext` for the receiver with XChaCha20-Poly1305 under a key derived from `agreed`
// (the sender's and receiver's agreement of their encryption keys).
absl::StatusOr<std::string> EncryptShare(const Bytes32& agreed, const ShareAd& ad, std::string_view plaintext);
// Inverse of EncryptShare. PermissionDenied, naming sender, receiver and round, when the ciphertext
// was changed, was made for another (round, sender, receiver) or under another key;
// InvalidArgument when it is too short to be a ciphertext.
absl::StatusOr<std::string> DecryptShare(const Bytes32& agreed, const ShareAd& ad, std::string_view ciphertext);

}  // namespace allround::privacy

#endif  // ALLROUND_PRIVACY_SECAGG_CRYPTO_H_
