#ifndef ALLROUND_COMMON_TEXT_FILE_H_
#define ALLROUND_COMMON_TEXT_FILE_H_

// Small files that flags name: certificates, keys, token lists. Errors name the flag and path.

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace allround {

// The whole file; NotFound if it cannot be opened, InvalidArgument if it is empty.
absl::StatusOr<std::string> ReadTextFile(const std::string& path, const std::string& flag);

// A PEM file of the given kind: "CERTIFICATE" (a certificate or chain, a CA) or "PRIVATE KEY" (an
// unencrypted key: PKCS#8, RSA or EC; refused when open to other users). gRPC only logs what it cannot parse, and then fails the
// handshake or the listen, so a wrong file is refused here, naming the flag and what it holds.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& flag, const std::string& kind);

// Creates the directory a flag names (and its parents) unless it exists; checked at start, so a
// bad path fails before any work rather than at the first file written into it.
absl::Status MakeFlagDirectory(const std::string& path, const std::string& flag);

// Files that hold a secret (a private key, tokens) must be closed to other users, as ssh requires
// of keys: PermissionDenied, naming the mode and the chmod that fixes it, when group or others
// have any permission on it.
absl::Status CheckPrivateFile(const std::string& path, const std::string& flag);

// One token, alone in a private file (surrounding whitespace dropped): a token on the command
// line is visible to every user of the machine in ps.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path, const std::string& flag);

// Compares a presented token (or other secret) with the expected one in time that depends on
// their lengths only, so a caller cannot learn a token's prefix from how fast a guess is refused.
bool SameToken(const std::string& expected, const std::string& presented);

// One token from either a flag's value or a private file (ReadTokenFile): the file's when
// `path` is given, the value's otherwise; both at once is an error naming the two flags.
absl::StatusOr<std::string> TokenFromFlags(const std::string& value, const std::string& value_flag,
                                           const std::string& path, const std::string& path_flag);

// "name token" lines (blank lines skipped): name -> token. Refuses a file open to other users, a
// malformed line, a repeated name and an empty file.
absl::StatusOr<std::map<std::string, std::string>> ReadTokensFile(const std::string& path, const std::string& flag);

}  // namespace allround

#endif  // ALLROUND_COMMON_TEXT_FILE_H_
