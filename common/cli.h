#ifndef ALLROUND_COMMON_CLI_H_
#define ALLROUND_COMMON_CLI_H_

// Command-line parsing shared by every binary: --help prints the help and exits 0; a bad flag is
// one error line naming it, exit code 2. Every binary takes --log-level (common/log.h).

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

#include "common/log.h"

namespace allround {

// The exit code when the process should end now, or nullopt to go on.
inline std::optional<int> ParseCommandLine(CLI::App& app, int argc, char** argv, const char* program) {
  std::string level = "info";
  app.add_option("--log-level", level, std::string("the least severe lines logged: ") + log::kLevels)
      ->capture_default_str();
  (void)log::Init(program);  // the program's name on every line from here on
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // A word where a subcommand belongs: name it, rather than CLI11's "A subcommand is required".
    std::string known;
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      known += (known.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known.empty() && app.get_subcommands().empty() && argc > 1 && argv[1][0] != '-') {
      log::Error("unknown subcommand '{}' (one of: {})", argv[1], known);
      return 2;
    }
    log::Error("{} (see --help)", e.what());
    return 2;
  }
  if (absl::Status s = log::SetLevel(level); !s.ok()) {
    log::Error("{}", s.message());
    return 2;
  }
  return std::nullopt;
}

}  // namespace allround

#endif  // ALLROUND_COMMON_CLI_H_
