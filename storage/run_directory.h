#ifndef ALLROUND_STORAGE_RUN_DIRECTORY_H_
#define ALLROUND_STORAGE_RUN_DIRECTORY_H_

// A run's directory: the job as it ran (job.yaml), metrics appended as one JSON object per line
// (metrics.jsonl), and files written whole (the summary). Every write is durable when the call
// returns (fsync), and a whole-file write is atomic (temporary file, fsync, rename, fsync of the
// directory), so a crash leaves either the old file or the new one, never half of one.
//
// Thread-compatible: one writer per RunDirectory.

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace allround::storage {

class RunDirectory {
 public:
  // Creates `path` (and its parents) if needed.
  static absl::StatusOr<RunDirectory> Open(const std::string& path);

  const std::string& path() const { return path_; }

  // Appends one line (a JSON object, without the newline) to metrics.jsonl.
  absl::Status AppendMetrics(const std::string& json_line);

  // Writes `name` inside the run directory atomically.
  absl::Status WriteFile(const std::string& name, const std::string& content) const;

 private:
  explicit RunDirectory(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// Writes `content` to `path` (any path) atomically and durably.
absl::Status WriteFileAtomically(const std::string& path, const std::string& content);

}  // namespace allround::storage

#endif  // ALLROUND_STORAGE_RUN_DIRECTORY_H_
