#include "common/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace allround::log {
namespace {

std::mutex program_mu;
std::string program = "allround";  // guarded by program_mu
std::atomic<int> rank{-1};         // -1: not one rank of several
thread_local std::string site;

// "%*": the program, then " rank R" and " site S" where they apply.
class Context final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&, spdlog::memory_buf_t& dest) override {
    std::string text;
    {
      std::lock_guard<std::mutex> lock(program_mu);
      text = program;
    }
    if (const int r = rank.load(); r >= 0) absl::StrAppend(&text, " rank ", r);
    if (!site.empty()) absl::StrAppend(&text, " site ", site);
    dest.append(text.data(), text.data() + text.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<Context>(); }
};

// The logger every line goes through: stderr, unbuffered as stderr is, in the one format, at
// info until told.
std::shared_ptr<spdlog::logger> MakeLogger() {
  auto logger = std::make_shared<spdlog::logger>("allround", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<Context>('*').set_pattern("%Y-%m-%d %H:%M:%S.%e %*: %l: %v");
  logger->set_formatter(std::move(formatter));
  logger->flush_on(spdlog::level::trace);
  logger->set_level(spdlog::level::info);
  return logger;
}

}  // namespace

spdlog::logger& Logger() {
  static std::shared_ptr<spdlog::logger>* logger = new std::shared_ptr<spdlog::logger>(MakeLogger());
  return **logger;
}

absl::Status SetLevel(const std::string& level) {
  spdlog::level::level_enum l;
  if (level == "debug") {
    l = spdlog::level::debug;
  } else if (level == "info") {
    l = spdlog::level::info;
  } else if (level == "warning") {
    l = spdlog::level::warn;
  } else if (level == "error") {
    l = spdlog::level::err;
  } else if (level == "off") {
    l = spdlog::level::off;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--log-level: unknown level '", level, "' (one of: ", kLevels, ")"));
  }
  Logger().set_level(l);
  return absl::OkStatus();
}

absl::Status Init(const std::string& name, const std::string& level) {
  if (auto s = SetLevel(level); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(program_mu);
  program = name;
  return absl::OkStatus();
}

void SetRank(int r, int size) { rank.store(size > 1 ? r : -1); }

SiteScope::SiteScope(std::string name) : previous_(std::move(site)) { site = std::move(name); }
SiteScope::~SiteScope() { site = std::move(previous_); }

std::string ShortDuration(double seconds) {
  const int64_t t = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  if (t >= 3600) return absl::StrFormat("%dh%02dm", t / 3600, (t / 60) % 60);
  if (t >= 60) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  return absl::StrFormat("%ds", t);
}

}  // namespace allround::log
