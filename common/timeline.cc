#include "common/timeline.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace allround::timeline {
namespace {

std::atomic<Recorder*> active{nullptr};
std::atomic<int> next_tid{1};
thread_local int tid = 0;
thread_local int64_t step_start = 0;

int ThreadId() {
  if (tid == 0) tid = next_tid.fetch_add(1);
  return tid;
}

// A JSON string's body: quotes, backslashes and control characters escaped.
std::string JsonText(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

Recorder::Recorder(int pid, std::string process) : pid_(pid), process_(std::move(process)) {}

void Recorder::Complete(const std::string& name, const char* cat, int64_t start_us, int64_t end_us,
                        const std::string& args) {
  const int t = ThreadId();
  std::lock_guard<std::mutex> lock(mu_);
  if (events_.size() >= kMaxEvents) {
    ++dropped_;
    return;
  }
  events_.push_back(Event{name, cat, start_us, std::max<int64_t>(0, end_us - start_us), t, args});
}

size_t Recorder::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_.size();
}

std::string Recorder::Json() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out = absl::StrCat("{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n",
                                 absl::StrFormat("{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": %d, \"tid\": 0, "
                                                 "\"args\": {\"name\": \"%s\", \"dropped_spans\": %d}}",
                                                 pid_, JsonText(process_), dropped_));
  for (const Event& e : events_) {
    absl::StrAppendFormat(&out,
                          ",\n{\"name\": \"%s\", \"cat\": \"%s\", \"ph\": \"X\", \"ts\": %d, \"dur\": %d, "
                          "\"pid\": %d, \"tid\": %d, \"args\": {%s}}",
                          JsonText(e.name), e.cat, e.ts, e.dur, pid_, e.tid, e.args);
  }
  return out + "\n]}\n";
}

absl::Status Recorder::Write(const std::string& path) const {
  // A temporary file renamed into place: a reader never sees half a trace.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << Json();
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("timeline ", path, ": cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("timeline ", path, ": cannot rename ", tmp, " into place"));
  }
  return absl::OkStatus();
}

Recorder* Active() { return active.load(std::memory_order_acquire); }
void SetActive(Recorder* recorder) { active.store(recorder, std::memory_order_release); }

int64_t NowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

FileSession::FileSession(const std::string& path, int rank, const std::string& process) {
  if (path.empty()) return;
  path_ = rank > 0 ? absl::StrCat(path, ".rank", rank) : path;
  recorder_ = std::make_unique<Recorder>(rank, process);
  SetActive(recorder_.get());
}

FileSession::~FileSession() {
  if (recorder_ && Active() == recorder_.get()) SetActive(nullptr);
}

absl::Status FileSession::Finish() {
  if (!recorder_) return absl::OkStatus();
  if (Active() == recorder_.get()) SetActive(nullptr);
  return recorder_->Write(path_);
}

void MarkStepStart() {
  if (Active() != nullptr) step_start = NowUs();
}

int64_t TakeStepStart() {
  const int64_t t = step_start;
  step_start = 0;
  return t;
}

}  // namespace allround::timeline
