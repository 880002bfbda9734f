#ifndef ALLROUND_COMMON_CLI_H_
#define ALLROUND_COMMON_CLI_H_

// Command-line parsing shared by every binary: --help prints the help and exits 0; a bad flag is
// one error line naming it, exit code 2.

#include <CLI/CLI.hpp>
#include <cstdio>
#include <optional>
#include <string>

namespace allround {

// The exit code when the process should end now, or nullopt to go on.
inline std::optional<int> ParseCommandLine(CLI::App& app, int argc, char** argv, const char* program) {
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
      std::fprintf(stderr, "%s: error: unknown subcommand '%s' (one of: %s)\n", program, argv[1], known.c_str());
      return 2;
    }
    std::fprintf(stderr, "%s: error: %s (see --help)\n", program, e.what());
    return 2;
  }
  return std::nullopt;
}

}  // namespace allround

#endif  // ALLROUND_COMMON_CLI_H_
