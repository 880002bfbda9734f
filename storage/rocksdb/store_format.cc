#include "storage/rocksdb/store_format.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <fstream>
#include <iterator>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/echo.h"
#include "storage/crc32c.h"
#include "storage/run_directory.h"
#include "tensor/dtype.h"

namespace allround::storage::rocksdb_format {
namespace {

constexpr char kCommittedHeader[] = "allround checkpoint store: committed checkpoints, v1";

std::string CommittedPath(const std::string& store) { return store + "/" + kCommittedFile; }

void AppendBigEndian32(std::string* s, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) s->push_back(static_cast<char>((v >> shift) & 0xff));
}

}  // namespace

absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsIOError() && absl::StrContains(s.ToString(), "lock")) return absl::FailedPreconditionError(msg);
  return absl::InternalError(msg);
}

std::string ManifestKey(const std::string& run, uint64_t seq) { return absl::StrFormat("m/%s/%010d", run, seq); }
std::string PendingKey(const std::string& id) { return absl::StrCat("pending/", id); }


// The committed-ids file: a header line, one id a line, and "crc32c <hex>" of all before it.
absl::Status WriteCommitted(const std::string& store, const std::set<std::string>& ids) {
  std::string text = absl::StrCat(kCommittedHeader, "\n");
  for (const auto& id : ids) absl::StrAppend(&text, id, "\n");
  absl::StrAppend(&text, absl::StrFormat("crc32c %08x\n", Crc32c(0, text.data(), text.size())));
  if (auto s = WriteFileAtomically(CommittedPath(store), text); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("recording the committed checkpoints: ", s.message()));
  }
  return absl::OkStatus();
}

// nullopt when the file does not exist (a store from before it, or a new one).
absl::StatusOr<std::optional<std::set<std::string>>> ReadCommitted(const std::string& store) {
  const std::string path = CommittedPath(store);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::optional<std::set<std::string>>();
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto damaged = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat(path, " (the store's list of committed checkpoints) is damaged: ", why,
                                            "; allround-ckpt repair ", store, " rebuilds it from what the store holds"));
  };
  if (!in.good() && !in.eof()) return damaged("it cannot be read");
  const size_t last = text.rfind("crc32c ", text.size() >= 2 ? text.size() - 2 : 0);
  if (last == std::string::npos || text.back() != '\n') return damaged("no checksum line");
  uint32_t want = 0;
  if (!absl::SimpleHexAtoi(absl::string_view(text).substr(last + 7, text.size() - last - 8), &want) ||
      Crc32c(0, text.data(), last) != want) {
    return damaged("its checksum does not match");
  }
  std::vector<std::string> lines = absl::StrSplit(text.substr(0, last), '\n', absl::SkipEmpty());
  if (lines.empty() || lines[0] != kCommittedHeader) return damaged("no header line");
  return std::optional<std::set<std::string>>(std::set<std::string>(lines.begin() + 1, lines.end()));
}

absl::StatusOr<pb::Manifest> DecodeManifest(std::string_view bytes, const std::string& key) {
  pb::Manifest m;
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !m.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError(absl::StrCat("manifest ", key, " does not parse"));
  }
  constexpr uint64_t kMaxTensorBytes = uint64_t{1} << 40;
  for (const pb::TensorEntry& e : m.tensors()) {
    const auto bad = [&](const std::string& why) {
      return absl::DataLossError(absl::StrCat("manifest ", key, ": tensor '", Echo(e.name(), 128), "' ", why));
    };
    auto dtype = tensor::DtypeFromName(e.dtype());
    if (!dtype.ok()) return bad(std::string(dtype.status().message()));
    uint64_t product = at::elementSize(*dtype);
    for (int64_t d : e.shape()) {
      if (d < 0) return bad(absl::StrCat("has a negative dimension (", d, ")"));
      if (__builtin_mul_overflow(product, static_cast<uint64_t>(d), &product) || product > kMaxTensorBytes) {
        return bad("has a shape past 2^40 bytes");
      }
    }
    if (product != e.bytes()) {
      return bad(absl::StrCat("has shape and dtype for ", product, " bytes but records ", e.bytes()));
    }
    const uint64_t size = m.chunk_bytes();
    const uint64_t chunks = size == 0 ? 0 : std::max<uint64_t>(1, e.bytes() / size + (e.bytes() % size != 0));
    if (e.chunks() == 0 || (size != 0 && e.chunks() != chunks)) {
      return bad(absl::StrCat("records ", e.chunks(), " chunks for ", e.bytes(), " bytes in chunks of ", size));
    }
  }
  return m;
}

// The RocksDB files that a damaged store's error names: CURRENT and the MANIFEST it points to.
std::string ManifestName(const std::string& store) {
  std::ifstream in(store + "/CURRENT");
  std::string name;
  std::getline(in, name);
  return name.empty() ? "CURRENT (unreadable)" : absl::StrCat(name, " (named by CURRENT)");
}
std::string LatestKey(const std::string& run) { return absl::StrCat("latest/", run); }


std::string ChunkPrefix(const std::string& id) { return id + std::string(1, '\0'); }
std::string ChunkKey(const std::string& id, uint32_t tensor, uint32_t chunk) {
  std::string k = ChunkPrefix(id);
  AppendBigEndian32(&k, tensor);
  AppendBigEndian32(&k, chunk);
  return k;
}

RocksOptions MakeRocksOptions(const StoreOptions& options) {
  RocksOptions o;
  rocksdb::DBOptions& db_options = o.db;
  db_options.create_if_missing = options.create_if_missing && !options.read_only;
  db_options.create_missing_column_families = !options.read_only;
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_options.keep_log_file_num = 2;
  rocksdb::ColumnFamilyOptions meta_options;
  rocksdb::ColumnFamilyOptions chunk_options;
  chunk_options.enable_blob_files = true;  // integrated BlobDB: chunk bytes go to blob files
  chunk_options.min_blob_size = 4096;
  chunk_options.blob_file_size = 256 << 20;
  // Several memtables in flight and two flush threads, so filling one overlaps writing another.
  chunk_options.write_buffer_size = 64 << 20;
  chunk_options.max_write_buffer_number = 6;
  db_options.max_background_flushes = 2;
  // Start writeback every few MiB instead of one large fsync when a blob file is done.
  db_options.bytes_per_sync = 4 << 20;
  chunk_options.enable_blob_garbage_collection = true;
  o.families = {{rocksdb::kDefaultColumnFamilyName, meta_options}, {"chunks", chunk_options}};
  return o;
}


}  // namespace allround::storage::rocksdb_format
