#ifndef ALLROUND_COMMON_TIMELINE_H_
#define ALLROUND_COMMON_TIMELINE_H_

// A step timeline (`--timeline FILE`): spans of what a process does, written at its end as Chrome
// trace-event JSON ({"traceEvents": [...]}, complete events "ph": "X" with microsecond "ts" and
// "dur"), which Perfetto and chrome://tracing open. A training process records each step's
// forward, backward and optimizer step, each gradient bucket's allreduce from its launch to the
// moment its completion is seen, and checkpoint saves; a federated site each round's fetch, train
// and submit; the coordinator each round's aggregation.
//
// Times are the system clock's, so the files of several ranks or processes line up when merged
// (rank r's spans have "pid" r). Off, a probe costs one atomic load and a branch: nothing is
// recorded and no clock is read.
//
// Thread-safe: spans may be recorded from any thread (each thread gets its own "tid").

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace allround::timeline {

class Recorder {
 public:
  // `pid` and `process` name the process's row ("rank 1", "coordinator").
  Recorder(int pid, std::string process);

  // A span [start_us, end_us) named `name` in category `cat`; `args` is a JSON object's body
  // ("\"bytes\": 4096") or empty.
  void Complete(const std::string& name, const char* cat, int64_t start_us, int64_t end_us,
                const std::string& args = "");
  size_t size() const;
  // At most this many spans are kept (about 100 bytes each); later ones are counted, not kept, and
  // the file says how many were dropped.
  static constexpr size_t kMaxEvents = 4000000;

  // The trace as JSON, and written to `path` (atomically).
  std::string Json() const;
  absl::Status Write(const std::string& path) const;

 private:
  struct Event {
    std::string name;
    const char* cat;
    int64_t ts, dur;
    int tid;
    std::string args;
  };
  const int pid_;
  const std::string process_;
  mutable std::mutex mu_;
  std::vector<Event> events_;
  int64_t dropped_ = 0;
};

// The process's recorder, or null when no timeline is asked for.
Recorder* Active();
// Installs (or, with null, removes) the process's recorder; it must outlive its use.
void SetActive(Recorder* recorder);

// Microseconds of the system clock.
int64_t NowUs();

// Records the span from its construction to its destruction, when a recorder is active.
class Span {
 public:
  Span(const char* name, const char* cat) : recorder_(Active()), name_(name), cat_(cat) {
    if (recorder_ != nullptr) start_ = NowUs();
  }
  ~Span() {
    if (recorder_ != nullptr) recorder_->Complete(name_, cat_, start_, NowUs());
  }
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;

 private:
  Recorder* recorder_;
  const char* name_;
  const char* cat_;
  int64_t start_ = 0;
};

// `--timeline FILE` for a whole process: records from its construction (with an empty path it does
// nothing); Finish writes the file and stops recording. Rank r > 0 of a group writes FILE.rank<r>.
class FileSession {
 public:
  FileSession(const std::string& path, int rank, const std::string& process);
  ~FileSession();
  FileSession(const FileSession&) = delete;
  FileSession& operator=(const FileSession&) = delete;
  absl::Status Finish();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::unique_ptr<Recorder> recorder_;
};

// The training step's start on this thread (set by the trainer), from which the step's "forward"
// span runs to its first backward. 0: not in a step.
void MarkStepStart();
// Returns the mark and clears it (so a second backward in the same step draws no forward).
int64_t TakeStepStart();

}  // namespace allround::timeline

#endif  // ALLROUND_COMMON_TIMELINE_H_
