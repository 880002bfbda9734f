// The store-damage suite (issue 29): what a failing disk does to a checkpoint store, file by file.
//
// Two pristine images of one store are built once: "closed" (after a clean close) and "crashed"
// (copied while the store was still open after its last save, so a write-ahead log holds the last
// commits and RocksDB replays it at the next open). Then every file of every kind in each image
// (blob, SST, MANIFEST, CURRENT, OPTIONS, WAL, ALLROUND-CHECKPOINTS, IDENTITY) is damaged in a
// fresh copy, one damage per trial: one byte flipped at positions spread over the file (first, last,
// between, and the header and footer bytes where formats keep magic numbers and lengths), or the
// file cut to 0, half and length-1 bytes. Each trial asserts:
//   - no crash (a crash ends this binary; its last words name the trial);
//   - no silently altered checkpoint: every manifest listed is the one saved under that id, every
//     Load that succeeds returns the saved tensors bit for bit, "latest" names the saved latest;
//   - a refused open (read-only or writable) changes no file (names and sizes), and its error says
//     what is wrong; a successful open lists every committed checkpoint;
//   - every intact checkpoint still resumes: one flipped byte in a blob file costs at most one
//     checkpoint; after a writable open and a new save, every checkpoint the read-only open showed
//     intact still loads equal (whatever files the writable session removed); after a refusal,
//     RepairCheckpointStore keeps the store as it was in its backup, every checkpoint it keeps
//     loads equal, and every other one is reported damaged or lost.
// ~870 trials; ~35 s on 2 idle cores (~70 s beside a build).

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "storage/checkpoint_store.h"
#include "tests/test_util.h"

namespace allround {
namespace {

namespace fs = std::filesystem;
using storage::CheckpointRecord;
using storage::CheckpointStore;
using storage::NamedTensors;
using storage::StoreOptions;

constexpr uint64_t kChunkBytes = 64 << 10;
constexpr char kRun[] = "run";

// ---------------------------------------------------------------------------------------------
// Crash reporting: a crash ends the binary (ctest reports it); the handler names the trial and
// removes the scratch directory (images and the trial's copy) with async-signal-safe calls.

char* CurrentTrial() {
  static char trial[512];  // written before each trial, read only by the handler
  return trial;
}

char* ScratchToRemove() {
  static char path[512];  // written once, read only by the handler
  return path;
}

void OnCrash(int sig) {
  static std::atomic_flag crashed = ATOMIC_FLAG_INIT;
  if (crashed.test_and_set()) {
    for (;;) ::pause();  // another thread crashed too (Load reads on several): the first one reports
  }
  static const char kPrefix[] = "\nstore damage: CRASHED (signal) during trial: ";
  (void)!::write(2, kPrefix, sizeof(kPrefix) - 1);
  (void)!::write(2, CurrentTrial(), std::strlen(CurrentTrial()));
  (void)!::write(2, "\n", 1);
  if (ScratchToRemove()[0] != '\0') {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::execl("/bin/rm", "rm", "-rf", ScratchToRemove(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    if (pid > 0) ::waitpid(pid, nullptr, 0);
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void SetCurrentTrial(const std::string& what) {
  std::snprintf(CurrentTrial(), 512, "%s", what.c_str());
}

// ---------------------------------------------------------------------------------------------
// Files.

// The files of a store directory (relative path -> size), without RocksDB's info log (LOG,
// LOG.old.*) and LOCK, which every open rewrites, refused or not, and which hold no data.
using Listing = std::map<std::string, uintmax_t>;

Listing ListFiles(const std::string& dir) {
  Listing out;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (name == "LOCK" || name == "LOG" || name.rfind("LOG.old.", 0) == 0) continue;
    out[fs::relative(e.path(), dir).string()] = e.file_size();
  }
  return out;
}

std::string Diff(const Listing& before, const Listing& after) {
  std::ostringstream out;
  for (const auto& [name, size] : before) {
    auto it = after.find(name);
    if (it == after.end()) {
      out << " -" << name;
    } else if (it->second != size) {
      out << " " << name << ":" << size << "->" << it->second;
    }
  }
  for (const auto& [name, size] : after) {
    if (!before.count(name)) out << " +" << name;
  }
  return out.str();
}

void CopyStore(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from)) {
    const std::string name = e.path().filename().string();
    if (name == "LOG" || name.rfind("LOG.old.", 0) == 0) continue;
    fs::copy(e.path(), fs::path(to) / name, fs::copy_options::recursive);
  }
}

// What kind of store file `name` is, or "" for one the suite leaves alone.
std::string KindOf(const std::string& name) {
  auto ends = [&](const char* s) {
    const size_t n = std::strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  if (ends(".blob")) return "blob";
  if (ends(".sst")) return "sst";
  if (ends(".log")) return "wal";
  if (name.rfind("MANIFEST-", 0) == 0) return "MANIFEST";
  if (name.rfind("OPTIONS-", 0) == 0) return "OPTIONS";
  if (name == "CURRENT" || name == "IDENTITY" || name == "ALLROUND-CHECKPOINTS") return name;
  return "";
}

bool IsDataFile(const std::string& path) {
  const std::string kind = KindOf(fs::path(path).filename().string());
  return kind == "sst" || kind == "blob";
}

struct Damage {
  std::string file;  // name in the store directory
  std::string kind;
  bool truncate = false;
  uintmax_t at = 0;  // the flipped byte, or the new length
  uintmax_t size = 0;

  std::string Describe(const std::string& image) const {
    std::ostringstream out;
    out << image << "/" << file << " (" << kind << ", " << size << " bytes): "
        << (truncate ? "truncated to " : "byte flipped at ") << at;
    return out.str();
  }

  void Apply(const std::string& dir) const {
    const std::string path = dir + "/" + file;
    if (truncate) {
      fs::resize_file(path, at);
      return;
    }
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(at));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0xff);
    f.seekp(static_cast<std::streamoff>(at));
    f.write(&c, 1);
    ASSERT_TRUE(f.good()) << "could not damage " << path;
  }
};

// Where to flip: `spread` + 1 positions evenly over the file (first and last included), and the
// first and last bytes, where the formats keep magic numbers, versions, lengths and checksums
// (8 at each end of a small file, 4 of a large one). Then truncations to 0, half, length-1.
std::vector<Damage> DamagesOf(const std::string& file, uintmax_t n) {
  std::vector<Damage> out;
  if (n == 0) return out;
  const int spread = n <= 4096 ? 8 : 12;
  const uintmax_t edge = std::min<uintmax_t>(n <= 4096 ? 8 : 4, n);
  std::set<uintmax_t> flips;
  for (int i = 0; i <= spread; ++i) flips.insert(static_cast<uintmax_t>(i) * (n - 1) / spread);
  for (uintmax_t i = 0; i < edge; ++i) {
    flips.insert(i);
    flips.insert(n - 1 - i);
  }
  const std::string kind = KindOf(file);
  for (uintmax_t at : flips) out.push_back({file, kind, false, at, n});
  for (uintmax_t len : std::set<uintmax_t>{0, n / 2, n - 1}) out.push_back({file, kind, true, len, n});
  return out;
}

// ---------------------------------------------------------------------------------------------
// What was saved.

NamedTensors TensorsOf(int k) {
  // Every chunk of every checkpoint differs from every other, so a chunk read from the wrong place
  // cannot pass for the right one.
  return {
      {"small", torch::arange(256, torch::kInt32) + 1000 * k},                 // 1 KiB: inline in an SST
      {"medium", torch::arange(16384, torch::kFloat32) + 100000.0 * k},        // 64 KiB: one chunk, a blob
      {"large", torch::arange(38400, torch::kFloat64) * 0.5 + 1.0e7 * k},      // 300 KiB: five chunks
  };
}

struct Saved {
  std::vector<std::string> ids;  // oldest first; the last is the run's latest
  std::map<std::string, CheckpointRecord> records;
  std::map<std::string, NamedTensors> tensors;
};

std::string RecordDiff(const CheckpointRecord& a, const CheckpointRecord& b) {
  std::ostringstream out;
  if (a.id != b.id || a.run_id != b.run_id || a.sequence != b.sequence) out << " id/run/sequence";
  if (a.info.step != b.info.step || a.info.round != b.info.round || a.info.epoch != b.info.epoch ||
      a.info.step_in_epoch != b.info.step_in_epoch || a.info.mode != b.info.mode ||
      a.info.job_hash != b.info.job_hash || a.info.metrics != b.info.metrics) {
    out << " info(step " << a.info.step << " vs " << b.info.step << ")";
  }
  if (a.created_unix_ms != b.created_unix_ms || a.versions != b.versions) out << " created/versions";
  if (a.total_bytes != b.total_bytes || a.tensors.size() != b.tensors.size()) out << " tensor count/bytes";
  for (size_t i = 0; i < std::min(a.tensors.size(), b.tensors.size()); ++i) {
    const auto &x = a.tensors[i], &y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.bytes != y.bytes ||
        x.chunks != y.chunks || x.crc32c != y.crc32c) {
      out << " tensor " << i << " (" << x.name << " vs " << y.name << ")";
    }
  }
  return out.str();
}

// "" when `got` is bit for bit `want` (names, dtypes, shapes, bytes).
std::string TensorsDiff(const NamedTensors& got, const NamedTensors& want) {
  if (got.size() != want.size()) return std::to_string(got.size()) + " tensors, saved " + std::to_string(want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const at::Tensor g = got[i].second.contiguous(), w = want[i].second.contiguous();
    if (got[i].first != want[i].first) return "tensor " + got[i].first + " where " + want[i].first + " was saved";
    if (g.scalar_type() != w.scalar_type() || g.sizes() != w.sizes()) return "tensor " + got[i].first + ": dtype/shape";
    if (std::memcmp(g.data_ptr(), w.data_ptr(), static_cast<size_t>(w.numel() * w.element_size())) != 0) {
      return "tensor " + got[i].first + ": different bytes";
    }
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// One trial.

struct Tally {
  int trials = 0;
  int files = 0;
  std::map<std::string, int> trials_by_kind;
  int refused_opens = 0;
  int refusals_naming_file = 0;
  int repairs = 0;
  int repair_errors = 0;
  int silent = 0;            // silently altered manifests, tensors or latest pointers
  int lost_on_open = 0;      // opens that succeeded without listing a committed checkpoint
  int unloadable = 0;        // Loads that returned an error (detected damage)
  int writable_sessions = 0;
  int read_only_refused_writable_accepted = 0;
  int sst_removed = 0;   // by writable sessions (compaction, obsolete files) that then still
  int blob_removed = 0;  // loaded every intact checkpoint
};

// What a store shows: checks every listed manifest, every Load and the latest pointer against what
// was saved. Differences that come back as OK are silent alterations: test failures.
struct View {
  bool list_ok = false;
  std::set<std::string> good;        // listed, loads bit for bit as saved
  std::set<std::string> unloadable;  // listed, Load returns an error
  std::set<std::string> missing;     // saved, not listed
};

// `latest_expected`: what Latest(kRun) must say when it succeeds (by default the last saved).
View Inspect(CheckpointStore& store, const Saved& saved, const std::string& what, Tally* tally,
             const std::string* latest_expected = nullptr) {
  View v;
  auto listed = store.List();
  if (!listed.ok()) {
    EXPECT_FALSE(listed.status().message().empty()) << what << ": List failed without a message";
    return v;
  }
  v.list_ok = true;
  std::set<std::string> seen;
  for (const auto& r : *listed) {
    seen.insert(r.id);
    auto it = saved.records.find(r.id);
    if (it == saved.records.end()) {
      ++tally->silent;
      ADD_FAILURE() << what << ": lists checkpoint " << r.id << ", which was never saved";
      continue;
    }
    if (const std::string d = RecordDiff(r, it->second); !d.empty()) {
      ++tally->silent;
      ADD_FAILURE() << what << ": the manifest of " << r.id << " differs from the saved one:" << d;
      continue;
    }
    auto loaded = store.Load(r.id);
    if (!loaded.ok()) {
      EXPECT_FALSE(loaded.status().message().empty()) << what << ": Load(" << r.id << ") failed without a message";
      ++tally->unloadable;
      v.unloadable.insert(r.id);
      continue;
    }
    if (const std::string d = TensorsDiff(*loaded, saved.tensors.at(r.id)); !d.empty()) {
      ++tally->silent;
      ADD_FAILURE() << what << ": Load(" << r.id << ") succeeded with altered tensors: " << d;
      continue;
    }
    v.good.insert(r.id);
  }
  for (const auto& id : saved.ids) {
    if (!seen.count(id)) v.missing.insert(id);
  }
  const std::string& want = latest_expected != nullptr ? *latest_expected : saved.ids.back();
  auto latest = store.Latest(kRun);
  if (latest.ok() && *latest != want) {
    ++tally->silent;
    ADD_FAILURE() << what << ": latest is " << *latest << ", expected " << (want.empty() ? "none" : want);
  }
  return v;
}

// A successful open must show every committed checkpoint (the store refuses one that lost any).
void ExpectNothingMissing(const View& v, const std::string& what, Tally* tally) {
  if (v.list_ok && !v.missing.empty()) {
    ++tally->lost_on_open;
    ADD_FAILURE() << what << ": the open succeeded but lists " << v.missing.size() << " saved checkpoint(s) no more, "
                  << "e.g. " << *v.missing.begin();
  }
}

// A refused open changes no file and says what is wrong.
void ExpectRefusalChangedNothing(const absl::Status& status, const std::string& db, const Damage& d,
                                 const Listing& before, const std::string& what, Tally* tally) {
  ++tally->refused_opens;
  const Listing after = ListFiles(db);
  EXPECT_EQ(after, before) << what << ": a refused open changed files:" << Diff(before, after)
                           << " (error: " << status << ")";
  const std::string msg(status.message());
  if (msg.find(d.file) != std::string::npos) ++tally->refusals_naming_file;
  static const char* const kSays[] = {"MANIFEST", "CURRENT", "OPTIONS", ".sst", ".blob", ".log",
                                      "ALLROUND-CHECKPOINTS", "IDENTITY", "orrupt", "damaged",
                                      "checksum", "truncated", "mismatch"};
  const bool says = std::any_of(std::begin(kSays), std::end(kSays),
                                [&](const char* s) { return msg.find(s) != std::string::npos; });
  EXPECT_TRUE(says) << what << ": the refusal names no file and says nothing of what is wrong: '" << msg << "'";
}

// The id a repair report entry ("<id>" or "<id>: why") is about, or "".
std::string IdOfEntry(const std::string& entry, const Saved& saved) {
  for (const auto& id : saved.ids) {
    if (entry == id || entry.rfind(id + ":", 0) == 0 || entry.rfind(id + " ", 0) == 0) return id;
  }
  return "";
}

// After a refused open: the explicit repair keeps the store as it was, untouched, in its backup,
// and leaves a new store in which every checkpoint it kept loads as saved and every other one is
// reported damaged or lost.
void RepairAndCheck(const std::string& db, const Saved& saved, const std::string& what, Tally* tally) {
  ++tally->repairs;
  const std::string at = what + ", after repair";
  SetCurrentTrial(at);
  const Listing as_was = ListFiles(db);
  auto report = storage::RepairCheckpointStore(db);
  if (!report.ok()) {
    ++tally->repair_errors;
    EXPECT_FALSE(report.status().message().empty()) << at << ": repair failed without a message";
    return;
  }
  ASSERT_FALSE(report->backup.empty()) << at << ": repair names no backup of the store as it was";
  const Listing backup = ListFiles(report->backup);
  EXPECT_EQ(backup, as_was) << at << ": the backup " << report->backup << " is not the store as it was:"
                            << Diff(as_was, backup);
  std::set<std::string> reported;
  for (const auto* list : {&report->damaged, &report->lost}) {
    for (const auto& entry : *list) {
      const std::string id = IdOfEntry(entry, saved);
      EXPECT_FALSE(id.empty()) << at << ": repair reports '" << entry << "', which names no saved checkpoint";
      reported.insert(id);
    }
  }
  for (const auto& id : report->kept) {
    EXPECT_TRUE(saved.records.count(id)) << at << ": repair kept " << id << ", which was never saved";
  }
  StoreOptions o;
  o.chunk_bytes = kChunkBytes;
  o.create_if_missing = false;
  auto store = storage::OpenCheckpointStore(db, o);
  ASSERT_TRUE(store.ok()) << at << ": the repaired store does not open: " << store.status();
  // The run's latest stays the saved latest if repair kept it; otherwise it is the newest it kept.
  std::string latest;
  for (const auto& id : saved.ids) {
    if (std::count(report->kept.begin(), report->kept.end(), id)) latest = id;
  }
  const View v = Inspect(**store, saved, at, tally, &latest);
  ASSERT_TRUE(v.list_ok) << at << ": the repaired store does not list";
  for (const auto& id : report->kept) {
    EXPECT_TRUE(v.good.count(id)) << at << ": repair reported " << id << " kept, but it does not load as saved";
  }
  for (const auto& id : saved.ids) {
    if (reported.count(id)) continue;
    EXPECT_TRUE(v.good.count(id)) << at << ": " << id << " is not reported damaged or lost, yet it "
                                  << (v.missing.count(id) ? "is missing" : "does not load");
  }
}

void RunTrial(const std::string& image_name, const std::string& image, const Saved& saved, const Damage& d,
              const std::string& work, Tally* tally) {
  const std::string what = d.Describe(image_name);
  SetCurrentTrial(what);
  const std::string db = work + "/db";
  fs::remove_all(work);  // with the last trial's repair backup
  CopyStore(image, db);
  d.Apply(db);
  const Listing before = ListFiles(db);
  ++tally->trials;
  ++tally->trials_by_kind[d.kind];

  StoreOptions ro;
  ro.read_only = true;
  ro.chunk_bytes = kChunkBytes;
  StoreOptions rw;
  rw.chunk_bytes = kChunkBytes;
  const bool blob_flip = d.kind == "blob" && !d.truncate;
  bool refused = false;

  // 1. Read-only, as verify and list open it: refused (changing nothing) or showing what was saved.
  std::set<std::string> intact;
  bool read_only_ok = false;
  {
    auto store = storage::OpenCheckpointStore(db, ro);
    if (!store.ok()) {
      refused = true;
      ExpectRefusalChangedNothing(store.status(), db, d, before, what + ", read-only open", tally);
    } else {
      read_only_ok = true;
      const View v = Inspect(**store, saved, what + ", read-only", tally);
      ExpectNothingMissing(v, what + ", read-only", tally);
      intact = v.good;
      if (blob_flip) {
        EXPECT_TRUE(v.list_ok) << what << ": List failed";
        EXPECT_LE(v.unloadable.size() + v.missing.size(), 1u)
            << what << ": one flipped byte in a blob file cost more than one checkpoint";
      }
      store->reset();  // closes it
    }
    const Listing after = ListFiles(db);
    EXPECT_EQ(after, before) << what << ": a read-only open changed files:" << Diff(before, after);
  }
  EXPECT_TRUE(read_only_ok || !blob_flip) << what << ": a flipped blob byte made the store unreadable";

  // 2. Writable, as --resume and a fresh run open it, then a new save; then, read-only again, every
  //    checkpoint that was intact still loads as saved, whatever files the writable session removed.
  {
    const std::string at = what + ", writable";
    SetCurrentTrial(at);
    auto store = storage::OpenCheckpointStore(db, rw);
    if (!store.ok()) {
      refused = true;
      ExpectRefusalChangedNothing(store.status(), db, d, before, at + " open", tally);
      if (blob_flip) ADD_FAILURE() << at << ": a flipped blob byte made the store unwritable: " << store.status();
    } else {
      ++tally->writable_sessions;
      const View v = Inspect(**store, saved, at, tally);
      ExpectNothingMissing(v, at, tally);
      if (!read_only_ok) {
        // Refused read-only, accepted writable: what the writable open shows is the baseline.
        ++tally->read_only_refused_writable_accepted;
        intact = v.good;
      }
      if (blob_flip) {
        EXPECT_LE(v.unloadable.size() + v.missing.size(), 1u)
            << at << ": one flipped byte in a blob file cost more than one checkpoint";
      }
      Saved after_save = saved;
      storage::CheckpointInfo info;
      info.step = 1000;
      info.round = 100;
      auto id = (*store)->Save(kRun, info, TensorsOf(99));
      if (id.ok()) {
        auto loaded = (*store)->Load(*id);
        ASSERT_TRUE(loaded.ok()) << at << ": the new checkpoint does not load: " << loaded.status();
        EXPECT_EQ(TensorsDiff(*loaded, TensorsOf(99)), "") << at << ": the new checkpoint";
        auto record = (*store)->Get(*id);
        ASSERT_TRUE(record.ok()) << at << ": " << record.status();
        after_save.ids.push_back(*id);
        after_save.records[*id] = *record;
        after_save.tensors[*id] = TensorsOf(99);
      } else {
        EXPECT_FALSE(id.status().message().empty()) << at << ": Save failed without a message";
      }
      store->reset();  // closes it: the destructor flushes
      const Listing after = ListFiles(db);
      std::vector<std::string> removed;
      for (const auto& [name, size] : before) {
        if (IsDataFile(name) && !after.count(name)) removed.push_back(name);
      }
      const std::string again = at + " session, reopened read-only" +
                                (removed.empty() ? "" : " (the session removed " + std::to_string(removed.size()) +
                                                            " data file(s), e.g. " + removed.front() + ")");
      SetCurrentTrial(again);
      auto reopened = storage::OpenCheckpointStore(db, ro);
      ASSERT_TRUE(reopened.ok()) << again << ": does not open: " << reopened.status();
      const View w = Inspect(**reopened, id.ok() ? after_save : saved, again, tally);
      for (const auto& ckpt : intact) {
        EXPECT_TRUE(w.good.count(ckpt)) << again << ": " << ckpt << " was intact and is "
                                        << (w.missing.count(ckpt) ? "missing" : "unloadable") << " now";
      }
      EXPECT_TRUE(!id.ok() || w.good.count(*id)) << again << ": the new checkpoint is gone";
      for (const auto& name : removed) ++(KindOf(name) == "sst" ? tally->sst_removed : tally->blob_removed);
    }
  }
  if (refused) RepairAndCheck(db, saved, what, tally);
}

// ---------------------------------------------------------------------------------------------
// The pristine images.

// Waits until the store's files stop changing (a compaction the last flush started is done), so
// that the copy is of a store at rest.
void WaitUntilAtRest(const std::string& db) {
  Listing last = ListFiles(db);
  int stable = 0;
  for (int i = 0; i < 400 && stable < 6; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    Listing now = ListFiles(db);
    stable = now == last ? stable + 1 : 0;
    last = std::move(now);
  }
}

// 4 checkpoints of one run in 3 sessions (1; 2; 3 and 4), each with an inline, a one-chunk and a
// five-chunk tensor: an SST and a blob file per save, an SST of manifests per session, several
// write-ahead logs, a MANIFEST with edits (and the trials' writable sessions compact). "crashed"
// is copied while the third session is open, "closed" is the store after it closes.
void BuildImages(const std::string& root, Saved* saved, std::string* closed, std::string* crashed) {
  *closed = root + "/closed";
  *crashed = root + "/crashed";
  StoreOptions o;
  o.chunk_bytes = kChunkBytes;
  int k = 0;
  const auto save = [&](CheckpointStore& store) {
    ++k;
    storage::CheckpointInfo info;
    info.step = 10 * k;
    info.round = k;
    info.mode = "supervised";
    info.metrics["loss"] = 1.0 / k;
    auto id = store.Save(kRun, info, TensorsOf(k));
    ASSERT_TRUE(id.ok()) << id.status();
    saved->ids.push_back(*id);
    saved->tensors[*id] = TensorsOf(k);
  };
  for (int session = 0; session < 3; ++session) {
    auto store = storage::OpenCheckpointStore(*closed, o);
    ASSERT_TRUE(store.ok()) << store.status();
    save(**store);
    if (session == 2) {
      save(**store);
      WaitUntilAtRest(*closed);
      CopyStore(*closed, *crashed);
    }
  }
  auto store = storage::OpenCheckpointStore(*closed, [] {
    StoreOptions r;
    r.read_only = true;
    return r;
  }());
  ASSERT_TRUE(store.ok()) << store.status();
  auto listed = (*store)->List();
  ASSERT_TRUE(listed.ok()) << listed.status();
  for (const auto& r : *listed) saved->records[r.id] = r;
  ASSERT_EQ(saved->records.size(), 4u);
}

TEST(StoreDamage, EveryFileOfEveryKindFlippedAndTruncated) {
  std::signal(SIGSEGV, OnCrash);
  std::signal(SIGBUS, OnCrash);
  std::signal(SIGABRT, OnCrash);
  std::signal(SIGFPE, OnCrash);
  const auto start = std::chrono::steady_clock::now();
  testing::ScratchDir dir;
  std::snprintf(ScratchToRemove(), 512, "%s", dir.path().c_str());
  Saved saved;
  std::string closed, crashed;
  ASSERT_NO_FATAL_FAILURE(BuildImages(dir.path(), &saved, &closed, &crashed));

  Tally tally;
  std::set<std::string> kinds;
  for (const auto& [image_name, image] : {std::make_pair("closed", closed), std::make_pair("crashed", crashed)}) {
    // Both pristine images open and load every checkpoint as saved.
    for (bool read_only : {true, false}) {
      const std::string copy = dir / "pristine";
      fs::remove_all(copy);
      CopyStore(image, copy);
      StoreOptions o;
      o.read_only = read_only;
      o.chunk_bytes = kChunkBytes;
      auto store = storage::OpenCheckpointStore(copy, o);
      ASSERT_TRUE(store.ok()) << image_name << ": " << store.status();
      const View v = Inspect(**store, saved, std::string(image_name) + " pristine", &tally);
      ASSERT_EQ(v.good.size(), saved.ids.size()) << image_name << " pristine";
    }
    std::vector<std::pair<std::string, uintmax_t>> files;
    for (const auto& [name, size] : ListFiles(image)) {
      if (!KindOf(name).empty()) files.emplace_back(name, size);
    }
    std::cerr << "store damage: " << image_name << " image:";
    for (const auto& [name, size] : files) std::cerr << " " << name << "(" << size << ")";
    std::cerr << "\n";
    for (const auto& [name, size] : files) {
      ++tally.files;
      kinds.insert(KindOf(name));
      for (const Damage& d : DamagesOf(name, size)) {
        RunTrial(image_name, image, saved, d, dir / "trial", &tally);
      }
    }
  }
  // Every kind the issue names is there to damage.
  for (const char* kind : {"blob", "sst", "MANIFEST", "CURRENT", "OPTIONS", "wal", "ALLROUND-CHECKPOINTS", "IDENTITY"}) {
    EXPECT_TRUE(kinds.count(kind)) << "no " << kind << " file in the pristine images";
  }
  std::ostringstream by_kind;
  for (const auto& [kind, n] : tally.trials_by_kind) by_kind << (by_kind.tellp() > 0 ? ", " : "") << kind << " " << n;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "store damage: " << tally.trials << " trials over " << tally.files << " files (kinds: " << by_kind.str()
            << "), " << tally.refused_opens << " refused opens (" << tally.refusals_naming_file
            << " naming the damaged file), " << tally.repairs << " repairs (" << tally.repair_errors << " errors), "
            << tally.unloadable << " loads refused as damaged, " << tally.writable_sessions << " writable sessions ("
            << tally.read_only_refused_writable_accepted << " after a refused read-only open; they removed "
            << tally.sst_removed << " SST and " << tally.blob_removed << " blob files), " << tally.silent
            << " silent alterations, " << tally.lost_on_open << " silent losses, " << seconds << " s" << std::endl;
  EXPECT_EQ(tally.silent, 0);
}

}  // namespace
}  // namespace allround
