#ifndef ALLROUND_COMMON_TEXT_FILE_H_
#define ALLROUND_COMMON_TEXT_FILE_H_

// Small files that flags name: certificates, keys, token lists. Errors name the flag and path.

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace allround {

// The whole file; NotFound if it cannot be opened, InvalidArgument if it is empty.
absl::StatusOr<std::string> ReadTextFile(const std::string& path, const std::string& flag);

// "name token" lines (blank lines skipped): name -> token. Refuses a malformed line, a repeated
// name and an empty file.
absl::StatusOr<std::map<std::string, std::string>> ReadTokensFile(const std::string& path, const std::string& flag);

}  // namespace allround

#endif  // ALLROUND_COMMON_TEXT_FILE_H_
