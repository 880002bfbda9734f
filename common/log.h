#ifndef ALLROUND_COMMON_LOG_H_
#define ALLROUND_COMMON_LOG_H_

// Leveled logging to stderr, through spdlog, in one format for every program:
//
//   2026-12-05 08:10:00.123 allround-worker rank 1 site hospital-a: warning: the message
//
// The program is named once (Init); "rank R" appears in every line of a process that is one
// rank of several (SetRank), "site S" in every line a thread logs for a federated site (SiteScope).
// Levels, lowest first: debug, info, warning, error; --log-level (every binary) drops the lines
// below it. Results a user reads as output (the epoch and round lines, JSON) go to stdout with
// printf, not here. Thread-safe.

#include <spdlog/spdlog.h>

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

#if !defined(ABSL_USES_STD_STRING_VIEW)
// abseil's own string_view (Debian's build), e.g. a Status's message(): formatted as text.
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename Context>
  auto format(absl::string_view s, Context& ctx) const {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(s.data(), s.size()), ctx);
  }
};
#endif

namespace allround::log {

// The names --log-level takes.
inline constexpr char kLevels[] = "debug, info, warning, error, off";

// Names the program and sets the level ("info" unless told). Before Init, lines say "allround".
// Fails, changing nothing, on an unknown level, naming the known ones.
absl::Status Init(const std::string& program, const std::string& level = "info");
absl::Status SetLevel(const std::string& level);

// This process is rank `rank` of `size`: with size > 1, every line says "rank R".
void SetRank(int rank, int size);

// A duration as progress lines and the status page show it: "45s", "3m07s", "2h05m".
std::string ShortDuration(double seconds);

// While alive, the calling thread's lines say "site NAME" (a site runner hosts many sites; each
// logs from its own threads). Nests: the innermost wins.
class SiteScope {
 public:
  explicit SiteScope(std::string site);
  ~SiteScope();
  SiteScope(const SiteScope&) = delete;
  SiteScope& operator=(const SiteScope&) = delete;

 private:
  std::string previous_;
};

// The one logger (made on first use).
spdlog::logger& Logger();

// The lines, with fmt's "{}" formatting.
template <typename... Args>
void Debug(fmt::format_string<Args...> format, Args&&... args) {
  Logger().debug(format, std::forward<Args>(args)...);
}
template <typename... Args>
void Info(fmt::format_string<Args...> format, Args&&... args) {
  Logger().info(format, std::forward<Args>(args)...);
}
template <typename... Args>
void Warning(fmt::format_string<Args...> format, Args&&... args) {
  Logger().warn(format, std::forward<Args>(args)...);
}
template <typename... Args>
void Error(fmt::format_string<Args...> format, Args&&... args) {
  Logger().error(format, std::forward<Args>(args)...);
}

}  // namespace allround::log

#endif  // ALLROUND_COMMON_LOG_H_
