// The RocksDB CheckpointStore. Layout:
//   column family "default": "m/<run>/<sequence, 10 digits>" -> Manifest (protobuf)
//                            "latest/<run>"                   -> checkpoint id
//   column family "chunks" (BlobDB: large values live in blob files, not in the LSM tree):
//                            "<id>\0<tensor index, BE32><chunk index, BE32>" -> bytes
// A save writes every chunk (bypassing the WAL), flushes the chunk column family so they are in
// synced blob files, then writes the manifest and moves "latest" in one synced WriteBatch: a
// checkpoint exists exactly when its manifest does. Before its first chunk, a save writes a
// synced "pending/<id>" marker that the commit removes: the chunks of a save a crash cut short
// are the pending ids', removed on the next writable open without reading any chunk (a scan of
// every chunk let one damaged blob block every open).
//
// Beside RocksDB's files the store keeps ALLROUND-CHECKPOINTS, the ids of the committed
// checkpoints (a subset at every moment: written after a commit, before a delete). Every open
// first checks that RocksDB still lists all of them: a damaged MANIFEST or WAL from which RocksDB
// would recover an older state (and then delete the newer files as obsolete) is refused, naming
// the files, before a writable open can delete anything; RepairCheckpointStore is the explicit way on.

#include <ATen/ATen.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/sst_file_reader.h>
#include <rocksdb/version.h>
#include <rocksdb/write_batch.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tensor/dtype.h"
#include "storage/checkpoint_store.h"
#include "storage/crc32c.h"
#include "storage/proto/checkpoint.pb.h"
#include "storage/rocksdb/store_format.h"
#include "storage/run_directory.h"

namespace allround::storage {
namespace {

using namespace rocksdb_format;  // NOLINT: the store is this format

CheckpointRecord ToRecord(const pb::Manifest& m) {
  CheckpointRecord r;
  r.id = m.id();
  r.run_id = m.run_id();
  r.sequence = m.sequence();
  r.info.round = m.round();
  r.info.step = m.step();
  r.info.epoch = m.epoch();
  r.info.step_in_epoch = m.step_in_epoch();
  r.info.mode = m.mode();
  r.info.job_hash = m.job_hash();
  r.info.metrics = {m.metrics().begin(), m.metrics().end()};
  r.created_unix_ms = m.created_unix_ms();
  r.versions = {m.versions().begin(), m.versions().end()};
  for (const auto& t : m.tensors()) {
    r.tensors.push_back({t.name(), t.dtype(), {t.shape().begin(), t.shape().end()}, t.bytes(), t.chunks(), t.crc32c()});
    r.total_bytes += t.bytes();
  }
  return r;
}

class RocksDbStore final : public CheckpointStore {
 public:
  RocksDbStore(std::unique_ptr<rocksdb::DB> db, std::vector<rocksdb::ColumnFamilyHandle*> handles,
               const StoreOptions& options, std::string path)
      : db_(std::move(db)), handles_(std::move(handles)), options_(options), path_(std::move(path)) {}

  ~RocksDbStore() override {
    // Flushing on close moves chunks from the WAL into blob files, so a reopen replays nothing.
    if (!options_.read_only) db_->Flush(rocksdb::FlushOptions(), handles_).PermitUncheckedError();
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    db_->Close();
  }

  // Deletes the chunks of every save that a crash cut short (its pending marker is still there).
  absl::Status RemovePendingSaves() {
    std::vector<std::string> pending;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta()));
    for (it->Seek(kPendingPrefix); it->Valid() && it->key().starts_with(kPendingPrefix); it->Next()) {
      pending.push_back(it->key().ToString().substr(std::strlen(kPendingPrefix)));
    }
    if (auto s = FromRocks(it->status(), "listing unfinished saves"); !s.ok()) return s;
    for (const auto& id : pending) {
      if (ReadManifest(id).ok()) continue;  // committed after all: only the marker is left
      if (auto s = DeleteChunks(id); !s.ok()) return s;
    }
    rocksdb::WriteOptions synced;
    synced.sync = true;
    for (const auto& id : pending) {
      if (auto s = FromRocks(db_->Delete(synced, meta(), PendingKey(id)), "removing an unfinished save's marker");
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  // Every id the committed file names must still be listed; a store without the file gets one.
  // `before` is the file as read before RocksDB opened: a writer beside a read-only open may add
  // an id after the open's view was taken (or delete one and its manifest), so only an id in
  // both reads and missing from the view is lost.
  absl::Status CheckCommitted(const absl::StatusOr<std::optional<std::set<std::string>>>& before) {
    auto listed = ReadManifests("");
    if (!listed.ok()) return listed.status();
    std::set<std::string> ids;
    for (const auto& m : *listed) ids.insert(m.id());
    auto committed = ReadCommitted(path_);
    if (!committed.ok()) return committed.status();
    if (!committed->has_value()) {
      // A store from before the list (a new one gets it when it is created): RocksDB's recovered
      // state must still name every table and blob file on disk, or a writable open would
      // delete them as obsolete.
      if (options_.read_only) return CheckEveryFileNamed();
      return WriteCommitted(path_, ids);
    }
    std::vector<std::string> missing;
    for (const auto& id : **committed) {
      const bool read_before = before.ok() && before->has_value() && (*before)->count(id);
      if (!ids.count(id) && read_before) missing.push_back(id);
    }
    if (missing.empty()) return absl::OkStatus();
    return absl::DataLossError(absl::StrCat(
        "checkpoint store ", path_, " is damaged: RocksDB recovers it without ", missing.size(), " of its ",
        (*committed)->size(), " committed checkpoints (", absl::StrJoin(missing.begin(),
        missing.begin() + std::min<size_t>(missing.size(), 5), ", "), missing.size() > 5 ? ", ..." : "",
        "): its ", ManifestName(path_), " or a write-ahead log (*.log) is damaged or truncated. "
        "Nothing was changed or deleted; allround-ckpt repair ", path_, " recovers what it can and says what it lost"));
  }

  absl::Status CheckEveryFileNamed() {
    std::set<std::string> named;
    std::vector<rocksdb::LiveFileMetaData> tables;
    db_->GetLiveFilesMetaData(&tables);
    for (const auto& t : tables) named.insert(std::filesystem::path(t.name).filename().string());
    for (auto* h : handles_) {
      rocksdb::ColumnFamilyMetaData cf;
      db_->GetColumnFamilyMetaData(h, &cf);
      for (const auto& b : cf.blob_files) named.insert(std::filesystem::path(b.blob_file_name).filename().string());
    }
    std::vector<std::string> unnamed;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(path_, ec)) {
      const std::string name = entry.path().filename().string();
      const std::string ext = entry.path().extension().string();
      if ((ext == ".sst" || ext == ".blob") && !named.count(name)) unnamed.push_back(name);
    }
    if (unnamed.empty()) return absl::OkStatus();
    std::sort(unnamed.begin(), unnamed.end());
    return absl::DataLossError(absl::StrCat(
        "checkpoint store ", path_, " (written before ", kCommittedFile, ") holds ", unnamed.size(),
        " data file(s) that its ", ManifestName(path_), " does not name (",
        absl::StrJoin(unnamed.begin(), unnamed.begin() + std::min<size_t>(unnamed.size(), 5), ", "),
        unnamed.size() > 5 ? ", ..." : "",
        "): the MANIFEST is damaged, or a save was cut short. Nothing was changed or deleted; allround-ckpt repair ",
        path_, " recovers what it can and says what it lost"));
  }

  // Verifies every table file of the chunk column family (keys, blob indexes and small chunks:
  // small next to the blob files), once per open, so reads may skip RocksDB's checksums.
  void VerifyChunkTables() {
    std::vector<rocksdb::LiveFileMetaData> tables;
    db_->GetLiveFilesMetaData(&tables);
    bool all_good = true;
    for (const auto& t : tables) {
      if (t.column_family_name != "chunks") continue;
      const RocksOptions o = MakeRocksOptions(options_);
      rocksdb::SstFileReader reader(rocksdb::Options(o.db, o.families[1].options));
      const std::string file = path_ + "/" + std::filesystem::path(t.name).filename().string();
      if (!reader.Open(file).ok() || !reader.VerifyChecksum().ok()) all_good = false;
    }
    chunk_tables_verified_ = all_good;
  }

  // Records `ids` as the committed set (after a commit, before a delete).
  absl::Status RecordCommitted(const std::string& add, const std::string& remove) {
    auto committed = ReadCommitted(path_);
    if (!committed.ok()) return committed.status();
    std::set<std::string> ids = committed->value_or(std::set<std::string>());
    if (!committed->has_value()) {
      auto listed = ReadManifests("");
      if (!listed.ok()) return listed.status();
      for (const auto& m : *listed) ids.insert(m.id());
    }
    if (!add.empty()) ids.insert(add);
    if (!remove.empty()) ids.erase(remove);
    return WriteCommitted(path_, ids);
  }

  absl::StatusOr<std::string> Save(const std::string& run_id, const CheckpointInfo& info,
                                   const NamedTensors& tensors) override {
    if (options_.read_only) return absl::FailedPreconditionError("checkpoint store opened read-only");
    if (run_id.empty() || run_id.find('/') != std::string::npos || run_id.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("bad run id '", run_id, "' (no '/', not empty)"));
    }
    auto existing = ReadManifests(run_id);
    if (!existing.ok()) return existing.status();
    const uint64_t seq = existing->empty() ? 1 : existing->back().sequence() + 1;
    pb::Manifest m;
    m.set_id(absl::StrFormat("%s/%010d", run_id, seq));
    m.set_run_id(run_id);
    m.set_sequence(seq);
    m.set_round(info.round);
    m.set_step(info.step);
    m.set_epoch(info.epoch);
    m.set_step_in_epoch(info.step_in_epoch);
    m.set_mode(info.mode);
    m.set_job_hash(info.job_hash);
    m.set_chunk_bytes(options_.chunk_bytes);
    m.set_created_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::system_clock::now().time_since_epoch()).count());
    (*m.mutable_versions())["libtorch"] = TORCH_VERSION;
    (*m.mutable_versions())["rocksdb"] = absl::StrCat(ROCKSDB_MAJOR, ".", ROCKSDB_MINOR, ".", ROCKSDB_PATCH);
    (*m.mutable_versions())["allround"] = "0.1.0";
    for (const auto& [k, v] : info.metrics) (*m.mutable_metrics())[k] = v;

    // Chunks first, not yet visible to anyone: no manifest names them. They skip the WAL (it would
    // write every byte twice) and become durable by the flush below, into blob files. The marker
    // goes first, synced, so a crash from here on leaves a record of whose chunks to remove.
    rocksdb::WriteOptions synced;
    synced.sync = true;
    if (auto s = FromRocks(db_->Put(synced, meta(), PendingKey(m.id()), ""), "marking the save"); !s.ok()) return s;
    rocksdb::WriteOptions unsynced;
    unsynced.disableWAL = true;
    rocksdb::WriteBatch batch;
    size_t batch_bytes = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& [name, tensor] = tensors[i];
      const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
      const uint64_t nbytes = t.numel() * t.element_size();
      const auto* data = static_cast<const char*>(t.data_ptr());
      pb::TensorEntry* e = m.add_tensors();
      e->set_name(name);
      e->set_dtype(tensor::DtypeName(t.scalar_type()));
      for (int64_t d : t.sizes()) e->add_shape(d);
      e->set_bytes(nbytes);
      uint32_t crc = 0;
      uint32_t chunk = 0;
      for (uint64_t off = 0; off < nbytes || (nbytes == 0 && chunk == 0); off += options_.chunk_bytes, ++chunk) {
        const uint64_t len = std::min<uint64_t>(options_.chunk_bytes, nbytes - off);
        crc = Crc32c(crc, data + off, len);
        batch.Put(chunks(), ChunkKey(m.id(), static_cast<uint32_t>(i), chunk), rocksdb::Slice(data + off, len));
        batch_bytes += len;
        if (batch_bytes >= (64u << 20)) {
          if (auto s = FromRocks(db_->Write(unsynced, &batch), "writing chunks"); !s.ok()) return s;
          batch.Clear();
          batch_bytes = 0;
        }
        if (nbytes == 0) break;
      }
      e->set_chunks(chunk == 0 ? 1 : chunk);
      e->set_crc32c(crc);
    }
    if (auto s = FromRocks(db_->Write(unsynced, &batch), "writing chunks"); !s.ok()) return s;
    rocksdb::FlushOptions flush;
    flush.wait = true;
    if (auto s = FromRocks(db_->Flush(flush, chunks()), "flushing chunks"); !s.ok()) return s;

    // Then the manifest and the latest pointer, together, synced.
    rocksdb::WriteBatch commit;
    commit.Put(ManifestKey(run_id, seq), m.SerializeAsString());
    commit.Put(LatestKey(run_id), m.id());
    commit.Delete(PendingKey(m.id()));
    if (auto s = FromRocks(db_->Write(synced, &commit), "committing checkpoint"); !s.ok()) return s;
    if (auto s = RecordCommitted(m.id(), ""); !s.ok()) return s;
    return m.id();
  }

  absl::StatusOr<std::vector<CheckpointRecord>> List() override {
    auto manifests = ReadManifests("");
    if (!manifests.ok()) return manifests.status();
    std::vector<CheckpointRecord> out;
    for (const auto& m : *manifests) out.push_back(ToRecord(m));
    return out;
  }

  absl::StatusOr<CheckpointRecord> Get(const std::string& id) override {
    auto m = ReadManifest(id);
    if (!m.ok()) return m.status();
    return ToRecord(*m);
  }

  absl::StatusOr<std::string> Latest(const std::string& run_id) override {
    std::string id;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), LatestKey(run_id), &id);
    if (s.IsNotFound()) return absl::NotFoundError(absl::StrCat("run '", run_id, "' has no checkpoint"));
    if (auto st = FromRocks(s, "reading latest pointer"); !st.ok()) return st;
    return id;
  }

  absl::StatusOr<NamedTensors> Load(const std::string& id) override {
    NamedTensors out;
    std::vector<std::string> bad;
    if (auto s = ReadTensors(id, &out, &bad); !s.ok()) return s;
    if (!bad.empty()) {
      return absl::DataLossError(absl::StrCat("checkpoint ", id, ": checksum mismatch in ", absl::StrJoin(bad, ", ")));
    }
    return out;
  }

  absl::StatusOr<std::vector<std::string>> Verify(const std::string& id) override {
    std::vector<std::string> bad;
    if (auto s = ReadTensors(id, nullptr, &bad); !s.ok()) return s;
    return bad;
  }

  absl::StatusOr<std::vector<std::string>> Prune(const std::string& run_id, const RetentionPolicy& policy) override {
    if (policy.keep_last < 1 || policy.keep_every < 0) {
      return absl::InvalidArgumentError(absl::StrCat("retention: keep_last ", policy.keep_last, " (>= 1) and keep_every ",
                                                     policy.keep_every, " (>= 0)"));
    }
    auto manifests = ReadManifests(run_id);
    if (!manifests.ok()) return manifests.status();
    auto latest = Latest(run_id);
    std::vector<std::string> deleted;
    const int64_t n = static_cast<int64_t>(manifests->size());
    for (int64_t i = 0; i < n; ++i) {
      const pb::Manifest& m = (*manifests)[i];
      const bool keep = i >= n - policy.keep_last ||
                        (policy.keep_every > 0 && m.sequence() % static_cast<uint64_t>(policy.keep_every) == 0) ||
                        (latest.ok() && *latest == m.id());
      if (keep) continue;
      if (auto s = Delete(m.id()); !s.ok()) return s;
      deleted.push_back(m.id());
    }
    return deleted;
  }

  absl::Status Delete(const std::string& id) override {
    if (options_.read_only) return absl::FailedPreconditionError("checkpoint store opened read-only");
    auto m = ReadManifest(id);
    if (!m.ok()) return m.status();
    auto latest = Latest(m->run_id());
    if (latest.ok() && *latest == id) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint ", id, " is its run's latest"));
    }
    if (auto s = RecordCommitted("", id); !s.ok()) return s;
    rocksdb::WriteOptions synced;
    synced.sync = true;
    if (auto s = FromRocks(db_->Delete(synced, ManifestKey(m->run_id(), m->sequence())), "deleting manifest");
        !s.ok()) {
      return s;
    }
    return DeleteChunks(id);
  }

 private:
  rocksdb::ColumnFamilyHandle* meta() { return handles_[0]; }
  rocksdb::ColumnFamilyHandle* chunks() { return handles_[1]; }

  absl::Status DeleteChunks(const std::string& id) {
    rocksdb::WriteOptions synced;
    synced.sync = true;
    const std::string begin = ChunkPrefix(id), end = id + std::string(1, '\x01');
    return FromRocks(db_->DeleteRange(synced, chunks(), begin, end), absl::StrCat("deleting chunks of ", id));
  }

  // Manifests of one run (or all runs when run_id is empty), in sequence order.
  absl::StatusOr<std::vector<pb::Manifest>> ReadManifests(const std::string& run_id) {
    const std::string prefix = run_id.empty() ? "m/" : absl::StrCat("m/", run_id, "/");
    std::vector<pb::Manifest> out;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      auto m = DecodeManifest(it->value().ToStringView(), it->key().ToString());
      if (!m.ok()) return m.status();
      out.push_back(*std::move(m));
    }
    if (auto s = FromRocks(it->status(), "listing manifests"); !s.ok()) return s;
    return out;
  }

  absl::StatusOr<pb::Manifest> ReadManifest(const std::string& id) {
    const size_t slash = id.rfind('/');
    if (slash == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("bad checkpoint id '", id, "'"));
    uint64_t seq = 0;
    if (!absl::SimpleAtoi(id.substr(slash + 1), &seq)) {
      return absl::InvalidArgumentError(absl::StrCat("bad checkpoint id '", id, "'"));
    }
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), meta(), ManifestKey(id.substr(0, slash), seq), &value);
    if (s.IsNotFound()) return absl::NotFoundError(absl::StrCat("no checkpoint '", id, "' in ", path_));
    if (auto st = FromRocks(s, "reading manifest"); !st.ok()) return st;
    return DecodeManifest(value, id);
  }

  struct TensorRead {
    absl::Status status;
    bool bad = false;
    at::Tensor tensor;
  };

  // Reads tensor `i` of manifest `m` chunk by chunk, checking sizes and the CRC32C.
  TensorRead ReadOneTensor(const pb::Manifest& m, int i, bool keep) {
    TensorRead r;
    const pb::TensorEntry& e = m.tensors(i);
    rocksdb::ReadOptions ro;
    ro.fill_cache = false;
    // Table blocks must be verified before they are parsed: a damaged one read unverified hits an
    // assertion in Debian's librocksdb (SIGABRT). RocksDB 7.8 checks them only together with
    // every blob record (a second CRC pass over the bytes our CRC32C covers: half the load
    // speed), so the chunk tables were verified once when the store was opened, and reads check
    // RocksDB's checksums only when one of them failed.
    ro.verify_checksums = !chunk_tables_verified_;
    // An iterator per tensor, bounded to its chunks: a corrupt chunk puts its iterator in an error
    // state for good, and an unbounded one would read the next tensor's first chunk too.
    const std::string upper = ChunkKey(m.id(), static_cast<uint32_t>(i) + 1, 0);
    const rocksdb::Slice upper_slice(upper);
    ro.iterate_upper_bound = &upper_slice;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, chunks()));
    auto dtype = tensor::DtypeFromName(e.dtype());
    if (!dtype.ok()) {
      r.status = absl::DataLossError(absl::StrCat("checkpoint ", m.id(), ": tensor ", e.name(), ": ",
                                                  dtype.status().message()));
      return r;
    }
    char* dst = nullptr;
    if (keep) {
      // DecodeManifest checked shape, dtype and bytes together; what remains is memory.
      try {
        r.tensor = at::empty(std::vector<int64_t>(e.shape().begin(), e.shape().end()), at::TensorOptions().dtype(*dtype));
      } catch (const c10::Error&) {
        r.status = absl::ResourceExhaustedError(absl::StrCat("checkpoint ", m.id(), ": tensor ", e.name(), " (",
                                                             e.bytes(), " bytes) does not fit in memory"));
        return r;
      }
      if (static_cast<uint64_t>(r.tensor.numel() * r.tensor.element_size()) != e.bytes()) {
        r.status = absl::DataLossError(absl::StrCat("checkpoint ", m.id(), ": tensor ", e.name(),
                                                    " shape and size disagree"));
        return r;
      }
      dst = static_cast<char*>(r.tensor.data_ptr());
    }
    uint32_t crc = 0;
    uint64_t got = 0;
    uint32_t chunks_seen = 0;
    for (it->Seek(ChunkKey(m.id(), static_cast<uint32_t>(i), 0)); it->Valid(); it->Next()) {
      const rocksdb::Slice v = it->value();
      if (got + v.size() > e.bytes()) {
        got += v.size();
        break;
      }
      crc = Crc32c(crc, v.data(), v.size());
      if (dst != nullptr) std::memcpy(dst + got, v.data(), v.size());
      got += v.size();
      ++chunks_seen;
    }
    if (it->status().IsCorruption()) {
      r.bad = true;  // RocksDB's own block checksum caught it first
    } else if (!it->status().ok()) {
      r.status = FromRocks(it->status(), absl::StrCat("reading tensor ", e.name()));
    } else if (got != e.bytes() || crc != e.crc32c() || chunks_seen != e.chunks()) {
      r.bad = true;
    }
    return r;
  }

  // Reads every tensor of `id` (on a few threads: copying and checksumming 1 GiB is CPU work);
  // fills `out` in manifest order when given; names bad tensors in `bad`.
  absl::Status ReadTensors(const std::string& id, NamedTensors* out, std::vector<std::string>* bad) {
    auto m = ReadManifest(id);
    if (!m.ok()) return m.status();
    const int n = m->tensors_size();
    std::vector<TensorRead> reads(n);
    std::atomic<int> next{0};
    const auto work = [&] {
      for (int i = next++; i < n; i = next++) reads[i] = ReadOneTensor(*m, i, out != nullptr);
    };
    const int threads = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 4);
    std::vector<std::thread> pool;
    for (int t = 1; t < std::min(threads, n); ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    for (int i = 0; i < n; ++i) {
      if (!reads[i].status.ok()) return reads[i].status;
      if (reads[i].bad) {
        bad->push_back(m->tensors(i).name());
      } else if (out != nullptr) {
        out->emplace_back(m->tensors(i).name(), std::move(reads[i].tensor));
      }
    }
    return absl::OkStatus();
  }

  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  // Every chunk table was verified at open (new ones are written by this process): reads skip
  // RocksDB's checksums and rely on our CRC32C alone.
  std::atomic<bool> chunk_tables_verified_{false};
  StoreOptions options_;
  std::string path_;
};

}  // namespace

namespace {

absl::StatusOr<std::unique_ptr<RocksDbStore>> OpenRocks(const std::string& path, const StoreOptions& options) {
  RocksOptions o = MakeRocksOptions(options);
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = options.read_only ? rocksdb::DB::OpenForReadOnly(o.db, path, o.families, &handles, &raw)
                                        : rocksdb::DB::Open(o.db, path, o.families, &handles, &raw);
  if (!s.ok()) {
    if (s.IsIOError() && absl::StrContains(s.ToString(), "lock")) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint store ", path, " is open for writing by another process: ",
                                                        s.ToString()));
    }
    absl::Status st = FromRocks(s, absl::StrCat("opening checkpoint store ", path));
    if (!s.IsCorruption()) return st;
    // RocksDB's messages do not always name the file ("SST file is ahead of WALs"): name what an
    // open reads, and the way on.
    std::vector<std::string> logs;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
      if (entry.path().extension() == ".log") logs.push_back(entry.path().filename().string());
    }
    std::sort(logs.begin(), logs.end());
    return absl::Status(st.code(), absl::StrCat(st.message(), " (an open reads CURRENT, ", ManifestName(path),
                                                logs.empty() ? "" : " and the write-ahead logs ",
                                                absl::StrJoin(logs, ", "),
                                                "); nothing was changed or deleted; allround-ckpt repair ", path,
                                                " recovers what it can and says what it lost"));
  }
  return std::make_unique<RocksDbStore>(std::unique_ptr<rocksdb::DB>(raw), std::move(handles), options, path);
}

// A directory that holds no store (no CURRENT) may become one only if it is empty, or holds only
// what RocksDB writes before CURRENT (a creation cut short).
absl::Status CheckNewStoreDirectory(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return absl::OkStatus();
  if (!std::filesystem::is_directory(path, ec)) {
    return absl::FailedPreconditionError(absl::StrCat("checkpoint store ", path, ": a file is in the way"));
  }
  std::vector<std::string> other;
  for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
    const std::string name = entry.path().filename().string();
    if (name == "LOCK" || name == "IDENTITY" || absl::StartsWith(name, "LOG")) continue;
    other.push_back(name);
  }
  if (other.empty()) return absl::OkStatus();
  std::sort(other.begin(), other.end());
  const bool damaged = std::any_of(other.begin(), other.end(), [](const std::string& n) {
    return absl::StartsWith(n, "MANIFEST-") || absl::EndsWith(n, ".sst") || absl::EndsWith(n, ".blob") ||
           n == kCommittedFile;
  });
  return absl::FailedPreconditionError(absl::StrCat(
      "checkpoint store ", path, damaged ? " has lost its CURRENT file (it holds " : " is not empty and holds no store (",
      absl::StrJoin(other.begin(), other.begin() + std::min<size_t>(other.size(), 4), ", "),
      other.size() > 4 ? ", ..." : "", damaged ? "): allround-ckpt repair recovers it" : "): name a new or empty directory",
      "; nothing was created there"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointStore>> OpenCheckpointStore(const std::string& path,
                                                                     const StoreOptions& options) {
  std::error_code ec;
  const bool exists = std::filesystem::exists(path + "/CURRENT", ec);
  if (!exists && !options.read_only && options.create_if_missing) {
    if (auto s = CheckNewStoreDirectory(path); !s.ok()) return s;
  }
  if (exists && !options.read_only) {
    // A writable open deletes the files RocksDB's recovered state does not name. Check that state
    // first, read-only: a store that lost committed checkpoints is refused with nothing deleted.
    StoreOptions probe_options = options;
    probe_options.read_only = true;
    const auto before = ReadCommitted(path);
    auto probe = OpenRocks(path, probe_options);
    if (!probe.ok()) return probe.status();
    if (auto s = (*probe)->CheckCommitted(before); !s.ok()) return s;
  }
  const auto before = ReadCommitted(path);
  auto store = OpenRocks(path, options);
  if (!store.ok()) return store.status();
  if (auto s = (*store)->CheckCommitted(before); !s.ok()) return s;
  (*store)->VerifyChunkTables();
  if (!options.read_only) {
    if (auto s = (*store)->RemovePendingSaves(); !s.ok()) return s;
  }
  return std::unique_ptr<CheckpointStore>(*std::move(store));
}

}  // namespace allround::storage
