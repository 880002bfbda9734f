#ifndef ALLROUND_COMMON_JOB_CLI_H_
#define ALLROUND_COMMON_JOB_CLI_H_

// Every job key as a command-line flag (--KEY=VALUE) of a CLI11 app, shared by the binaries that
// take a job: the flags override the job file, the last of a repeated flag wins, and --help lists
// every key with its default.

#include <CLI/CLI.hpp>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/job.h"

namespace allround {

class JobFlags {
 public:
  explicit JobFlags(CLI::App& app) {
    for (const auto& [key, help] : JobKeys()) {
      options_.emplace_back(key, app.add_option("--" + key, values_[key], help)
                                     ->group("Job keys")
                                     ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast));
    }
  }

  // Loads the job file (or the defaults when `path` is empty), applies the flags given, validates.
  absl::StatusOr<Job> Resolve(const std::string& path) const {
    absl::StatusOr<Job> job = path.empty() ? absl::StatusOr<Job>(Job{}) : LoadJobFile(path);
    if (!job.ok()) return job.status();
    for (const auto& [key, option] : options_) {
      if (option->count() == 0) continue;
      if (auto s = SetJobKey(*job, key, values_.at(key)); !s.ok()) return s;
    }
    if (auto s = ValidateJob(*job); !s.ok()) return s;
    return job;
  }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::pair<std::string, CLI::Option*>> options_;
};

}  // namespace allround

#endif  // ALLROUND_COMMON_JOB_CLI_H_
