// RepairCheckpointStore: salvages a store that no longer opens into a new one, deleting nothing.
//
// RocksDB's own RepairDB rebuilds a MANIFEST from the table files and logs, but in 7.8 it does not
// know BlobDB's blob files: run on a store it drops them, and with them every chunk of 4 KiB or
// more. So the repair works on copies and reads the blob files itself:
//   1. the damaged store is renamed aside (<path>.before-repair-<time>) and never written again;
//   2. a scratch copy of it without the blob files goes through RepairDB: that recovers the
//      manifests, latest pointers and small chunks from every table file and write-ahead log;
//   3. the blob files are read record by record (a 30-byte header, then 32-byte record headers,
//      each followed by its key and value; RocksDB's db/blob/blob_log_format.h), newest file last;
//   4. each checkpoint whose every chunk is found, with the sizes and CRC32C its manifest records,
//      is written into a new store at <path> under its old id; the others are reported damaged.

#include <fcntl.h>
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "storage/checkpoint_store.h"
#include "storage/crc32c.h"
#include "storage/rocksdb/store_format.h"

namespace allround::storage {
namespace {

using namespace rocksdb_format;  // NOLINT: the repair reads and writes this format
namespace fs = std::filesystem;

constexpr uint32_t kBlobMagic = 2395959;
constexpr size_t kBlobHeaderBytes = 30;
constexpr size_t kBlobRecordHeaderBytes = 32;

uint64_t Fixed64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint32_t Fixed32(const char* p) { return static_cast<uint32_t>(Fixed64(p) & 0xffffffffu) & 0xffffffffu; }

// Where one chunk's bytes lie in a blob file.
struct BlobRef {
  std::string file;
  uint64_t offset = 0;
  uint64_t size = 0;
};

// Indexes every record of one blob file: key -> where its value is. Stops at the first record
// whose sizes run past the file (the rest of a damaged file is unreadable without its index).
// Returns a note when it stopped early or the file is not a blob file.
std::string IndexBlobFile(const std::string& path, std::map<std::string, BlobRef>* index) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec) return absl::StrCat(fs::path(path).filename().string(), ": ", ec.message(), "; skipped");
  std::string header(kBlobHeaderBytes, '\0');
  if (size < kBlobHeaderBytes || !in.read(header.data(), kBlobHeaderBytes) || Fixed32(header.data()) != kBlobMagic) {
    return absl::StrCat(fs::path(path).filename().string(), ": not a blob file (bad header); skipped");
  }
  uint64_t pos = kBlobHeaderBytes;
  std::string record(kBlobRecordHeaderBytes, '\0');
  uint64_t records = 0;
  while (pos + kBlobRecordHeaderBytes <= size) {
    in.seekg(static_cast<std::streamoff>(pos));
    if (!in.read(record.data(), kBlobRecordHeaderBytes)) break;
    const uint64_t key_size = Fixed64(record.data()), value_size = Fixed64(record.data() + 8);
    if (Fixed32(record.data()) == kBlobMagic && key_size > size) break;  // the footer
    const uint64_t body = pos + kBlobRecordHeaderBytes;
    if (key_size > size || value_size > size || body + key_size + value_size > size) {
      return absl::StrCat(fs::path(path).filename().string(), ": unreadable after record ", records, " (offset ", pos,
                          ")");
    }
    std::string key(key_size, '\0');
    if (!in.read(key.data(), static_cast<std::streamsize>(key_size))) break;
    (*index)[key] = BlobRef{path, body + key_size, value_size};
    pos = body + key_size + value_size;
    ++records;
  }
  return "";
}

std::string Timestamp() {
  const std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", std::gmtime(&now));
  return buf;
}

// Whether another process holds the store's LOCK (RocksDB takes it with fcntl).
bool Locked(const std::string& path) {
  const int fd = ::open((path + "/LOCK").c_str(), O_RDWR);
  if (fd < 0) return false;
  struct flock fl = {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  const bool locked = ::fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
  ::close(fd);
  return locked;
}

struct OpenDb {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  ~OpenDb() {
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
    if (db) db->Close().PermitUncheckedError();
  }
};

absl::Status Open(const std::string& path, bool read_only, OpenDb* out) {
  StoreOptions so;
  so.read_only = read_only;
  RocksOptions o = MakeRocksOptions(so);
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = read_only ? rocksdb::DB::OpenForReadOnly(o.db, path, o.families, &out->handles, &raw)
                                : rocksdb::DB::Open(o.db, path, o.families, &out->handles, &raw);
  out->db.reset(raw);
  return FromRocks(s, absl::StrCat("opening ", path));
}

// One checkpoint's chunks, read from the scratch store (small ones) or the blob files; checked
// against its manifest. Fills `batch` when all is well; otherwise says what is wrong.
std::string Salvage(const pb::Manifest& m, OpenDb& scratch, const std::map<std::string, BlobRef>& blobs,
                    rocksdb::ColumnFamilyHandle* chunks_out, rocksdb::WriteBatch* batch) {
  for (int i = 0; i < m.tensors_size(); ++i) {
    const pb::TensorEntry& e = m.tensors(i);
    uint32_t crc = 0;
    uint64_t got = 0;
    for (uint32_t c = 0; c < std::max<uint32_t>(1, e.chunks()); ++c) {
      const std::string key = ChunkKey(m.id(), static_cast<uint32_t>(i), c);
      std::string value;
      rocksdb::Status s = scratch.db->Get(rocksdb::ReadOptions(), scratch.handles[1], key, &value);
      if (!s.ok()) {  // a blob index whose file RepairDB does not know, or missing
        auto it = blobs.find(key);
        if (it == blobs.end()) return absl::StrCat("tensor ", e.name(), ": chunk ", c, " is in no readable file");
        value.resize(it->second.size);
        std::ifstream in(it->second.file, std::ios::binary);
        in.seekg(static_cast<std::streamoff>(it->second.offset));
        if (!in.read(value.data(), static_cast<std::streamsize>(value.size()))) {
          return absl::StrCat("tensor ", e.name(), ": chunk ", c, " cannot be read from ", it->second.file);
        }
      }
      crc = Crc32c(crc, value.data(), value.size());
      got += value.size();
      batch->Put(chunks_out, key, value);
    }
    if (got != e.bytes() || crc != e.crc32c()) {
      return absl::StrCat("tensor ", e.name(), ": ", got, " of ", e.bytes(), " bytes, checksum ",
                          crc == e.crc32c() ? "good" : "mismatch");
    }
  }
  return "";
}

// Steps 2-5 of the repair, from the store moved aside to `report->backup` into a new one at `path`.
absl::Status SalvageInto(const std::string& path, const std::set<std::string>& committed, RepairReport* out);

}  // namespace

absl::StatusOr<RepairReport> RepairCheckpointStore(const std::string& path_in) {
  fs::path normal = fs::path(path_in).lexically_normal();
  if (!normal.has_filename()) normal = normal.parent_path();  // "store/" names "store"
  const std::string path = normal.string();
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return absl::NotFoundError(absl::StrCat("no store directory ", path));
  if (Locked(path)) {
    return absl::FailedPreconditionError(absl::StrCat("checkpoint store ", path, " is open by another process"));
  }
  RepairReport report;
  // What the store had committed, if its list can still be read.
  std::set<std::string> committed;
  if (auto recorded = ReadCommitted(path); recorded.ok() && recorded->has_value()) {
    committed = **recorded;
  } else if (!recorded.ok()) {
    report.notes.push_back(std::string(recorded.status().message()));
  } else {
    report.notes.push_back("the store has no list of committed checkpoints (written before it): lost ones cannot be named");
  }

  // 1. The damaged store goes aside, whole; everything below reads it and writes elsewhere.
  report.backup = absl::StrCat(path, ".before-repair-", Timestamp());
  fs::rename(path, report.backup, ec);
  if (ec) return absl::InternalError(absl::StrCat("moving ", path, " aside to ", report.backup, ": ", ec.message()));
  if (auto s = SalvageInto(path, committed, &report); !s.ok()) {
    // Put the store back as it was, so that the path never holds a half-made store.
    fs::remove_all(path, ec);
    fs::rename(report.backup, path, ec);
    return absl::Status(s.code(), absl::StrCat(s.message(), ec ? absl::StrCat("; the store as it was is at ", report.backup)
                                                                : "; the store is back as it was"));
  }
  return report;
}

namespace {

absl::Status SalvageInto(const std::string& path, const std::set<std::string>& committed, RepairReport* out) {
  RepairReport& report = *out;
  std::error_code ec;
  // 2. A scratch copy without the blob files, through RocksDB's repair; removed however this ends.
  const std::string scratch_dir = report.backup + "-scratch";
  struct RemoveOnExit {
    std::string dir;
    ~RemoveOnExit() {
      std::error_code ignored;
      fs::remove_all(dir, ignored);
    }
  } remove_scratch{scratch_dir};
  fs::create_directories(scratch_dir, ec);
  std::vector<std::string> blob_files;
  for (const auto& entry : fs::directory_iterator(report.backup, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file()) continue;
    if (entry.path().extension() == ".blob") {
      blob_files.push_back(entry.path().string());
    } else if (name != "LOCK" && name != kCommittedFile && name.rfind("LOG", 0) != 0) {
      fs::copy_file(entry.path(), fs::path(scratch_dir) / name, ec);
      if (ec) return absl::InternalError(absl::StrCat("copying ", name, " to ", scratch_dir, ": ", ec.message()));
    }
  }
  RocksOptions o = MakeRocksOptions(StoreOptions{});
  if (auto s = FromRocks(rocksdb::RepairDB(scratch_dir, o.db, o.families), "recovering the store's tables and logs");
      !s.ok()) {
    return s;
  }
  OpenDb scratch;
  if (auto s = Open(scratch_dir, /*read_only=*/true, &scratch); !s.ok()) return s;

  // 3. Every chunk in the blob files, newest file last (a key saved again wins).
  std::sort(blob_files.begin(), blob_files.end());
  std::map<std::string, BlobRef> blobs;
  for (const auto& f : blob_files) {
    if (std::string note = IndexBlobFile(f, &blobs); !note.empty()) report.notes.push_back(note);
  }

  // 4. The manifests the scratch store lists, and the latest pointers.
  std::vector<pb::Manifest> manifests;
  std::map<std::string, std::string> latest;
  {
    std::unique_ptr<rocksdb::Iterator> it(scratch.db->NewIterator(rocksdb::ReadOptions(), scratch.handles[0]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const std::string key = it->key().ToString();
      if (key.rfind("m/", 0) == 0) {
        auto m = DecodeManifest(it->value().ToStringView(), key);
        if (m.ok()) {
          manifests.push_back(*std::move(m));
        } else {
          report.notes.push_back(absl::StrCat(m.status().message(), "; its checkpoint is lost"));
        }
      } else if (key.rfind("latest/", 0) == 0) {
        latest[key.substr(7)] = it->value().ToString();
      }
    }
  }

  // 5. The new store: each whole checkpoint under its old id.
  OpenDb fresh;
  if (auto s = Open(path, /*read_only=*/false, &fresh); !s.ok()) return s;
  std::set<std::string> kept, damaged;
  std::map<std::string, std::string> newest_kept;  // run -> id
  rocksdb::WriteOptions no_wal;
  no_wal.disableWAL = true;
  for (const auto& m : manifests) {
    rocksdb::WriteBatch batch;
    if (std::string why = Salvage(m, scratch, blobs, fresh.handles[1], &batch); !why.empty()) {
      report.damaged.push_back(absl::StrCat(m.id(), ": ", why));
      damaged.insert(m.id());
      continue;
    }
    if (auto s = FromRocks(fresh.db->Write(no_wal, &batch), "writing salvaged chunks"); !s.ok()) return s;
    kept.insert(m.id());
    report.kept.push_back(m.id());
    newest_kept[m.run_id()] = m.id();  // manifests come in (run, sequence) order
  }
  rocksdb::FlushOptions flush;
  flush.wait = true;
  if (auto s = FromRocks(fresh.db->Flush(flush, fresh.handles[1]), "flushing salvaged chunks"); !s.ok()) return s;
  rocksdb::WriteBatch commit;
  for (const auto& m : manifests) {
    if (kept.count(m.id())) commit.Put(ManifestKey(m.run_id(), m.sequence()), m.SerializeAsString());
  }
  for (const auto& [run, id] : newest_kept) {
    // A run's latest stays what it was when that checkpoint was kept; otherwise its newest kept.
    const auto was = latest.find(run);
    const std::string now = was != latest.end() && kept.count(was->second) ? was->second : id;
    if (was != latest.end() && was->second != now) {
      report.notes.push_back(absl::StrCat("run ", run, ": latest was ", was->second, ", now ", now));
    }
    commit.Put(LatestKey(run), now);
  }
  rocksdb::WriteOptions synced;
  synced.sync = true;
  if (auto s = FromRocks(fresh.db->Write(synced, &commit), "committing salvaged checkpoints"); !s.ok()) return s;
  for (const auto& id : committed) {
    if (!kept.count(id) && !damaged.count(id)) report.lost.push_back(id);
  }
  return WriteCommitted(path, kept);
}

}  // namespace
}  // namespace allround::storage
