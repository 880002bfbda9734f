#ifndef ALLROUND_PRIVACY_BYTES_H_
#define ALLROUND_PRIVACY_BYTES_H_

// Fixed-size byte strings (keys, seeds, secrets) and their conversion to and from the std::string
// that messages carry, so that a message maps one to one onto a protobuf `bytes` field.

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace allround::privacy {

using Bytes32 = std::array<uint8_t, 32>;

inline std::string ToString(const Bytes32& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

// Fails with InvalidArgument, naming `what`, when `s` is not exactly 32 bytes.
inline absl::StatusOr<Bytes32> ToBytes32(std::string_view s, const std::string& what) {
  Bytes32 out;
  if (s.size() != out.size()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " has ", s.size(), " bytes, not 32"));
  }
  std::memcpy(out.data(), s.data(), out.size());
  return out;
}

}  // namespace allround::privacy

#endif  // ALLROUND_PRIVACY_BYTES_H_
