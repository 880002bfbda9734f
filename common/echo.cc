#include "common/echo.h"

#include "absl/strings/str_cat.h"

namespace allround {

std::string Echo(std::string_view text, size_t max_chars) {
  const size_t n = text.size() <= max_chars ? text.size() : max_chars;
  std::string out;
  out.reserve(n + 24);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    out.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  }
  if (n < text.size()) absl::StrAppend(&out, "...(", text.size(), " bytes)");
  return out;
}

}  // namespace allround
