#include "common/text_file.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace allround {

absl::StatusOr<std::string> ReadTextFile(const std::string& path, const std::string& flag) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat(flag, " '", path, "': cannot open"));
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (text.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "' is empty"));
  return text;
}

absl::Status CheckPrivateFile(const std::string& path, const std::string& flag) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return absl::NotFoundError(absl::StrCat(flag, " '", path, "': cannot open"));
  if ((st.st_mode & 077) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s '%s' is open to other users (mode %04o): it holds a secret; chmod 600 '%s' (ssh refuses such keys too)",
        flag, path, st.st_mode & 07777, path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path, const std::string& flag) {
  if (auto s = CheckPrivateFile(path, flag); !s.ok()) return s;
  auto text = ReadTextFile(path, flag);
  if (!text.ok()) return text.status();
  const std::string token(absl::StripAsciiWhitespace(*text));
  if (token.empty() || token.find_first_of(" \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': want one token on one line"));
  }
  return token;
}

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& flag, const std::string& kind) {
  auto text = ReadTextFile(path, flag);
  if (!text.ok()) return text.status();
  const auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': ", why));
  };
  if (kind == "PRIVATE KEY") {
    if (absl::StrContains(*text, "-----BEGIN ENCRYPTED PRIVATE KEY-----")) {
      return bad("the private key is encrypted; give it unencrypted (openssl pkey -in KEY -out PLAIN)");
    }
    for (const char* label : {"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"}) {
      if (!absl::StrContains(*text, absl::StrCat("-----BEGIN ", label, "-----"))) continue;
      // A key, then: it must be private (checked after the content, so a certificate given as
      // the key is named as such, not for its mode).
      if (auto s = CheckPrivateFile(path, flag); !s.ok()) return s;
      return text;
    }
    return bad("no PEM private key in it (a '-----BEGIN PRIVATE KEY-----' block)");
  }
  if (!absl::StrContains(*text, absl::StrCat("-----BEGIN ", kind, "-----"))) {
    return bad(absl::StrCat("no PEM ", absl::AsciiStrToLower(kind), " in it (a '-----BEGIN ", kind, "-----' block)"));
  }
  return text;
}

absl::Status MakeFlagDirectory(const std::string& path, const std::string& flag) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec || !std::filesystem::is_directory(path)) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " '", path, "': cannot create the directory: ", ec ? ec.message() : "a file is in the way"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::map<std::string, std::string>> ReadTokensFile(const std::string& path, const std::string& flag) {
  if (auto s = CheckPrivateFile(path, flag); !s.ok()) return s;
  auto text = ReadTextFile(path, flag);
  if (!text.ok()) return text.status();
  std::map<std::string, std::string> out;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++line_no;
    std::vector<std::string> parts = absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (parts.empty()) continue;
    if (parts.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " '", path, "' line ", line_no, ": want 'site-name token'"));
    }
    if (!out.emplace(parts[0], parts[1]).second) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "' line ", line_no, ": site '", parts[0],
                                                     "' appears twice"));
    }
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': no 'site token' lines"));
  return out;
}

bool SameToken(const std::string& expected, const std::string& presented) {
  if (expected.size() != presented.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < expected.size(); ++i) diff |= static_cast<unsigned char>(expected[i] ^ presented[i]);
  return diff == 0;
}

absl::StatusOr<std::string> TokenFromFlags(const std::string& value, const std::string& value_flag,
                                           const std::string& path, const std::string& path_flag) {
  if (path.empty()) return value;
  if (!value.empty()) return absl::InvalidArgumentError(absl::StrCat("give ", value_flag, " or ", path_flag, ", not both"));
  return ReadTokenFile(path, path_flag);
}

}  // namespace allround
